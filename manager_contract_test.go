package realtime

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// asyncManager is what a manager over a shared store can do within the
// Manager contract: its events reach the listeners later than Apply
// returns (when the test releases them), and a Snapshot may be read at one
// moment and returned later. It wraps a MemoryManager.
type asyncManager struct {
	*MemoryManager
	mu      sync.Mutex
	queue   []Event
	out     listenerSet
	snapped chan Snapshot // when set, Snapshot reports here what it read
	resume  chan struct{} // and waits for this before returning it
}

func newAsyncManager(t *testing.T) *asyncManager {
	m := &asyncManager{MemoryManager: NewMemoryManager()}
	if err := m.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), testFunctions...); err != nil {
		t.Fatal(err)
	}
	m.MemoryManager.Listen(func(ev Event) {
		m.mu.Lock()
		m.queue = append(m.queue, ev)
		m.mu.Unlock()
	})
	return m
}

func (m *asyncManager) Listen(fn func(Event)) func() { return m.out.add(fn) }

// release delivers the queued events, skipping those whose version is in
// skip (an event lost on the way).
func (m *asyncManager) release(skip ...uint64) {
	m.mu.Lock()
	q := m.queue
	m.queue = nil
	m.mu.Unlock()
next:
	for _, ev := range q {
		for _, v := range skip {
			if ev.Version == v {
				continue next
			}
		}
		m.out.notify(ev)
	}
}

func (m *asyncManager) Snapshot(ctx context.Context, id string) (Snapshot, error) {
	s, err := m.MemoryManager.Snapshot(ctx, id)
	if m.snapped != nil && err == nil {
		m.snapped <- s
		<-m.resume
	}
	return s, err
}

func serveAsync(t *testing.T, m *asyncManager) *testClient {
	srv := NewServer(m, &ServerOptions{ResolveFunction: IDFunctionResolver(m.MemoryManager), Logger: quietLogger})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Shutdown(context.Background()); hs.Close() })
	return dialRT(t, wsURL(hs), nil)
}

func applyInc(t *testing.T, m *asyncManager) *Transaction {
	t.Helper()
	tx, err := m.Apply(context.Background(), "doc", testFunctions[1], json.RawMessage(`{"by":1}`))
	if err != nil {
		t.Fatal(err)
	}
	return tx
}

// TestAsyncManagerSnapshotAhead: the snapshot already reflects
// transactions whose events arrive afterwards. The subscriber is not sent
// them twice and is not closed; the next transaction follows the snapshot.
func TestAsyncManagerSnapshotAhead(t *testing.T) {
	m := newAsyncManager(t)
	c := serveAsync(t, m)
	for range 3 {
		applyInc(t, m) // events queued, not delivered
	}
	st := c.subscribe("doc")
	if string(st.CurrentState) != `{"count":3}` {
		t.Fatalf("state %s", st.CurrentState)
	}
	m.release() // versions 1-3, all reflected by the snapshot
	tx := applyInc(t, m)
	m.release()
	got := nextAs[*TransactionMessage](c)
	if got.TransactionID != tx.ID || got.PreviousTransactionID != st.LastTransactionID {
		t.Fatalf("got %s after a snapshot at %s, want %s", got.TransactionID, st.LastTransactionID, tx.ID)
	}
	c.quiet(50 * time.Millisecond)
}

// TestAsyncManagerEventsAheadOfSnapshot: the events of transactions
// arrive while a Snapshot read before them is still on its way. They are
// held and follow the snapshot in order.
func TestAsyncManagerEventsAheadOfSnapshot(t *testing.T) {
	m := newAsyncManager(t)
	m.snapped, m.resume = make(chan Snapshot), make(chan struct{})
	c := serveAsync(t, m)
	c.send(&SubscribeMessage{ShareDataID: "doc"})
	read := <-m.snapped // read at version 0, not returned yet
	tx1, tx2 := applyInc(t, m), applyInc(t, m)
	m.release() // reach the joining subscriber before its snapshot
	close(m.resume)
	st := nextAs[*StateMessage](c)
	if st.LastTransactionID != read.LastTransactionID || string(st.CurrentState) != `{"count":0}` {
		t.Fatalf("state %s %q", st.CurrentState, st.LastTransactionID)
	}
	for _, want := range []*Transaction{tx1, tx2} {
		if got := nextAs[*TransactionMessage](c); got.TransactionID != want.ID {
			t.Fatalf("got %s, want %s", got.TransactionID, want.ID)
		}
	}
	c.quiet(50 * time.Millisecond)
}

// TestAsyncManagerLostEvent: an event that never arrives is a real loss
// of continuity: the subscriber is closed with 4001 so its client
// resubscribes with since and is replayed.
func TestAsyncManagerLostEvent(t *testing.T) {
	m := newAsyncManager(t)
	c := serveAsync(t, m)
	c.subscribe("doc")
	applyInc(t, m)
	applyInc(t, m)
	applyInc(t, m)
	m.release(2) // 1 and 3 arrive; 3 cannot follow 1
	c.expectClosed(CloseFellBehind, "missed events")
}
