package redisrt

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/degenerate/realtime"
)

// redisCalls returns the number of commands Redis has executed.
func redisCalls(c *cluster) int64 {
	info := c.rdb.Info(context.Background(), "commandstats").Val()
	var total int64
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		_, rest, _ := strings.Cut(line, "calls=")
		n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		total += n
	}
	return total
}

// BenchmarkTwoInstanceFanOut applies transactions on instance 0 and
// delivers them to 100 subscribers on each of the two instances (the
// second instance gets them through Redis pub/sub). It reports the time
// per delivered frame (subscribers read in this process too) and the Redis
// commands per transaction, measured with INFO commandstats, which counts
// the commands a script runs as well as the EVALSHA itself.
func BenchmarkTwoInstanceFanOut(b *testing.B) {
	for _, perInstance := range []int{100} {
		b.Run(fmt.Sprintf("subs=2x%d", perInstance), func(b *testing.B) {
			c := newClusterB(b, 1000)
			var delivered atomic.Int64
			var wg sync.WaitGroup
			var conns []*realtime.Conn
			for i := 0; i < 2*perInstance; i++ {
				conn, _, err := realtime.Dial(context.Background(), c.urls[i%2], &realtime.DialOptions{ConnOptions: realtime.ConnOptions{ReadLimit: 1 << 20}})
				if err != nil {
					b.Fatal(err)
				}
				conns = append(conns, conn)
				conn.Write(context.Background(), realtime.MessageText, (&realtime.SubscribeMessage{ShareDataID: "doc"}).AppendJSON(nil))
				conn.Read(context.Background()) // the state
				wg.Add(1)
				go func() {
					defer wg.Done()
					var buf []byte
					for {
						_, msg, err := conn.ReadInto(context.Background(), buf)
						if err != nil {
							return
						}
						buf = msg
						delivered.Add(1)
					}
				}()
			}
			subs := int64(2 * perInstance)
			calls0 := redisCalls(c)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; {
				n := min(20, b.N-i)
				for k := 0; k < n; k++ {
					c.mgr.Apply(context.Background(), "doc", increment, json.RawMessage(`{"by":1}`))
				}
				i += n
				for delivered.Load() < int64(i)*subs {
					time.Sleep(50 * time.Microsecond)
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			calls := redisCalls(c) - calls0 // (the INFO calls add one in b.N)
			b.ReportMetric(float64(elapsed.Nanoseconds())/float64(int64(b.N)*subs), "ns/delivery")
			b.ReportMetric(float64(int64(b.N)*subs)/elapsed.Seconds(), "deliveries/s")
			b.ReportMetric(float64(calls)/float64(b.N), "redis-cmds/tx")
			for _, conn := range conns {
				conn.CloseNow()
			}
			wg.Wait()
		})
	}
}
