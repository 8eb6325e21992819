package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// restartable is a realtime server on a fixed address that can be stopped
// and started again (a new Server and listener, the same manager).
type restartable struct {
	t    *testing.T
	mgr  *MemoryManager
	opts ServerOptions
	addr string
	// wrap, when set, wraps each listener (to tune the accepted sockets).
	wrap func(net.Listener) net.Listener

	mu  sync.Mutex
	srv *Server
	hs  *http.Server
}

func newRestartable(t *testing.T, opts ServerOptions) *restartable {
	mgr := NewMemoryManager()
	mgr.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), testFunctions...)
	if opts.ResolveFunction == nil {
		opts.ResolveFunction = IDFunctionResolver(mgr)
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger
	}
	r := &restartable{t: t, mgr: mgr, opts: opts}
	r.newServer()
	r.listen()
	t.Cleanup(r.stop)
	return r
}

func (r *restartable) url() string { return "ws://" + r.addr + "/" }

// newServer makes the next Server: from now on it records transactions.
func (r *restartable) newServer() {
	r.mu.Lock()
	r.srv = NewServer(r.mgr, &r.opts)
	r.mu.Unlock()
}

// listen serves the current Server on the address.
func (r *restartable) listen() {
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	if r.wrap != nil {
		ln = r.wrap(ln)
	}
	r.mu.Lock()
	r.hs = &http.Server{Handler: r.srv}
	hs := r.hs
	r.mu.Unlock()
	go hs.Serve(ln)
}

// stop shuts the server down and closes its listener.
func (r *restartable) stop() {
	r.mu.Lock()
	srv, hs := r.srv, r.hs
	r.hs = nil
	r.mu.Unlock()
	if hs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	hs.Close()
}

// newTestClient makes a client with fast reconnects, closed at cleanup.
func newTestClient(t *testing.T, url string, opts ClientOptions) (*Client, *stateLog) {
	t.Helper()
	states := &stateLog{}
	if opts.ReconnectMin == 0 {
		opts.ReconnectMin = 10 * time.Millisecond
	}
	if opts.ReconnectMax == 0 {
		opts.ReconnectMax = 100 * time.Millisecond
	}
	opts.OnStateChange = states.add
	if opts.Logger == nil {
		opts.Logger = quietLogger
	}
	c, err := NewClient(url, &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, states
}

type stateLog struct {
	mu  sync.Mutex
	all []StateChange
}

func (l *stateLog) add(sc StateChange) {
	l.mu.Lock()
	l.all = append(l.all, sc)
	l.mu.Unlock()
}

// count returns how many changes matched.
func (l *stateLog) count(match func(StateChange) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, sc := range l.all {
		if match(sc) {
			n++
		}
	}
	return n
}

func closedWith(code CloseCode) func(StateChange) bool {
	return func(sc StateChange) bool { return sc.State == ClientClosed && sc.Code == code }
}

func isOpen(sc StateChange) bool { return sc.State == ClientOpen }

// collector reads a subscription's messages into a list.
type collector struct {
	mu   sync.Mutex
	msgs []ServerMessage
	done chan struct{}
}

func collect(s *Subscription) *collector {
	col := &collector{done: make(chan struct{})}
	go func() {
		defer close(col.done)
		for m := range s.Messages() {
			col.mu.Lock()
			col.msgs = append(col.msgs, m)
			col.mu.Unlock()
		}
	}()
	return col
}

func (col *collector) snapshot() []ServerMessage {
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]ServerMessage(nil), col.msgs...)
}

// waitFor waits until cond holds for the collected messages.
func (col *collector) waitFor(t *testing.T, what string, cond func([]ServerMessage) bool) []ServerMessage {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		msgs := col.snapshot()
		if cond(msgs) {
			return msgs
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, m := range msgs {
				b.Write(m.AppendJSON(nil))
				b.WriteByte('\n')
			}
			t.Fatalf("waiting for %s; got:\n%s", what, b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// transactionIDs lists the ids of the transactions among msgs.
func transactionIDs(msgs []ServerMessage) []string {
	var ids []string
	for _, m := range msgs {
		if tx, ok := m.(*TransactionMessage); ok {
			ids = append(ids, tx.TransactionID)
		}
	}
	return ids
}

// TestClientSurvivesServerRestart: the server is stopped and started again
// (a new listener on the same address, the same manager) while
// transactions are applied; after the reconnect the missed ones arrive
// replayed, every transaction exactly once, and the state matches.
func TestClientSurvivesServerRestart(t *testing.T) {
	rs := newRestartable(t, ServerOptions{ReplayBufferSize: 500})
	var history []string
	var hmu sync.Mutex
	stopHistory := rs.mgr.Listen(func(ev Event) {
		if ev.Kind == EventTransaction {
			hmu.Lock()
			history = append(history, ev.Transaction.ID)
			hmu.Unlock()
		}
	})
	defer stopHistory()
	c, states := newTestClient(t, rs.url(), ClientOptions{})
	sub, _ := c.Subscribe("doc", nil)
	col := collect(sub)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the state", func(m []ServerMessage) bool { return len(m) == 1 })
	inc, _ := rs.mgr.Function("doc", "increment")
	apply := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := rs.mgr.Apply(context.Background(), "doc", inc, json.RawMessage(`{"by":1}`)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	apply(30)
	rs.stop()      // the client sees 1001 and starts redialing
	rs.newServer() // the next instance records from here
	apply(40)      // applied while no server is listening
	rs.listen()
	apply(30)

	want := func() []string { hmu.Lock(); defer hmu.Unlock(); return append([]string(nil), history...) }()
	msgs := col.waitFor(t, "the last transaction", func(msgs []ServerMessage) bool {
		ids := transactionIDs(msgs)
		return len(ids) > 0 && ids[len(ids)-1] == want[len(want)-1]
	})
	if got := transactionIDs(msgs); strings.Join(got, ",") != strings.Join(want, ",") {
		var b strings.Builder
		for _, m := range msgs {
			b.Write(m.AppendJSON(nil)[:min(150, len(m.AppendJSON(nil)))])
			b.WriteByte('\n')
		}
		t.Fatalf("delivered %d transactions, want the %d applied, each once in order:\n%s", len(got), len(want), b.String())
	}
	replayed := 0
	for _, m := range msgs {
		if tx, ok := m.(*TransactionMessage); ok && tx.Replayed {
			replayed++
		}
	}
	if replayed < 40 {
		t.Fatalf("only %d transactions were replayed, want at least the 40 missed", replayed)
	}
	snap, _ := rs.mgr.Snapshot(context.Background(), "doc")
	if cur, _ := sub.Cursor(); string(snap.State) != `{"count":100}` || cur != snap.LastTransactionID {
		t.Fatalf("state %s, cursor %s, want %s", snap.State, cur, snap.LastTransactionID)
	}
	if states.count(closedWith(CloseGoingAway)) != 1 || states.count(isOpen) != 2 {
		t.Fatalf("state changes %+v", states.all)
	}
}

// TestClientQueueWhileDisconnected: proposals made while disconnected are
// sent after the reconnect, in order; the queue overflows with
// ErrQueueFull; a request's timeout counts from the call.
func TestClientQueueWhileDisconnected(t *testing.T) {
	rs := newRestartable(t, ServerOptions{})
	c, _ := newTestClient(t, rs.url(), ClientOptions{MaxQueueSize: 3, RequestTimeout: 5 * time.Second})
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	rs.stop()
	rs.newServer()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.conn == nil })

	// A request that times out while queued is never sent.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	start := time.Now()
	_, err := c.Propose(ctx, "doc", "set", json.RawMessage(`"timed out"`))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("Propose: %v after %v", err, time.Since(start))
	}

	results := make([]chan error, 3)
	for i := range results {
		results[i] = make(chan error, 1)
		go func() {
			_, err := c.Propose(context.Background(), "doc", "set", json.RawMessage(strconv.Itoa(i)))
			results[i] <- err
		}()
		waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == i+1 })
	}
	if _, err := c.Propose(context.Background(), "doc", "set", json.RawMessage(`"overflow"`)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("fourth Propose: %v, want ErrQueueFull", err)
	}
	var applied []string
	var amu sync.Mutex
	stop := rs.mgr.Listen(func(ev Event) {
		amu.Lock()
		applied = append(applied, string(ev.Transaction.ProposedData))
		amu.Unlock()
	})
	defer stop()
	rs.listen()
	for i, ch := range results {
		if err := <-ch; err != nil {
			t.Fatalf("queued Propose %d: %v", i, err)
		}
	}
	amu.Lock()
	defer amu.Unlock()
	if strings.Join(applied, ",") != "0,1,2" {
		t.Fatalf("applied %v, want 0,1,2 in order and not the timed-out one", applied)
	}
	if rtt, err := c.Ping(context.Background()); err != nil || rtt <= 0 {
		t.Fatalf("Ping: %v %v", rtt, err)
	}
}

// TestClientTimeoutCountsFromCall: a request queued for longer than
// RequestTimeout fails then, even though the connection comes back later.
func TestClientTimeoutCountsFromCall(t *testing.T) {
	rs := newRestartable(t, ServerOptions{})
	c, _ := newTestClient(t, rs.url(), ClientOptions{RequestTimeout: 300 * time.Millisecond})
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	rs.stop()
	rs.newServer()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.conn == nil })
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.Ping(context.Background())
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	rs.listen() // back before the timeout, but the timeout still counts from the call
	err := <-done
	if err != nil && (!errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second) {
		t.Fatalf("Ping: %v after %v", err, time.Since(start))
	}
	// A success can only come before the timeout (plus scheduling slack).
	if err == nil && time.Since(start) > 300*time.Millisecond+time.Second {
		t.Fatalf("Ping succeeded after %v, past its 300 ms timeout", time.Since(start))
	}
}

// TestClientRecoversFrom4001: the server closes the client as a slow
// consumer (a frame larger than its send cap); the client reconnects with
// since and the transactions it did not see are replayed.
func TestClientRecoversFrom4001(t *testing.T) {
	rs := newRestartable(t, ServerOptions{MaxBufferedBytes: 1024})
	big := Function{ID: "big", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`"` + strings.Repeat("x", 2000) + `"`), nil
	}}
	rs.mgr.AddFunction("doc", big)
	c, states := newTestClient(t, rs.url(), ClientOptions{})
	sub, _ := c.Subscribe("doc", nil)
	col := collect(sub)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the state", func(m []ServerMessage) bool { return len(m) == 1 })
	set, _ := rs.mgr.Function("doc", "set")
	tx1, _ := rs.mgr.Apply(context.Background(), "doc", big, json.RawMessage(`1`)) // 2 KiB state: over the cap
	tx2, _ := rs.mgr.Apply(context.Background(), "doc", set, json.RawMessage(`"small"`))
	msgs := col.waitFor(t, "the replay", func(m []ServerMessage) bool { return len(transactionIDs(m)) == 2 })
	st, ok := msgs[1].(*StateMessage)
	if !ok || st.LastTransactionID != tx2.ID || string(st.CurrentState) != `"small"` {
		t.Fatalf("after the reconnect: %s", msgs[1].AppendJSON(nil))
	}
	for i, want := range []string{tx1.ID, tx2.ID} {
		tx := msgs[2+i].(*TransactionMessage)
		if tx.TransactionID != want || !tx.Replayed {
			t.Fatalf("replayed %s, want %s", tx.AppendJSON(nil), want)
		}
	}
	if states.count(closedWith(CloseFellBehind)) != 1 {
		t.Fatalf("state changes %+v", states.all)
	}
}

// TestClientRefreshesToken: the token expires, the server closes with
// 4002, the client asks its Token function again and reconnects with the
// new token; without a new token it stops.
func TestClientRefreshesToken(t *testing.T) {
	k := getKeys(t)
	authenticate, _ := NewJWTAuthenticator(JWTOptions{Authorities: testAuthorities(k)})
	rs := newRestartable(t, ServerOptions{Authenticate: authenticate, AuthorizeSubscribe: ShareDataAudienceAuthorizer})
	var calls atomic.Int32
	var refuse atomic.Bool
	token := func(ctx context.Context) (string, error) {
		calls.Add(1)
		if refuse.Load() {
			return "", nil
		}
		return sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) {
			c["exp"] = time.Now().Add(1500 * time.Millisecond).Unix()
		})), nil
	}
	c, states := newTestClient(t, rs.url(), ClientOptions{Token: token})
	sub, _ := c.Subscribe("doc", nil)
	col := collect(sub)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "a state after a 4002 reconnect", func(m []ServerMessage) bool { return len(m) >= 2 })
	if states.count(closedWith(CloseUnauthorized)) < 1 || states.count(isOpen) < 2 || calls.Load() < 3 {
		t.Fatalf("token calls %d, state changes %+v", calls.Load(), states.all)
	}
	refuse.Store(true)
	select {
	case <-c.stoppedCh:
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not stop without a token")
	}
	<-col.done
	if err := sub.Err(); err == nil || !strings.Contains(err.Error(), "4002") {
		t.Fatalf("subscription ended with %v", err)
	}
}

// fakeServer runs handler for each WebSocket connection, with the
// protocol written by hand in the test.
func fakeServer(t *testing.T, handler func(c *Conn)) string {
	srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		handler(c)
	})
	return wsURL(srv)
}

func readClientMessage(c *Conn) (ClientMessage, error) {
	_, b, err := c.Read(context.Background())
	if err != nil {
		return nil, err
	}
	return DecodeClientMessage(b)
}

func writeServer(c *Conn, m ServerMessage) {
	c.Write(context.Background(), MessageText, m.AppendJSON(nil))
}

// TestClientGapDetection: a live transaction whose previousTransactionId
// is not the subscription's cursor is not applied; the client resubscribes
// with since = its cursor.
func TestClientGapDetection(t *testing.T) {
	resubscribed := make(chan *SubscribeMessage, 1)
	url := fakeServer(t, func(c *Conn) {
		m, err := readClientMessage(c)
		if err != nil {
			return
		}
		writeServer(c, &StateMessage{ShareDataID: "doc", CurrentState: json.RawMessage(`1`), LastTransactionID: "A"})
		// B was lost: C follows B, not A.
		writeServer(c, &TransactionMessage{ShareDataID: "doc", TransactionID: "C", PreviousTransactionID: "B", FunctionID: "f", ProposedData: json.RawMessage(`0`), CurrentState: json.RawMessage(`3`)})
		_ = m
		m2, err := readClientMessage(c)
		if err != nil {
			return
		}
		resubscribed <- m2.(*SubscribeMessage)
		writeServer(c, &StateMessage{ShareDataID: "doc", CurrentState: json.RawMessage(`3`), LastTransactionID: "C"})
		writeServer(c, &TransactionMessage{ShareDataID: "doc", TransactionID: "B", PreviousTransactionID: "A", FunctionID: "f", ProposedData: json.RawMessage(`0`), Replayed: true})
		writeServer(c, &TransactionMessage{ShareDataID: "doc", TransactionID: "C", PreviousTransactionID: "B", FunctionID: "f", ProposedData: json.RawMessage(`0`), Replayed: true})
		writeServer(c, &TransactionMessage{ShareDataID: "doc", TransactionID: "D", PreviousTransactionID: "C", FunctionID: "f", ProposedData: json.RawMessage(`0`), CurrentState: json.RawMessage(`4`)})
		readClientMessage(c) // until the client closes
	})
	c, _ := newTestClient(t, url, ClientOptions{})
	sub, _ := c.Subscribe("doc", nil)
	col := collect(sub)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-resubscribed:
		if !m.HasSince || m.Since != "A" || m.ShareDataID != "doc" {
			t.Fatalf("resubscribe %s", m.AppendJSON(nil))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no resubscribe after the gap")
	}
	msgs := col.waitFor(t, "D", func(m []ServerMessage) bool { ids := transactionIDs(m); return len(ids) > 0 && ids[len(ids)-1] == "D" })
	var got []string
	for _, m := range msgs {
		switch m := m.(type) {
		case *StateMessage:
			got = append(got, "state:"+m.LastTransactionID)
		case *TransactionMessage:
			got = append(got, fmt.Sprint(m.TransactionID, m.Replayed))
		}
	}
	if strings.Join(got, " ") != "state:A state:C Btrue Ctrue Dfalse" {
		t.Fatalf("delivered %v", got)
	}
	if cur, ok := sub.Cursor(); cur != "D" || !ok {
		t.Fatalf("cursor %q %v", cur, ok)
	}
}

// TestClientUnknownShareData: a subscribe to an unknown id ends that
// subscription with an error; the client reconnects and the others go on.
func TestClientUnknownShareData(t *testing.T) {
	rs := newRestartable(t, ServerOptions{})
	c, states := newTestClient(t, rs.url(), ClientOptions{})
	good, _ := c.Subscribe("doc", nil)
	col := collect(good)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the state", func(m []ServerMessage) bool { return len(m) == 1 })
	bad, _ := c.Subscribe("missing", nil)
	for range bad.Messages() {
	}
	var se *SubscriptionError
	if err := bad.Err(); !errors.As(err, &se) || se.ShareDataID != "missing" {
		t.Fatalf("bad subscription ended with %v", err)
	}
	col.waitFor(t, "the state after the reconnect", func(m []ServerMessage) bool { return len(m) == 2 })
	if _, err := c.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`)); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the transaction", func(m []ServerMessage) bool { return len(transactionIDs(m)) == 1 })
	if states.count(closedWith(CloseUnknownShareData)) != 1 {
		t.Fatalf("%+v", states.all)
	}
	var pe *ProposalError
	if _, err := c.Propose(context.Background(), "doc", "fail", json.RawMessage(`1`)); !errors.As(err, &pe) || !strings.Contains(pe.Reason, "refused") {
		t.Fatalf("refused proposal: %v", err)
	}
}

// TestClientHeartbeat: a server that goes silent is given up within
// HeartbeatTimeout and redialed.
func TestClientHeartbeat(t *testing.T) {
	var conns atomic.Int32
	url := fakeServer(t, func(c *Conn) {
		conns.Add(1)
		readClientMessage(c) // then silence, until the client gives up
	})
	c, states := newTestClient(t, url, ClientOptions{HeartbeatTimeout: 200 * time.Millisecond})
	c.Subscribe("doc", nil)
	start := time.Now()
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return conns.Load() >= 2 })
	if time.Since(start) > 5*time.Second || states.count(func(sc StateChange) bool { return sc.State == ClientClosed }) < 1 {
		t.Fatalf("after %v: %+v", time.Since(start), states.all)
	}
}

// TestClientClose: Close fails pending requests, ends subscriptions and
// leaves no goroutine (TestMain checks the last part).
func TestClientClose(t *testing.T) {
	rs := newRestartable(t, ServerOptions{})
	c, _ := newTestClient(t, rs.url(), ClientOptions{})
	sub, _ := c.Subscribe("doc", nil)
	col := collect(sub)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	rs.stop()
	rs.newServer()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.conn == nil })
	errc := make(chan error, 1)
	go func() {
		_, err := c.Propose(context.Background(), "doc", "set", json.RawMessage(`1`))
		errc <- err
	}()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == 1 })
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClientClosed) {
		t.Fatalf("pending Propose: %v", err)
	}
	<-col.done
	if !errors.Is(sub.Err(), ErrClientClosed) {
		t.Fatalf("subscription: %v", sub.Err())
	}
	if _, err := c.Subscribe("other", nil); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
}

// TestClientErrorFrameAnswer: a request answered by an error frame returns
// that frame as the error, so the caller can match its code.
func TestClientErrorFrameAnswer(t *testing.T) {
	url := fakeServer(t, func(c *Conn) {
		m, err := readClientMessage(c)
		if err != nil {
			return
		}
		p := m.(*ProposeMessage)
		writeServer(c, &ErrorMessage{Code: "rate-limited", Message: "slow down", CorrelationID: p.CorrelationID})
		readClientMessage(c) // until the client closes
	})
	c, _ := newTestClient(t, url, ClientOptions{})
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := c.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`))
	var em *ErrorMessage
	if !errors.As(err, &em) || em.Code != "rate-limited" || err.Error() != "realtime: the server answered rate-limited: slow down" {
		t.Fatalf("Propose: %v", err)
	}
}
