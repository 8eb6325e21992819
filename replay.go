package realtime

import (
	"context"
	"errors"
	"sync"
)

// This file holds the replay window: the last transactions of each share
// data item, kept so that a client reconnecting with a cursor (since) gets
// what it missed.

// ErrReplayCursorNotFound is returned by ReplayStore.Replay when the cursor
// is not in the retained window (too old, or from another history). The
// server then sends an error frame with code "replay-cursor-not-found" and
// skips the replay; the client still has the current state from the state
// frame before it.
var ErrReplayCursorNotFound = errors.New("realtime: replay cursor not found")

// ReplayRecord is one retained transaction: its id, its predecessor's id,
// and the replayed transaction message, encoded once (with "replayed":true
// and no currentState), so replaying is copying bytes.
type ReplayRecord struct {
	TransactionID         string // the transaction's id
	PreviousTransactionID string // the id of the one before it, "" for the first
	Message               []byte // the encoded replayed transaction message
}

// ReplayStore keeps a bounded window of transactions per share data item.
// MemoryReplayStore is the default; a shared store (such as Redis) lets a
// client reconnect to another server instance and still be replayed.
type ReplayStore interface {
	// Append adds the newest transaction of a share data item. Appends for
	// one item come in transaction order.
	Append(ctx context.Context, shareDataID string, rec ReplayRecord) error
	// Replay returns the retained records after since, up to and including
	// until, oldest first. since "" means "before the first transaction".
	// It returns nil when since equals until, and an error matching
	// ErrReplayCursorNotFound when since is not in the window or the
	// records from since to until do not chain (each record's
	// PreviousTransactionID the one before's TransactionID): a replay that
	// cannot be whole is not given.
	Replay(ctx context.Context, shareDataID, since, until string) ([]ReplayRecord, error)
	// Drop forgets a share data item's window (it was removed).
	Drop(ctx context.Context, shareDataID string) error
}

// defaultReplayBufferSize is the number of transactions retained per share
// data item by default.
const defaultReplayBufferSize = 100

// MemoryReplayStore keeps, per share data item, a ring buffer of a fixed
// capacity: appending is O(1) and never grows it, and a removed item's
// buffer is dropped, so memory is bounded by capacity times the number of
// live items. It is safe for concurrent use.
type MemoryReplayStore struct {
	capacity int
	mu       sync.Mutex
	rings    map[string]*ring
}

// NewMemoryReplayStore returns a store keeping capacity transactions per
// item. Zero means 100. Negative means none: Append keeps nothing, and
// every Replay that is not empty fails with ErrReplayCursorNotFound.
func NewMemoryReplayStore(capacity int) *MemoryReplayStore {
	switch {
	case capacity == 0:
		capacity = defaultReplayBufferSize
	case capacity < 0:
		capacity = 0
	}
	return &MemoryReplayStore{capacity: capacity, rings: make(map[string]*ring)}
}

type ring struct {
	recs  []ReplayRecord // len == capacity once full
	head  int            // index of the oldest record
	count int
}

func (r *ring) at(i int) *ReplayRecord { return &r.recs[(r.head+i)%len(r.recs)] }

// Append implements ReplayStore.
func (s *MemoryReplayStore) Append(ctx context.Context, shareDataID string, rec ReplayRecord) error {
	if s.capacity == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rings[shareDataID]
	if r == nil {
		r = &ring{recs: make([]ReplayRecord, s.capacity)}
		s.rings[shareDataID] = r
	}
	if r.count < len(r.recs) {
		r.recs[(r.head+r.count)%len(r.recs)] = rec
		r.count++
		return nil
	}
	r.recs[r.head] = rec // overwrite the oldest
	r.head = (r.head + 1) % len(r.recs)
	return nil
}

// Replay implements ReplayStore.
func (s *MemoryReplayStore) Replay(ctx context.Context, shareDataID, since, until string) ([]ReplayRecord, error) {
	if since == until {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rings[shareDataID]
	if r == nil {
		return nil, ErrReplayCursorNotFound
	}
	start, end, ok := windowSpan(r.count, func(i int) (string, string) {
		rec := r.at(i)
		return rec.TransactionID, rec.PreviousTransactionID
	}, since, until)
	if !ok {
		return nil, ErrReplayCursorNotFound
	}
	out := make([]ReplayRecord, 0, end-start)
	for i := start; i < end; i++ {
		out = append(out, *r.at(i))
	}
	return out, nil
}

// windowSpan applies the rule of ReplayStore.Replay to a window of n
// records, oldest first, whose ids and predecessors link(i) returns: the
// records after since up to and including until (to the end when until is
// "") are [start, end). ok is false when since is not in the window (nor
// the oldest record's predecessor), when the records from since do not
// chain (a hole: transactions applied while nothing recorded them), or
// when the window does not reach until: a replay that cannot be whole is
// not given. The stores of this package share it.
func windowSpan(n int, link func(i int) (id, prev string), since, until string) (start, end int, ok bool) {
	if n == 0 {
		return 0, 0, false
	}
	start = -1
	if _, prev := link(0); prev == since {
		start = 0 // since is the oldest record's predecessor (or "" for the first)
	} else {
		for i := 0; i < n; i++ {
			if id, _ := link(i); id == since {
				start = i + 1
				break
			}
		}
	}
	if start < 0 {
		return 0, 0, false
	}
	cur := since
	for i := start; i < n; i++ {
		id, prev := link(i)
		if prev != cur {
			return 0, 0, false
		}
		if id == until {
			return start, i + 1, true
		}
		cur = id
	}
	if until != "" {
		return 0, 0, false
	}
	return start, n, true
}

// Drop implements ReplayStore.
func (s *MemoryReplayStore) Drop(ctx context.Context, shareDataID string) error {
	s.mu.Lock()
	delete(s.rings, shareDataID)
	s.mu.Unlock()
	return nil
}
