package realtime

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestAcceptDeflateOffers: the answers to what browsers and libraries
// offer, and to offers RFC 7692 says to decline.
func TestAcceptDeflateOffers(t *testing.T) {
	for _, tc := range []struct {
		offer string
		want  bool
	}{
		{"permessage-deflate; client_max_window_bits", true},                                 // Chrome, Safari
		{"permessage-deflate", true},                                                         // Firefox
		{"permessage-deflate; server_no_context_takeover; client_no_context_takeover", true}, // gorilla, coder, ours
		{`permessage-deflate; client_max_window_bits="15"`, true},                            // a quoted value
		{"permessage-deflate; client_max_window_bits=10", true},                              // we never ask to lower it
		{"permessage-deflate; server_max_window_bits=15", true},
		{"permessage-deflate; server_max_window_bits=10", false}, // flate cannot keep to it
		{"permessage-deflate; server_max_window_bits=10, permessage-deflate", true},
		{"permessage-deflate; server_max_window_bits", false},    // a value is required
		{"permessage-deflate; client_max_window_bits=16", false}, // out of range
		{"permessage-deflate; client_max_window_bits=08", false}, // not the decimal form
		{"permessage-deflate; server_no_context_takeover=1", false},
		{"permessage-deflate; server_no_context_takeover; server_no_context_takeover", false},
		{"permessage-deflate; x-unknown", false},
		{"x-webkit-deflate-frame", false},
		{"foo, permessage-deflate", true},
		{"permessage-deflate; =", false},
		{`permessage-deflate; client_max_window_bits="15`, false},
		{"", false},
	} {
		if got := acceptDeflate([]string{tc.offer}); got != tc.want {
			t.Errorf("offer %q: accepted %v, want %v", tc.offer, got, tc.want)
		}
	}
}

// TestCheckDeflateAnswer: what a client accepts as the answer to its
// offer, and what fails the handshake.
func TestCheckDeflateAnswer(t *testing.T) {
	for _, tc := range []struct {
		answer string
		ok     bool
		err    string
	}{
		{"permessage-deflate; server_no_context_takeover; client_no_context_takeover", true, ""},
		{"permessage-deflate; server_no_context_takeover", true, ""},
		{"permessage-deflate; server_no_context_takeover; server_max_window_bits=9", true, ""},
		{"permessage-deflate", false, "without server_no_context_takeover"},
		{"permessage-deflate; server_no_context_takeover; client_max_window_bits=10", false, "client_max_window_bits"},
		{"permessage-deflate; server_no_context_takeover; foo", false, "unknown"},
		{"permessage-deflate; server_no_context_takeover, permessage-deflate", false, "only permessage-deflate"},
		{"x-other", false, "only permessage-deflate"},
	} {
		ok, err := checkDeflateAnswer([]string{tc.answer})
		if ok != tc.ok || (tc.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("answer %q: %v, %v; want %v and an error containing %q", tc.answer, ok, err, tc.ok, tc.err)
		}
	}
}

// TestCompressionRoundTrip: our client and server with compression on
// negotiate it and exchange messages of every size both ways, fragmented
// past 64 KiB, text and binary; without it on either side, nothing is
// negotiated and the same messages pass uncompressed.
func TestCompressionRoundTrip(t *testing.T) {
	msgs := [][]byte{[]byte("small"), []byte(strings.Repeat(`{"k":"v"},`, 30)), payloadOf(300 << 10), []byte(strings.Repeat("z", 200<<10))}
	for _, tc := range []struct{ server, client, want bool }{{true, true, true}, {true, false, false}, {false, true, false}} {
		srv, _ := echoServer(t, &AcceptOptions{EnableCompression: tc.server, ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
		c, resp, err := Dial(context.Background(), wsURL(srv), &DialOptions{EnableCompression: tc.client, ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Header.Get("Sec-WebSocket-Extensions") != ""; got != tc.want || c.deflate != tc.want {
			t.Fatalf("server %v, client %v: extension header %q, negotiated %v", tc.server, tc.client, resp.Header.Get("Sec-WebSocket-Extensions"), c.deflate)
		}
		for _, m := range msgs {
			for _, typ := range []MessageType{MessageText, MessageBinary} {
				if err := c.Write(context.Background(), typ, m); err != nil {
					t.Fatal(err)
				}
				gt, got, err := c.Read(context.Background())
				if err != nil || gt != typ || !bytes.Equal(got, m) {
					t.Fatalf("echo of %d bytes: %v, %d bytes, %v", len(m), gt, len(got), err)
				}
			}
		}
		c.Close(CloseNormalClosure, "")
	}
}

// TestCompressedFramesOnTheWire: the bytes a client sees from a server
// with compression. A message under the threshold goes as it is; a longer
// one has RSV1 set and a payload that inflates to the message; a
// compressed message the client sends in two fragments with a ping
// between them is read whole (the server echoes it compressed).
func TestCompressedFramesOnTheWire(t *testing.T) {
	srv, _ := echoServer(t, &AcceptOptions{EnableCompression: true})
	rc, resp := dialRaw(t, srv, handshakeRequest(srv.Listener.Addr().String(), "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"), nil)
	if got := resp.Header.Get("Sec-WebSocket-Extensions"); got != deflateAnswer {
		t.Fatalf("answer %q, want %q", got, deflateAnswer)
	}
	rc.send(fText, []byte("hello"))
	rc.expectFrame(fText, []byte("hello"))

	long := []byte(strings.Repeat(`{"item":"a shared list entry"},`, 40))
	z := compress(nil, long)
	rc.sendRaw(frame(byte(opText)|rsv1Bit, true, z[:10]))
	rc.sendRaw(frame(fPing, true, []byte("between")))
	rc.sendRaw(frame(fCont, true, z[10:]))
	rc.expectFrame(fPong, []byte("between"))
	f := rc.mustRead()
	if f.b0 != fText|rsv1Bit {
		t.Fatalf("echo frame starts with 0x%02x, want text with RSV1", f.b0)
	}
	if got := inflateAll(t, f.payload); !bytes.Equal(got, long) {
		t.Fatalf("echo inflates to %q", clip(got))
	}
	if len(f.payload) >= len(long)/4 {
		t.Errorf("a %d-byte repetitive message compressed to %d bytes", len(long), len(f.payload))
	}
}

// inflateAll inflates one permessage-deflate payload with the standard
// library alone.
func inflateAll(t *testing.T, z []byte) []byte {
	t.Helper()
	out, err := io.ReadAll(flate.NewReader(io.MultiReader(bytes.NewReader(z), bytes.NewReader(inflateTail))))
	if err != nil {
		t.Fatalf("inflating: %v", err)
	}
	return out
}

// TestCompressedProtocolErrors: RSV1 where permessage-deflate does not
// allow it, other RSV bits, and corrupt compressed data fail the
// connection with the right code.
func TestCompressedProtocolErrors(t *testing.T) {
	z := compress(nil, []byte(strings.Repeat("abc", 200)))
	for _, tc := range []struct {
		name   string
		frames []byte
		code   CloseCode
	}{
		{"RSV1 on a ping", frame(fPing|rsv1Bit, true, nil), CloseProtocolError},
		{"RSV1 on a continuation", append(frame(byte(opText)|rsv1Bit, true, z[:5]), frame(fCont|rsv1Bit, true, z[5:])...), CloseProtocolError},
		{"RSV2", frame(fText|rsv2Bit, true, []byte("x")), CloseProtocolError},
		{"corrupt data", frame(fText|rsv1Bit, true, []byte{0xff, 0xff, 0xff, 0xff}), CloseInvalidPayload},
		{"invalid UTF-8 once inflated", frame(fText|rsv1Bit, true, compress(nil, []byte{0xff, 0xfe})), CloseInvalidPayload},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := echoServer(t, &AcceptOptions{EnableCompression: true})
			rc, _ := dialRaw(t, srv, handshakeRequest(srv.Listener.Addr().String(), "Sec-WebSocket-Extensions: permessage-deflate"), nil)
			rc.sendRaw(tc.frames)
			reason := rc.expectClose(tc.code)
			// flate's own text (offsets into the stream) is not sent.
			if tc.name == "corrupt data" && reason != "invalid compressed data" {
				t.Fatalf("close reason %q, want %q", reason, "invalid compressed data")
			}
		})
	}
}

// TestCompressionBomb: a 16 KiB frame that inflates to 16 MiB, against a
// read limit of 64 KiB, fails the connection with 1009 as soon as the
// inflated bytes pass the limit; reading it allocates a small multiple of
// the limit, not the 16 MiB.
func TestCompressionBomb(t *testing.T) {
	const limit = 64 << 10
	var zb bytes.Buffer
	fw, _ := flate.NewWriter(&zb, flate.BestCompression)
	fw.Write(make([]byte, 16<<20))
	fw.Flush()
	bomb := zb.Bytes()[:zb.Len()-4]
	if len(bomb) > 20<<10 {
		t.Fatalf("bomb of %d bytes", len(bomb))
	}
	stream := frame(fBinary|rsv1Bit, true, bomb)
	c := newConn(&memConn{r: bytes.NewReader(stream), w: io.Discard}, false, "", ConnOptions{ReadLimit: limit}, nil)
	c.deflate = true
	inflate(nil, compress(nil, []byte("warm the pools")), 0)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	_, msg, err := c.Read(context.Background())
	runtime.ReadMemStats(&m1)
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != CloseMessageTooBig || !strings.Contains(ce.Reason, "inflates past") {
		t.Fatalf("read a bomb: %v", err)
	}
	if len(msg) > limit || cap(msg) > limit {
		t.Fatalf("%d bytes held (capacity %d) with a limit of %d", len(msg), cap(msg), limit)
	}
	if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > 8*limit+uint64(len(bomb))*2+256<<10 {
		t.Fatalf("reading the bomb allocated %d bytes", alloc)
	} else {
		t.Logf("a %d-byte frame inflating to 16 MiB: closed with %s after allocating %d bytes", len(bomb), ce.Code, alloc)
	}
}

// TestCompressionHandshakeRefusals: a client that offered compression
// fails the handshake when the server answers with parameters it cannot
// honour; one that did not offer it fails when the server selects it.
func TestCompressionHandshakeRefusals(t *testing.T) {
	for _, tc := range []struct {
		offer  bool
		answer string
		want   string
	}{
		{true, "permessage-deflate; server_no_context_takeover; client_max_window_bits=9", "client_max_window_bits"},
		{true, "permessage-deflate", "server_no_context_takeover"},
		{false, deflateAnswer, "none was offered"},
	} {
		srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
			nc, brw, _ := http.NewResponseController(w).Hijack()
			defer nc.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
				acceptKey(r.Header.Get("Sec-WebSocket-Key")) + "\r\nSec-WebSocket-Extensions: " + tc.answer + "\r\n\r\n")
			brw.Flush()
			io.Copy(io.Discard, nc)
		})
		_, _, err := Dial(context.Background(), wsURL(srv), &DialOptions{EnableCompression: tc.offer})
		var he *HandshakeError
		if !errors.As(err, &he) || !strings.Contains(he.Reason, tc.want) {
			t.Errorf("answer %q (offered %v): %v, want a HandshakeError about %s", tc.answer, tc.offer, err, tc.want)
		}
	}
}

// TestServerCompressesBroadcastOnce: on a realtime server with
// compression, a subscriber that negotiated it and one that did not get
// the same transaction: the first as a compressed frame (RSV1) that
// inflates to exactly the second's payload, the state frame too; a
// proposal sent compressed is applied. A Go Client with compression works
// through it all.
func TestServerCompressesBroadcastOnce(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{Accept: AcceptOptions{EnableCompression: true}})
	set, _ := rs.mgr.Function("doc", "set")
	big := `{"items":"` + strings.Repeat("shared state ", 40) + `"}`
	if _, err := rs.mgr.Apply(context.Background(), "doc", set, json.RawMessage(big)); err != nil {
		t.Fatal(err)
	}
	host := rs.hs.Listener.Addr().String()
	z, _ := dialRaw(t, rs.hs, handshakeRequest(host, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"), nil)
	plain := connectRaw(t, rs.hs)
	sub := (&SubscribeMessage{ShareDataID: "doc"}).AppendJSON(nil)
	z.sendRaw(frame(fText|rsv1Bit, true, compress(nil, sub)))
	plain.send(fText, sub)
	zs, ps := z.mustRead(), plain.mustRead()
	if zs.b0 != fText|rsv1Bit || ps.b0 != fText || !bytes.Equal(inflateAll(t, zs.payload), ps.payload) {
		t.Fatalf("state frames: 0x%02x and 0x%02x, inflating to the same: %v", zs.b0, ps.b0, bytes.Equal(inflateAll(t, zs.payload), ps.payload))
	}
	if _, err := rs.mgr.Apply(context.Background(), "doc", set, json.RawMessage(big)); err != nil {
		t.Fatal(err)
	}
	zt, pt := z.mustRead(), plain.mustRead()
	if zt.b0 != fText|rsv1Bit || pt.b0 != fText {
		t.Fatalf("transaction frames start 0x%02x and 0x%02x", zt.b0, pt.b0)
	}
	if got := inflateAll(t, zt.payload); !bytes.Equal(got, pt.payload) {
		t.Fatalf("compressed transaction inflates to %q, the plain one is %q", clip(got), clip(pt.payload))
	}
	if len(zt.payload)*4 > len(pt.payload) {
		t.Errorf("transaction of %d bytes compressed to %d", len(pt.payload), len(zt.payload))
	}

	c, err := NewClient(rs.url, &ClientOptions{Dial: DialOptions{EnableCompression: true}, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Propose(ctx, "doc", "set", json.RawMessage(big)); err != nil {
		t.Fatal(err)
	}
	if f := z.mustRead(); f.b0 != fText|rsv1Bit {
		t.Fatalf("the Go client's transaction reached the raw subscriber as 0x%02x", f.b0)
	}
}
