package redisrt

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/degenerate/realtime"
)

// BenchmarkTwoProcessesHotItem: two instance processes over one Redis,
// two proposers on each proposing to the same item as fast as answers
// come, and ten subscribers on each. It reports accepted applies per
// second, the conflict retries per accepted apply (another instance
// committed between a read and its script), and deliveries per second to
// the twenty subscribers.
func BenchmarkTwoProcessesHotItem(b *testing.B) {
	prefix := uniquePrefix(b)
	a, c := startInstance(b, redisAddr, prefix), startInstance(b, redisAddr, prefix)
	var delivered atomic.Int64
	for _, in := range []*instance{a, c} {
		for range 10 {
			cl := processClient(b, in.url())
			sub, err := cl.Subscribe("doc", nil)
			if err != nil {
				b.Fatal(err)
			}
			go func() {
				for m := range sub.Messages() {
					if _, ok := m.(*realtime.TransactionMessage); ok {
						delivered.Add(1)
					}
				}
			}()
		}
	}
	var proposers []*realtime.Client
	for _, in := range []*instance{a, c} {
		for range 2 {
			proposers = append(proposers, processClient(b, in.url()))
		}
	}
	time.Sleep(200 * time.Millisecond) // let the subscriptions join
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for _, p := range proposers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, err := p.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	want := int64(b.N) * 20
	for delivered.Load() < want && time.Since(start) < time.Minute {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	conflicts := a.stop() + c.stop()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "applies/s")
	b.ReportMetric(float64(conflicts)/float64(b.N), "retries/apply")
	b.ReportMetric(float64(delivered.Load())/elapsed.Seconds(), "deliveries/s")
}
