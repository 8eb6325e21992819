package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// quietLogger drops logs, so tests that provoke warnings stay readable.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// testFunctions are the functions of the test share data: set replaces the
// state, increment adds proposedData.by to state.count, fail refuses.
var testFunctions = []Function{
	{ID: "set", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) { return p, nil }},
	{ID: "increment", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		var st struct{ Count int }
		var by struct{ By int }
		json.Unmarshal(cur, &st)
		if err := json.Unmarshal(p, &by); err != nil {
			return nil, errors.New("proposedData must be {\"by\": n}")
		}
		return json.RawMessage(`{"count":` + strconv.Itoa(st.Count+by.By) + `}`), nil
	}},
	{ID: "fail", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		return nil, errors.New("the function refused")
	}},
	{ID: "", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) { return p, nil }},
}

type rtServer struct {
	*Server
	mgr *MemoryManager
	url string
	hs  *httptest.Server
}

// newRTServer runs a Server over a MemoryManager holding "doc" (count 0)
// and "other", with the id-based resolver unless opts has another.
func newRTServer(t testing.TB, opts *ServerOptions) *rtServer {
	t.Helper()
	return startRTServer(t, opts, true)
}

// startRTServer is newRTServer; withResolver false leaves propose disabled
// when opts has no resolver.
func startRTServer(t testing.TB, opts *ServerOptions, withResolver bool) *rtServer {
	t.Helper()
	mgr := NewMemoryManager()
	for _, id := range []string{"doc", "other"} {
		if err := mgr.Create(context.Background(), id, json.RawMessage(`{"count":0}`), testFunctions...); err != nil {
			t.Fatal(err)
		}
	}
	o := ServerOptions{ResolveFunction: IDFunctionResolver(mgr), Logger: quietLogger}
	if opts != nil {
		o = *opts
		if o.Logger == nil {
			o.Logger = quietLogger
		}
		if o.ResolveFunction == nil && withResolver {
			o.ResolveFunction = IDFunctionResolver(mgr)
		}
	}
	srv := NewServer(mgr, &o)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, ErrServerClosed) {
			t.Errorf("Shutdown: %v", err)
		}
		hs.Close()
	})
	return &rtServer{Server: srv, mgr: mgr, url: wsURL(hs), hs: hs}
}

// testClient is a protocol client written with the package's Conn and
// codec, which reads every server message into a channel.
type testClient struct {
	t    testing.TB
	c    *Conn
	msgs chan ServerMessage
	done chan error // the error that ended the reader
}

func dialRT(t testing.TB, url string, header http.Header) *testClient {
	t.Helper()
	c, _, err := Dial(context.Background(), url, &DialOptions{Header: header, ConnOptions: ConnOptions{ReadLimit: 4 << 20}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	tc := &testClient{t: t, c: c, msgs: make(chan ServerMessage, 100000), done: make(chan error, 1)}
	go func() {
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				tc.done <- err
				close(tc.msgs)
				return
			}
			m, err := DecodeServerMessage(b)
			if err != nil {
				tc.done <- fmt.Errorf("server sent an invalid message %s: %w", b, err)
				close(tc.msgs)
				c.CloseNow()
				return
			}
			tc.msgs <- m
		}
	}()
	t.Cleanup(func() {
		c.CloseNow()
		for range tc.msgs {
		}
	})
	return tc
}

func (tc *testClient) send(m ClientMessage) {
	tc.t.Helper()
	if err := tc.c.Write(context.Background(), MessageText, m.AppendJSON(nil)); err != nil {
		tc.t.Fatalf("send: %v", err)
	}
}

func (tc *testClient) sendRaw(b string) {
	tc.t.Helper()
	if err := tc.c.Write(context.Background(), MessageText, []byte(b)); err != nil {
		tc.t.Fatalf("send: %v", err)
	}
}

// next returns the next server message, failing the test after 10 s.
func (tc *testClient) next() ServerMessage {
	tc.t.Helper()
	select {
	case m, ok := <-tc.msgs:
		if !ok {
			tc.t.Fatalf("connection ended: %v", tc.endErr())
		}
		return m
	case <-time.After(10 * time.Second):
		tc.t.Fatalf("no message within 10 s")
	}
	return nil
}

// quiet asserts that no message arrives for d.
func (tc *testClient) quiet(d time.Duration) {
	tc.t.Helper()
	select {
	case m, ok := <-tc.msgs:
		if ok {
			tc.t.Fatalf("unexpected message %s", m.AppendJSON(nil))
		}
	case <-time.After(d):
	}
}

func (tc *testClient) endErr() error {
	select {
	case err := <-tc.done:
		tc.done <- err
		return err
	case <-time.After(10 * time.Second):
		return errors.New("connection did not end")
	}
}

// expectClosed waits for the connection to end with a close frame of code.
func (tc *testClient) expectClosed(code CloseCode, reasonPart string) {
	tc.t.Helper()
	for range tc.msgs {
	}
	var ce *CloseError
	if err := tc.endErr(); !errors.As(err, &ce) || ce.Code != code || !strings.Contains(ce.Reason, reasonPart) {
		tc.t.Fatalf("connection ended with %v, want %s with a reason containing %q", err, code, reasonPart)
	}
}

func nextAs[T ServerMessage](tc *testClient) T {
	tc.t.Helper()
	m := tc.next()
	v, ok := m.(T)
	if !ok {
		var zero T
		tc.t.Fatalf("got %s, want a %T", m.AppendJSON(nil), zero)
	}
	return v
}

func (tc *testClient) subscribe(id string) *StateMessage {
	tc.t.Helper()
	tc.send(&SubscribeMessage{ShareDataID: id})
	return nextAs[*StateMessage](tc)
}

func (tc *testClient) propose(id, fn, data, cid string) {
	tc.t.Helper()
	tc.send(&ProposeMessage{ShareDataID: id, FunctionID: fn, ProposedData: json.RawMessage(data), CorrelationID: cid})
}

func TestSubscribeProposeAndFanOut(t *testing.T) {
	rs := newRTServer(t, nil)
	a, b := dialRT(t, rs.url, nil), dialRT(t, rs.url, nil)
	st := a.subscribe("doc")
	if string(st.CurrentState) != `{"count":0}` || st.LastTransactionID != "" {
		t.Fatalf("state %s", st.AppendJSON(nil))
	}
	b.subscribe("doc")

	a.propose("doc", "increment", `{"by":2}`, "c1")
	tx := nextAs[*TransactionMessage](a)
	res := nextAs[*ProposalResultMessage](a)
	if !res.Accepted || res.CorrelationID != "c1" || res.TransactionID != tx.TransactionID {
		t.Fatalf("result %s after %s", res.AppendJSON(nil), tx.AppendJSON(nil))
	}
	if tx.Replayed || string(tx.CurrentState) != `{"count":2}` || string(tx.ProposedData) != `{"by":2}` || tx.PreviousTransactionID != "" || tx.FunctionID != "increment" {
		t.Fatalf("transaction %s", tx.AppendJSON(nil))
	}
	txb := nextAs[*TransactionMessage](b)
	if string(txb.AppendJSON(nil)) != string(tx.AppendJSON(nil)) {
		t.Fatalf("subscribers got different frames")
	}
	b.propose("doc", "increment", `{"by":3}`, "c2")
	nextAs[*TransactionMessage](b)
	if res := nextAs[*ProposalResultMessage](b); !res.Accepted {
		t.Fatalf("%s", res.AppendJSON(nil))
	}
	tx2 := nextAs[*TransactionMessage](a)
	if tx2.PreviousTransactionID != tx.TransactionID || string(tx2.CurrentState) != `{"count":5}` {
		t.Fatalf("second transaction %s", tx2.AppendJSON(nil))
	}
	a.send(&PingMessage{CorrelationID: "p1"})
	if p := nextAs[*PongMessage](a); p.CorrelationID != "p1" {
		t.Fatalf("pong %q", p.CorrelationID)
	}
	// The other share data is independent.
	st = a.subscribe("other")
	if string(st.CurrentState) != `{"count":0}` {
		t.Fatalf("other: %s", st.AppendJSON(nil))
	}
	if s := rs.Stats(); s.Connections != 2 || s.Subscriptions != 3 || s.ProposalsAccepted != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestProposeRefusals(t *testing.T) {
	mgr := NewMemoryManager()
	mgr.Create(context.Background(), "doc", nil, testFunctions...)
	cases := []struct {
		name string
		opts ServerOptions
		fn   string
		want string
		id   string // "doc" when empty
	}{
		{"propose disabled", ServerOptions{}, "set", "propose is not enabled", ""},
		{"unknown function", ServerOptions{ResolveFunction: IDFunctionResolver(mgr)}, "nope", `unknown function "nope"`, ""},
		// A known function on an item that does not exist: the item is
		// what is unknown.
		{"unknown share data", ServerOptions{ResolveFunction: IDFunctionResolver(mgr)}, "set", `unknown share data "ghost"`, "ghost"},
		{"function without id", ServerOptions{ResolveFunction: IDFunctionResolver(mgr)}, "", "functionId: must not be empty", ""},
		{"function error", ServerOptions{ResolveFunction: IDFunctionResolver(mgr)}, "fail", "the function refused", ""},
		{"authorizer", ServerOptions{ResolveFunction: IDFunctionResolver(mgr), AuthorizePropose: func(ctx context.Context, auth any, id, fn string) error {
			return fmt.Errorf("%s may not be called", fn)
		}}, "set", "set may not be called", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			rs := startRTServer(t, &opts, false)
			c := dialRT(t, rs.url, nil)
			if tc.fn == "" {
				// An empty functionId does not even decode: 4004.
				c.sendRaw(`{"v":1,"type":"propose","shareDataId":"doc","functionId":"","proposedData":1,"correlationId":"c"}`)
				c.expectClosed(CloseInvalidMessage, tc.want)
				return
			}
			id := tc.id
			if id == "" {
				id = "doc"
			}
			c.propose(id, tc.fn, `{"by":1}`, "c9")
			res := nextAs[*ProposalResultMessage](c)
			if res.Accepted || res.CorrelationID != "c9" || !strings.Contains(res.Error, tc.want) {
				t.Fatalf("result %s, want a refusal containing %q", res.AppendJSON(nil), tc.want)
			}
			if rs.Stats().ProposalsRejected != 1 {
				t.Fatalf("stats %+v", rs.Stats())
			}
		})
	}
}

func TestResolverOfAnyKind(t *testing.T) {
	var calls []string
	var mu sync.Mutex
	rs := newRTServer(t, &ServerOptions{ResolveFunction: func(ctx context.Context, id, fn string) (Function, error) {
		mu.Lock()
		calls = append(calls, id+"/"+fn)
		mu.Unlock()
		return Function{ID: fn, Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
			return json.RawMessage(`"custom"`), nil
		}}, nil
	}})
	c := dialRT(t, rs.url, nil)
	c.propose("doc", "anything", `null`, "c")
	if res := nextAs[*ProposalResultMessage](c); !res.Accepted {
		t.Fatalf("%s", res.AppendJSON(nil))
	}
	st := c.subscribe("doc")
	mu.Lock()
	defer mu.Unlock()
	if string(st.CurrentState) != `"custom"` || len(calls) != 1 || calls[0] != "doc/anything" {
		t.Fatalf("state %s, calls %v", st.CurrentState, calls)
	}
}

func TestSubscribeErrors(t *testing.T) {
	t.Run("unknown share data closes with 4003", func(t *testing.T) {
		rs := newRTServer(t, nil)
		c := dialRT(t, rs.url, nil)
		c.send(&SubscribeMessage{ShareDataID: "missing"})
		c.expectClosed(CloseUnknownShareData, `"missing"`)
	})
	t.Run("authorizer denial is an error frame", func(t *testing.T) {
		var gotAuth atomic.Value
		rs := newRTServer(t, &ServerOptions{
			Authenticate: func(r *http.Request) (any, error) { return "user-" + r.URL.Query().Get("u"), nil },
			AuthorizeSubscribe: func(ctx context.Context, auth any, id string) error {
				gotAuth.Store(auth)
				if id == "other" {
					return errors.New("not yours")
				}
				return nil
			},
		})
		c := dialRT(t, rs.url+"?u=ann", nil)
		c.send(&SubscribeMessage{ShareDataID: "other"})
		e := nextAs[*ErrorMessage](c)
		if e.Code != CodeForbidden || e.Message != "not yours" || e.ShareDataID != "other" || gotAuth.Load() != "user-ann" {
			t.Fatalf("%s, auth %v", e.AppendJSON(nil), gotAuth.Load())
		}
		c.subscribe("doc") // the connection stays usable
	})
	t.Run("too many subscriptions", func(t *testing.T) {
		rs := newRTServer(t, &ServerOptions{MaxSubscriptionsPerConnection: 1})
		c := dialRT(t, rs.url, nil)
		c.subscribe("doc")
		c.send(&SubscribeMessage{ShareDataID: "other"})
		if e := nextAs[*ErrorMessage](c); e.Code != CodeTooManySubscriptions {
			t.Fatalf("%s", e.AppendJSON(nil))
		}
		c.subscribe("doc") // resubscribing an id already held is fine
	})
}

func TestInvalidMessages(t *testing.T) {
	rs := newRTServer(t, nil)
	t.Run("undecodable closes with 4004 and the reason", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.sendRaw(`{"v":1,"type":"subscribe","shareDataId":7}`)
		c.expectClosed(CloseInvalidMessage, "shareDataId: must be a string, got a number")
	})
	t.Run("wrong version", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.sendRaw(`{"v":2,"type":"ping","correlationId":"x"}`)
		c.expectClosed(CloseInvalidMessage, "v: protocol version")
	})
	t.Run("binary closes with 1003", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.c.Write(context.Background(), MessageBinary, []byte(`{"v":1,"type":"ping","correlationId":"x"}`))
		c.expectClosed(CloseUnsupportedData, "binary")
	})
	t.Run("frames queued before are delivered first", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.send(&PingMessage{CorrelationID: "first"})
		c.sendRaw(`nope`)
		if p := nextAs[*PongMessage](c); p.CorrelationID != "first" {
			t.Fatal(p)
		}
		c.expectClosed(CloseInvalidMessage, "message: not a JSON object")
	})
	t.Run("message over the read limit", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.sendRaw(`{"v":1,"type":"propose","shareDataId":"doc","functionId":"set","correlationId":"c","proposedData":"` + strings.Repeat("x", defaultReadLimit) + `"}`)
		c.expectClosed(CloseMessageTooBig, "read limit")
	})
}

func TestReplay(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{ReplayBufferSize: 3})
	ctx := context.Background()
	set, _ := rs.mgr.Function("doc", "set")
	var ids []string
	for i := 1; i <= 5; i++ {
		tx, err := rs.mgr.Apply(ctx, "doc", set, json.RawMessage(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tx.ID)
	}
	t.Run("since inside the window", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.send(&SubscribeMessage{ShareDataID: "doc", Since: ids[2], HasSince: true})
		st := nextAs[*StateMessage](c)
		if st.LastTransactionID != ids[4] || string(st.CurrentState) != "5" {
			t.Fatalf("state %s", st.AppendJSON(nil))
		}
		for _, want := range ids[3:] {
			tx := nextAs[*TransactionMessage](c)
			if !tx.Replayed || tx.CurrentState != nil || tx.TransactionID != want {
				t.Fatalf("replayed %s, want %s", tx.AppendJSON(nil), want)
			}
		}
		c.quiet(50 * time.Millisecond)
	})
	t.Run("since just before the window", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.send(&SubscribeMessage{ShareDataID: "doc", Since: ids[1], HasSince: true})
		nextAs[*StateMessage](c)
		for _, want := range ids[2:] {
			if tx := nextAs[*TransactionMessage](c); tx.TransactionID != want {
				t.Fatalf("got %s want %s", tx.TransactionID, want)
			}
		}
	})
	for name, since := range map[string]string{"too old": ids[0], "unknown": "elsewhere-1", "from the start, evicted": ""} {
		t.Run("since "+name, func(t *testing.T) {
			c := dialRT(t, rs.url, nil)
			c.send(&SubscribeMessage{ShareDataID: "doc", Since: since, HasSince: true})
			nextAs[*StateMessage](c)
			e := nextAs[*ErrorMessage](c)
			if e.Code != CodeReplayCursorNotFound || e.ShareDataID != "doc" {
				t.Fatalf("%s", e.AppendJSON(nil))
			}
			c.quiet(50 * time.Millisecond)
		})
	}
	t.Run("since equal to the last transaction", func(t *testing.T) {
		c := dialRT(t, rs.url, nil)
		c.send(&SubscribeMessage{ShareDataID: "doc", Since: ids[4], HasSince: true})
		nextAs[*StateMessage](c)
		c.quiet(50 * time.Millisecond)
	})
	t.Run("since equal to the last transaction after a restart", func(t *testing.T) {
		// A new server over the same manager: its replay window is empty.
		srv2 := NewServer(rs.mgr, &ServerOptions{Logger: quietLogger})
		hs := httptest.NewServer(srv2)
		defer hs.Close()
		defer srv2.Shutdown(context.Background())
		c := dialRT(t, wsURL(hs), nil)
		c.send(&SubscribeMessage{ShareDataID: "doc", Since: ids[4], HasSince: true})
		nextAs[*StateMessage](c)
		c.quiet(50 * time.Millisecond)
		c.c.Close(CloseNormalClosure, "")
	})
	t.Run("since from the start of a young item", func(t *testing.T) {
		rs.mgr.Create(context.Background(), "young", json.RawMessage(`0`), testFunctions...)
		tx, _ := rs.mgr.Apply(ctx, "young", set, json.RawMessage(`1`))
		c := dialRT(t, rs.url, nil)
		c.send(&SubscribeMessage{ShareDataID: "young", Since: "", HasSince: true})
		nextAs[*StateMessage](c)
		if r := nextAs[*TransactionMessage](c); r.TransactionID != tx.ID || !r.Replayed {
			t.Fatalf("%s", r.AppendJSON(nil))
		}
	})
}

func TestUnsubscribeAndResubscribe(t *testing.T) {
	rs := newRTServer(t, nil)
	c, p := dialRT(t, rs.url, nil), dialRT(t, rs.url, nil)
	c.subscribe("doc")
	c.subscribe("other")
	c.send(&UnsubscribeMessage{ShareDataID: "doc"})
	c.send(&UnsubscribeMessage{ShareDataID: "never-subscribed"})
	c.send(&PingMessage{CorrelationID: "sync"}) // the unsubscribes are done once this is answered
	nextAs[*PongMessage](c)
	p.propose("doc", "increment", `{"by":1}`, "a")
	nextAs[*ProposalResultMessage](p)
	p.propose("other", "increment", `{"by":1}`, "b")
	nextAs[*ProposalResultMessage](p)
	if tx := nextAs[*TransactionMessage](c); tx.ShareDataID != "other" {
		t.Fatalf("got a frame for %s after unsubscribing", tx.ShareDataID)
	}
	// Subscribing twice: a fresh state, then each transaction once.
	c.subscribe("other")
	st := c.subscribe("other")
	if string(st.CurrentState) != `{"count":1}` {
		t.Fatalf("%s", st.AppendJSON(nil))
	}
	p.propose("other", "increment", `{"by":1}`, "c")
	nextAs[*TransactionMessage](c)
	c.quiet(100 * time.Millisecond)
	if s := rs.Stats(); s.Subscriptions != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestLifecycle(t *testing.T) {
	rs := newRTServer(t, nil)
	c := dialRT(t, rs.url, nil)
	c.subscribe("doc")
	c.subscribe("other")
	if err := rs.mgr.Update(context.Background(), "doc", json.RawMessage(`{"count": 100}`)); err != nil {
		t.Fatal(err)
	}
	lc := nextAs[*LifecycleMessage](c)
	if lc.Event != LifecycleUpdated || string(lc.CurrentState) != `{"count":100}` {
		t.Fatalf("%s", lc.AppendJSON(nil))
	}
	c.propose("doc", "increment", `{"by":1}`, "x")
	if tx := nextAs[*TransactionMessage](c); string(tx.CurrentState) != `{"count":101}` {
		t.Fatalf("%s", tx.AppendJSON(nil))
	}
	nextAs[*ProposalResultMessage](c)
	last := rs.mgr // keep the cursor for the replay check below
	snap, _ := last.Snapshot(context.Background(), "doc")

	if err := rs.mgr.Remove(context.Background(), "doc"); err != nil {
		t.Fatal(err)
	}
	if lc := nextAs[*LifecycleMessage](c); lc.Event != LifecycleRemoved || lc.ShareDataID != "doc" || lc.CurrentState != nil {
		t.Fatalf("%s", lc.AppendJSON(nil))
	}
	waitFor(t, func() bool { return rs.Stats().Subscriptions == 1 }) // the doc subscription ended
	// The replay window went with it: a new item of the same id does not
	// replay the old history.
	rs.mgr.Create(context.Background(), "doc", json.RawMessage(`0`), testFunctions...)
	c.send(&SubscribeMessage{ShareDataID: "doc", Since: snap.LastTransactionID, HasSince: true})
	if st := nextAs[*StateMessage](c); string(st.CurrentState) != "0" {
		t.Fatalf("%s", st.AppendJSON(nil))
	}
	if e := nextAs[*ErrorMessage](c); e.Code != CodeReplayCursorNotFound {
		t.Fatalf("%s", e.AppendJSON(nil))
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEventLost: a registry that reports lost events makes the server close
// the connections subscribed to that share data with 4001; others stay.
func TestEventLost(t *testing.T) {
	reg := NewMemoryChannelRegistry()
	rs := newRTServer(t, &ServerOptions{Registry: reg})
	a, b := dialRT(t, rs.url, nil), dialRT(t, rs.url, nil)
	a.subscribe("doc")
	b.subscribe("other")
	reg.Publish(context.Background(), Event{Kind: EventLost, ShareDataID: "doc"})
	a.expectClosed(CloseFellBehind, "lost")
	b.send(&PingMessage{CorrelationID: "still"})
	nextAs[*PongMessage](b)
}

// TestSkipManagerEvents: a second server over the same manager and
// registry does not publish the manager's events again; its subscribers
// get each transaction once, from the first server's publication.
func TestSkipManagerEvents(t *testing.T) {
	reg := NewMemoryChannelRegistry()
	rs := newRTServer(t, &ServerOptions{Registry: reg})
	var published atomic.Int32
	detach := reg.Attach(func(ev Event) { published.Add(1) })
	defer detach()
	second := NewServer(rs.mgr, &ServerOptions{Registry: reg, SkipManagerEvents: true, Logger: quietLogger})
	hs := httptest.NewServer(second)
	defer hs.Close()
	defer second.Shutdown(context.Background())
	c := dialRT(t, wsURL(hs), nil)
	c.subscribe("doc")
	set, _ := rs.mgr.Function("doc", "set")
	rs.mgr.Apply(context.Background(), "doc", set, json.RawMessage(`1`))
	if tx := nextAs[*TransactionMessage](c); string(tx.CurrentState) != "1" {
		t.Fatalf("%s", tx.AppendJSON(nil))
	}
	c.quiet(50 * time.Millisecond)
	if n := published.Load(); n != 1 {
		t.Fatalf("published %d times, want once", n)
	}
}
