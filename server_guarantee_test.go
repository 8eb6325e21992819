package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// chainChecker follows one subscription's frames and fails on any
// transaction missed, repeated or out of order: each transaction's
// previousTransactionId must be the one before it.
type chainChecker struct {
	cursor string // the last transaction id seen
	live   int
}

// follow reads a subscription's frames: the state, then (with since) the
// replayed transactions up to the state's cursor, then live transactions
// until the cursor reaches final.
func follow(t *testing.T, c *testClient, since string, hasSince bool, final func() string) error {
	st := nextAs[*StateMessage](c)
	if hasSince && since != st.LastTransactionID {
		cur := since
		for cur != st.LastTransactionID {
			tx := nextAs[*TransactionMessage](c)
			if !tx.Replayed || tx.CurrentState != nil {
				return fmt.Errorf("expected a replayed frame, got %s", tx.AppendJSON(nil))
			}
			if tx.PreviousTransactionID != cur {
				return fmt.Errorf("replay gap: %s follows %s, not %s", tx.TransactionID, tx.PreviousTransactionID, cur)
			}
			cur = tx.TransactionID
		}
	}
	ch := chainChecker{cursor: st.LastTransactionID}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if f := final(); f != "" && ch.cursor == f {
			return nil
		}
		select {
		case <-tick.C:
			continue
		case m, ok := <-c.msgs:
			if !ok {
				return fmt.Errorf("connection ended: %v", c.endErr())
			}
			tx, isTx := m.(*TransactionMessage)
			if !isTx {
				continue // proposal results of this connection
			}
			if tx.Replayed {
				return fmt.Errorf("replayed frame after the live stream began: %s", tx.AppendJSON(nil))
			}
			if tx.PreviousTransactionID != ch.cursor {
				return fmt.Errorf("live frame %s follows %q, but the subscriber's cursor is %q (missed or repeated)", tx.TransactionID, tx.PreviousTransactionID, ch.cursor)
			}
			ch.cursor = tx.TransactionID
			ch.live++
		case <-time.After(10 * time.Second):
			return fmt.Errorf("stuck at %s after %d live frames", ch.cursor, ch.live)
		}
	}
}

// TestExactlyOnceInOrder: 4 proposers send 150 increments each over their
// own connections while 12 subscribers join at staggered moments, some
// with a since cursor taken mid-stream. Every subscriber must see every
// transaction after its snapshot exactly once, in order, with no gap
// between the state frame and the first live frame, and end at the final
// state.
func TestExactlyOnceInOrder(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{ReplayBufferSize: 1000, ProposalsPerSecond: -1}) // each proposer sends as fast as it can
	const proposers, each, subscribers = 4, 150, 12
	var finalID string
	var finalMu sync.Mutex
	final := func() string {
		finalMu.Lock()
		defer finalMu.Unlock()
		return finalID
	}
	var cursorMu sync.Mutex
	midCursor := ""

	var wg sync.WaitGroup
	errs := make(chan error, proposers+subscribers)
	for s := 0; s < subscribers; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(s) * 3 * time.Millisecond)
			c := dialRT(t, rs.url, nil)
			sub := &SubscribeMessage{ShareDataID: "doc"}
			if s%3 == 2 {
				cursorMu.Lock()
				sub.Since, sub.HasSince = midCursor, midCursor != ""
				cursorMu.Unlock()
			}
			c.send(sub)
			if err := follow(t, c, sub.Since, sub.HasSince, final); err != nil {
				errs <- fmt.Errorf("subscriber %d: %w", s, err)
			}
		}()
	}
	var pw sync.WaitGroup
	for p := 0; p < proposers; p++ {
		pw.Add(1)
		go func() {
			defer pw.Done()
			c := dialRT(t, rs.url, nil)
			for i := 0; i < each; i++ {
				c.propose("doc", "increment", `{"by":1}`, fmt.Sprint(p, "-", i))
				res := nextAs[*ProposalResultMessage](c)
				if !res.Accepted {
					errs <- fmt.Errorf("proposal refused: %s", res.Error)
					return
				}
				if i == 20 && p == 0 {
					cursorMu.Lock()
					midCursor = res.TransactionID
					cursorMu.Unlock()
				}
			}
		}()
	}
	pw.Wait()
	snap, _ := rs.mgr.Snapshot(context.Background(), "doc")
	if string(snap.State) != fmt.Sprintf(`{"count":%d}`, proposers*each) {
		t.Fatalf("final state %s", snap.State)
	}
	finalMu.Lock()
	finalID = snap.LastTransactionID
	finalMu.Unlock()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestSlowConsumer: a subscriber that stops reading is closed with 4001
// once its queue passes the cap, while two fast subscribers receive every
// one of 1,000 transactions of 8 KiB.
func TestSlowConsumer(t *testing.T) {
	decided := make(chan struct{}, 1)
	rs := newRTServer(t, &ServerOptions{MaxBufferedBytes: 256 << 10,
		Logger: slog.New(&signalHandler{Handler: quietLogger.Handler(), msg: "realtime: closing a slow consumer", ch: decided})})
	slow := dialSlowRaw(t, rs)
	// The slow client starts reading once the server has decided to close
	// it: the close frame waits behind the blocked write for at most the
	// close timeout, however long the fast subscribers take.
	slowEnd := make(chan error, 1)
	go func() {
		<-decided
		for {
			f, err := slow.readFrame()
			if err != nil {
				slowEnd <- fmt.Errorf("slow client: %v before a close frame", err)
				return
			}
			if f.op() == opClose {
				if code := CloseCode(int(f.payload[0])<<8 | int(f.payload[1])); code != CloseFellBehind {
					slowEnd <- fmt.Errorf("slow client closed with %s", code)
					return
				}
				slowEnd <- nil
				return
			}
		}
	}()
	fast := []*testClient{dialRT(t, rs.url, nil), dialRT(t, rs.url, nil)}
	for _, c := range fast {
		c.subscribe("doc")
	}
	set, _ := rs.mgr.Function("doc", "set")
	big := `"` + strings.Repeat("x", 8<<10) + `"`
	// Batches of 10 frames of 16 KiB (proposedData and currentState), each
	// read by the fast subscribers before
	// the next: they never hold more than the cap; the slow one does.
	const n, batch = 1000, 10
	for b := 0; b < n/batch; b++ {
		for i := 0; i < batch; i++ {
			if _, err := rs.mgr.Apply(context.Background(), "doc", set, json.RawMessage(big)); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range fast {
			for k := 0; k < batch; k++ {
				if tx := nextAs[*TransactionMessage](c); len(tx.CurrentState) != len(big) {
					t.Fatalf("fast subscriber %d: frame %d has a state of %d bytes", i, k, len(tx.CurrentState))
				}
			}
		}
	}
	// The slow client read frames, then the close frame with 4001.
	if err := <-slowEnd; err != nil {
		t.Fatal(err)
	}
	if s := rs.Stats(); s.SlowConsumerCloses != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestHeartbeat: a connection that never answers pings (a half-open
// socket, as far as the server can tell) is closed within two intervals,
// while a client that answers stays.
func TestHeartbeat(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{HeartbeatInterval: 100 * time.Millisecond})
	healthy := dialRT(t, rs.url, nil)
	healthy.subscribe("doc")
	silent := connectRaw(t, rs.hs)
	pings := 0
	var pinged time.Time
	for {
		f, err := silent.readFrame()
		if err != nil {
			break // the server dropped the connection
		}
		if f.op() != opPing {
			t.Fatalf("got %s frame", f.op())
		}
		pings++
		pinged = time.Now()
	}
	// One ping went unanswered for an interval (less the scheduling slack
	// of a loaded machine), then the connection was dropped.
	if pings != 1 {
		t.Fatalf("%d pings before the close, want 1", pings)
	}
	if waited := time.Since(pinged); waited < 50*time.Millisecond {
		t.Fatalf("dropped %v after the ping, before its interval was over", waited)
	}
	waitFor(t, func() bool { return rs.Stats().HeartbeatCloses == 1 })
	// Three more heartbeats, each answered by the healthy connection.
	pongs := func() uint64 {
		rs.mu.RLock()
		defer rs.mu.RUnlock()
		var n uint64
		for sess := range rs.sessions {
			n += sess.conn.pongCount()
		}
		return n
	}
	before := pongs()
	waitFor(t, func() bool { return pongs() >= before+3 })
	healthy.send(&PingMessage{CorrelationID: "still here"})
	nextAs[*PongMessage](healthy)
	if s := rs.Stats(); s.Connections != 1 || s.HeartbeatCloses != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestReadyTurnsFalseWhenShutdownBegins: a readiness probe reads false
// before any client learns of the shutdown: when the first client reads
// its 1001 close frame, Ready already reports false.
func TestReadyTurnsFalseWhenShutdownBegins(t *testing.T) {
	rs := newRTServer(t, nil)
	raw := connectRaw(t, rs.hs)
	raw.send(fText, (&SubscribeMessage{ShareDataID: "doc"}).AppendJSON(nil))
	if f := raw.mustRead(); f.op() != opText {
		t.Fatalf("got %s, want the state", f.op())
	}
	if !rs.Ready() {
		t.Fatal("Ready is false before Shutdown")
	}
	done := make(chan error, 1)
	go func() { done <- rs.Shutdown(context.Background()) }()
	f := raw.mustRead()
	if f.op() != opClose {
		t.Fatalf("got %s, want the close frame", f.op())
	}
	if rs.Ready() {
		t.Fatal("a client read its close frame while Ready still reported true")
	}
	raw.send(fClose, f.payload[:2]) // answer the close, so Shutdown ends
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if rs.Ready() {
		t.Fatal("Ready is true after Shutdown")
	}
}

func TestShutdown(t *testing.T) {
	t.Run("drains queues then closes with 1001", func(t *testing.T) {
		rs := newRTServer(t, nil)
		c := dialRT(t, rs.url, nil)
		c.subscribe("doc")
		c.propose("doc", "increment", `{"by":1}`, "x")
		nextAs[*TransactionMessage](c)
		// The reply is queued after the transaction's broadcast; once the
		// counter shows it, Shutdown must deliver it before the close.
		waitFor(t, func() bool { return rs.Stats().ProposalsAccepted == 1 })
		if err := rs.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		nextAs[*ProposalResultMessage](c) // queued before the close
		c.expectClosed(CloseGoingAway, "shutting down")
		_, resp, err := Dial(context.Background(), rs.url, nil)
		var he *HandshakeError
		if !errors.As(err, &he) || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("dial after shutdown: %v", err)
		}
		if err := rs.Shutdown(context.Background()); !errors.Is(err, ErrServerClosed) {
			t.Fatalf("second Shutdown: %v", err)
		}
	})
	t.Run("service restart code", func(t *testing.T) {
		rs := newRTServer(t, &ServerOptions{ShutdownCode: CloseServiceRestart})
		c := dialRT(t, rs.url, nil)
		c.subscribe("doc")
		go rs.Shutdown(context.Background())
		c.expectClosed(CloseServiceRestart, "")
	})
	t.Run("context ends first", func(t *testing.T) {
		rs := newRTServer(t, nil)
		raw := connectRaw(t, rs.hs) // never answers the close frame
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := rs.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v", err)
		}
		if f := raw.mustRead(); f.op() != opClose {
			t.Fatalf("got %s", f.op())
		}
		raw.expectTCPClosed()
		if s := rs.Stats(); s.Connections != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

// expiringAuth is an Authenticate value with an expiry.
type expiringAuth struct{ exp time.Time }

func (a expiringAuth) ExpiresAt() time.Time { return a.exp }

func TestAuthenticateHook(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{
		Authenticate: func(r *http.Request) (any, error) {
			switch r.Header.Get("Authorization") {
			case "Bearer good":
				return "user", nil
			case "Bearer short":
				return expiringAuth{exp: time.Now().Add(200 * time.Millisecond)}, nil
			}
			return nil, &AuthError{Header: http.Header{"Www-Authenticate": {`Bearer error="invalid_token"`}}, Reason: "bad token"}
		},
	})
	_, resp, err := Dial(context.Background(), rs.url, &DialOptions{Header: http.Header{"Authorization": {"Bearer bad"}}})
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 || !strings.Contains(string(he.Body), "bad token") || resp.Header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
		t.Fatalf("refused upgrade: %v", err)
	}
	good := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer good"}})
	good.subscribe("doc")
	short := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer short"}})
	short.subscribe("doc")
	short.expectClosed(CloseUnauthorized, "token expired")
	good.send(&PingMessage{CorrelationID: "ok"})
	nextAs[*PongMessage](good)
}

func TestMaxConnections(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{MaxConnections: 1})
	c := dialRT(t, rs.url, nil)
	c.subscribe("doc")
	_, resp, err := Dial(context.Background(), rs.url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second connection: %v", err)
	}
}

// signalHandler is a log handler that signals ch (without blocking) each
// time a record with message msg is logged: tests wait on what the server
// decided rather than on time.
type signalHandler struct {
	slog.Handler
	msg string
	ch  chan struct{}
}

func (h *signalHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }

// TestDisconnectByAuth: closing one user's connections among others, while
// transactions flow to everyone, closes only theirs, with the chosen code
// and reason; the others keep receiving, and the counts follow.
func TestDisconnectByAuth(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{Authenticate: func(r *http.Request) (any, error) {
		return r.URL.Query().Get("user"), nil
	}})
	user := func(name string) func(any) bool { return func(auth any) bool { return auth == name } }
	alice := []*testClient{dialRT(t, rs.url+"?user=alice", nil), dialRT(t, rs.url+"?user=alice", nil)}
	bob := dialRT(t, rs.url+"?user=bob", nil)
	for _, c := range append(alice, bob) {
		c.subscribe("doc")
	}
	if n := rs.CountConnections(user("alice")); n != 2 {
		t.Fatalf("CountConnections(alice) = %d, want 2", n)
	}
	if _, err := rs.Disconnect(user("alice"), CloseCode(1005), ""); err == nil {
		t.Fatal("Disconnect with 1005 (never sent) did not fail")
	}
	set, _ := rs.mgr.Function("doc", "increment")
	stop := make(chan struct{})
	flowing := make(chan struct{})
	go func() { // transactions flow while the disconnect happens
		defer close(flowing)
		for {
			select {
			case <-stop:
				return
			default:
			}
			rs.mgr.Apply(context.Background(), "doc", set, json.RawMessage(`{"by":1}`))
		}
	}()
	n, err := rs.Disconnect(user("alice"), CloseCode(4010), "access revoked")
	if err != nil || n != 2 {
		t.Fatalf("Disconnect = %d, %v; want 2", n, err)
	}
	for _, c := range alice {
		c.expectClosed(CloseCode(4010), "access revoked")
	}
	close(stop)
	<-flowing
	// Bob still receives.
	nextAs[*TransactionMessage](bob)
	waitFor(t, func() bool { return rs.CountConnections(user("alice")) == 0 })
	if n := rs.CountConnections(func(any) bool { return true }); n != 1 {
		t.Fatalf("%d connections left, want bob's 1", n)
	}
}

// TestShutdownSpread: with ShutdownSpread, Shutdown closes its connections
// in batches over the period instead of all at once: the last close frame
// arrives most of the period after the first, and every client gets 1001.
func TestShutdownSpread(t *testing.T) {
	const spread = 500 * time.Millisecond
	rs := newRTServer(t, &ServerOptions{ShutdownSpread: spread})
	var clients []*testClient
	for i := 0; i < 20; i++ {
		c := dialRT(t, rs.url, nil)
		c.subscribe("doc")
		clients = append(clients, c)
	}
	start := time.Now()
	if err := rs.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	took := time.Since(start)
	for _, c := range clients {
		c.expectClosed(CloseGoingAway, "shutting down")
	}
	// The last batch is sent nine tenths of the period in; load can only
	// delay it.
	if min := spread * 9 / 10; took < min {
		t.Fatalf("Shutdown closed 20 connections in %v; spread over %v, the last batch goes after %v", took, spread, min)
	}
}

// TestShutdownSpreadContextEnds: a Shutdown whose context ends during the
// spread does not wait out the period: it returns the context's error and
// ends every connection not yet closed at once (with 1001 if its close
// frame goes out before the forced close, else 1006), as Shutdown does
// whenever its context ends.
func TestShutdownSpreadContextEnds(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{ShutdownSpread: time.Hour})
	c := dialRT(t, rs.url, nil)
	c.subscribe("doc")
	d := dialRT(t, rs.url, nil)
	d.subscribe("doc")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := rs.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, tc := range []*testClient{c, d} {
		for range tc.msgs { // both connections end: none waits for its batch
		}
		var ce *CloseError
		if !errors.As(tc.endErr(), &ce) || (ce.Code != CloseGoingAway && ce.Code != CloseAbnormalClosure) {
			t.Fatalf("connection ended with %v, want 1001 or, cut at the deadline, 1006", tc.endErr())
		}
	}
}
