//go:build !race

package promrt

import (
	"testing"
	"time"

	"github.com/degenerate/realtime"
)

// TestObserverAllocs: the reports a server makes per write, per proposal
// and per connection allocate nothing once the label values were seen, so
// the metrics keep the server's fan-out free of allocations per delivery.
// (The race detector allocates on its own; test.sh runs this without it.)
func TestObserverAllocs(t *testing.T) {
	m := New(&Options{FunctionIDs: []string{"increment"}})
	o := m.Observer()
	end := realtime.ConnectionEnd{Code: realtime.CloseFellBehind, Cause: realtime.CauseSlowConsumer}
	o.ConnectionClosed(end) // the first of a cause and code makes its series
	for name, f := range map[string]func(){
		"Wrote": func() { o.Wrote(realtime.WriteReport{Frames: 3, Bytes: 300, Latency: time.Millisecond}) },
		"Proposed": func() {
			o.Proposed(realtime.ProposalReport{FunctionID: "evil", Outcome: realtime.ProposalRejected, Duration: time.Millisecond})
		},
		"ConnectionOpened": func() { o.ConnectionOpened() },
		"ConnectionClosed": func() { o.ConnectionClosed(end) },
		"Subscribed":       func() { o.Subscribed(realtime.SubscribeRecovered) },
		"Unsubscribed":     func() { o.Unsubscribed() },
	} {
		if a := testing.AllocsPerRun(1000, f); a != 0 {
			t.Errorf("%s: %v allocs per report", name, a)
		}
	}
}

// BenchmarkObserverWrote is the cost the metrics add to each write to a
// connection (a server calls Wrote once per batch of frames written).
func BenchmarkObserverWrote(b *testing.B) {
	o := New(nil).Observer()
	r := realtime.WriteReport{Frames: 1, Bytes: 120, Latency: 300 * time.Microsecond}
	b.ReportAllocs()
	for b.Loop() {
		o.Wrote(r)
	}
}

// BenchmarkObserverWroteParallel is the same with writers on every core
// reporting at once, as at saturation: they share the metrics' counters.
func BenchmarkObserverWroteParallel(b *testing.B) {
	o := New(nil).Observer()
	r := realtime.WriteReport{Frames: 1, Bytes: 120, Latency: 300 * time.Microsecond}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			o.Wrote(r)
		}
	})
}
