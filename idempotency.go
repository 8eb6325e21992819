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

// The key window's bounds, per share data item and proposer (see
// WithProposer): a keyed proposal's outcome is remembered for
// KeyWindowAge, or until KeyWindowSize newer keyed proposals of the same
// proposer on the same item pushed it out, whichever comes first. The size
// is what one connection proposes in KeyWindowAge at the server's default
// ProposalsPerSecond (100), so that at the rates a server allows, age, not
// count, decides; a proposer's flood can push out only its own keys.
const (
	KeyWindowSize = 12000
	KeyWindowAge  = 2 * time.Minute
)

type proposerKey struct{}

// WithProposer returns a copy of ctx that names the proposer of the
// proposals applied with it: a KeyedApplier remembers keys per share data
// item and per proposer, so that two proposers never share a key, and one
// that floods an item with keyed proposals pushes out only its own keys.
// The server sets it from ServerOptions.ProposerID for every proposal.
func WithProposer(ctx context.Context, proposer string) context.Context {
	return context.WithValue(ctx, proposerKey{}, proposer)
}

// ProposerFromContext returns the proposer WithProposer set in ctx, or ""
// (the anonymous proposer, shared by every proposal that names none).
func ProposerFromContext(ctx context.Context) string {
	p, _ := ctx.Value(proposerKey{}).(string)
	return p
}

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
	// remembered (see KeyWindowSize and KeyWindowAge) for the item and the
	// proposer ctx names (ProposerFromContext); a later one with the same
	// key on the same item from the same proposer returns that outcome
	// without running the function: a *Transaction with the first one's ID (and
	// ShareDataID and IdempotencyKey; the rest is not kept), or an error
	// with the same text. A retry whose key is not remembered is applied
	// when no key of that proposer on the item younger than KeyWindowAge
	// has been pushed out of its window, and returns ErrOutcomeUnknown
	// otherwise. The check and the
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

// keyWindows are one item's key windows, one per proposer. Not safe for
// concurrent use: its item's lock guards it.
type keyWindows struct {
	byProposer map[string]*keyWindow
	// lostAt is, for a proposer with no window yet, when keys of the
	// item may have been lost (a manager that rebuilt its windows at
	// open, from a window that does not reach back to the first
	// transaction).
	lostAt time.Time
	swept  int // the number of windows at the last sweep
}

func newKeyWindows() *keyWindows {
	return &keyWindows{byProposer: make(map[string]*keyWindow)}
}

// window returns the proposer's window, making it.
func (ws *keyWindows) window(proposer string, now time.Time) *keyWindow {
	w := ws.byProposer[proposer]
	if w == nil {
		if len(ws.byProposer) >= 64 && len(ws.byProposer) >= 2*ws.swept {
			ws.sweep(now)
		}
		w = newKeyWindow()
		w.lostAt = ws.lostAt
		ws.byProposer[proposer] = w
	}
	return w
}

// sweep drops the windows of proposers whose keys have all aged out and
// that are sure of their losses, so that an item proposed to by many
// proposers over time holds only the recent ones.
func (ws *keyWindows) sweep(now time.Time) {
	for p, w := range ws.byProposer {
		w.expire(now)
		if w.head == len(w.entries) && !w.unsure(now) && !ws.unsure(now) {
			delete(ws.byProposer, p)
		}
	}
	ws.swept = len(ws.byProposer)
}

// unsure reports whether keys of a proposer with no window may have been
// lost.
func (ws *keyWindows) unsure(now time.Time) bool {
	return !ws.lostAt.IsZero() && now.Sub(ws.lostAt) < KeyWindowAge
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
	// Its key leaves the map, unless it was dropped and remembered again
	// since.
	w.drop(e)
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

// keysFromWindow rebuilds an item's key windows from a replay window's
// keyed transactions (oldest first), as a manager that persists them does
// at open; last is the item's last transaction id. When transactions older
// than the window's oldest existed (or the window keeps none), their keys
// are gone, whoever proposed them: every proposer's retries are unsure
// until the oldest kept one is older than the age (for a whole age from
// now when no time is known).
func keysFromWindow(window []windowEntry, last string) *keyWindows {
	ws := newKeyWindows()
	switch {
	case len(window) == 0 && last != "":
		ws.lostAt = time.Now()
	case len(window) > 0 && window[0].prev != "":
		ws.lostAt = time.Now()
		if window[0].at != 0 {
			ws.lostAt = time.Unix(0, window[0].at)
		}
	}
	for _, e := range window {
		if e.key != "" {
			at := time.Unix(0, e.at)
			ws.window(e.proposer, at).add(&keyEntry{key: e.key, txID: e.id, at: at})
		}
	}
	return ws
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
// proposal was then neither applied nor decided, nor when the function
// panicked (a failure, which a retry may not meet).
func refusalToRemember(err error) bool {
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, ErrFunctionPanicked)
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
