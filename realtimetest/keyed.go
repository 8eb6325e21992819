package realtimetest

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/degenerate/realtime"
)

// This file is the contract of realtime.KeyedApplier, which TestManager
// also checks when the manager implements it.

// keyed is a manager that applies keyed proposals at most once.
type keyed interface {
	Manager
	realtime.KeyedApplier
}

func applyKeyed(t *testing.T, m keyed, fn realtime.Function, key string, retry bool) (*realtime.Transaction, error) {
	t.Helper()
	return m.ApplyKeyed(t.Context(), "doc", fn, json.RawMessage(`{"by":1}`), key, retry)
}

// testKeyed: a key applies once however often and however concurrently it
// is proposed, a repeat returns the first transaction's id (or the first
// refusal's text, without running the function again), the transaction
// and its event carry the key, a retry of a key never seen is applied, and
// keys are per proposer (realtime.WithProposer).
func testKeyed(t *testing.T, m keyed) {
	mustCreate(t, m, "doc", `{"n":0}`)
	rec := listen(t, m)
	first, err := applyKeyed(t, m, Increment, "k-1", false)
	if err != nil || first.IdempotencyKey != "k-1" {
		t.Fatalf("first keyed apply: %+v, %v", first, err)
	}
	if evs := rec.wait(t, "doc", 1); evs[0].Transaction.IdempotencyKey != "k-1" {
		t.Errorf("the event carries key %q", evs[0].Transaction.IdempotencyKey)
	}
	for _, retry := range []bool{false, true} {
		again, err := applyKeyed(t, m, Increment, "k-1", retry)
		if err != nil || again.ID != first.ID {
			t.Errorf("repeat (retry %v): %+v, %v; want transaction %s", retry, again, err, first.ID)
		}
	}

	var calls atomic.Int64
	refusing := realtime.Function{ID: "refuse", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		calls.Add(1)
		return nil, errRefused
	}}
	_, err1 := applyKeyed(t, m, refusing, "k-2", false)
	_, err2 := applyKeyed(t, m, Increment, "k-2", true) // the function would accept now
	if err1 == nil || err2 == nil || err1.Error() != err2.Error() || calls.Load() != 1 {
		t.Errorf("a refused key: %v, then %v; the function ran %d times", err1, err2, calls.Load())
	}

	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tx, err := m.ApplyKeyed(context.Background(), "doc", Increment, json.RawMessage(`{"by":1}`), "k-race", i%2 == 1)
			if err != nil {
				t.Errorf("racing apply %d: %v", i, err)
				return
			}
			ids[i] = tx.ID
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Errorf("one key applied concurrently gave transactions %v", ids)
			break
		}
	}
	if _, err := applyKeyed(t, m, Increment, "k-never-seen", true); err != nil {
		t.Errorf("a retry of a key never seen, nothing forgotten: %v", err)
	}
	// Keys are per proposer: another proposer's k-1 is a key of its own,
	// applied, and then answered with its own transaction.
	other := realtime.WithProposer(t.Context(), "other")
	otx, err := m.ApplyKeyed(other, "doc", Increment, json.RawMessage(`{"by":1}`), "k-1", false)
	if err != nil || otx.ID == first.ID {
		t.Errorf("another proposer's k-1: %+v, %v; want a transaction of its own", otx, err)
	} else if again, err := m.ApplyKeyed(other, "doc", Increment, json.RawMessage(`{"by":1}`), "k-1", true); err != nil || again.ID != otx.ID {
		t.Errorf("another proposer's retry of its k-1: %+v, %v; want %s", again, err, otx.ID)
	}
	// k-1 (twice: two proposers), k-race and k-never-seen: four
	// increments.
	rec.wait(t, "doc", 4)
	if s := snapshot(t, m, "doc"); string(s.State) != `{"n":4}` {
		t.Errorf("state %s after four keys, each proposed several times", s.State)
	}
}

// testKeyedReopen: a key applied before a reopen is still answered with
// its transaction after it, and not applied again.
func testKeyedReopen(t *testing.T, m keyed, reopen func(t *testing.T, m Manager) Manager) {
	mustCreate(t, m, "doc", `{"n":0}`)
	first, err := applyKeyed(t, m, Increment, "k-1", false)
	if err != nil {
		t.Fatal(err)
	}
	other := realtime.WithProposer(t.Context(), "other")
	otherFirst, err := m.ApplyKeyed(other, "doc", Increment, json.RawMessage(`{"by":1}`), "k-1", false)
	if err != nil {
		t.Fatal(err)
	}
	m2, ok := reopen(t, m).(keyed)
	if !ok {
		t.Fatal("the reopened manager is not a KeyedApplier")
	}
	again, err := applyKeyed(t, m2, Increment, "k-1", true)
	if err != nil || again.ID != first.ID {
		t.Fatalf("after reopen: %+v, %v; want transaction %s", again, err, first.ID)
	}
	// The proposer is remembered with the key.
	if again, err := m2.ApplyKeyed(other, "doc", Increment, json.RawMessage(`{"by":1}`), "k-1", true); err != nil || again.ID != otherFirst.ID {
		t.Fatalf("another proposer's key after reopen: %+v, %v; want transaction %s", again, err, otherFirst.ID)
	}
	if s := snapshot(t, m2, "doc"); string(s.State) != `{"n":2}` {
		t.Errorf("state %s: a key was applied again after the reopen", s.State)
	}
}
