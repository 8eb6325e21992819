// Package realtimetest checks implementations of the realtime package's
// interfaces, as testing/fstest checks an fs.FS: TestManager runs the
// Manager contract that the server's delivery guarantees rest on against
// any manager, so the author of one over a database can know that it
// keeps it.
package realtimetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/degenerate/realtime"
)

// Manager is what TestManager drives: a realtime.Manager with the calls
// that create, replace and remove share data, as realtime.MemoryManager
// and realtime.DiskManager have them.
type Manager interface {
	realtime.Manager
	Create(ctx context.Context, shareDataID string, state json.RawMessage, fns ...realtime.Function) error
	Update(ctx context.Context, shareDataID string, state json.RawMessage) error
	Remove(ctx context.Context, shareDataID string) error
}

// eventWait bounds how long TestManager waits for an event that a manager
// delivers asynchronously (a manager over a shared store may tell its
// listeners after Apply returns).
const eventWait = 10 * time.Second

// TestManager checks the contract of realtime.Manager on managers made by
// open, which must return a new manager over an empty store (and arrange
// its cleanup with t.Cleanup). reopen, when not nil, must close m and open
// the same store again; the checks that data and transaction ids survive a
// reopen then run too.
//
// The contract, per share data item: each listener hears every event
// once, in order, its Version one more than the one before (1 for the
// first); a Snapshot at Version v reflects exactly the events up to v, and
// is never behind an event already delivered to a listener (it may be
// ahead of events still on their way); a transaction's PreviousID is the
// id of the one before it and ids are unique, also across reopens; a
// refused proposal changes nothing and emits nothing; unknown and removed
// ids fail with an error matching realtime.ErrUnknownShareData. A manager
// that is a realtime.KeyedApplier must also apply a key at most once,
// answer a repeat with the first outcome (also after a reopen), and carry
// the key on the transaction and its event.
func TestManager(t *testing.T, open func(t *testing.T) Manager, reopen func(t *testing.T, m Manager) Manager) {
	t.Run("UnknownIDs", func(t *testing.T) { testUnknown(t, open(t)) })
	t.Run("CreateAndSnapshot", func(t *testing.T) { testCreate(t, open(t)) })
	t.Run("ApplyAndEvents", func(t *testing.T) { testApply(t, open(t)) })
	t.Run("Refusals", func(t *testing.T) { testRefusals(t, open(t)) })
	t.Run("UpdateAndRemove", func(t *testing.T) { testUpdateRemove(t, open(t)) })
	t.Run("ConcurrentAppliersAndListeners", func(t *testing.T) { testConcurrent(t, open(t)) })
	t.Run("ListenCancel", func(t *testing.T) { testCancel(t, open(t)) })
	if reopen != nil {
		t.Run("Reopen", func(t *testing.T) { testReopen(t, open(t), reopen) })
	}
	// Managers that apply keyed proposals at most once
	// (realtime.KeyedApplier) are held to that contract too.
	if _, ok := open(t).(keyed); ok {
		t.Run("KeyedApply", func(t *testing.T) { testKeyed(t, open(t).(keyed)) })
		if reopen != nil {
			t.Run("KeyedReopen", func(t *testing.T) { testKeyedReopen(t, open(t).(keyed), reopen) })
		}
	}
}

// Increment adds proposed {"by":n} to state {"n":m}: the function every
// check applies.
var Increment = realtime.Function{ID: "increment", Apply: func(ctx context.Context, current, proposed json.RawMessage) (json.RawMessage, error) {
	var s struct{ N int }
	var p struct{ By int }
	if err := json.Unmarshal(current, &s); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(proposed, &p); err != nil {
		return nil, err
	}
	return json.RawMessage(`{"n":` + strconv.Itoa(s.N+p.By) + `}`), nil
}}

var errRefused = errors.New("realtimetest: refused on purpose")

var refuse = realtime.Function{ID: "refuse", Apply: func(ctx context.Context, current, proposed json.RawMessage) (json.RawMessage, error) {
	return nil, errRefused
}}

var invalid = realtime.Function{ID: "invalid", Apply: func(ctx context.Context, current, proposed json.RawMessage) (json.RawMessage, error) {
	return json.RawMessage(`{"n":`), nil
}}

// recorder collects the events of one listener.
type recorder struct {
	mu     sync.Mutex
	cond   *sync.Cond
	events []realtime.Event
}

func listen(t *testing.T, m realtime.Manager) *recorder {
	r := &recorder{}
	r.cond = sync.NewCond(&r.mu)
	cancel := m.Listen(func(ev realtime.Event) {
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
		r.cond.Broadcast()
	})
	t.Cleanup(cancel)
	return r
}

// of returns the events of one item received so far.
func (r *recorder) of(id string) []realtime.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ofLocked(id)
}

func (r *recorder) ofLocked(id string) []realtime.Event {
	var out []realtime.Event
	for _, ev := range r.events {
		if ev.ShareDataID == id {
			out = append(out, ev)
		}
	}
	return out
}

// wait waits until the item has n events, and returns them.
func (r *recorder) wait(t *testing.T, id string, n int) []realtime.Event {
	t.Helper()
	deadline := time.Now().Add(eventWait)
	timer := time.AfterFunc(eventWait, func() {
		r.mu.Lock() // so the broadcast cannot fall between a check and its Wait
		r.mu.Unlock()
		r.cond.Broadcast()
	})
	defer timer.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		evs := r.ofLocked(id)
		if len(evs) >= n {
			return evs
		}
		if !time.Now().Before(deadline) {
			t.Fatalf("%s: %d events after %v, want %d", id, len(evs), eventWait, n)
		}
		r.cond.Wait()
	}
}

func mustCreate(t *testing.T, m Manager, id, state string) {
	t.Helper()
	if err := m.Create(t.Context(), id, json.RawMessage(state), Increment); err != nil {
		t.Fatalf("Create %s: %v", id, err)
	}
}

func apply(t *testing.T, m Manager, id string, by int) *realtime.Transaction {
	t.Helper()
	tx, err := m.Apply(t.Context(), id, Increment, json.RawMessage(`{"by":`+strconv.Itoa(by)+`}`))
	if err != nil {
		t.Fatalf("Apply %s: %v", id, err)
	}
	return tx
}

func snapshot(t *testing.T, m Manager, id string) realtime.Snapshot {
	t.Helper()
	s, err := m.Snapshot(t.Context(), id)
	if err != nil {
		t.Fatalf("Snapshot %s: %v", id, err)
	}
	return s
}

func testUnknown(t *testing.T, m Manager) {
	ctx := t.Context()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, realtime.ErrUnknownShareData) {
			t.Errorf("%s of an unknown id: %v, want an error matching ErrUnknownShareData", what, err)
		}
	}
	_, err := m.Snapshot(ctx, "nothing")
	check("Snapshot", err)
	_, err = m.Apply(ctx, "nothing", Increment, json.RawMessage(`{"by":1}`))
	check("Apply", err)
	check("Update", m.Update(ctx, "nothing", json.RawMessage(`{}`)))
	check("Remove", m.Remove(ctx, "nothing"))
}

func testCreate(t *testing.T, m Manager) {
	ctx := t.Context()
	if err := m.Create(ctx, "a", json.RawMessage(" { \"n\" : 1 } ")); err != nil {
		t.Fatal(err)
	}
	s := snapshot(t, m, "a")
	if string(s.State) != `{"n":1}` || s.Version != 0 || s.LastTransactionID != "" {
		t.Errorf("new item: %s version %d last %q, want {\"n\":1} (compact), 0, \"\"", s.State, s.Version, s.LastTransactionID)
	}
	if err := m.Create(ctx, "a", json.RawMessage(`{}`)); !errors.Is(err, realtime.ErrShareDataExists) {
		t.Errorf("second Create: %v, want ErrShareDataExists", err)
	}
	if err := m.Create(ctx, "b", json.RawMessage(`{"n":`)); err == nil {
		t.Error("Create with invalid JSON succeeded")
	}
	if _, err := m.Snapshot(ctx, "b"); !errors.Is(err, realtime.ErrUnknownShareData) {
		t.Errorf("an item whose Create failed: %v, want ErrUnknownShareData", err)
	}
	if err := m.Create(ctx, "c", nil); err != nil {
		t.Fatal(err)
	}
	if s := snapshot(t, m, "c"); string(s.State) != "null" {
		t.Errorf("Create with nil state: %s, want null", s.State)
	}
}

func testApply(t *testing.T, m Manager) {
	rec := listen(t, m)
	mustCreate(t, m, "doc", `{"n":0}`)
	var txs []*realtime.Transaction
	for i := 1; i <= 3; i++ {
		tx := apply(t, m, "doc", i)
		txs = append(txs, tx)
		want := realtime.Transaction{ShareDataID: "doc", FunctionID: "increment", ProposedData: json.RawMessage(`{"by":` + strconv.Itoa(i) + `}`)}
		if tx.ShareDataID != want.ShareDataID || tx.FunctionID != want.FunctionID || string(tx.ProposedData) != string(want.ProposedData) || tx.ID == "" {
			t.Errorf("transaction %d: %+v", i, tx)
		}
		if i > 1 && tx.PreviousID != txs[i-2].ID {
			t.Errorf("transaction %d: PreviousID %q, want %q", i, tx.PreviousID, txs[i-2].ID)
		}
		if i == 1 && tx.PreviousID != "" {
			t.Errorf("first transaction: PreviousID %q, want \"\"", tx.PreviousID)
		}
	}
	if s := string(txs[2].State); s != `{"n":6}` {
		t.Errorf("state after three: %s, want {\"n\":6}", s)
	}
	s := snapshot(t, m, "doc")
	if s.Version != 3 || s.LastTransactionID != txs[2].ID || string(s.State) != `{"n":6}` {
		t.Errorf("snapshot: %s version %d last %q", s.State, s.Version, s.LastTransactionID)
	}
	evs := rec.wait(t, "doc", 3)
	for i, ev := range evs {
		if ev.Kind != realtime.EventTransaction || ev.Version != uint64(i+1) || ev.Transaction == nil || ev.Transaction.ID != txs[i].ID || string(ev.Transaction.State) != string(txs[i].State) {
			t.Errorf("event %d: %+v, want transaction %s at version %d", i, ev, txs[i].ID, i+1)
		}
	}
}

func testRefusals(t *testing.T, m Manager) {
	rec := listen(t, m)
	mustCreate(t, m, "doc", `{"n":0}`)
	ctx := t.Context()
	if _, err := m.Apply(ctx, "doc", refuse, json.RawMessage(`{}`)); !errors.Is(err, errRefused) {
		t.Errorf("a refusing function: Apply returned %v, want its error", err)
	}
	if _, err := m.Apply(ctx, "doc", invalid, json.RawMessage(`{}`)); err == nil {
		t.Error("a function returning invalid JSON: Apply succeeded")
	}
	if _, err := m.Apply(ctx, "doc", Increment, json.RawMessage(`{"by":`)); err == nil {
		t.Error("invalid proposed data: Apply succeeded")
	}
	if s := snapshot(t, m, "doc"); s.Version != 0 || string(s.State) != `{"n":0}` {
		t.Errorf("after refusals: %s version %d, want unchanged", s.State, s.Version)
	}
	tx := apply(t, m, "doc", 1) // the next event says whether a refusal emitted one
	evs := rec.wait(t, "doc", 1)
	if len(evs) != 1 || evs[0].Version != 1 || evs[0].Transaction.ID != tx.ID {
		t.Errorf("events after refusals and one apply: %+v", evs)
	}
}

func testUpdateRemove(t *testing.T, m Manager) {
	rec := listen(t, m)
	ctx := t.Context()
	mustCreate(t, m, "doc", `{"n":0}`)
	tx := apply(t, m, "doc", 1)
	if err := m.Update(ctx, "doc", json.RawMessage(`{"n": 10}`)); err != nil {
		t.Fatal(err)
	}
	s := snapshot(t, m, "doc")
	if s.Version != 2 || string(s.State) != `{"n":10}` || s.LastTransactionID != tx.ID {
		t.Errorf("after Update: %s version %d last %q, want {\"n\":10}, 2, %q (Update keeps the last transaction)", s.State, s.Version, s.LastTransactionID, tx.ID)
	}
	if tx2 := apply(t, m, "doc", 1); tx2.PreviousID != tx.ID || string(tx2.State) != `{"n":11}` {
		t.Errorf("apply after Update: previous %q state %s", tx2.PreviousID, tx2.State)
	}
	if err := m.Remove(ctx, "doc"); err != nil {
		t.Fatal(err)
	}
	evs := rec.wait(t, "doc", 4)
	kinds := []realtime.EventKind{realtime.EventTransaction, realtime.EventUpdated, realtime.EventTransaction, realtime.EventRemoved}
	for i, ev := range evs {
		if i >= len(kinds) || ev.Kind != kinds[i] || ev.Version != uint64(i+1) {
			t.Errorf("event %d: %v version %d", i, ev.Kind, ev.Version)
		}
	}
	if len(evs) > 1 && string(evs[1].State) != `{"n":10}` {
		t.Errorf("updated event state %s", evs[1].State)
	}
	if _, err := m.Snapshot(ctx, "doc"); !errors.Is(err, realtime.ErrUnknownShareData) {
		t.Errorf("Snapshot after Remove: %v", err)
	}
	if _, err := m.Apply(ctx, "doc", Increment, json.RawMessage(`{"by":1}`)); !errors.Is(err, realtime.ErrUnknownShareData) {
		t.Errorf("Apply after Remove: %v", err)
	}
	if err := m.Remove(ctx, "doc"); !errors.Is(err, realtime.ErrUnknownShareData) {
		t.Errorf("second Remove: %v", err)
	}
	mustCreate(t, m, "doc", `{"n":100}`)
	if s := snapshot(t, m, "doc"); string(s.State) != `{"n":100}` || s.LastTransactionID != "" {
		t.Errorf("created again: %s last %q", s.State, s.LastTransactionID)
	}
}

func testConcurrent(t *testing.T, m Manager) {
	const appliers, each = 8, 40
	ids := []string{"x", "y"}
	rec := listen(t, m)
	for _, id := range ids {
		mustCreate(t, m, id, `{"n":0}`)
	}
	var wg sync.WaitGroup
	applied := make(chan *realtime.Transaction, appliers*each*len(ids))
	errs := make(chan error, appliers*len(ids)+len(ids))
	stop := make(chan struct{})
	var snaps sync.WaitGroup
	for _, id := range ids {
		snaps.Add(1)
		go func() { // a reader checks that no snapshot is behind a delivered event
			defer snaps.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				delivered := len(rec.of(id))
				s, err := m.Snapshot(context.Background(), id)
				if err != nil {
					errs <- err
					return
				}
				if s.Version < uint64(delivered) {
					errs <- fmt.Errorf("%s: a snapshot at version %d after %d events were delivered", id, s.Version, delivered)
					return
				}
			}
		}()
		for range appliers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					tx, err := m.Apply(context.Background(), id, Increment, json.RawMessage(`{"by":1}`))
					if err != nil {
						errs <- err
						return
					}
					applied <- tx
				}
			}()
		}
	}
	wg.Wait()
	close(stop)
	snaps.Wait()
	close(applied)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]bool{}
	for tx := range applied {
		if seen[tx.ID] {
			t.Errorf("transaction id %s returned twice", tx.ID)
		}
		seen[tx.ID] = true
	}
	for _, id := range ids {
		evs := rec.wait(t, id, appliers*each)
		prev := ""
		for i, ev := range evs {
			if ev.Version != uint64(i+1) || ev.Kind != realtime.EventTransaction {
				t.Fatalf("%s: event %d is %v at version %d", id, i, ev.Kind, ev.Version)
			}
			tx := ev.Transaction
			if tx.PreviousID != prev {
				t.Fatalf("%s: event %d previous %q, want %q", id, i, tx.PreviousID, prev)
			}
			if want := `{"n":` + strconv.Itoa(i+1) + `}`; string(tx.State) != want {
				t.Fatalf("%s: event %d state %s, want %s", id, i, tx.State, want)
			}
			if !seen[tx.ID] {
				t.Errorf("%s: event for %s, which no Apply returned", id, tx.ID)
			}
			delete(seen, tx.ID)
			prev = tx.ID
		}
		if len(evs) != appliers*each {
			t.Errorf("%s: %d events, want %d", id, len(evs), appliers*each)
		}
		s := snapshot(t, m, id)
		if s.Version != appliers*each || s.LastTransactionID != prev || string(s.State) != `{"n":`+strconv.Itoa(appliers*each)+`}` {
			t.Errorf("%s: final snapshot %s version %d last %q", id, s.State, s.Version, s.LastTransactionID)
		}
	}
	if len(seen) != 0 {
		t.Errorf("%d applied transactions never reached a listener", len(seen))
	}
}

func testCancel(t *testing.T, m Manager) {
	mustCreate(t, m, "doc", `{"n":0}`)
	stay := listen(t, m)
	var mu sync.Mutex
	after := 0
	cancelled := false
	cancel := m.Listen(func(ev realtime.Event) {
		mu.Lock()
		if cancelled {
			after++
		}
		mu.Unlock()
	})
	apply(t, m, "doc", 1)
	stay.wait(t, "doc", 1)
	cancel()
	mu.Lock()
	cancelled = true
	mu.Unlock()
	apply(t, m, "doc", 1)
	stay.wait(t, "doc", 2)
	cancel() // twice is harmless
	mu.Lock()
	defer mu.Unlock()
	if after != 0 {
		t.Errorf("a cancelled listener heard %d events", after)
	}
}

func testReopen(t *testing.T, m Manager, reopen func(t *testing.T, m Manager) Manager) {
	ctx := t.Context()
	mustCreate(t, m, "doc", `{"n":0}`)
	mustCreate(t, m, "gone", `{"n":0}`)
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, apply(t, m, "doc", 1).ID)
	}
	if err := m.Update(ctx, "doc", json.RawMessage(`{"n":50}`)); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, m, "doc")
	m = reopen(t, m)
	after := snapshot(t, m, "doc")
	if string(after.State) != string(before.State) || after.Version != before.Version || after.LastTransactionID != before.LastTransactionID {
		t.Errorf("after reopen: %s version %d last %q, want %s version %d last %q",
			after.State, after.Version, after.LastTransactionID, before.State, before.Version, before.LastTransactionID)
	}
	if _, err := m.Snapshot(ctx, "gone"); !errors.Is(err, realtime.ErrUnknownShareData) {
		t.Errorf("a removed item after reopen: %v", err)
	}
	rec := listen(t, m)
	tx := apply(t, m, "doc", 1)
	for _, id := range ids {
		if tx.ID == id {
			t.Errorf("transaction id %s reused after reopen", id)
		}
	}
	if tx.PreviousID != before.LastTransactionID || string(tx.State) != `{"n":51}` {
		t.Errorf("first transaction after reopen: previous %q state %s", tx.PreviousID, tx.State)
	}
	if evs := rec.wait(t, "doc", 1); evs[0].Version != before.Version+1 {
		t.Errorf("first event after reopen at version %d, want %d", evs[0].Version, before.Version+1)
	}
	if rs, ok := m.(realtime.ReplayStore); ok {
		recs, err := rs.Replay(ctx, "doc", ids[0], tx.ID)
		if err != nil || len(recs) != 5 || recs[0].TransactionID != ids[1] || recs[4].TransactionID != tx.ID {
			t.Errorf("the replay window after reopen (the manager is a ReplayStore): %d records, %v", len(recs), err)
		}
	}
}
