package realtime

import (
	"context"
	crand "crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file defines what the server needs from the store of share data
// (the Manager interface, its events and functions) and MemoryManager, an
// in-memory implementation for examples, demos and tests.

// Errors of managers and function resolution.
var (
	// ErrUnknownShareData: no share data item has that id.
	ErrUnknownShareData = errors.New("realtime: unknown share data")
	// ErrShareDataExists: Create was given an id already in use.
	ErrShareDataExists = errors.New("realtime: share data already exists")
	// ErrUnknownFunction: the share data has no function with that id
	// reachable over the wire.
	ErrUnknownFunction = errors.New("realtime: unknown function")
)

// Function computes a share data item's next state from its current state
// and a proposal. Functions are registered per share data with an ID, the
// wire's functionId; a function with an empty ID is never reachable over
// the wire (keep those for internal use).
type Function struct {
	ID string // the wire functionId; "" keeps the function internal
	// Apply returns the next state, which must be valid JSON, or an error
	// that refuses the proposal; its message is sent to the proposer.
	// It must not call back into the manager for the same share data.
	Apply func(ctx context.Context, current, proposed json.RawMessage) (json.RawMessage, error)
}

// Transaction is one applied change to a share data item.
type Transaction struct {
	ShareDataID string // the share data it changed
	// ID is opaque and unique, also across restarts of the process.
	ID string
	// PreviousID is the id of the transaction before this one on the same
	// share data, "" for the first.
	PreviousID   string
	FunctionID   string          // the function that computed it
	ProposedData json.RawMessage // the proposal, compact JSON
	// State is the share data's state after the transaction.
	State json.RawMessage
	// IdempotencyKey is the key of the proposal that made it, when it had
	// one (KeyedApplier); "" otherwise.
	IdempotencyKey string
}

// Snapshot is a share data item's state at one moment.
type Snapshot struct {
	State json.RawMessage // the current state, compact JSON
	// LastTransactionID is the id of the last transaction applied, ""
	// when none was.
	LastTransactionID string
	// Version counts the item's events (transactions and lifecycle
	// updates): the snapshot reflects exactly the events numbered up to
	// Version.
	Version uint64
}

// EventKind says what an Event reports.
type EventKind int

const (
	// EventTransaction: a transaction was applied.
	EventTransaction EventKind = iota + 1
	// EventUpdated: the state was replaced outside the transaction flow.
	EventUpdated
	// EventRemoved: the share data was removed; no event follows for it.
	EventRemoved
	// EventLost is raised by a ChannelRegistry, or by a manager whose
	// events travel over a network (redisrt.Manager), never for a change
	// of its own: events of ShareDataID ("" for every share data) may have
	// been lost on the way (a broker connection dropped). The server closes the connections
	// subscribed to them with 4001, so their clients resubscribe with since
	// rather than silently miss transactions.
	EventLost
)

func (k EventKind) String() string {
	switch k {
	case EventTransaction:
		return "transaction"
	case EventUpdated:
		return "updated"
	case EventRemoved:
		return "removed"
	case EventLost:
		return "lost"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event reports a change to one share data item.
type Event struct {
	Kind        EventKind // what happened
	ShareDataID string    // to which share data
	// Version is the item's event number: 1 for its first event, and one
	// more for each following event of the same item.
	Version uint64
	// Transaction is set for EventTransaction.
	Transaction *Transaction
	// State is the new state for EventUpdated.
	State json.RawMessage
}

// Manager is the store of share data that a Server serves. Any store can
// implement it: MemoryManager keeps share data in memory, DiskManager in a
// directory; a manager over a database or a shared store (the redisrt
// module's) lets several instances serve the same data.
//
// The contract the server's delivery guarantees rest on, per share data
// item (realtimetest.TestManager checks it):
//
//   - Order. Each listener is called with the item's events one at a time,
//     in order, each once, Version one more than the one before (1 for the
//     first event of the item's life).
//   - Snapshots. A Snapshot at Version v reflects exactly the events
//     numbered up to v; its LastTransactionID is the last transaction
//     among them.
//   - Freshness. A Snapshot is never behind an event that was delivered to
//     a listener before Snapshot was called. It may be ahead of events not
//     delivered yet, and events may arrive while it runs: a manager over a
//     shared store hears of other instances' changes asynchronously.
//   - Chain. A transaction's PreviousID is the ID of the one before it on
//     the same item; ids are unique, also across restarts.
//
// Within it the server never loses continuity: events a subscriber's
// snapshot already reflects are dropped, events that arrive while it joins
// are held and follow its snapshot, and only an event that skips a version
// (one lost on the way) closes the subscriber, with 4001, so its client
// resubscribes with since and is replayed. MemoryManager and DiskManager
// deliver each event before the call that caused it returns.
type Manager interface {
	// Snapshot returns the item's current state. It returns an error
	// matching ErrUnknownShareData when there is no such item.
	Snapshot(ctx context.Context, shareDataID string) (Snapshot, error)
	// Apply runs fn on the item's current state and proposed, records
	// the result as a transaction, tells the listeners, and returns it.
	Apply(ctx context.Context, shareDataID string, fn Function, proposed json.RawMessage) (*Transaction, error)
	// Listen registers l for every event of every item until cancel is
	// called. l must not block for long: it runs on the path of Apply.
	Listen(l func(Event)) (cancel func())
}

// FunctionResolver maps a propose message's share data id and function id
// to the function to run. It returns an error matching ErrUnknownFunction
// for an id it does not know, or any other error to refuse the proposal
// (its message goes to the proposer).
type FunctionResolver func(ctx context.Context, shareDataID, functionID string) (Function, error)

// FunctionLookup is a store that keeps functions by id per share data, as
// MemoryManager does.
type FunctionLookup interface {
	Function(shareDataID, functionID string) (Function, bool)
}

// IDFunctionResolver returns the conventional resolver: the function
// registered on the share data under the wire's functionId. Functions with
// an empty ID are never found.
func IDFunctionResolver(l FunctionLookup) FunctionResolver {
	return func(ctx context.Context, shareDataID, functionID string) (Function, error) {
		if functionID == "" {
			return Function{}, ErrUnknownFunction
		}
		fn, ok := l.Function(shareDataID, functionID)
		if !ok || fn.ID == "" {
			if err := unknownShareData(ctx, l, shareDataID); err != nil {
				return Function{}, err
			}
			return Function{}, fmt.Errorf("%w %s", ErrUnknownFunction, quoteForError(functionID))
		}
		return fn, nil
	}
}

// unknownShareData tells, when l is also a Manager, whether the function
// was not found because the share data itself does not exist: then the
// proposer is told so, rather than that its function is unknown. It is
// asked only on that error path.
func unknownShareData(ctx context.Context, l FunctionLookup, shareDataID string) error {
	m, ok := l.(Manager)
	if !ok {
		return nil
	}
	if _, err := m.Snapshot(ctx, shareDataID); errors.Is(err, ErrUnknownShareData) {
		return fmt.Errorf("%w %s", ErrUnknownShareData, quoteForError(shareDataID))
	}
	return nil
}

// MemoryManager keeps share data in memory. It is safe for concurrent use.
// Transaction ids are a random prefix drawn when the manager is made and a
// counter, so a cursor saved before a restart never matches a transaction
// after it.
type MemoryManager struct {
	prefix    string
	seq       atomic.Uint64
	mu        sync.RWMutex
	items     map[string]*memItem
	listeners listenerSet
}

type memItem struct {
	mu      sync.Mutex
	removed bool
	state   json.RawMessage
	last    string
	version uint64
	fns     map[string]Function
	keys    *keyWindows // made at the first keyed proposal
}

// NewMemoryManager returns an empty manager.
func NewMemoryManager() *MemoryManager {
	var b [10]byte
	crand.Read(b[:])
	return &MemoryManager{
		prefix: base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]),
		items:  make(map[string]*memItem),
	}
}

// Create adds a share data item with an initial state (valid JSON; nil
// means null) and its functions.
func (m *MemoryManager) Create(ctx context.Context, shareDataID string, state json.RawMessage, fns ...Function) error {
	st, err := normalizeState(state)
	if err != nil {
		return err
	}
	it := &memItem{state: st, fns: make(map[string]Function)}
	for _, fn := range fns {
		if fn.ID != "" {
			it.fns[fn.ID] = fn
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.items[shareDataID]; ok {
		return fmt.Errorf("%w: %s", ErrShareDataExists, quoteForError(shareDataID))
	}
	m.items[shareDataID] = it
	return nil
}

// AddFunction registers fn on the share data. A function with an empty ID
// is refused: it could never be called over the wire.
func (m *MemoryManager) AddFunction(shareDataID string, fn Function) error {
	if fn.ID == "" || fn.Apply == nil {
		return errors.New("realtime: a function needs an ID and Apply")
	}
	it, err := m.item(shareDataID)
	if err != nil {
		return err
	}
	it.mu.Lock()
	defer it.mu.Unlock()
	it.fns[fn.ID] = fn
	return nil
}

// Function returns the function registered under functionID.
func (m *MemoryManager) Function(shareDataID, functionID string) (Function, bool) {
	it, err := m.item(shareDataID)
	if err != nil {
		return Function{}, false
	}
	it.mu.Lock()
	defer it.mu.Unlock()
	fn, ok := it.fns[functionID]
	return fn, ok
}

// lockLive returns the item locked, or an error matching
// ErrUnknownShareData when there is none or it was removed. The caller
// unlocks it.
func (m *MemoryManager) lockLive(id string) (*memItem, error) {
	it, err := m.item(id)
	if err != nil {
		return nil, err
	}
	it.mu.Lock()
	if it.removed {
		it.mu.Unlock()
		return nil, fmt.Errorf("%w %s", ErrUnknownShareData, quoteForError(id))
	}
	return it, nil
}

func (m *MemoryManager) item(id string) (*memItem, error) {
	m.mu.RLock()
	it := m.items[id]
	m.mu.RUnlock()
	if it == nil {
		return nil, fmt.Errorf("%w %s", ErrUnknownShareData, quoteForError(id))
	}
	return it, nil
}

// Snapshot implements Manager.
func (m *MemoryManager) Snapshot(ctx context.Context, shareDataID string) (Snapshot, error) {
	it, err := m.lockLive(shareDataID)
	if err != nil {
		return Snapshot{}, err
	}
	defer it.mu.Unlock()
	return Snapshot{State: it.state, LastTransactionID: it.last, Version: it.version}, nil
}

// Apply implements Manager. fn runs under the item's lock, so transactions
// on one item are applied one at a time, in a single order that every
// listener sees.
func (m *MemoryManager) Apply(ctx context.Context, shareDataID string, fn Function, proposed json.RawMessage) (*Transaction, error) {
	it, proposed, err := m.lockProposal(shareDataID, fn, proposed)
	if err != nil {
		return nil, err
	}
	defer it.mu.Unlock()
	return m.applyLocked(ctx, it, shareDataID, fn, proposed, "")
}

// lockProposal checks a proposal and returns its item locked, with the
// proposal compacted.
func (m *MemoryManager) lockProposal(shareDataID string, fn Function, proposed json.RawMessage) (*memItem, json.RawMessage, error) {
	proposed, err := checkProposal(fn, proposed)
	if err != nil {
		return nil, nil, err
	}
	it, err := m.lockLive(shareDataID)
	return it, proposed, err
}

// ApplyKeyed implements KeyedApplier: the item's key window is checked
// and updated under the same lock as the apply.
func (m *MemoryManager) ApplyKeyed(ctx context.Context, shareDataID string, fn Function, proposed json.RawMessage, key string, retry bool) (*Transaction, error) {
	it, proposed, err := m.lockProposal(shareDataID, fn, proposed)
	if err != nil {
		return nil, err
	}
	defer it.mu.Unlock()
	if it.keys == nil {
		it.keys = newKeyWindows()
	}
	now := time.Now()
	w := it.keys.window(ProposerFromContext(ctx), now)
	if e := w.lookup(key, now); e != nil {
		return e.remembered(shareDataID)
	}
	if retry && w.unsure(now) {
		return nil, ErrOutcomeUnknown
	}
	tx, err := m.applyLocked(ctx, it, shareDataID, fn, proposed, key)
	switch {
	case err == nil:
		w.add(&keyEntry{key: key, txID: tx.ID, at: now})
	case refusalToRemember(err):
		w.add(&keyEntry{key: key, refusal: err.Error(), at: now})
	}
	return tx, err
}

// applyLocked runs fn and records the transaction; the caller holds the
// item's lock.
func (m *MemoryManager) applyLocked(ctx context.Context, it *memItem, shareDataID string, fn Function, proposed json.RawMessage, key string) (*Transaction, error) {
	next, err := runFunction(ctx, fn, it.state, proposed)
	if err != nil {
		return nil, err
	}
	tx := &Transaction{
		ShareDataID:    shareDataID,
		ID:             m.prefix + "-" + strconv.FormatUint(m.seq.Add(1), 36),
		PreviousID:     it.last,
		FunctionID:     fn.ID,
		ProposedData:   proposed,
		State:          next,
		IdempotencyKey: key,
	}
	it.state, it.last = next, tx.ID
	it.version++
	m.notify(Event{Kind: EventTransaction, ShareDataID: shareDataID, Version: it.version, Transaction: tx})
	return tx, nil
}

// Update replaces the item's state outside the transaction flow; the
// subscribers get a lifecycle "updated" frame. The last transaction id does
// not change.
func (m *MemoryManager) Update(ctx context.Context, shareDataID string, state json.RawMessage) error {
	st, err := normalizeState(state)
	if err != nil {
		return err
	}
	it, err := m.lockLive(shareDataID)
	if err != nil {
		return err
	}
	defer it.mu.Unlock()
	it.state = st
	it.version++
	m.notify(Event{Kind: EventUpdated, ShareDataID: shareDataID, Version: it.version, State: st})
	return nil
}

// Remove deletes the item; the subscribers get a lifecycle "removed" frame
// and their subscriptions end.
func (m *MemoryManager) Remove(ctx context.Context, shareDataID string) error {
	it, err := m.lockLive(shareDataID)
	if err != nil {
		return err
	}
	defer it.mu.Unlock()
	it.removed = true
	m.mu.Lock()
	delete(m.items, shareDataID)
	m.mu.Unlock()
	it.version++
	m.notify(Event{Kind: EventRemoved, ShareDataID: shareDataID, Version: it.version})
	return nil
}

// Listen implements Manager. Listeners are called synchronously, under the
// item's lock.
func (m *MemoryManager) Listen(fn func(Event)) (cancel func()) { return m.listeners.add(fn) }

func (m *MemoryManager) notify(ev Event) { m.listeners.notify(ev) }

// listenerSet is a manager's listeners: notify reads the list without a
// lock (it runs on every event), add and cancel copy it.
type listenerSet struct {
	list atomic.Pointer[[]*listener]
	mu   sync.Mutex // serializes changes to list
}

type listener struct{ fn func(Event) }

func (ls *listenerSet) add(fn func(Event)) (cancel func()) {
	l := &listener{fn: fn}
	ls.mu.Lock()
	var next []*listener
	if cur := ls.list.Load(); cur != nil {
		next = append(next, *cur...)
	}
	next = append(next, l)
	ls.list.Store(&next)
	ls.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			ls.mu.Lock()
			defer ls.mu.Unlock()
			cur := *ls.list.Load()
			next := make([]*listener, 0, len(cur))
			for _, x := range cur {
				if x != l {
					next = append(next, x)
				}
			}
			ls.list.Store(&next)
		})
	}
}

func (ls *listenerSet) notify(ev Event) {
	if cur := ls.list.Load(); cur != nil {
		for _, l := range *cur {
			l.fn(ev)
		}
	}
}

// checkProposal checks what every manager checks before a function runs:
// that it has an Apply, and that proposed is JSON (compacted; nil is null).
func checkProposal(fn Function, proposed json.RawMessage) (json.RawMessage, error) {
	if fn.Apply == nil {
		return nil, errors.New("realtime: function has no Apply")
	}
	p, err := normalizeState(proposed)
	if err != nil {
		return nil, fmt.Errorf("realtime: proposed data: %w", err)
	}
	return p, nil
}

// runFunction runs fn on current and proposed, and checks that the next
// state it returns is JSON (compacted).
func runFunction(ctx context.Context, fn Function, current, proposed json.RawMessage) (json.RawMessage, error) {
	next, err := fn.Call(ctx, current, proposed)
	if err != nil {
		return nil, err
	}
	if next, err = normalizeState(next); err != nil {
		return nil, fmt.Errorf("realtime: function %s returned %w", quoteForError(fn.ID), err)
	}
	return next, nil
}

// normalizeState checks that a state is valid JSON and compacts it; nil
// becomes null.
func normalizeState(s json.RawMessage) (json.RawMessage, error) {
	if len(s) == 0 {
		return json.RawMessage("null"), nil
	}
	var sc scanner
	sc.data = s
	sc.ws()
	// Level 2: in a message, the state sits inside the envelope.
	if _, _, reason := sc.value(2); reason != "" {
		return nil, fmt.Errorf("realtime: state is not valid JSON: %s", reason)
	}
	sc.ws()
	if sc.pos != len(s) || !validUTF8(s) {
		return nil, errors.New("realtime: state is not one valid JSON value")
	}
	return compactJSON(s), nil
}
