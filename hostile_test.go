package realtime

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The attacks of an outsider with a raw socket, each answered as a careful
// server must: with a close code or an HTTP status, and without harm to
// the server's memory or to other connections.

// overflowShape is the start of a message that passed the read limit by
// overflowing the limit check: one byte of text without FIN, then a
// continuation frame announcing 2^63-1 bytes.
func overflowShape() []byte {
	b := frame(byte(opText), true, []byte("x"))
	var hdr [14]byte
	hdr[0], hdr[1] = fCont, maskBit|127
	binary.BigEndian.PutUint64(hdr[2:10], 1<<63-1)
	copy(hdr[10:], []byte{1, 2, 3, 4})
	return append(b, hdr[:]...)
}

func TestHostileReadLimitOverflow(t *testing.T) {
	srv, errs := echoServer(t, nil) // the default 64 KiB limit
	rc := connectRaw(t, srv)
	rc.sendRaw(overflowShape())
	rc.sendRaw(payloadOf(4096))
	reason := rc.expectClose(CloseMessageTooBig)
	if reason != "message exceeds the read limit of 65536 bytes" {
		t.Fatalf("reason %q", reason)
	}
	expectServerErr(t, errs, CloseMessageTooBig)

	// Announced lengths that add up past the limit by one byte and by a
	// lot.
	for _, second := range []int64{65536, 1 << 40, 1<<62 + 1, 1<<63 - 1} {
		rc := connectRaw(t, srv)
		rc.sendRaw(frame(byte(opBinary), true, []byte("x")))
		var hdr [14]byte
		hdr[0], hdr[1] = fCont, maskBit|127
		binary.BigEndian.PutUint64(hdr[2:10], uint64(second))
		rc.sendRaw(hdr[:])
		rc.expectClose(CloseMessageTooBig)
	}
	// Exactly at the limit in two fragments is a message.
	rc = connectRaw(t, srv)
	rc.send(byte(opBinary), payloadOf(1))
	rc.send(fCont, payloadOf(65535))
	rc.expectFrame(fBinary, payloadOf(65536))
}

// TestHostileOverflowStreamMemory streams 256 MiB at the server behind the
// overflow shape and measures what the server allocated meanwhile: the
// connection is failed at the second header, so the server's allocations
// stay within a small bound instead of following the stream.
func TestHostileOverflowStreamMemory(t *testing.T) {
	srv, errs := echoServer(t, nil)
	rc := connectRaw(t, srv)
	chunk := payloadOf(1 << 20)
	closed := make(chan rawFrame, 1)
	go func() {
		// The server's close frame arrives while the stream goes on.
		for {
			f, err := rc.readFrame()
			if err != nil {
				close(closed)
				return
			}
			if f.op() == opClose {
				closed <- f
				return
			}
		}
	}()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	rc.nc.SetWriteDeadline(time.Now().Add(60 * time.Second))
	sent := int64(0)
	if _, err := rc.nc.Write(overflowShape()); err != nil {
		t.Fatal(err)
	}
	for sent < 256<<20 {
		n, err := rc.nc.Write(chunk)
		sent += int64(n)
		if err != nil {
			break // the server closed the connection: the rest is refused
		}
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("streamed %d MiB before the server cut the connection; the process allocated %d KiB meanwhile, heap in use %d -> %d KiB",
		sent>>20, allocated>>10, before.HeapInuse>>10, after.HeapInuse>>10)
	// The whole process (this test's reader included) allocated less than
	// the bytes of eight chunks.
	if allocated > 8<<20 {
		t.Fatalf("the process allocated %d MiB while %d MiB were streamed at the server", allocated>>20, sent>>20)
	}
	if after.HeapInuse > before.HeapInuse+8<<20 {
		t.Fatalf("heap in use grew from %d to %d MiB", before.HeapInuse>>20, after.HeapInuse>>20)
	}
	f, ok := <-closed
	if !ok {
		t.Fatal("no close frame from the server")
	}
	if code := StatusCode(binary.BigEndian.Uint16(f.payload)); code != CloseMessageTooBig {
		t.Fatalf("closed with %s", code)
	}
	expectServerErr(t, errs, CloseMessageTooBig)
}

func TestHostileFragments(t *testing.T) {
	srv, errs := echoServer(t, nil)
	t.Run("1,024 frames make a message", func(t *testing.T) {
		rc := connectRaw(t, srv)
		var b []byte
		b = append(b, frame(byte(opText), true, []byte("a"))...)
		for i := 0; i < DefaultMaxFragments-2; i++ {
			b = append(b, frame(byte(opContinuation), true, nil)...)
			if i == 100 {
				b = append(b, frame(fPing, true, nil)...) // control frames do not count
			}
		}
		b = append(b, frame(fCont, true, []byte("b"))...)
		rc.sendRaw(b)
		rc.expectFrame(fPong, nil)
		rc.expectFrame(fText, []byte("ab"))
	})
	t.Run("1,025 empty frames fail with 1009", func(t *testing.T) {
		rc := connectRaw(t, srv)
		var b []byte
		b = append(b, frame(byte(opText), true, nil)...)
		for i := 0; i < DefaultMaxFragments; i++ {
			b = append(b, frame(byte(opContinuation), true, nil)...)
		}
		rc.sendRaw(b)
		if reason := rc.expectClose(CloseMessageTooBig); reason != "message arrives in more than 1024 fragments" {
			t.Fatalf("reason %q", reason)
		}
		expectServerErr(t, errs, CloseMessageTooBig)
	})
	t.Run("an endless stream of empty continuations ends at the bound", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), nil)
		empty := frame(byte(opContinuation), true, nil)
		stream := make([]byte, 0, len(empty)*4096)
		for len(stream) < cap(stream) {
			stream = append(stream, empty...)
		}
		go func() {
			for {
				if _, err := rc.nc.Write(stream); err != nil {
					return
				}
			}
		}()
		rc.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		f := rc.mustRead()
		if f.op() != opClose || StatusCode(binary.BigEndian.Uint16(f.payload)) != CloseMessageTooBig {
			t.Fatalf("got %s %q", f.op(), f.payload)
		}
	})
	t.Run("the bound is an option", func(t *testing.T) {
		srv, _ := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{MaxFragments: 3}})
		rc := connectRaw(t, srv)
		rc.send(byte(opText), []byte("a"))
		rc.send(byte(opContinuation), []byte("b"))
		rc.send(fCont, []byte("c"))
		rc.expectFrame(fText, []byte("abc"))
		rc.send(byte(opText), []byte("a"))
		rc.send(byte(opContinuation), []byte("b"))
		rc.send(byte(opContinuation), []byte("c"))
		rc.send(fCont, []byte("d"))
		if reason := rc.expectClose(CloseMessageTooBig); reason != "message arrives in more than 3 fragments" {
			t.Fatalf("reason %q", reason)
		}
		unbounded, _ := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{MaxFragments: -1}})
		rc = connectRaw(t, unbounded)
		var b []byte
		b = append(b, frame(byte(opText), true, []byte("a"))...)
		for i := 0; i < 3*DefaultMaxFragments; i++ {
			b = append(b, frame(byte(opContinuation), true, nil)...)
		}
		b = append(b, frame(fCont, true, []byte("z"))...)
		rc.sendRaw(b)
		rc.expectFrame(fText, []byte("az"))
	})
}

// TestHostileHTTP10 sends an otherwise valid upgrade as HTTP/1.0, which
// RFC 6455 section 4.1 does not allow: the answer is 426, as coder/websocket
// answers it.
func TestHostileHTTP10(t *testing.T) {
	srv, errs := echoServer(t, nil)
	req := strings.Replace(handshakeRequest(srv.Listener.Addr().String()), "HTTP/1.1", "HTTP/1.0", 1)
	_, resp := dialRaw(t, srv, req, nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("status %d, want 426", resp.StatusCode)
	}
	if !strings.Contains(string(body), "HTTP/1.1") || resp.Header.Get("Upgrade") != "websocket" {
		t.Fatalf("body %q, headers %v", body, resp.Header)
	}
	err := <-errs
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("Accept returned %v", err)
	}
}

// stallConn is a server-side connection whose writes, once stalled, block
// as a write to a peer that stopped reading does: until the write deadline
// passes or the connection is closed.
type stallConn struct {
	net.Conn
	stalled  atomic.Bool
	mu       sync.Mutex
	deadline time.Time
	closed   chan struct{}
	once     sync.Once
}

func (c *stallConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *stallConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *stallConn) Write(p []byte) (int, error) {
	if !c.stalled.Load() {
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	d := c.deadline
	c.mu.Unlock()
	var expired <-chan time.Time
	if !d.IsZero() {
		timer := time.NewTimer(time.Until(d))
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// stallListener wraps every accepted connection in a stallConn and hands
// it to the test.
type stallListener struct {
	net.Listener
	conns chan *stallConn
}

func (l *stallListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	sc := &stallConn{Conn: nc, closed: make(chan struct{})}
	l.conns <- sc
	return sc, nil
}

// TestHostileBlockedPeerHeartbeat: one connection's writes block (its peer
// stopped reading) while its ping is due. The heartbeat goes on pinging
// everyone else every interval, honest idle clients stay open, and the
// blocked one is closed for not answering.
func TestHostileBlockedPeerHeartbeat(t *testing.T) {
	mgr := NewMemoryManager()
	if err := mgr.Create("doc", json.RawMessage(`{"count":0}`), testFunctions...); err != nil {
		t.Fatal(err)
	}
	const interval = 100 * time.Millisecond
	srv := NewServer(mgr, &ServerOptions{HeartbeatInterval: interval, Logger: quietLogger}) // idle timeout 300 ms
	hs := httptest.NewUnstartedServer(srv)
	ln := &stallListener{Listener: hs.Listener, conns: make(chan *stallConn, 10)}
	hs.Listener = ln
	hs.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
	})

	blocked := connectRaw(t, hs)
	(<-ln.conns).stalled.Store(true) // every write to it blocks from now on
	_ = blocked                      // it never reads: its server side cannot write

	const honest, wantPings = 4, 10
	type outcome struct {
		i   int
		err error
	}
	results := make(chan outcome, honest)
	for i := 0; i < honest; i++ {
		rc := connectRaw(t, hs)
		<-ln.conns
		go func() {
			// Answer each ping; an honest client sends nothing else, so
			// it stays open only while the heartbeat keeps pinging it.
			for pings := 0; pings < wantPings; {
				f, err := rc.readFrame()
				if err != nil {
					results <- outcome{i, fmt.Errorf("after %d pings: %v", pings, err)}
					return
				}
				switch f.op() {
				case opPing:
					pings++
					if _, err := rc.nc.Write(frame(fPong, true, f.payload)); err != nil {
						results <- outcome{i, err}
						return
					}
				case opClose:
					results <- outcome{i, fmt.Errorf("closed after %d pings: %d %q", pings, binary.BigEndian.Uint16(f.payload), f.payload[2:])}
					return
				}
			}
			results <- outcome{i, nil}
		}()
	}
	for i := 0; i < honest; i++ {
		if r := <-results; r.err != nil {
			t.Fatalf("honest client %d: %v", r.i, r.err)
		}
	}
	// The blocked peer never answered: the heartbeat closed it.
	waitFor(t, func() bool { return srv.Stats().HeartbeatCloses == 1 })
	if n := srv.Stats().Connections; n != honest {
		t.Fatalf("%d connections open, want the %d honest ones", n, honest)
	}
}
