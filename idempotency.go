package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// This file is exactly-once proposals: the manager capability that applies
// a keyed proposal at most once, and the window of remembered outcomes it
// keeps per share data item.

// The key window's bounds, per share data item: a keyed proposal's outcome
// is remembered for KeyWindowAge, or until KeyWindowSize newer keyed
// proposals of the same item pushed it out, whichever comes first.
const (
	KeyWindowSize = 1000
	KeyWindowAge  = 10 * time.Minute
)

// ErrOutcomeUnknown reports a retried proposal whose key is no longer
// remembered, while keys that young have been forgotten: it may have been
// applied, so it is not applied again, and its outcome cannot be told. A
// Client returns it (errors.Is) from Propose; the proposal-result carries
// CodeOutcomeUnknown.
var ErrOutcomeUnknown = errors.New("realtime: the outcome of the proposal is unknown: its key is no longer remembered")

// KeyedApplier is a Manager that applies a proposal carrying an
// idempotency key at most once. MemoryManager implements it. A server over
// a manager that does not applies a keyed proposal as any other, and
// answers a retried one with CodeOutcomeUnknown rather than risk applying
// it twice.
type KeyedApplier interface {
	// ApplyKeyed is Apply for a proposal with a key. The first proposal
	// with a key is applied (or refused by its function) and its outcome
	// remembered (see KeyWindowSize and KeyWindowAge); a later one with
	// the same key on the same item returns that outcome without running
	// the function: a *Transaction with the first one's ID (and
	// ShareDataID and IdempotencyKey; the rest is not kept), or an error
	// with the same text. A retry whose key is not remembered is applied when no key of
	// the item younger than KeyWindowAge has been pushed out of the
	// window, and returns ErrOutcomeUnknown otherwise. The check and the
	// apply are one step under the item's lock, so two proposals with one
	// key racing each other apply once.
	ApplyKeyed(ctx context.Context, shareDataID string, fn Function, proposed json.RawMessage, key string, retry bool) (*Transaction, error)
}

// keyWindow remembers the outcomes of one item's keyed proposals, oldest
// first. Not safe for concurrent use: its item's lock guards it.
type keyWindow struct {
	max     int
	age     time.Duration
	entries []*keyEntry // oldest first, from head
	head    int
	byKey   map[string]*keyEntry
	// lostAt is when the newest key pushed out before it aged out was
	// recorded: a retry of a key not found may be that one.
	lostAt time.Time
}

type keyEntry struct {
	key     string
	txID    string // applied as this transaction (its id alone: states can be large)
	refusal string // or refused by the function with this text
	at      time.Time
	// durable, for a manager that writes the transaction after the key is
	// remembered, is closed once it is written; err then says whether
	// that failed.
	durable chan struct{}
	err     error
}

func newKeyWindow() *keyWindow {
	return &keyWindow{max: KeyWindowSize, age: KeyWindowAge, byKey: make(map[string]*keyEntry)}
}

// expire drops the entries older than the window's age.
func (w *keyWindow) expire(now time.Time) {
	for w.head < len(w.entries) && now.Sub(w.entries[w.head].at) >= w.age {
		w.pop()
	}
}

func (w *keyWindow) pop() *keyEntry {
	e := w.entries[w.head]
	w.entries[w.head] = nil
	w.head++
	if w.byKey[e.key] == e { // not dropped and remembered again since
		delete(w.byKey, e.key)
	}
	if w.head > len(w.entries)/2 { // compact, keeping the order
		n := copy(w.entries, w.entries[w.head:])
		clear(w.entries[n:])
		w.entries = w.entries[:n]
		w.head = 0
	}
	return e
}

// drop forgets e's outcome (its write failed: nothing was applied). The
// entry keeps its place in the order until it ages or is pushed out.
func (w *keyWindow) drop(e *keyEntry) {
	if w.byKey[e.key] == e {
		delete(w.byKey, e.key)
	}
}

// lookup returns the entry of key, if remembered.
func (w *keyWindow) lookup(key string, now time.Time) *keyEntry {
	w.expire(now)
	return w.byKey[key]
}

// unsure reports whether a key not found may have been pushed out of the
// window by newer ones before its age.
func (w *keyWindow) unsure(now time.Time) bool {
	return !w.lostAt.IsZero() && now.Sub(w.lostAt) < w.age
}

// add remembers an outcome.
func (w *keyWindow) add(e *keyEntry) {
	w.expire(e.at)
	for len(w.entries)-w.head >= w.max {
		if old := w.pop(); e.at.Sub(old.at) < w.age {
			w.lostAt = old.at
		}
	}
	w.entries = append(w.entries, e)
	w.byKey[e.key] = e
}

// keysFromWindow rebuilds a key window from a replay window's keyed
// transactions (oldest first), as a manager that persists them does at
// open; last is the item's last transaction id. When transactions older
// than the window's oldest existed (or the window keeps none), their keys
// are gone: retries are unsure until the oldest kept one is older than the
// age (for a whole age from now when no time is known).
func keysFromWindow(window []windowEntry, last string) *keyWindow {
	w := newKeyWindow()
	for _, e := range window {
		if e.key != "" {
			w.add(&keyEntry{key: e.key, txID: e.id, at: time.Unix(0, e.at)})
		}
	}
	switch {
	case len(window) == 0 && last != "":
		w.lostAt = time.Now()
	case len(window) > 0 && window[0].prev != "":
		oldest := time.Now()
		if window[0].at != 0 {
			oldest = time.Unix(0, window[0].at)
		}
		if oldest.After(w.lostAt) {
			w.lostAt = oldest
		}
	}
	return w
}

// remembered returns the outcome an entry of shareDataID recorded.
func (e *keyEntry) remembered(shareDataID string) (*Transaction, error) {
	if e.txID != "" {
		return &Transaction{ShareDataID: shareDataID, ID: e.txID, IdempotencyKey: e.key}, nil
	}
	return nil, errors.New(e.refusal)
}

// refusalToRemember reports whether a function's error is an outcome to
// remember: not when the call was cut short by its context, since the
// proposal was then neither applied nor decided.
func refusalToRemember(err error) bool {
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// isClosed reports whether ch is closed, without waiting.
func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
