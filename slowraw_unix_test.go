//go:build unix

package realtime

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// dialSlowRaw connects a raw client with a 4 KiB receive buffer, subscribes
// it to "doc" and returns it without reading, so the server's writes to it
// soon block on TCP flow control.
func dialSlowRaw(t *testing.T, rs *rtServer) *rawClient {
	t.Helper()
	rc := dialStalled(t, rs)
	rc.send(fText, (&SubscribeMessage{ShareDataID: "doc"}).AppendJSON(nil))
	if f := rc.mustRead(); f.op() != opText {
		t.Fatalf("got %s", f.op())
	}
	return rc
}

// TestBlockedRealPeerHurtsOnlyItself: a real subscriber that stops reading
// while transactions flow fills its socket until the server's writer to it
// blocks; the heartbeat goes on pinging honest idle clients every interval
// and closes the blocked one for not answering.
func TestBlockedRealPeerHurtsOnlyItself(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{HeartbeatInterval: 100 * time.Millisecond, MaxBufferedBytes: 64 << 20})
	dialSlowRaw(t, rs) // subscribed to doc, never reads again
	set, _ := rs.mgr.Function("doc", "set")
	big := json.RawMessage(`"` + strings.Repeat("x", 8<<10) + `"`)
	for i := 0; i < 300; i++ { // about 5 MiB of frames, far past the socket buffers
		if _, err := rs.mgr.Apply(context.Background(), "doc", set, big); err != nil {
			t.Fatal(err)
		}
	}
	for i, err := range honestIdleClients(t, rs.hs, 4, 10, func() {}) {
		if err != nil {
			t.Fatalf("honest client %d: %v", i, err)
		}
	}
	waitFor(t, func() bool { return rs.Stats().HeartbeatCloses == 1 })
	if s := rs.Stats(); s.SlowConsumerCloses != 0 || s.Connections != 4 {
		t.Fatalf("stats %+v", s)
	}
}

// TestDisconnectDropsQueuedFrames: a revoked user gets nothing more. A
// subscriber that stopped reading has megabytes queued when Disconnect
// closes it; once it reads again it finds what was already in the socket
// buffers, at most one more write's worth, then the close frame with the
// code Disconnect gave: the queued frames were dropped, not drained.
func TestDisconnectDropsQueuedFrames(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{HeartbeatInterval: -1, MaxBufferedBytes: 64 << 20})
	slow := dialSlowRaw(t, rs) // subscribed to doc, reads nothing more for now
	set, _ := rs.mgr.Function("doc", "set")
	big := json.RawMessage(`"` + strings.Repeat("x", 8<<10) + `"`) // frames of about 16 KiB
	const applied = 600                                            // about 10 MiB, past the socket buffers
	for i := 0; i < applied; i++ {
		if _, err := rs.mgr.Apply(context.Background(), "doc", set, big); err != nil {
			t.Fatal(err)
		}
	}
	var sess *session
	rs.mu.RLock()
	for s := range rs.sessions {
		sess = s
	}
	rs.mu.RUnlock()
	// Every frame is queued or written once the last Apply returned (the
	// fan-out is synchronous); the writer is blocked on the full socket.
	sess.mu.Lock()
	queued := sess.queued
	sess.mu.Unlock()
	frameLen := 16 << 10
	if queued < 4<<20 {
		t.Fatalf("only %d bytes queued; the test needs a backlog", queued)
	}
	if n, err := rs.Disconnect(func(any) bool { return true }, 4010, "revoked"); n != 1 || err != nil {
		t.Fatalf("Disconnect: %d, %v", n, err)
	}
	received := 0
	for {
		f, err := slow.readFrame()
		if err != nil {
			t.Fatalf("after %d transactions: %v before the close frame", received, err)
		}
		if f.op() == opClose {
			if code := CloseCode(int(f.payload[0])<<8 | int(f.payload[1])); code != 4010 {
				t.Fatalf("closed with %s", code)
			}
			break
		}
		received++
	}
	// What was queued is at least queued/frameLen frames (each a little
	// over 16 KiB); of them, one write of at most maxWriteBatch may have
	// been under way.
	notQueued := applied - queued/(frameLen+1024)
	if limit := notQueued + maxWriteBatch/frameLen + 1; received > limit {
		t.Fatalf("received %d of %d transactions after Disconnect with %d bytes queued; want at most %d", received, applied, queued, limit)
	}
	t.Logf("received %d of %d; %d bytes were queued", received, applied, queued)
}

// dialStalled connects a raw client with a 4 KiB receive buffer and
// returns it after the handshake, for a test that then stops reading.
func dialStalled(t *testing.T, rs *rtServer) *rawClient {
	t.Helper()
	d := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return serr
	}}
	nc, err := d.Dial("tcp", rs.hs.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := nc.Write([]byte(handshakeRequest(rs.hs.Listener.Addr().String()))); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake: %v", err)
	}
	return &rawClient{t: t, nc: nc, br: br}
}

// TestResubscribeEndsReplayFeeder: a client that stops reading and
// subscribes with since over and over leaves no replay feeder behind: the
// feeder of a superseded subscription ends at once, with what it held,
// instead of waiting for a queue that never drains (2,000 re-subscribes
// held 2,000 goroutines and 150 MB until the write timeout).
func TestResubscribeEndsReplayFeeder(t *testing.T) {
	var subscribed atomic.Int64
	rs := newRTServer(t, &ServerOptions{
		Observer: Observer{Subscribed: func(SubscribeOutcome) { subscribed.Add(1) }}})
	// Large proposals, a small state: the replay is large, the state
	// frame each subscribe queues is not.
	note := Function{ID: "note", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) { return cur, nil }}
	big := json.RawMessage(`"` + strings.Repeat("x", 60<<10) + `"`)
	var first string
	for i := 0; i < 100; i++ { // a window of 100 transactions of 60 KiB, past the socket buffers
		tx, err := rs.mgr.Apply(context.Background(), "doc", note, big)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = tx.ID
		}
	}
	rc := dialStalled(t, rs)
	sub := (&SubscribeMessage{ShareDataID: "doc", Since: first, HasSince: true}).AppendJSON(nil)
	rc.send(fText, sub)
	waitFor(t, func() bool { return subscribed.Load() == 1 })
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	base := runtime.NumGoroutine()
	const resubscribes = 500
	for i := 0; i < resubscribes; i++ {
		rc.send(fText, sub)
	}
	waitFor(t, func() bool { return subscribed.Load() == 1+resubscribes })
	// Each superseded feeder ends as its subscription does; the one left
	// feeds the last subscription.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := runtime.NumGoroutine()
	t.Logf("after %d re-subscribes: %+d goroutines, %+d KiB of heap", resubscribes, n-base, (int64(after.HeapInuse)-int64(before.HeapInuse))>>10)
	if n > base+2 {
		t.Fatalf("%d goroutines more after %d re-subscribes of a stalled connection", n-base, resubscribes)
	}
}
