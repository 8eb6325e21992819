//go:build unix

package realtime

import (
	"context"
	"fmt"
	"net"
	"testing"
)

// BenchmarkEcho measures one round trip per op over loopback TCP: a client
// Conn writes a message and a server Conn, reading as the server's read
// loop does (waitReadable, then ReadInto), writes it back. It reports the
// process's CPU time per round trip (both ends are in this process).
//
//	go test -run=NONE -bench=Echo .
func BenchmarkEcho(b *testing.B) {
	for _, n := range []int{64, 16 << 10} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ctx := context.Background()
			nc, stop := dialPeer(b, func(nc net.Conn) {
				srv := newConn(nc, false, "", ConnOptions{ReadLimit: 1 << 20}, nil)
				var buf []byte
				for {
					srv.waitReadable()
					typ, msg, err := srv.ReadInto(ctx, buf)
					if err != nil {
						return
					}
					buf = msg[:0]
					if err := srv.Write(ctx, typ, msg); err != nil {
						return
					}
				}
			})
			defer stop()
			cl := newConn(nc, true, "", ConnOptions{ReadLimit: 1 << 20}, nil)
			msg := payloadOf(n)
			buf := make([]byte, 0, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := cl.Write(ctx, MessageBinary, msg); err != nil {
					b.Fatal(err)
				}
				if _, _, err := cl.ReadInto(ctx, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}
