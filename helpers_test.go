package realtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
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
	"testing"
	"time"
)

// TestMain fails the run when a test leaves one of the package's goroutines
// behind.
func TestMain(m *testing.M) {
	if os.Getenv(swarmEnv) != "" {
		os.Exit(runSwarm()) // a benchmark's client process, not a test run
	}
	if kind := os.Getenv(idleServerEnv); kind != "" {
		os.Exit(runIdleServer(kind)) // a benchmark's server process
	}
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left behind after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits up to d for goroutines running this package's
// code (other than the test runner's own) to end, and describes those that
// did not.
func leakedGoroutines(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if !strings.Contains(g, "github.com/degenerate/realtime") {
				continue
			}
			if strings.Contains(g, "testing.(*M).Run") || strings.Contains(g, "leakedGoroutines") || strings.Contains(g, "testing.tRunner") && !strings.Contains(g, "realtime.(") && !strings.Contains(g, "realtime.Test") {
				continue
			}
			leaked = append(leaked, g)
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testServer runs handler behind httptest and waits, at cleanup, for every
// handler call to return.
func testServer(t testing.TB, handler func(w http.ResponseWriter, r *http.Request)) *httptest.Server {
	t.Helper()
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		handler(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	return srv
}

// echoServer accepts WebSocket connections and echoes every message with
// its type until the connection ends. Errors the handler saw are sent on
// the returned channel (buffered), one per connection.
func echoServer(t testing.TB, opts *AcceptOptions) (*httptest.Server, chan error) {
	errs := make(chan error, 100)
	srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, opts)
		if err != nil {
			errs <- err
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		var buf []byte
		for {
			typ, msg, err := c.ReadInto(ctx, buf)
			if err != nil {
				errs <- err
				return
			}
			buf = msg
			if err := c.Write(ctx, typ, msg); err != nil {
				errs <- err
				return
			}
		}
	})
	return srv, errs
}

func wsURL(srv *httptest.Server) string { return "ws" + strings.TrimPrefix(srv.URL, "http") }

// rawClient speaks WebSocket by hand, so tests control every byte.
type rawClient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

const testKey = "dGhlIHNhbXBsZSBub25jZQ=="

// handshakeRequest returns an opening handshake for host with extra
// header lines.
func handshakeRequest(host string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", host, testKey)
	for _, l := range extra {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// dialRaw opens a TCP connection to srv and sends req (a handshake built
// by handshakeRequest when empty) followed by after. It returns the client
// and the server's response.
func dialRaw(t testing.TB, srv *httptest.Server, req string, after []byte) (*rawClient, *http.Response) {
	t.Helper()
	nc, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if req == "" {
		req = handshakeRequest(srv.Listener.Addr().String())
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(append([]byte(req), after...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading handshake response: %v", err)
	}
	return &rawClient{t: t, nc: nc, br: br}, resp
}

// connectRaw performs a successful handshake.
func connectRaw(t testing.TB, srv *httptest.Server) *rawClient {
	t.Helper()
	rc, resp := dialRaw(t, srv, "", nil)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status %d, want 101", resp.StatusCode)
	}
	return rc
}

// frame encodes a frame. b0 holds FIN, RSV and opcode; masked frames use a
// fixed non-zero key.
func frame(b0 byte, masked bool, payload []byte) []byte {
	var hdr [maxHeaderSize]byte
	n := putHeader(hdr[:], false, 0, masked, 0x37fa213d, len(payload))
	hdr[0] = b0
	out := append([]byte(nil), hdr[:n]...)
	p := append([]byte(nil), payload...)
	if masked {
		maskBytes(0x37fa213d, 0, p)
	}
	return append(out, p...)
}

// Frame first bytes, for readability.
const (
	fText   = finBit | byte(opText)
	fBinary = finBit | byte(opBinary)
	fCont   = finBit | byte(opContinuation)
	fClose  = finBit | byte(opClose)
	fPing   = finBit | byte(opPing)
	fPong   = finBit | byte(opPong)
)

// send writes a masked frame.
func (rc *rawClient) send(b0 byte, payload []byte) {
	rc.t.Helper()
	rc.sendRaw(frame(b0, true, payload))
}

func (rc *rawClient) sendRaw(b []byte) {
	rc.t.Helper()
	if _, err := rc.nc.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

type rawFrame struct {
	hdr     []byte // the header bytes as received
	b0      byte
	masked  bool
	payload []byte
}

func (f rawFrame) op() opcode { return opcode(f.b0 & 0x0f) }

// readFrame reads one frame, unmasking it if needed.
func (rc *rawClient) readFrame() (rawFrame, error) {
	rc.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hb [maxHeaderSize]byte
	if _, err := io.ReadFull(rc.br, hb[:2]); err != nil {
		return rawFrame{}, err
	}
	n := headerLen(hb[0], hb[1])
	if _, err := io.ReadFull(rc.br, hb[2:n]); err != nil {
		return rawFrame{}, err
	}
	h, _, err := parseHeader(hb[:n])
	if err != nil {
		return rawFrame{}, err
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(rc.br, p); err != nil {
		return rawFrame{}, err
	}
	if h.masked {
		maskBytes(h.key, 0, p)
	}
	return rawFrame{hdr: append([]byte(nil), hb[:n]...), b0: hb[0], masked: h.masked, payload: p}, nil
}

func (rc *rawClient) mustRead() rawFrame {
	rc.t.Helper()
	f, err := rc.readFrame()
	if err != nil {
		rc.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// expectFrame reads one frame and checks its first byte and payload.
func (rc *rawClient) expectFrame(b0 byte, payload []byte) {
	rc.t.Helper()
	f := rc.mustRead()
	if f.b0 != b0 || !bytes.Equal(f.payload, payload) {
		rc.t.Fatalf("got frame 0x%02x with %d bytes %q, want 0x%02x with %d bytes %q",
			f.b0, len(f.payload), clip(f.payload), b0, len(payload), clip(payload))
	}
	if f.masked {
		rc.t.Fatalf("server sent a masked frame")
	}
}

// expectClose reads frames until a close frame, checks its code and then
// that the TCP connection was closed by the server.
func (rc *rawClient) expectClose(code CloseCode) string {
	rc.t.Helper()
	f := rc.mustRead()
	if f.op() != opClose {
		rc.t.Fatalf("got %s frame %q, want a close frame with %s", f.op(), clip(f.payload), code)
	}
	var got CloseCode = CloseNoStatusReceived
	if len(f.payload) >= 2 {
		got = CloseCode(binary.BigEndian.Uint16(f.payload))
	}
	if got != code {
		rc.t.Fatalf("close code %s (reason %q), want %s", got, f.payload[min(2, len(f.payload)):], code)
	}
	rc.expectTCPClosed()
	if len(f.payload) > 2 {
		return string(f.payload[2:])
	}
	return ""
}

// expectTCPClosed checks that the server closes the TCP connection.
func (rc *rawClient) expectTCPClosed() {
	rc.t.Helper()
	rc.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, rc.br)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			rc.t.Fatalf("server did not close the TCP connection")
		}
	}
	if n != 0 {
		rc.t.Fatalf("%d bytes after the close frame", n)
	}
}

func clip(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

func closePayload(code CloseCode, reason string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(code))
	return append(b, reason...)
}

// dialDiscard returns a TCP connection over loopback whose peer reads and
// discards everything, and a stop func that closes it and waits for the
// peer.
func dialDiscard(tb testing.TB) (net.Conn, func()) {
	return dialPeer(tb, func(nc net.Conn) { io.Copy(io.Discard, nc) })
}

// dialPeer returns a TCP connection over loopback whose accepted end is
// served by peer (which closes it on return), and a stop func that closes
// the connection and waits for peer.
func dialPeer(tb testing.TB, peer func(net.Conn)) (net.Conn, func()) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		peer(nc)
		nc.Close()
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		tb.Fatal(err)
	}
	return nc, func() {
		nc.Close()
		<-done
		ln.Close()
	}
}
