package realtime

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// The handshake group of the conformance suite: our server's answers to
// raw opening handshakes, and our client against a raw misbehaving server.

func TestAcceptKeyRFCExample(t *testing.T) {
	// RFC 6455 section 1.3.
	if got := acceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("got %q", got)
	}
}

func TestConformanceHandshake(t *testing.T) {
	srv, errs := echoServer(t, &AcceptOptions{
		Subprotocols:   []string{"realtime.v1", "chat"},
		OriginPatterns: []string{"*.trusted.example", "https://exact.example"},
	})
	host := srv.Listener.Addr().String()
	base := "Host: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + testKey + "\r\n"
	req := func(method string, headers string) string {
		return method + " / HTTP/1.1\r\n" + headers + "\r\n"
	}
	cases := []struct {
		name       string
		req        string
		status     int
		header     [2]string // a header the response must carry
		subproto   string
		bodySubstr string
	}{
		{"valid", req("GET", base), 101, [2]string{"Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="}, "", ""},
		{"Firefox Connection: keep-alive, Upgrade", req("GET", strings.Replace(base, "Connection: Upgrade", "Connection: keep-alive, Upgrade", 1)), 101, [2]string{}, "", ""},
		{"tokens in any case", req("GET", strings.Replace(strings.Replace(base, "Connection: Upgrade", "connection: UPGRADE", 1), "Upgrade: websocket", "upgrade: WebSocket", 1)), 101, [2]string{}, "", ""},
		{"POST", req("POST", base+"Content-Length: 0\r\n"), 405, [2]string{"Allow", "GET"}, "", "not GET"},
		{"no Connection upgrade", req("GET", strings.Replace(base, "Connection: Upgrade", "Connection: keep-alive", 1)), 426, [2]string{"Upgrade", "websocket"}, "", "Connection"},
		{"no Upgrade websocket", req("GET", strings.Replace(base, "Upgrade: websocket", "Upgrade: h2c", 1)), 426, [2]string{}, "", "Upgrade header"},
		{"version 8", req("GET", strings.Replace(base, "Version: 13", "Version: 8", 1)), 426, [2]string{"Sec-WebSocket-Version", "13"}, "", "13"},
		{"key not base64", req("GET", strings.Replace(base, testKey, "not base64!", 1)), 400, [2]string{}, "", "Sec-WebSocket-Key"},
		{"key of 15 bytes", req("GET", strings.Replace(base, testKey, "AAAAAAAAAAAAAAAAAAAA", 1)), 400, [2]string{}, "", "16 bytes"},
		{"no key", req("GET", strings.Replace(base, "Sec-WebSocket-Key: "+testKey+"\r\n", "", 1)), 400, [2]string{}, "", "Sec-WebSocket-Key"},
		{"foreign origin", req("GET", base+"Origin: https://evil.example\r\n"), 403, [2]string{}, "", "not allowed"},
		{"same-host origin", req("GET", base+"Origin: http://"+host+"\r\n"), 101, [2]string{}, "", ""},
		{"origin matching a host pattern", req("GET", base+"Origin: https://app.trusted.example\r\n"), 101, [2]string{}, "", ""},
		{"origin matching a scheme pattern", req("GET", base+"Origin: https://exact.example\r\n"), 101, [2]string{}, "", ""},
		{"origin with the wrong scheme", req("GET", base+"Origin: http://exact.example\r\n"), 403, [2]string{}, "", "not allowed"},
		{"origin null", req("GET", base+"Origin: null\r\n"), 403, [2]string{}, "", "Origin"},
		{"subprotocol in client order", req("GET", base+"Sec-WebSocket-Protocol: other, chat, realtime.v1\r\n"), 101, [2]string{}, "chat", ""},
		{"no common subprotocol", req("GET", base+"Sec-WebSocket-Protocol: other\r\n"), 101, [2]string{}, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc, resp := dialRaw(t, srv, tc.req, nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.header[0] != "" && resp.Header.Get(tc.header[0]) != tc.header[1] {
				t.Fatalf("%s: %q, want %q", tc.header[0], resp.Header.Get(tc.header[0]), tc.header[1])
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != tc.subproto {
				t.Fatalf("subprotocol %q, want %q", got, tc.subproto)
			}
			if tc.status != 101 {
				body, _ := io.ReadAll(resp.Body)
				if !strings.Contains(string(body), tc.bodySubstr) {
					t.Fatalf("body %q does not mention %q", body, tc.bodySubstr)
				}
				waitServerErr(t, errs, "a HandshakeError", func(err error) bool {
					var herr *HandshakeError
					return errors.As(err, &herr) && herr.StatusCode == tc.status && strings.Contains(err.Error(), tc.bodySubstr)
				})
				return
			}
			if resp.Header.Get("Upgrade") != "websocket" || resp.Header.Get("Connection") != "Upgrade" {
				t.Fatalf("101 headers %v", resp.Header)
			}
			rc.send(fText, []byte("works"))
			rc.expectFrame(fText, []byte("works"))
		})
	}
	t.Run("skip origin check", func(t *testing.T) {
		srv, _ := echoServer(t, &AcceptOptions{SkipOriginCheck: true})
		rc, resp := dialRaw(t, srv, handshakeRequest(srv.Listener.Addr().String(), "Origin: https://anywhere.example"), nil)
		if resp.StatusCode != 101 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		rc.send(fText, []byte("ok"))
		rc.expectFrame(fText, []byte("ok"))
	})
	t.Run("frames sent with the handshake are kept", func(t *testing.T) {
		after := append(frame(fText, true, []byte("early")), frame(fBinary, true, []byte("bird"))...)
		rc, resp := dialRaw(t, srv, "", after)
		if resp.StatusCode != 101 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		rc.expectFrame(fText, []byte("early"))
		rc.expectFrame(fBinary, []byte("bird"))
	})
}

// unwrappingWriter is middleware's wrapper that hides Hijack but offers
// Unwrap, as http.ResponseController expects.
type unwrappingWriter struct{ http.ResponseWriter }

func (u unwrappingWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }

// opaqueWriter hides Hijack and offers no Unwrap.
type opaqueWriter struct{ http.ResponseWriter }

func TestAcceptThroughMiddleware(t *testing.T) {
	t.Run("wrapper with Unwrap", func(t *testing.T) {
		srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Set-By-Middleware", "yes")
			c, err := Accept(unwrappingWriter{w}, r, nil)
			if err != nil {
				t.Errorf("Accept: %v", err)
				return
			}
			defer c.CloseNow()
			c.Write(context.Background(), MessageText, []byte("through the wrapper"))
		})
		rc, resp := dialRaw(t, srv, "", nil)
		if resp.StatusCode != 101 || resp.Header.Get("X-Set-By-Middleware") != "yes" {
			t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
		}
		rc.expectFrame(fText, []byte("through the wrapper"))
	})
	t.Run("wrapper that cannot hijack", func(t *testing.T) {
		errc := make(chan error, 1)
		srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
			_, err := Accept(opaqueWriter{w}, r, nil)
			errc <- err
		})
		_, resp := dialRaw(t, srv, "", nil)
		if resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("status %d", resp.StatusCode)
		}
		err := <-errc
		if !errors.Is(err, http.ErrNotSupported) || !strings.Contains(err.Error(), "cannot hijack") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("ResponseRecorder", func(t *testing.T) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", testKey)
		if _, err := Accept(w, r, nil); !errors.Is(err, http.ErrNotSupported) {
			t.Fatalf("error %v", err)
		}
		if w.Code != http.StatusInternalServerError {
			t.Fatalf("status %d", w.Code)
		}
	})
}

// rawServer is a misbehaving WebSocket server written by hand: it answers
// the handshake with respond and then runs script on the connection.
func rawServer(t *testing.T, respond func(key string) string, script func(nc net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(nc)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.WriteString(nc, respond(req.Header.Get("Sec-WebSocket-Key"))); err != nil {
			return
		}
		if script != nil {
			script(nc, br)
		}
	}()
	return "ws://" + ln.Addr().String() + "/"
}

func ok101(extra string) func(string) string {
	return func(key string) string {
		return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n" + extra + "\r\n"
	}
}

func TestDialHandshakeChecks(t *testing.T) {
	cases := []struct {
		name    string
		respond func(string) string
		status  int
		substr  string
	}{
		{"refused with a body", func(string) string {
			return "HTTP/1.1 403 Forbidden\r\nContent-Length: 18\r\n\r\norigin not allowed"
		}, 403, `body "origin not allowed"`},
		{"200 instead of 101", func(string) string { return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" }, 200, "expected 101"},
		{"wrong accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
		}, 101, "does not match"},
		{"no Upgrade header", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
		}, 101, "Upgrade header"},
		{"no Connection header", func(key string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
		}, 101, "Connection header"},
		{"subprotocol not offered", ok101("Sec-WebSocket-Protocol: other\r\n"), 101, "not offered"},
		{"extension not offered", ok101("Sec-WebSocket-Extensions: permessage-deflate\r\n"), 101, "extension"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := rawServer(t, tc.respond, nil)
			_, resp, err := Dial(context.Background(), url, &DialOptions{Subprotocols: []string{"realtime.v1"}})
			var herr *HandshakeError
			if !errors.As(err, &herr) || herr.StatusCode != tc.status || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("error %v, want a HandshakeError with status %d mentioning %q", err, tc.status, tc.substr)
			}
			if resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("response %v", resp)
			}
		})
	}
	t.Run("server that never answers", func(t *testing.T) {
		url := rawServer(t, func(string) string { time.Sleep(500 * time.Millisecond); return "" }, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, _, err := Dial(ctx, url, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("Dial did not honour its context")
		}
	})
	t.Run("bad URL scheme", func(t *testing.T) {
		if _, _, err := Dial(context.Background(), "ftp://example.com/", nil); err == nil || !strings.Contains(err.Error(), "scheme") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("handshake header in options", func(t *testing.T) {
		_, _, err := Dial(context.Background(), "ws://127.0.0.1:1/", &DialOptions{Header: http.Header{"Sec-Websocket-Key": {"x"}}})
		if err == nil || !strings.Contains(err.Error(), "set by Dial") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("headers and subprotocol are sent", func(t *testing.T) {
		got := make(chan *http.Request, 1)
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got <- r
			c, err := Accept(w, r, &AcceptOptions{Subprotocols: []string{"realtime.v1"}})
			if err == nil {
				c.CloseNow()
			}
		})}
		go srv.Serve(ln)
		defer srv.Close()
		c, _, err := Dial(context.Background(), "ws://"+ln.Addr().String()+"/rt?x=1", &DialOptions{
			Header:       http.Header{"Authorization": {"Bearer abc"}},
			Subprotocols: []string{"other", "realtime.v1"},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		r := <-got
		if r.Header.Get("Authorization") != "Bearer abc" || r.URL.RawQuery != "x=1" || c.Subprotocol() != "realtime.v1" {
			t.Fatalf("request %v %q, subprotocol %q", r.Header, r.URL.RawQuery, c.Subprotocol())
		}
	})
}

// readClientFrame reads one frame a client sent, which must be masked.
func readClientFrame(t *testing.T, br *bufio.Reader) (rawFrame, uint32) {
	t.Helper()
	rc := &rawClient{t: t, br: br}
	var hb [maxHeaderSize]byte
	if _, err := io.ReadFull(rc.br, hb[:2]); err != nil {
		t.Errorf("reading the client's frame: %v", err)
		return rawFrame{}, 0
	}
	n := headerLen(hb[0], hb[1])
	io.ReadFull(rc.br, hb[2:n])
	h, _, _ := parseHeader(hb[:n])
	if !h.masked {
		t.Errorf("client frame is not masked")
	}
	p := make([]byte, h.length)
	io.ReadFull(rc.br, p)
	maskBytes(h.key, 0, p)
	return rawFrame{b0: hb[0], masked: h.masked, payload: p}, h.key
}

func TestClientAgainstMisbehavingServer(t *testing.T) {
	fails := []struct {
		name  string
		frame []byte
		code  CloseCode
	}{
		{"masked server frame", frame(fText, true, []byte("masked")), CloseProtocolError},
		{"reserved bits", frame(fText|rsv1Bit, false, []byte("x")), CloseProtocolError},
		{"unknown opcode", frame(finBit|0x3, false, nil), CloseProtocolError},
		{"control frame over 125 bytes", frame(fPing, false, payloadOf(126)), CloseProtocolError},
		{"fragmented ping", frame(byte(opPing), false, nil), CloseProtocolError},
		{"continuation first", frame(fCont, false, []byte("x")), CloseProtocolError},
		{"invalid UTF-8", frame(fText, false, []byte{0xed, 0xa0, 0x80}), CloseInvalidPayload},
		{"invalid close code", frame(fClose, false, closePayload(1005, "")), CloseProtocolError},
		{"message over the read limit", frame(fBinary, false, payloadOf(defaultReadLimit+1)), CloseMessageTooBig},
	}
	for _, tc := range fails {
		t.Run(tc.name, func(t *testing.T) {
			sawClose := make(chan rawFrame, 1)
			url := rawServer(t, ok101(""), func(nc net.Conn, br *bufio.Reader) {
				nc.Write(tc.frame)
				f, _ := readClientFrame(t, br)
				sawClose <- f
			})
			c, _, err := Dial(context.Background(), url, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = c.Read(context.Background())
			var ce *CloseError
			if !errors.As(err, &ce) || ce.Code != tc.code || ce.Remote {
				t.Fatalf("Read: %v, want this side's close with %s", err, tc.code)
			}
			f := <-sawClose
			if f.op() != opClose || CloseCode(int(f.payload[0])<<8|int(f.payload[1])) != tc.code {
				t.Fatalf("server got %s %q", f.op(), f.payload)
			}
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("client did not close the TCP connection")
			}
		})
	}
	t.Run("frames after the 101 in the same segment", func(t *testing.T) {
		url := rawServer(t, func(key string) string {
			return ok101("")(key) + string(frame(fText, false, []byte("right away")))
		}, func(nc net.Conn, br *bufio.Reader) { readClientFrame(t, br) })
		c, _, err := Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		_, msg, err := c.Read(context.Background())
		if err != nil || string(msg) != "right away" {
			t.Fatalf("%q %v", msg, err)
		}
		c.Close(CloseNormalClosure, "")
	})
	t.Run("every frame masked with a fresh key", func(t *testing.T) {
		keys := make(chan uint32, 20)
		url := rawServer(t, ok101(""), func(nc net.Conn, br *bufio.Reader) {
			for i := 0; i < 20; i++ {
				f, key := readClientFrame(t, br)
				if string(f.payload) != "same payload" {
					t.Errorf("payload %q", f.payload)
				}
				keys <- key
			}
		})
		c, _, err := Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		for i := 0; i < 20; i++ {
			c.Write(context.Background(), MessageText, []byte("same payload"))
		}
		seen := map[uint32]bool{}
		for i := 0; i < 20; i++ {
			seen[<-keys] = true
		}
		if len(seen) < 19 {
			t.Fatalf("only %d distinct keys in 20 frames", len(seen))
		}
	})
	t.Run("server close is echoed and the client waits for TCP close", func(t *testing.T) {
		echoed := make(chan rawFrame, 1)
		url := rawServer(t, ok101(""), func(nc net.Conn, br *bufio.Reader) {
			nc.Write(frame(fClose, false, closePayload(CloseServiceRestart, "restarting")))
			f, _ := readClientFrame(t, br)
			echoed <- f
		})
		c, _, err := Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Read(context.Background())
		var ce *CloseError
		if !errors.As(err, &ce) || ce.Code != CloseServiceRestart || ce.Reason != "restarting" || !ce.Remote {
			t.Fatalf("Read: %v", err)
		}
		if f := <-echoed; f.op() != opClose || CloseCode(int(f.payload[0])<<8|int(f.payload[1])) != CloseServiceRestart {
			t.Fatalf("echo %s %q", f.op(), f.payload)
		}
		if err := c.Write(context.Background(), MessageText, []byte("late")); !errors.Is(err, ErrClosed) || CloseCodeOf(err) != CloseServiceRestart {
			t.Fatalf("Write after close: %v", err)
		}
	})
	t.Run("ping from the server is answered", func(t *testing.T) {
		pong := make(chan rawFrame, 1)
		url := rawServer(t, ok101(""), func(nc net.Conn, br *bufio.Reader) {
			nc.Write(frame(fPing, false, []byte("are you there")))
			f, _ := readClientFrame(t, br)
			pong <- f
			nc.Write(frame(fClose, false, closePayload(CloseNormalClosure, "")))
			readClientFrame(t, br)
		})
		c, _, err := Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Read(context.Background())
		if f := <-pong; f.op() != opPong || string(f.payload) != "are you there" {
			t.Fatalf("got %s %q", f.op(), f.payload)
		}
	})
}

func TestPing(t *testing.T) {
	srv, _ := echoServer(t, nil)
	ctx := context.Background()
	c, _, err := Dial(ctx, wsURL(srv), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.Read(ctx)
		readErr <- err
	}()
	for i := 0; i < 3; i++ {
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c.Close(CloseNormalClosure, "")
	if err := <-readErr; CloseCodeOf(err) != CloseNormalClosure {
		t.Fatalf("Read: %v", err)
	}
}

// TestCloseWhileReading: Close called while another goroutine reads, with a
// peer that never answers the close frame. Close returns after the close
// timeout and the reader gets our CloseError, not an idle timeout.
func TestCloseWhileReading(t *testing.T) {
	url := rawServer(t, ok101(""), func(nc net.Conn, br *bufio.Reader) {
		readClientFrame(t, br) // the close frame, never answered
		time.Sleep(time.Second)
	})
	c, _, err := Dial(context.Background(), url, &DialOptions{ConnOptions: ConnOptions{CloseTimeout: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, _, err := c.Read(context.Background())
		readErr <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the reader block
	if err := c.Close(CloseGoingAway, "bye"); err == nil || !strings.Contains(err.Error(), "no close frame") {
		t.Fatalf("Close: %v", err)
	}
	err = <-readErr
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != CloseGoingAway || ce.Remote {
		t.Fatalf("Read: %v", err)
	}
}

// TestDialTLS: wss:// through crypto/tls, against a TLS server whose
// certificate the client is given; and a certificate the client does not
// trust is refused.
func TestDialTLS(t *testing.T) {
	var wg sync.WaitGroup
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		c, err := Accept(w, r, &AcceptOptions{ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		typ, msg, err := c.Read(context.Background())
		if err == nil {
			c.Write(context.Background(), typ, msg)
			c.Read(context.Background()) // until the client closes
		}
	}))
	defer func() { srv.Close(); wg.Wait() }()
	url := "wss" + strings.TrimPrefix(srv.URL, "https")

	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c, _, err := Dial(context.Background(), url, &DialOptions{TLSConfig: &tls.Config{RootCAs: pool}, ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("tls "), 30000) // fragmented, over several TLS records
	if err := c.Write(context.Background(), MessageText, msg); err != nil {
		t.Fatal(err)
	}
	_, got, err := c.Read(context.Background())
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo over TLS: %d bytes, %v", len(got), err)
	}
	if err := c.Close(CloseNormalClosure, ""); err != nil {
		t.Fatalf("Close: %v", err)
	}

	_, _, err = Dial(context.Background(), url, nil)
	var he *HandshakeError
	if !errors.As(err, &he) || !strings.Contains(err.Error(), "TLS handshake") {
		t.Fatalf("untrusted certificate: %v", err)
	}
}
