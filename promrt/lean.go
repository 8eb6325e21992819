package promrt

import (
	"math"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// lean is a histogram of integer observations (frames, nanoseconds) for
// the reports a server makes on every write. An observation is two atomic
// additions, a bucket's and the sum's, where a prometheus.Histogram makes
// four or five and a compare-and-swap loop on its float sum; every writer
// goroutine of a server shares these counters, so at saturation that
// difference is most of the metrics' cost. A scrape reads the counters one
// by one while writes go on, so count and sum may disagree by the
// observations in flight; the buckets are cumulative and the count is their
// total, as the exposition requires.
type lean struct {
	desc   *prometheus.Desc
	bounds []uint64        // upper bounds in observation units, ascending
	les    []float64       // the same in the exposition's unit
	counts []atomic.Uint64 // per bucket, the last for +Inf
	sum    atomic.Uint64   // in observation units
	unit   float64         // observation units per exposition unit
}

// newLean makes a histogram with the given upper bounds (in the
// exposition's unit) of observations made in units that are 1/unit of it.
func newLean(name, help string, labels prometheus.Labels, les []float64, unit float64) *lean {
	h := &lean{
		desc:   prometheus.NewDesc(name, help, nil, labels),
		les:    les,
		bounds: make([]uint64, len(les)),
		counts: make([]atomic.Uint64, len(les)+1),
		unit:   unit,
	}
	for i, le := range les {
		h.bounds[i] = uint64(math.Floor(le * unit)) // v <= le exactly when v <= floor(le*unit), for integer v
	}
	return h
}

// observe counts v.
func (h *lean) observe(v uint64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(v)
}

// Describe implements prometheus.Collector.
func (h *lean) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

// Collect implements prometheus.Collector.
func (h *lean) Collect(ch chan<- prometheus.Metric) {
	buckets := make(map[float64]uint64, len(h.les))
	var n uint64
	for i, le := range h.les {
		n += h.counts[i].Load()
		buckets[le] = n
	}
	n += h.counts[len(h.les)].Load()
	ch <- prometheus.MustNewConstHistogram(h.desc, n, float64(h.sum.Load())/h.unit, buckets)
}
