package realtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The tests of this file each pin down one way the delivery guarantees
// broke under a fault (issue 12, items 1 to 7): each failed on the code
// before the fix.

// padded is an increment proposal of about n bytes.
func padded(n int) json.RawMessage {
	return json.RawMessage(`{"by":1,"pad":"` + strings.Repeat("x", n) + `"}`)
}

// applyN applies n padded increments to "doc" and returns their ids.
func applyN(t *testing.T, mgr *MemoryManager, n, size int) []string {
	t.Helper()
	fn, _ := mgr.Function("doc", "increment")
	ids := make([]string, 0, n)
	for i := 0; i < n; i++ {
		tx, err := mgr.Apply(context.Background(), "doc", fn, padded(size))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tx.ID)
	}
	return ids
}

// deliveredOnce fails unless the transactions among msgs are want, each
// once and in order (replayed or live).
func deliveredOnce(t *testing.T, msgs []ServerMessage, want []string) {
	t.Helper()
	got := transactionIDs(msgs)
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	missing, twice := 0, 0
	for _, id := range want {
		switch seen[id] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	if missing > 0 || twice > 0 || strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%d of %d transactions never delivered, %d delivered twice; got %d in all", missing, len(want), twice, len(got))
	}
}

// TestReplayCutMidwayResumes (item 1): 100 transactions of 60 KiB are
// applied while a client is away; its connection is cut during the replay.
// The next subscribe resumes from the last replayed transaction the client
// received, so every one of the 100 is delivered, once.
func TestReplayCutMidwayResumes(t *testing.T) {
	// A cap far above the window, so only the cursor rule is under test.
	rs := newRestartable(t, ServerOptions{MaxBufferedBytes: 64 << 20})
	away := make(chan struct{})
	var missed []string
	p := newFaultProxy(t, rs.addr, func(n int) proxyPlan {
		if n == 1 {
			<-away // the redial waits while the transactions are applied
			return proxyPlan{cutDownAt: 1 << 20, reset: n%2 == 1}
		}
		return proxyPlan{}
	})
	c, states := newTestClient(t, p.url(), ClientOptions{})
	sub, _ := c.Subscribe("doc", nil)
	col := collect(sub)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the state", func(m []ServerMessage) bool { return len(m) == 1 })
	p.cutAll()
	missed = applyN(t, rs.mgr, 100, 60<<10)
	close(away)
	col.waitFor(t, "the 100 transactions", func(m []ServerMessage) bool {
		ids := transactionIDs(m)
		return len(ids) > 0 && ids[len(ids)-1] == missed[99]
	})
	deliveredOnce(t, col.snapshot(), missed)
	if p.resets.Load() != 1 || states.count(isOpen) != 3 {
		t.Fatalf("want one cut mid-replay and three connections, got %d cuts, %d opens", p.resets.Load(), states.count(isOpen))
	}
}

// TestReplayLargerThanCap (item 2): a replay window of 100 × 60 KiB,
// six times the default 1 MiB send cap, reaches a subscriber that keeps
// reading, followed by the live transactions applied during it, in order,
// with no 4001.
func TestReplayLargerThanCap(t *testing.T) {
	rs := newRTServer(t, nil)
	first := rs.subscribeCursor(t)
	missed := applyN(t, rs.mgr, 100, 60<<10)
	tc := dialRT(t, rs.url, nil)
	tc.send(&SubscribeMessage{ShareDataID: "doc", Since: first, HasSince: true})
	st := nextAs[*StateMessage](tc)
	if st.LastTransactionID != missed[99] {
		t.Fatalf("state at %q, want %q", st.LastTransactionID, missed[99])
	}
	var live []string
	var got []string
	for len(got) < 100 {
		tx := nextAs[*TransactionMessage](tc)
		if !tx.Replayed {
			t.Fatalf("a live frame %s before the replay ended (%d replayed)", tx.TransactionID, len(got))
		}
		got = append(got, tx.TransactionID)
		if len(got) == 10 {
			// Live transactions while the replay flows: held, then sent
			// after it.
			live = applyN(t, rs.mgr, 5, 60<<10)
		}
	}
	if strings.Join(got, ",") != strings.Join(missed, ",") {
		t.Fatal("the replay is not the 100 missed transactions in order")
	}
	for _, id := range live {
		tx := nextAs[*TransactionMessage](tc)
		if tx.Replayed || tx.TransactionID != id {
			t.Fatalf("after the replay: got %s (replayed %v), want live %s", tx.TransactionID, tx.Replayed, id)
		}
	}
	if s := rs.Stats(); s.SlowConsumerCloses != 0 {
		t.Fatalf("%d slow-consumer closes", s.SlowConsumerCloses)
	}
}

// subscribeCursor subscribes a throwaway client to "doc" and returns the
// state's cursor.
func (rs *rtServer) subscribeCursor(t *testing.T) string {
	t.Helper()
	tc := dialRT(t, rs.url, nil)
	cur := tc.subscribe("doc").LastTransactionID
	tc.c.CloseNow()
	return cur
}

// gateConn holds each Write at a gate while gating is on, so a test knows
// exactly which bytes the server has handed to the network.
type gateConn struct {
	net.Conn
	gating  atomic.Bool
	gate    chan struct{} // one receive lets one Write through
	waiting chan struct{} // a Write arrived at the gate
	done    chan struct{} // a gated Write completed
}

func (c *gateConn) Write(b []byte) (int, error) {
	if !c.gating.Load() {
		return c.Conn.Write(b)
	}
	c.waiting <- struct{}{}
	<-c.gate
	n, err := c.Conn.Write(b)
	c.done <- struct{}{}
	return n, err
}

type gateListener struct {
	net.Listener
	conns chan *gateConn
}

func (l *gateListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	gc := &gateConn{Conn: c, gate: make(chan struct{}), waiting: make(chan struct{}, 1), done: make(chan struct{}, 1)}
	l.conns <- gc
	return gc, nil
}

// TestFastReaderBehindLargeBatch (item 3): the bytes of a batch are
// released from the queue's count as each write call completes. A writer
// is held mid-batch with 8 of its 15 frames of 62 KiB written; two more
// frames then fit under the 1 MiB cap because only 7 are really unsent.
// Counting the whole batch until its end closed this fast reader with
// 4001.
func TestFastReaderBehindLargeBatch(t *testing.T) {
	mgr := NewMemoryManager()
	mgr.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), testFunctions...)
	srv := NewServer(mgr, &ServerOptions{Logger: quietLogger})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl := &gateListener{Listener: ln, conns: make(chan *gateConn, 1)}
	hs := httptest.NewUnstartedServer(srv)
	hs.Listener = gl
	hs.Start()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		hs.Close()
	})
	tc := dialRT(t, wsURL(hs), nil)
	gc := <-gl.conns
	tc.subscribe("doc")
	gc.gating.Store(true)
	release := func(n int) {
		for i := 0; i < n; i++ {
			<-gc.waiting
			gc.gate <- struct{}{}
			<-gc.done
		}
	}
	ids := applyN(t, mgr, 1, 62<<10) // the writer takes it alone and waits at the gate
	<-gc.waiting
	ids = append(ids, applyN(t, mgr, 15, 62<<10)...) // queued: about 931 KiB
	gc.gate <- struct{}{}
	<-gc.done
	release(8) // the writer took the 15 as one batch; 8 of them are out
	<-gc.waiting
	ids = append(ids, applyN(t, mgr, 2, 62<<10)...)
	gc.gating.Store(false)
	gc.gate <- struct{}{}
	<-gc.done
	for i, id := range ids {
		m := tc.next()
		tx, ok := m.(*TransactionMessage)
		if !ok || tx.TransactionID != id {
			t.Fatalf("frame %d: got %s, want transaction %s (the fast reader was taken for a slow one?)", i, clip(m.AppendJSON(nil)), id)
		}
	}
	if s := srv.Stats(); s.SlowConsumerCloses != 0 {
		t.Fatalf("%d slow-consumer closes", s.SlowConsumerCloses)
	}
}

// TestUnknownLongIDEndsSubscription (item 4): subscribing to unknown ids
// of 33 and 256 bytes, which the 4003 close reason cuts, ends exactly those
// subscriptions with the whole id; the client reconnects once per refusal
// and the other subscription goes on.
func TestUnknownLongIDEndsSubscription(t *testing.T) {
	rs := newRestartable(t, ServerOptions{})
	var dials atomic.Int32
	p := newFaultProxy(t, rs.addr, func(int) proxyPlan { dials.Add(1); return proxyPlan{} })
	c, states := newTestClient(t, p.url(), ClientOptions{})
	good, _ := c.Subscribe("doc", nil)
	col := collect(good)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the state", func(m []ServerMessage) bool { return len(m) == 1 })
	for i, n := range []int{33, 256} {
		id := strings.Repeat(string(rune('a'+i)), n)
		bad, err := c.Subscribe(id, nil)
		if err != nil {
			t.Fatal(err)
		}
		ended := make(chan struct{})
		go func() {
			for range bad.Messages() {
			}
			close(ended)
		}()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatalf("the subscription to an unknown %d-byte id never ended; %d dials so far", n, dials.Load())
		}
		var se *SubscriptionError
		if err := bad.Err(); !errors.As(err, &se) || se.ShareDataID != id || se.Code != CodeUnknownShareData {
			t.Fatalf("%d-byte id: ended with %v", n, err)
		}
		col.waitFor(t, "the state after the reconnect", func(m []ServerMessage) bool { return len(m) == 2+i })
	}
	if _, err := c.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`)); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the transaction", func(m []ServerMessage) bool { return len(transactionIDs(m)) == 1 })
	if d := dials.Load(); d != 3 || states.count(closedWith(CloseUnknownShareData)) != 2 {
		t.Fatalf("%d dials and %d 4003 closes, want 3 and 2", d, states.count(closedWith(CloseUnknownShareData)))
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConnectSaysWhy (item 5): Connect against a wrong path fails at once
// with the 404; against a closed port it returns, when its context ends,
// an error wrapping both the context's error and the refused dial, and
// every failed attempt was logged at Warn.
func TestConnectSaysWhy(t *testing.T) {
	hs := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(hs.Close)
	c, _ := newTestClient(t, wsURL(hs)+"/nowhere", ClientOptions{})
	start := time.Now()
	ctx404, cancel404 := context.WithTimeout(context.Background(), 10*time.Second) // it must fail long before
	defer cancel404()
	err := c.Connect(ctx404)
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusNotFound {
		t.Fatalf("Connect to a 404: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a 404 took %v to fail", d)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c2, _ := newTestClient(t, "ws://"+addr+"/", ClientOptions{Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = c2.Connect(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Connect to a closed port: %v; want the deadline and the refused dial", err)
	}
	if n := strings.Count(logs.String(), "level=WARN msg=\"realtime: connect failed; retrying\""); n < 2 {
		t.Fatalf("%d failed attempts logged at Warn:\n%s", n, logs.String())
	}
}

// flakyStore is a replay store whose Replay fails while fail > 0.
type flakyStore struct {
	*MemoryReplayStore
	fail  atomic.Int32
	calls atomic.Int32
}

func (s *flakyStore) Replay(ctx context.Context, id, since, until string) ([]ReplayRecord, error) {
	s.calls.Add(1)
	if s.fail.Add(-1) >= 0 {
		return nil, errors.New("replay store unreachable")
	}
	return s.MemoryReplayStore.Replay(ctx, id, since, until)
}

// TestTransientReplayFailureRecovers (item 6): when the replay store fails
// twice, the subscriber is told (an internal-error frame in its stream)
// and is subscribed again until the replay succeeds; it receives every
// missed transaction.
func TestTransientReplayFailureRecovers(t *testing.T) {
	store := &flakyStore{MemoryReplayStore: NewMemoryReplayStore(0)}
	rs := newRestartable(t, ServerOptions{ReplayStore: store})
	away := make(chan struct{})
	p := newFaultProxy(t, rs.addr, func(n int) proxyPlan {
		if n == 1 {
			<-away // the redial waits while the transactions are applied
		}
		return proxyPlan{}
	})
	c, _ := newTestClient(t, p.url(), ClientOptions{})
	sub, _ := c.Subscribe("doc", nil)
	col := collect(sub)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "the state", func(m []ServerMessage) bool { return len(m) == 1 })
	store.fail.Store(2)
	p.cutAll()
	missed := applyN(t, rs.mgr, 3, 10)
	close(away)
	msgs := col.waitFor(t, "the replay after two failures", func(m []ServerMessage) bool { return len(transactionIDs(m)) == 3 })
	deliveredOnce(t, msgs, missed)
	errs := 0
	for _, m := range msgs {
		if e, ok := m.(*ErrorMessage); ok && e.Code == CodeInternal {
			errs++
		}
	}
	if errs != 2 || sub.Err() != nil || store.calls.Load() != 3 {
		t.Fatalf("%d internal-error frames, %d replay calls, subscription error %v", errs, store.calls.Load(), sub.Err())
	}
}

// TestSubscribeFromSavedCursor (item 7): a subscription can start from a
// cursor the application saved, and the end of the replay and every resync
// show in the stream.
func TestSubscribeFromSavedCursor(t *testing.T) {
	rs := newRestartable(t, ServerOptions{})
	c1, _ := newTestClient(t, rs.url(), ClientOptions{})
	sub1, _ := c1.Subscribe("doc", nil)
	col1 := collect(sub1)
	if err := c1.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	col1.waitFor(t, "the state", func(m []ServerMessage) bool { return len(m) == 1 })
	saved, ok := sub1.Cursor()
	if !ok {
		t.Fatal("no cursor after the state")
	}
	c1.Close()
	missed := applyN(t, rs.mgr, 5, 10)

	c2, _ := newTestClient(t, rs.url(), ClientOptions{})
	sub2, _ := c2.Subscribe("doc", &SubscribeOptions{Since: saved, HasSince: true})
	col2 := collect(sub2)
	if err := c2.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	msgs := col2.waitFor(t, "state, replay, replay-end", func(m []ServerMessage) bool { return len(m) == 7 })
	deliveredOnce(t, msgs, missed)
	end, ok := msgs[6].(*ReplayEndMessage)
	if _, isState := msgs[0].(*StateMessage); !isState || !ok || end.LastTransactionID != missed[4] || end.Transactions != 5 {
		t.Fatalf("first %s, last %s", msgs[0].AppendJSON(nil), msgs[6].AppendJSON(nil))
	}
	if cur, _ := sub2.Cursor(); cur != missed[4] {
		t.Fatalf("cursor %q, want %q", cur, missed[4])
	}
}

// TestSlowReaderResyncShows (item 7): a reader that falls MaxPending
// behind finds a resync message where its stream was cut, then a new state
// and the replay of what was dropped: every transaction once. With
// MaxPending 2 too, where the resync message itself must not count, or
// the stream would restart forever.
func TestSlowReaderResyncShows(t *testing.T) {
	for _, max := range []int{5, 2} {
		t.Run("MaxPending="+strconv.Itoa(max), func(t *testing.T) { slowReaderResync(t, max) })
	}
}

func slowReaderResync(t *testing.T, maxPending int) {
	rs := newRestartable(t, ServerOptions{})
	c, _ := newTestClient(t, rs.url(), ClientOptions{MaxPending: maxPending})
	sub, _ := c.Subscribe("doc", nil)
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := (<-sub.Messages()).(*StateMessage); !ok {
		t.Fatal("want the state first")
	}
	// Nobody reads while the transactions arrive: the held messages pass
	// MaxPending.
	applied := applyN(t, rs.mgr, 4*maxPending+2, 10)
	last := applied[len(applied)-1]
	// Still nobody reads until the client has dropped what it held.
	waitFor(t, func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		for _, q := range sub.queue {
			if _, ok := q.m.(*ResyncMessage); ok {
				return true
			}
		}
		return false
	})
	var msgs []ServerMessage
	resyncs := 0
	timeout := time.After(10 * time.Second)
	for {
		ids := transactionIDs(msgs)
		if len(ids) > 0 && ids[len(ids)-1] == last {
			break
		}
		select {
		case m := <-sub.Messages():
			msgs = append(msgs, m)
			if r, ok := m.(*ResyncMessage); ok {
				if r.Reason != ResyncSlowReader {
					t.Fatalf("resync reason %q", r.Reason)
				}
				resyncs++
			}
		case <-timeout:
			t.Fatalf("stuck after %d messages", len(msgs))
		}
	}
	deliveredOnce(t, msgs, applied)
	if resyncs == 0 {
		t.Fatal("the stream was restarted without a resync message")
	}
}

// TestReplayWindowWithHole: a window with a hole in its chain (transactions
// applied while no server recorded them) gives no replay across the hole,
// and says so, rather than a replay with some missing; nor one that stops
// short of until.
func TestReplayWindowWithHole(t *testing.T) {
	s := NewMemoryReplayStore(10)
	ctx := context.Background()
	for _, r := range [][2]string{{"T1", ""}, {"T2", "T1"}, {"T4", "T3"}, {"T5", "T4"}} {
		s.Append(ctx, "doc", ReplayRecord{TransactionID: r[0], PreviousTransactionID: r[1], Message: []byte(r[0])})
	}
	for _, c := range []struct {
		since, until string
		want         string // ids, or "not found"
	}{
		{"", "T2", "T1,T2"},
		{"T1", "T2", "T2"},
		{"T1", "T5", "not found"}, // across the hole
		{"T4", "T5", "T5"},        // after it
		{"T4", "T6", "not found"}, // short of until
	} {
		recs, err := s.Replay(ctx, "doc", c.since, c.until)
		got := "not found"
		if err == nil {
			var ids []string
			for _, r := range recs {
				ids = append(ids, r.TransactionID)
			}
			got = strings.Join(ids, ",")
		} else if !errors.Is(err, ErrReplayCursorNotFound) {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("Replay(%q, %q) = %s, want %s", c.since, c.until, got, c.want)
		}
	}
}
