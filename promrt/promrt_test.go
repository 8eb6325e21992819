package promrt

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/degenerate/realtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// feed reports a little of everything to m's observer.
func feed(m *Metrics) {
	o := m.Observer()
	o.ConnectionOpened()
	o.ConnectionOpened()
	o.Subscribed(realtime.SubscribeNew)
	o.Subscribed(realtime.SubscribeRecovered)
	o.Subscribed(realtime.SubscribeForbidden)
	o.Unsubscribed()
	o.Proposed(realtime.ProposalReport{FunctionID: "increment", Outcome: realtime.ProposalAccepted, Duration: 3 * time.Millisecond})
	o.Proposed(realtime.ProposalReport{FunctionID: "../../etc/passwd", Outcome: realtime.ProposalUnresolved, Duration: time.Millisecond})
	o.Wrote(realtime.WriteReport{Frames: 3, Bytes: 300, Latency: 2 * time.Millisecond})
	o.Wrote(realtime.WriteReport{Frames: 1, Bytes: 40})
	o.ConnectionClosed(realtime.ConnectionEnd{Code: realtime.CloseFellBehind, Cause: realtime.CauseSlowConsumer})
	o.ConnectionClosed(realtime.ConnectionEnd{Code: 4999, Remote: true, Cause: realtime.CausePeer})
}

// TestMetricValues: each report moves the metric it names, function ids
// and close codes outside the lists are "other", and nothing else becomes
// a label value.
func TestMetricValues(t *testing.T) {
	m := New(&Options{FunctionIDs: []string{"increment"}})
	feed(m)
	for name, want := range map[string]float64{
		"realtime_connections":              0,
		"realtime_connections_opened_total": 2,
		"realtime_subscriptions":            1,
		"realtime_frames_written_total":     4,
		"realtime_written_bytes_total":      340,
	} {
		if got := testutil.ToFloat64(pick(t, m, name)); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	expect := `
# HELP realtime_connections_closed_total WebSocket connections ended, by cause and close code.
# TYPE realtime_connections_closed_total counter
realtime_connections_closed_total{cause="peer",code="other"} 1
realtime_connections_closed_total{cause="slow_consumer",code="4001"} 1
# HELP realtime_proposals_total Propose messages answered, by outcome.
# TYPE realtime_proposals_total counter
`
	var props []string
	for _, fn := range []string{"increment", "other"} {
		for _, out := range []string{"accepted", "disabled", "failed", "forbidden", "outcome_unknown", "rate_limited", "rejected", "timeout", "unresolved"} {
			v := "0"
			if fn == "increment" && out == "accepted" || fn == "other" && out == "unresolved" {
				v = "1"
			}
			props = append(props, `realtime_proposals_total{function="`+fn+`",outcome="`+out+`"} `+v)
		}
	}
	expect += strings.Join(props, "\n") + "\n"
	if err := testutil.CollectAndCompare(m, strings.NewReader(expect), "realtime_connections_closed_total", "realtime_proposals_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m, "realtime_delivery_latency_seconds"); n != 1 {
		t.Errorf("%d latency series", n)
	}
	// The write without a transaction frame is not a latency sample.
	mf := gather(t, m)["realtime_delivery_latency_seconds"]
	if h := mf.GetMetric()[0].GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != 0.002 {
		t.Errorf("latency histogram: %d samples, sum %v; want 1, 0.002", h.GetSampleCount(), h.GetSampleSum())
	}
	mf = gather(t, m)["realtime_write_batch_frames"]
	if h := mf.GetMetric()[0].GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() != 4 {
		t.Errorf("batch histogram: %d samples, sum %v; want 2, 4", h.GetSampleCount(), h.GetSampleSum())
	}
}

// TestOptions: without FunctionIDs the proposal metrics have no function
// label; CloseCodes shows an application's code by number; the namespace
// and constant labels apply to every metric.
func TestOptions(t *testing.T) {
	m := New(&Options{Namespace: "rt", CloseCodes: []realtime.CloseCode{4999}, ConstLabels: prometheus.Labels{"instance_name": "a"}})
	feed(m)
	expect := `
# HELP rt_connections_closed_total WebSocket connections ended, by cause and close code.
# TYPE rt_connections_closed_total counter
rt_connections_closed_total{cause="peer",code="4999",instance_name="a"} 1
rt_connections_closed_total{cause="slow_consumer",code="4001",instance_name="a"} 1
# HELP rt_proposals_total Propose messages answered, by outcome.
# TYPE rt_proposals_total counter
rt_proposals_total{instance_name="a",outcome="accepted"} 1
rt_proposals_total{instance_name="a",outcome="disabled"} 0
rt_proposals_total{instance_name="a",outcome="failed"} 0
rt_proposals_total{instance_name="a",outcome="forbidden"} 0
rt_proposals_total{instance_name="a",outcome="outcome_unknown"} 0
rt_proposals_total{instance_name="a",outcome="rate_limited"} 0
rt_proposals_total{instance_name="a",outcome="rejected"} 0
rt_proposals_total{instance_name="a",outcome="timeout"} 0
rt_proposals_total{instance_name="a",outcome="unresolved"} 1
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(expect), "rt_connections_closed_total", "rt_proposals_total"); err != nil {
		t.Error(err)
	}
	for name, mf := range gather(t, m) {
		if !strings.HasPrefix(name, "rt_") {
			t.Errorf("metric %s outside the namespace", name)
		}
		for _, x := range mf.GetMetric() {
			found := false
			for _, l := range x.GetLabel() {
				found = found || l.GetName() == "instance_name" && l.GetValue() == "a"
			}
			if !found {
				t.Errorf("%s without the constant label", name)
			}
		}
	}
}

// TestLint: the exposition passes the checks of promtool check metrics
// (promlint, the package promtool runs): names, units, suffixes and help
// texts.
func TestLint(t *testing.T) {
	for _, opts := range []*Options{nil, {FunctionIDs: []string{"increment", "set"}}} {
		m := New(opts)
		feed(m)
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(m)
		problems, err := testutil.GatherAndLint(reg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

// pick returns the metric of m named name.
func pick(t *testing.T, m *Metrics, name string) prometheus.Collector {
	t.Helper()
	for _, c := range m.collector {
		ch := make(chan *prometheus.Desc, 10)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			if strings.Contains(d.String(), `fqName: "`+name+`"`) {
				return c
			}
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func gather(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestLeanBuckets: an observation equal to a bucket's upper bound counts
// in that bucket (le is inclusive), one unit more in the next; the
// buckets are cumulative, +Inf holds the count, and the sum is in the
// exposition's unit.
func TestLeanBuckets(t *testing.T) {
	h := newLean("x_seconds", "x.", nil, []float64{0.001, 0.0025, 1}, float64(time.Second))
	for _, d := range []time.Duration{time.Millisecond, time.Millisecond + 1, 2500 * time.Microsecond, time.Second, time.Second + 1, time.Hour} {
		h.observe(uint64(d))
	}
	mf := gather(t, h)["x_seconds"]
	hist := mf.GetMetric()[0].GetHistogram()
	var got []string
	for _, b := range hist.GetBucket() {
		got = append(got, fmt.Sprintf("%v:%d", b.GetUpperBound(), b.GetCumulativeCount()))
	}
	if s := strings.Join(got, " "); s != "0.001:1 0.0025:3 1:4" {
		t.Errorf("buckets %s, want 0.001:1 0.0025:3 1:4", s)
	}
	wantSum := (time.Millisecond + time.Millisecond + 1 + 2500*time.Microsecond + time.Second + time.Second + 1 + time.Hour).Seconds()
	if hist.GetSampleCount() != 6 || hist.GetSampleSum() != wantSum {
		t.Errorf("count %d, sum %v; want 6, %v", hist.GetSampleCount(), hist.GetSampleSum(), wantSum)
	}
}
