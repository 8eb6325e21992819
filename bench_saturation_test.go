//go:build unix

package realtime

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSaturation ramps the publish rate to subscribers in another
// process (the swarm) until delivery latency passes a bound or a step does
// not drain, for the server and for the bare baseline of BenchmarkFanOut
// at the same frame bytes, in the same run, in alternating rounds (5, or
// REALTIME_SATURATION_ROUNDS):
//
//	go test -run=NONE -bench=Saturation -benchtime=1x .
//
// After the rounds at each number of subscribers it prints the median and
// range of both and the ratio of the medians.
//
// Each step publishes at a fixed rate for one second. The rate grows by a
// quarter per step until a step is not sustained, then by 8 % from the
// last sustained one until another is not, so the figure resolves
// differences of 8 %. The latency of a transaction is the time from its
// publish until the swarm has read as many frames as every subscriber
// receiving it requires (polled every millisecond, so resolution is 1 ms).
// A step is sustained when it drains within 500 ms (plus the bound) and its
// p99 is at most 50 ms per 1,000 subscribers (one transaction's frames to
// 5,000 take tens of milliseconds to write on two cores, for the baseline
// too). It reports, for the last sustained step: deliveries/s, this
// process's CPU per delivery (the server's alone), and p50 and p99
// latency. Compare ratios between the two contenders of one run; the
// machine is shared and noisy.
func BenchmarkSaturation(b *testing.B) {
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("REALTIME_SATURATION_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for _, subs := range []int{1000, 5000} {
		var ours, bare []float64
		for round := 0; round < rounds; round++ {
			// The contenders alternate, so a slow spell of the machine
			// falls on both.
			b.Run(fmt.Sprintf("realtime/subs=%d", subs), func(b *testing.B) {
				rt := startRealtimeFanOut(b, subs, fanOutConfig{})
				defer rt.stop()
				ours = append(ours, saturate(b, subs, rt.sw, rt.broadcast))
			})
			b.Run(fmt.Sprintf("baseline/subs=%d", subs), func(b *testing.B) {
				bl := startBaseline(b, subs)
				defer bl.stop()
				bare = append(bare, saturate(b, subs, bl.sw, bl.broadcast))
			})
		}
		if len(ours) == rounds && len(bare) == rounds {
			// On stdout: a parent benchmark's log is not printed.
			fmt.Printf("saturation subs=%d, %d rounds: realtime %s, baseline %s deliveries/s; ratio of medians %.2f\n",
				subs, rounds, spread(ours), spread(bare), median(ours)/median(bare))
		}
	}
}

// median returns the middle of xs (the mean of the middle two when even).
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread formats xs as "median (min-max)".
func spread(xs []float64) string {
	return fmt.Sprintf("%.0f (%.0f-%.0f)", median(xs), slices.Min(xs), slices.Max(xs))
}

// saturate runs the ramp against publish, reporting the last sustained
// step, and returns its deliveries/s.
func saturate(b *testing.B, subs int, sw *swarm, publish func(i int)) float64 {
	// Reaching every subscriber of one transaction takes time in
	// proportion to their number: 50 ms of p99 per 1,000 of them.
	bound := time.Duration(max(1, subs/1000)) * 50 * time.Millisecond
	startRate := 50_000.0 // deliveries per second
	if v, err := strconv.ParseFloat(os.Getenv("REALTIME_SATURATION_START"), 64); err == nil && v > 0 {
		startRate = v
	}
	published := 0
	base := sw.delivered()
	var best struct {
		rate, cpuNs, p50, p99 float64
		ok                    bool
	}
	b.ResetTimer()
	// Steps grow by a quarter until one is not sustained, then by 8 % from
	// the last sustained one, so the figure resolves differences of 8 %.
	factor := 1.25
	for rate := startRate; ; rate *= factor {
		txPerSec := rate / float64(subs)
		n := max(1, int(txPerSec)) // one second of publishing
		interval := time.Duration(float64(time.Second) / txPerSec)
		sent := make([]atomic.Int64, n) // publish times, UnixNano; 0: not yet
		lat := make([]time.Duration, 0, n)
		first := published
		cpu0 := cpuTime()
		start := time.Now()
		done := make(chan struct{})
		go func() { // the latency monitor: which transactions every subscriber has read
			defer close(done)
			next := 0
			deadline := start.Add(time.Duration(n)*interval + 500*time.Millisecond + bound)
			for next < n && time.Now().Before(deadline) {
				got := sw.delivered() - base
				now := time.Now()
				for next < n && got >= int64(first+next+1)*int64(subs) {
					at := sent[next].Load()
					if at == 0 {
						break // counted frames of a transaction not yet published: a miscount
					}
					lat = append(lat, now.Sub(time.Unix(0, at)))
					next++
				}
				time.Sleep(time.Millisecond)
			}
		}()
		for k := 0; k < n; k++ {
			if d := time.Until(start.Add(time.Duration(k) * interval)); d > 0 {
				time.Sleep(d)
			}
			sent[k].Store(time.Now().UnixNano())
			publish(published)
			published++
		}
		<-done
		cpu := cpuTime() - cpu0
		deliveries := float64(n) * float64(subs)
		drained := len(lat) == n
		slices.Sort(lat)
		var p50, p99 time.Duration
		if len(lat) > 0 {
			p50, p99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
		}
		if !drained || p99 > bound {
			b.Logf("%.0f deliveries/s: not sustained (drained %d of %d, p99 %v)", rate, len(lat), n, p99)
			// Let the backlog go before the next step, contender or round.
			for sw.delivered()-base < int64(published)*int64(subs) {
				time.Sleep(10 * time.Millisecond)
			}
			if factor == 1.25 && best.ok {
				factor = 1.08
				rate = best.rate // the next step is 8 % above it
				continue
			}
			break
		}
		best.rate, best.cpuNs, best.p50, best.p99, best.ok = rate, float64(cpu.Nanoseconds())/deliveries, float64(p50)/1e6, float64(p99)/1e6, true
		b.Logf("%.0f deliveries/s: sustained, p50 %v p99 %v, %.0f ns CPU per delivery", rate, p50, p99, best.cpuNs)
	}
	b.StopTimer()
	if !best.ok {
		b.Fatalf("not even %.0f deliveries/s sustained; lower REALTIME_SATURATION_START", startRate)
	}
	b.ReportMetric(best.rate, "max-deliveries/s")
	b.ReportMetric(best.cpuNs, "cpu-ns/delivery")
	b.ReportMetric(best.p50, "p50-ms")
	b.ReportMetric(best.p99, "p99-ms")
	return best.rate
}
