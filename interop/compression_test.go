package interop

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	coder "github.com/coder/websocket"
	"github.com/gorilla/websocket"

	"github.com/degenerate/realtime"
)

// The compression tests exchange, with permessage-deflate on both sides,
// messages from 300 B (above our threshold) to 1 MiB (fragmented by every
// library), JSON-like so that they shrink, and count the bytes on the
// client's socket: each direction must carry far fewer bytes than the
// messages hold, so compression really ran both ways.

var compressedSizes = []int{300, 4 << 10, 65 << 10, 300 << 10, 1 << 20}

// noisy is n bytes of base64 of pseudo-random bytes: it compresses to
// about three quarters, so a 1 MiB message stays longer than 64 KiB
// compressed and our side sends it in several frames, RSV1 on the first.
func noisy(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = alphabet[x%64]
	}
	return b
}

func jsonish(n int) []byte {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		b.WriteString(`{"id":`)
		b.WriteString(strings.Repeat("7", 1+i%5))
		b.WriteString(`,"text":"a shared item","done":false},`)
	}
	return []byte(b.String()[:n])
}

// countingConn counts the bytes read and written on a client's socket.
type countingConn struct {
	net.Conn
	in, out *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

type meter struct{ in, out atomic.Int64 }

func (m *meter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: nc, in: &m.in, out: &m.out}, nil
}

// check fails unless both directions carried under a third of total.
func (m *meter) check(t *testing.T, total int) {
	t.Helper()
	in, out := m.in.Load(), m.out.Load()
	if in > int64(total)/3 || out > int64(total)/3 {
		t.Fatalf("%d bytes of messages each way took %d bytes sent and %d received: not compressed both ways", total, out, in)
	}
	t.Logf("%d bytes of messages each way: %d bytes sent, %d received", total, out, in)
}

// ourCompressingServer is ourServer with compression on.
func ourCompressingServer(t *testing.T) string {
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := realtime.Accept(w, r, &realtime.AcceptOptions{EnableCompression: true, ConnOptions: realtime.ConnOptions{ReadLimit: limit}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		ourEcho(c)
	})
	return url
}

func TestGorillaClientOurServerCompressed(t *testing.T) {
	var m meter
	// gorilla's default 4 KiB write buffer: it sends each compressed
	// message in frames of 4 KiB, the first with RSV1, the rest
	// continuations (a 1 MiB noisy one in about 190).
	d := websocket.Dialer{EnableCompression: true, NetDialContext: m.dial, WriteBufferSize: 4096}
	c, resp, err := d.Dial(ourCompressingServer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.HasPrefix(ext, "permessage-deflate") {
		t.Fatalf("extensions %q", ext)
	}
	c.SetReadLimit(limit)
	c.EnableWriteCompression(true)
	total := 0
	for _, n := range compressedSizes {
		msg := jsonish(n)
		total += n
		if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.ReadMessage()
		if err != nil || typ != websocket.TextMessage || string(got) != string(msg) {
			t.Fatalf("echo of %d bytes: type %d, %d bytes, %v", n, typ, len(got), err)
		}
	}
	m.check(t, total)
	msg := noisy(1 << 20)
	if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != string(msg) {
		t.Fatalf("echo of a 1 MiB message compressed to several frames: %d bytes, %v", len(got), err)
	}
}

func TestCoderClientOurServerCompressed(t *testing.T) {
	// Context takeover is what coder asks for; our answer,
	// client_no_context_takeover, makes it compress each message alone.
	for _, mode := range []coder.CompressionMode{coder.CompressionContextTakeover, coder.CompressionNoContextTakeover} {
		var m meter
		ctx := context.Background()
		c, resp, err := coder.Dial(ctx, ourCompressingServer(t), &coder.DialOptions{CompressionMode: mode, CompressionThreshold: 1,
			HTTPClient: &http.Client{Transport: &http.Transport{DialContext: m.dial}}})
		if err != nil {
			t.Fatal(err)
		}
		if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.HasPrefix(ext, "permessage-deflate") {
			t.Fatalf("extensions %q", ext)
		}
		c.SetReadLimit(limit)
		total := 0
		for _, n := range compressedSizes {
			msg := jsonish(n)
			total += n
			if err := c.Write(ctx, coder.MessageText, msg); err != nil {
				t.Fatal(err)
			}
			typ, got, err := c.Read(ctx)
			if err != nil || typ != coder.MessageText || string(got) != string(msg) {
				t.Fatalf("mode %v: echo of %d bytes: type %v, %d bytes, %v", mode, n, typ, len(got), err)
			}
		}
		m.check(t, total)
		msg := noisy(1 << 20)
		if err := c.Write(ctx, coder.MessageText, msg); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.Read(ctx); err != nil || string(got) != string(msg) {
			t.Fatalf("echo of a 1 MiB message compressed to several frames: %d bytes, %v", len(got), err)
		}
		c.Close(coder.StatusNormalClosure, "")
	}
}

// ourClientCompressed runs our compressing client against an echo server.
func ourClientCompressed(t *testing.T, url string) {
	t.Helper()
	var m meter
	ctx := context.Background()
	c, resp, err := realtime.Dial(ctx, url, &realtime.DialOptions{EnableCompression: true, NetDialContext: m.dial,
		ConnOptions: realtime.ConnOptions{ReadLimit: limit}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	t.Logf("server answered %q", resp.Header.Get("Sec-WebSocket-Extensions"))
	total := 0
	for _, n := range compressedSizes {
		msg := jsonish(n)
		total += n
		if err := c.Write(ctx, realtime.MessageText, msg); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil || typ != realtime.MessageText || string(got) != string(msg) {
			t.Fatalf("echo of %d bytes: type %v, %d bytes, %v", n, typ, len(got), err)
		}
	}
	m.check(t, total)
	before := m.out.Load()
	msg := noisy(1 << 20)
	if err := c.Write(ctx, realtime.MessageText, msg); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.Read(ctx); err != nil || string(got) != string(msg) {
		t.Fatalf("echo of a 1 MiB message compressed to several frames: %d bytes, %v", len(got), err)
	}
	if sent := m.out.Load() - before; sent >= 1<<20 || sent < 64<<10 {
		t.Fatalf("a 1 MiB message took %d bytes: not compressed into several 64 KiB frames", sent)
	}
	c.Close(realtime.CloseNormalClosure, "")
}

func TestOurClientGorillaServerCompressed(t *testing.T) {
	up := websocket.Upgrader{EnableCompression: true, WriteBufferSize: 4096}
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadLimit(limit)
		c.EnableWriteCompression(true)
		gorillaEcho(c)
	})
	ourClientCompressed(t, url)
}

func TestOurClientCoderServerCompressed(t *testing.T) {
	for _, mode := range []coder.CompressionMode{coder.CompressionContextTakeover, coder.CompressionNoContextTakeover} {
		url := server(t, func(w http.ResponseWriter, r *http.Request) {
			c, err := coder.Accept(w, r, &coder.AcceptOptions{CompressionMode: mode, CompressionThreshold: 1})
			if err != nil {
				return
			}
			defer c.CloseNow()
			c.SetReadLimit(limit)
			coderEcho(c)
		})
		ourClientCompressed(t, url)
	}
}
