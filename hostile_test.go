package realtime

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/golang-jwt/jwt/v5"
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
	if code := CloseCode(binary.BigEndian.Uint16(f.payload)); code != CloseMessageTooBig {
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
		for i := 0; i < defaultMaxFragments-2; i++ {
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
		for i := 0; i < defaultMaxFragments; i++ {
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
		if f.op() != opClose || CloseCode(binary.BigEndian.Uint16(f.payload)) != CloseMessageTooBig {
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
		for i := 0; i < 3*defaultMaxFragments; i++ {
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

// honestIdleClients connects n raw clients to hs (calling connected after
// each) that answer every ping and send nothing else, so each stays open
// only while the heartbeat keeps pinging it; it returns each one's outcome
// once it has answered wantPings pings or failed.
func honestIdleClients(t *testing.T, hs *httptest.Server, n, wantPings int, connected func()) []error {
	t.Helper()
	type outcome struct {
		i   int
		err error
	}
	results := make(chan outcome, n)
	for i := 0; i < n; i++ {
		rc := connectRaw(t, hs)
		connected()
		go func() {
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
	errs := make([]error, n)
	for range n {
		r := <-results
		errs[r.i] = r.err
	}
	return errs
}

// TestHostileBlockedPeerHeartbeat: one connection's writes block (its peer
// stopped reading) while its ping is due. The heartbeat goes on pinging
// everyone else every interval, honest idle clients stay open, and the
// blocked one is closed for not answering.
func TestHostileBlockedPeerHeartbeat(t *testing.T) {
	mgr := NewMemoryManager()
	if err := mgr.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), testFunctions...); err != nil {
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

	const honest = 4
	for i, err := range honestIdleClients(t, hs, honest, 10, func() { <-ln.conns }) {
		if err != nil {
			t.Fatalf("honest client %d: %v", i, err)
		}
	}
	// The blocked peer never answered: the heartbeat closed it.
	waitFor(t, func() bool { return srv.Stats().HeartbeatCloses == 1 })
	if n := srv.Stats().Connections; n != honest {
		t.Fatalf("%d connections open, want the %d honest ones", n, honest)
	}
}

// jwtServer runs the documented JWT setup: the authenticator and both
// audience authorizers, with leeway and a log of the server's Debug lines.
func jwtServer(t *testing.T, leeway time.Duration, log *lockedBuffer) *rtServer {
	t.Helper()
	k := getKeys(t)
	authenticate, err := NewJWTAuthenticator(JWTOptions{Authorities: testAuthorities(k), Leeway: leeway})
	if err != nil {
		t.Fatal(err)
	}
	opts := &ServerOptions{Authenticate: authenticate,
		AuthorizeSubscribe: ShareDataAudienceAuthorizer, AuthorizePropose: ShareDataAudienceProposeAuthorizer}
	if log != nil {
		opts.Logger = slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return newRTServer(t, opts)
}

// lockedBuffer is a log destination shared by the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestHostileJWTPropose: a token that may not subscribe to a share data
// may not change it either.
func TestHostileJWTPropose(t *testing.T) {
	k := getKeys(t)
	rs := jwtServer(t, 0, nil)
	otherOnly := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c[ClaimShareDataIDs] = []string{"other"} }))
	apiAudience := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["aud"] = "api" }))
	full := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer"))

	watcher := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + full}})
	watcher.subscribe("doc")
	for _, tc := range []struct{ name, token, want string }{
		{"restricted to other", otherOnly, `token does not grant share data "doc"`},
		{"without the SHAREDATA audience", apiAudience, "token audience does not include SHAREDATA"},
	} {
		c := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + tc.token}})
		c.propose("doc", "set", `{"count":666}`, "p1")
		if r := nextAs[*ProposalResultMessage](c); r.Accepted || r.Error != tc.want || r.CorrelationID != "p1" {
			t.Fatalf("%s: %s", tc.name, r.AppendJSON(nil))
		}
	}
	// What the restricted token may touch, it may change.
	c := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + otherOnly}})
	c.propose("other", "increment", `{"by":1}`, "p2")
	if r := nextAs[*ProposalResultMessage](c); !r.Accepted {
		t.Fatalf("%s", r.AppendJSON(nil))
	}
	// The watcher of doc saw nothing: no refused proposal was applied.
	watcher.quiet(200 * time.Millisecond)
	if snap, _ := rs.mgr.Snapshot(context.Background(), "doc"); string(snap.State) != `{"count":0}` {
		t.Fatalf("doc is %s", snap.State)
	}
}

// refusal dials with a header and returns the status, the challenge and
// the body of the refused upgrade.
func refusal(t *testing.T, url string, header http.Header, subprotocols ...string) (int, string, string) {
	t.Helper()
	_, resp, err := Dial(context.Background(), url, &DialOptions{Header: header, Subprotocols: subprotocols})
	var he *HandshakeError
	if !errors.As(err, &he) || resp == nil {
		t.Fatalf("dial: %v", err)
	}
	return he.StatusCode, resp.Header.Get("WWW-Authenticate"), string(he.Body)
}

// TestHostileJWTOversizedToken: a token over the size bound is refused
// before it is decoded, from every source.
func TestHostileJWTOversizedToken(t *testing.T) {
	rs := jwtServer(t, 0, nil)
	huge := "eyJhbGciOiJub25lIn0." + strings.Repeat("A", 930<<10) + "." // an unsigned 930 KB token
	sources := map[string]func() (int, string, string){
		"header": func() (int, string, string) {
			return refusal(t, rs.url, http.Header{"Authorization": {"Bearer " + huge}})
		},
		"query": func() (int, string, string) { return refusal(t, rs.url+"?token="+huge, nil) },
		"subprotocol": func() (int, string, string) {
			return refusal(t, rs.url, nil, Subprotocol, SubprotocolTokenPrefix+strings.Repeat("A", 930<<10))
		},
	}
	for name, src := range sources {
		status, www, body := src()
		if status != 401 || !strings.Contains(body, "invalid token: token longer than 8192 bytes") ||
			www != `Bearer realm="realtime", error="invalid_token", error_description="token longer than 8192 bytes"` {
			t.Fatalf("%s: %d %q %q", name, status, www, body)
		}
	}
	// At the bound the token is looked at (and refused for what it is).
	atBound := "eyJhbGciOiJub25lIn0." + strings.Repeat("A", defaultMaxTokenSize-21) + "."
	if len(atBound) != defaultMaxTokenSize {
		t.Fatalf("test token has %d bytes", len(atBound))
	}
	if _, _, body := refusal(t, rs.url, http.Header{"Authorization": {"Bearer " + atBound}}); !strings.Contains(body, "invalid token: could not be verified") {
		t.Fatalf("body %q", body)
	}
}

// TestHostileJWTEnumeration: without a key, an attacker cannot tell a
// trusted issuer or key id from an untrusted one; the server's Debug log
// has the precise cause, and never the token.
func TestHostileJWTEnumeration(t *testing.T) {
	var log lockedBuffer
	rs := jwtServer(t, 0, &log)
	forged := []byte("an attacker's guess at the secret")
	probes := []struct{ name, token, cause string }{
		{"trusted issuer, known kid", sign(t, jwt.SigningMethodHS256, forged, "k1", claimsFor("hmac-issuer")), "signature is invalid"},
		{"trusted issuer, unknown kid", sign(t, jwt.SigningMethodHS256, forged, "k9", claimsFor("hmac-issuer")), "unknown key id"},
		{"untrusted issuer", sign(t, jwt.SigningMethodHS256, forged, "k1", claimsFor("nobody")), "issuer is not trusted"},
		{"trusted issuer, algorithm of another key", sign(t, jwt.SigningMethodHS512, forged, "k2", claimsFor("hmac-issuer")), "is not accepted"},
		{"unsigned", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claimsFor("hmac-issuer")), "signing method none is invalid"},
		{"malformed", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "malformed"},
	}
	var first string
	for _, p := range probes {
		status, www, body := refusal(t, rs.url, http.Header{"Authorization": {"Bearer " + p.token}})
		answer := fmt.Sprintf("%d|%s|%s", status, www, body)
		if first == "" {
			first = answer
		}
		if answer != first {
			t.Fatalf("%s answered %s; the first probe was answered %s", p.name, answer, first)
		}
		waitFor(t, func() bool { return strings.Contains(log.String(), p.cause) })
		if strings.Contains(log.String(), p.token) {
			t.Fatalf("the log quotes the token")
		}
	}
	if !strings.Contains(first, "invalid token: could not be verified") {
		t.Fatalf("answer %s", first)
	}
}

// parseChallenge parses a WWW-Authenticate value holding one challenge
// strictly by RFC 7235: scheme, then auth-params whose values are tokens
// or quoted-strings. It returns the params, unescaped.
func parseChallenge(v string) (string, map[string]string, error) {
	isTchar := func(c byte) bool {
		return c > 0x20 && c < 0x7f && !strings.ContainsRune("\"(),/:;<=>?@[\\]{}", rune(c))
	}
	i := 0
	token := func() string {
		start := i
		for i < len(v) && isTchar(v[i]) {
			i++
		}
		return v[start:i]
	}
	ows := func() {
		for i < len(v) && (v[i] == ' ' || v[i] == '\t') {
			i++
		}
	}
	scheme := token()
	if scheme == "" || i == len(v) || v[i] != ' ' {
		return "", nil, fmt.Errorf("no scheme at %d", i)
	}
	params := map[string]string{}
	for {
		ows()
		name := token()
		ows()
		if name == "" || i == len(v) || v[i] != '=' {
			return "", nil, fmt.Errorf("no auth-param at %d", i)
		}
		i++
		ows()
		var val strings.Builder
		if i < len(v) && v[i] == '"' {
			i++
			for {
				if i == len(v) {
					return "", nil, errors.New("unterminated quoted-string")
				}
				c := v[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' {
					if i+1 == len(v) || (v[i+1] < 0x20 && v[i+1] != '\t') || v[i+1] == 0x7f {
						return "", nil, fmt.Errorf("bad quoted-pair at %d", i)
					}
					val.WriteByte(v[i+1])
					i += 2
					continue
				}
				if (c < 0x20 && c != '\t') || c == 0x7f {
					return "", nil, fmt.Errorf("control character in quoted-string at %d", i)
				}
				val.WriteByte(c)
				i++
			}
		} else {
			t := token()
			if t == "" {
				return "", nil, fmt.Errorf("no value at %d", i)
			}
			val.WriteString(t)
		}
		params[name] = val.String()
		ows()
		if i == len(v) {
			return scheme, params, nil
		}
		if v[i] != ',' {
			return "", nil, fmt.Errorf("unexpected %q at %d", v[i], i)
		}
		i++
	}
}

// TestHostileJWTChallengeSyntax: every challenge the JWT bridge sends is a
// valid RFC 7235 challenge whose error_description keeps to RFC 6750's
// characters, even for reasons that would carry quotes.
func TestHostileJWTChallengeSyntax(t *testing.T) {
	k := getKeys(t)
	rs := jwtServer(t, 0, nil)
	tokens := []string{
		sign(t, jwt.SigningMethodHS512, k.hmacRotated, "k2", claimsFor("hmac-issuer")), // once: algorithm "HS512" is not accepted
		sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })),
		sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("someone \"quoted\"")),
		"x.y.z",
	}
	for _, tok := range tokens {
		_, www, _ := refusal(t, rs.url, http.Header{"Authorization": {"Bearer " + tok}})
		scheme, params, err := parseChallenge(www)
		if err != nil || scheme != "Bearer" || params["realm"] != "realtime" || params["error"] != "invalid_token" {
			t.Fatalf("WWW-Authenticate %s: %v %v", www, params, err)
		}
		for _, c := range []byte(params["error_description"]) {
			if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
				t.Fatalf("error_description %q has %q, outside RFC 6750's set", params["error_description"], c)
			}
		}
	}
	for in, want := range map[string]string{
		`algorithm "HS256" is not accepted`: `"algorithm 'HS256' is not accepted"`,
		`a\b`:                               `"a/b"`,
		"tab\tnew\nline é":                  `"tab?new?line ??"`,
		"":                                  `""`,
	} {
		got := quoteDescription(in)
		if got != want {
			t.Errorf("quoteDescription(%q) = %s, want %s", in, got, want)
		}
		if _, _, err := parseChallenge("Bearer error_description=" + got); err != nil {
			t.Errorf("quoteDescription(%q) = %s: %v", in, got, err)
		}
	}
}

// TestHostileJWTLeeway: a token that expired a moment ago, inside the
// leeway, is admitted and its connection lives out the leeway before 4002;
// it is not admitted and closed at once.
func TestHostileJWTLeeway(t *testing.T) {
	k := getKeys(t)
	const leeway = 3 * time.Second
	rs := jwtServer(t, leeway, nil)
	exp := time.Now().Add(-time.Second).Truncate(time.Second)
	tok := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["exp"] = exp.Unix() }))
	c := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + tok}})
	c.subscribe("doc")
	c.send(&PingMessage{CorrelationID: "alive"})
	if p := nextAs[*PongMessage](c); p.CorrelationID != "alive" {
		t.Fatalf("pong %s", p.AppendJSON(nil))
	}
	c.expectClosed(CloseUnauthorized, "token expired")
	if closedAt, end := time.Now(), exp.Add(leeway); closedAt.Before(end) {
		t.Fatalf("closed at %v, before the end of the leeway at %v", closedAt.Format(time.StampMilli), end.Format(time.StampMilli))
	}
	// Past the leeway the same token is refused at the upgrade.
	if status, _, body := refusal(t, rs.url, http.Header{"Authorization": {"Bearer " + tok}}); status != 401 || !strings.Contains(body, "invalid token: expired") {
		t.Fatalf("%d %q", status, body)
	}
}
