// Package promrt turns what a realtime.Server reports (its Observer) into
// Prometheus metrics, with the conventional names and units and labels that
// stay bounded whatever the clients send.
//
//	m := promrt.New(nil)
//	prometheus.MustRegister(m)
//	srv := realtime.NewServer(mgr, &realtime.ServerOptions{Observer: m.Observer()})
//	mux.Handle("/metrics", promhttp.Handler())
//
// The metrics, with the default namespace "realtime":
//
//	realtime_connections                       gauge      open now
//	realtime_connections_opened_total          counter
//	realtime_connections_closed_total          counter    cause, code
//	realtime_subscriptions                     gauge      active now
//	realtime_subscribes_total                  counter    outcome
//	realtime_proposals_total                   counter    outcome [, function]
//	realtime_proposal_duration_seconds         histogram  [function]
//	realtime_frames_written_total              counter
//	realtime_written_bytes_total               counter
//	realtime_write_batch_frames                histogram  frames per write: the queue depth
//	realtime_delivery_latency_seconds          histogram  event received to frame written
//
// Label values: cause is a realtime.CloseCause ("peer", "slow_consumer",
// "heartbeat", ...); code is the close code's number for the codes of RFC
// 6455 and of the realtime protocol (4001-4004) and for Options.CloseCodes,
// and "other" for any other code a client chose; outcome is a
// realtime.SubscribeOutcome or realtime.ProposalOutcome. The function label
// exists only when Options.FunctionIDs lists function ids, and holds one of
// them or "other". No share data id is ever a label value.
//
// Cost: every report updates atomic counters and histogram buckets of
// metrics resolved in advance; none allocates, so the server's fan-out
// still allocates nothing per delivery. The two histograms fed on every
// write (write_batch_frames, delivery_latency_seconds) are leaner than
// client_golang's: two atomic additions an observation, about 60 ns a
// write for all four metrics (BenchmarkObserverWrote).
package promrt

import (
	"strconv"
	"time"

	"github.com/degenerate/realtime"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure the metrics. The zero value (or nil) gives the
// defaults.
type Options struct {
	// Namespace is the first part of every metric name. Empty means
	// "realtime".
	Namespace string

	// FunctionIDs are the function ids that get their own value of the
	// "function" label on the proposal metrics; a proposal of any other id
	// (clients choose the id they send) counts as "other". Empty means the
	// proposal metrics have no function label.
	FunctionIDs []string

	// CloseCodes are close codes, beyond those of RFC 6455 and the
	// realtime protocol, that the code label shows by number: the codes
	// your server passes to Disconnect. Any other code counts as "other".
	CloseCodes []realtime.CloseCode

	// LatencyBuckets are the upper bounds, in seconds, of the delivery
	// latency histogram. Nil means 100 µs to 10 s, three per decade.
	LatencyBuckets []float64

	// ProposalBuckets are the upper bounds, in seconds, of the proposal
	// duration histogram. Nil means the same as LatencyBuckets' default.
	ProposalBuckets []float64

	// ConstLabels are added to every metric (an instance name, say).
	ConstLabels prometheus.Labels
}

// defaultBuckets is 100 µs to 10 s, three steps a decade (1, 2.5, 5).
var defaultBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// batchBuckets are the frames-per-write bounds: powers of two to 1,024.
var batchBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}

// otherLabel is the label value of the ids and codes not listed.
const otherLabel = "other"

// Metrics is a prometheus.Collector of one or more servers' events. Make
// it with New, register it, and give its Observer to each server.
type Metrics struct {
	connections     prometheus.Gauge
	opened          prometheus.Counter
	closed          *prometheus.CounterVec
	subscriptions   prometheus.Gauge
	subscribes      *prometheus.CounterVec
	proposals       *prometheus.CounterVec
	proposalSeconds *prometheus.HistogramVec
	frames          prometheus.Counter
	bytes           prometheus.Counter
	batch           *lean // per write: a Prometheus histogram costs twice as much
	latency         *lean

	codes     map[realtime.CloseCode]string // label value of each code shown by number
	functions map[string]bool               // nil: no function label
	subs      map[realtime.SubscribeOutcome]prometheus.Counter
	props     map[propKey]prometheus.Counter // every outcome x function label value
	durations map[string]prometheus.Observer // by function label value ("" without the label)
	collector []prometheus.Collector
}

type propKey struct {
	outcome  realtime.ProposalOutcome
	function string
}

// New returns the metrics, all at zero.
func New(opts *Options) *Metrics {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Namespace == "" {
		o.Namespace = "realtime"
	}
	if o.LatencyBuckets == nil {
		o.LatencyBuckets = defaultBuckets
	}
	if o.ProposalBuckets == nil {
		o.ProposalBuckets = defaultBuckets
	}
	ns, cl := o.Namespace, o.ConstLabels
	m := &Metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "connections", ConstLabels: cl,
			Help: "WebSocket connections open now."}),
		opened: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "connections_opened_total", ConstLabels: cl,
			Help: "WebSocket connections accepted."}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_closed_total", ConstLabels: cl,
			Help: "WebSocket connections ended, by cause and close code."}, []string{"cause", "code"}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "subscriptions", ConstLabels: cl,
			Help: "Subscriptions to share data active now."}),
		subscribes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "subscribes_total", ConstLabels: cl,
			Help: "Subscribe messages, by outcome."}, []string{"outcome"}),
		frames: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "frames_written_total", ConstLabels: cl,
			Help: "WebSocket data frames written to connections."}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "written_bytes_total", ConstLabels: cl,
			Help: "Bytes of the data frames written to connections."}),
		batch: newLean(prometheus.BuildFQName(ns, "", "write_batch_frames"),
			"Frames per write to a connection: its queue depth when its writer took them.", cl, batchBuckets, 1),
		latency: newLean(prometheus.BuildFQName(ns, "", "delivery_latency_seconds"),
			"Time from an event reaching the server to the end of the write of its frame, for the oldest event frame of each write.",
			cl, o.LatencyBuckets, float64(time.Second)),
		codes: make(map[realtime.CloseCode]string),
		subs:  make(map[realtime.SubscribeOutcome]prometheus.Counter),
		props: make(map[propKey]prometheus.Counter),
	}
	propLabels, durLabels := []string{"outcome"}, []string(nil)
	fnValues := []string{""}
	if len(o.FunctionIDs) > 0 {
		propLabels, durLabels = []string{"outcome", "function"}, []string{"function"}
		m.functions = make(map[string]bool, len(o.FunctionIDs))
		fnValues = fnValues[:0]
		for _, id := range o.FunctionIDs {
			if !m.functions[id] {
				m.functions[id] = true
				fnValues = append(fnValues, id)
			}
		}
		fnValues = append(fnValues, otherLabel)
	}
	m.proposals = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "proposals_total", ConstLabels: cl,
		Help: "Propose messages answered, by outcome."}, propLabels)
	m.proposalSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "proposal_duration_seconds", ConstLabels: cl,
		Help:    "Time from a propose message's decoding to its reply being queued: authorization, resolving and applying.",
		Buckets: o.ProposalBuckets}, durLabels)

	// Every label value but the close codes is known now: resolve them
	// all, so that the reports only update numbers (and every series
	// shows from the first scrape, at zero).
	for _, out := range []realtime.SubscribeOutcome{realtime.SubscribeNew, realtime.SubscribeRecovered,
		realtime.SubscribeCursorNotFound, realtime.SubscribeForbidden, realtime.SubscribeLimit,
		realtime.SubscribeUnknown, realtime.SubscribeFailed} {
		m.subs[out] = m.subscribes.WithLabelValues(string(out))
	}
	m.durations = make(map[string]prometheus.Observer, len(fnValues))
	for _, fn := range fnValues {
		for _, out := range []realtime.ProposalOutcome{realtime.ProposalAccepted, realtime.ProposalForbidden,
			realtime.ProposalDisabled, realtime.ProposalUnresolved, realtime.ProposalRejected, realtime.ProposalOutcomeUnknown, realtime.ProposalRateLimited, realtime.ProposalFailed, realtime.ProposalTimedOut} {
			lv := []string{string(out)}
			if m.functions != nil {
				lv = append(lv, fn)
			}
			m.props[propKey{out, fn}] = m.proposals.WithLabelValues(lv...)
		}
		if m.functions != nil {
			m.durations[fn] = m.proposalSeconds.WithLabelValues(fn)
		} else {
			m.durations[fn] = m.proposalSeconds.WithLabelValues()
		}
	}
	for c := realtime.CloseNormalClosure; c <= realtime.CloseTLSHandshake; c++ {
		m.codes[c] = strconv.Itoa(int(c))
	}
	for _, c := range append([]realtime.CloseCode{realtime.CloseFellBehind, realtime.CloseUnauthorized,
		realtime.CloseUnknownShareData, realtime.CloseInvalidMessage}, o.CloseCodes...) {
		m.codes[c] = strconv.Itoa(int(c))
	}
	m.collector = []prometheus.Collector{m.connections, m.opened, m.closed, m.subscriptions, m.subscribes,
		m.proposals, m.proposalSeconds, m.frames, m.bytes, m.batch, m.latency}
	return m
}

// Describe sends the descriptors of every metric (prometheus.Collector).
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collector {
		c.Describe(ch)
	}
}

// Collect sends the current value of every metric (prometheus.Collector).
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collector {
		c.Collect(ch)
	}
}

// Observer returns the hooks that feed the metrics, for
// realtime.ServerOptions.Observer. Several servers may share them; their
// numbers add up.
func (m *Metrics) Observer() realtime.Observer {
	return realtime.Observer{
		ConnectionOpened: m.connectionOpened,
		ConnectionClosed: m.connectionClosed,
		Subscribed:       m.subscribed,
		Unsubscribed:     m.subscriptions.Dec,
		Proposed:         m.proposed,
		Wrote:            m.wrote,
	}
}

func (m *Metrics) connectionOpened() {
	m.opened.Inc()
	m.connections.Inc()
}

func (m *Metrics) connectionClosed(e realtime.ConnectionEnd) {
	m.connections.Dec()
	code, ok := m.codes[e.Code]
	if !ok {
		code = otherLabel
	}
	// The causes are few and the codes bounded, so the children are
	// created as they are first seen; WithLabelValues finds them after.
	m.closed.WithLabelValues(string(e.Cause), code).Inc()
}

func (m *Metrics) subscribed(o realtime.SubscribeOutcome) {
	switch o {
	case realtime.SubscribeNew, realtime.SubscribeRecovered, realtime.SubscribeCursorNotFound:
		m.subscriptions.Inc() // Unsubscribed will match it
	}
	if c := m.subs[o]; c != nil {
		c.Inc()
	}
}

func (m *Metrics) proposed(p realtime.ProposalReport) {
	fn := ""
	if m.functions != nil {
		fn = otherLabel
		if m.functions[p.FunctionID] {
			fn = p.FunctionID
		}
	}
	if c := m.props[propKey{p.Outcome, fn}]; c != nil {
		c.Inc()
	}
	m.durations[fn].Observe(p.Duration.Seconds())
}

func (m *Metrics) wrote(w realtime.WriteReport) {
	m.frames.Add(float64(w.Frames))
	m.bytes.Add(float64(w.Bytes))
	m.batch.observe(uint64(w.Frames))
	if w.Latency > 0 {
		m.latency.observe(uint64(w.Latency))
	}
}
