package realtime

import (
	"context"
	"sync"
)

// This file holds the fan-out: the channel registry that carries events to
// every server instance, and the per-share-data topics that turn one event
// into one encoded frame queued for every local subscriber.

// ChannelRegistry carries share data events from where they happen (the
// manager of the instance that applied them) to every server instance with
// subscribers. MemoryRegistry is the in-process default; a registry over a
// message broker (Redis pub/sub, for one) lets several instances behind a
// load balancer serve the same share data.
type ChannelRegistry interface {
	// Publish delivers ev to every attached receiver, on every instance.
	// Events of one share data item reach each receiver in Publish order.
	Publish(ctx context.Context, ev Event) error
	// Attach registers a receiver of published events until detach is
	// called. A receiver must not block for long.
	Attach(receive func(Event)) (detach func())
}

// MemoryRegistry delivers published events synchronously to the receivers
// attached in this process. It is safe for concurrent use.
type MemoryRegistry struct {
	mu        sync.RWMutex
	receivers map[*func(Event)]struct{}
}

// NewMemoryRegistry returns a registry with no receivers.
func NewMemoryRegistry() *MemoryRegistry {
	return &MemoryRegistry{receivers: make(map[*func(Event)]struct{})}
}

// Publish implements ChannelRegistry: it calls every receiver before it
// returns.
func (r *MemoryRegistry) Publish(ctx context.Context, ev Event) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for fn := range r.receivers {
		(*fn)(ev)
	}
	return nil
}

// Attach implements ChannelRegistry.
func (r *MemoryRegistry) Attach(receive func(Event)) (detach func()) {
	key := &receive
	r.mu.Lock()
	r.receivers[key] = struct{}{}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.receivers, key)
		r.mu.Unlock()
	}
}

// topic is the set of local subscriptions to one share data item.
type topic struct {
	id   string
	mu   sync.Mutex
	subs []*subscription // each knows its index, for O(1) removal
	dead bool            // removed from the server's map
}

// subscription is one connection's subscription to one share data item.
type subscription struct {
	sess  *session
	topic *topic
	index int // in topic.subs, under topic.mu

	// Under topic.mu:
	syncing bool           // between registration and the snapshot
	pending []pendingFrame // frames that arrived while syncing
	version uint64         // the last event version delivered
	ended   bool
}

// pendingFrame is an event's frame held for a syncing subscription.
type pendingFrame struct {
	version uint64
	frame   []byte
	removed bool
}

// add registers sub; the caller holds t.mu.
func (t *topic) add(sub *subscription) {
	sub.index = len(t.subs)
	t.subs = append(t.subs, sub)
}

// remove unregisters sub; the caller holds t.mu.
func (t *topic) remove(sub *subscription) {
	if sub.index < 0 || sub.index >= len(t.subs) || t.subs[sub.index] != sub {
		return
	}
	last := len(t.subs) - 1
	t.subs[sub.index] = t.subs[last]
	t.subs[sub.index].index = sub.index
	t.subs[last] = nil
	t.subs = t.subs[:last]
	sub.index = -1
}

// fanOut queues one event's frame, encoded once, for every subscription:
// live ones get it now (unless their snapshot already reflects it), syncing
// ones hold it until their snapshot is known. A subscription that would see
// a gap in the versions is closed with 4001, so its client resubscribes
// with since rather than miss a transaction. On removal, the subscriptions
// end after the frame.
func (t *topic) fanOut(version uint64, frame []byte, removed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := 0; i < len(t.subs); i++ {
		sub := t.subs[i]
		if sub.syncing {
			sub.pending = append(sub.pending, pendingFrame{version: version, frame: frame, removed: removed})
			continue
		}
		if !sub.deliver(version, frame) {
			continue
		}
		if removed {
			sub.end()
			i-- // the last subscription moved into slot i
		}
	}
}

// deliver queues frame if version is the next one the subscription
// expects, and reports whether it did. The caller holds topic.mu.
func (sub *subscription) deliver(version uint64, frame []byte) bool {
	switch {
	case version <= sub.version:
		return false // already reflected in its snapshot
	case version != sub.version+1:
		sub.sess.close(CloseFellBehind, "missed events of "+quoteForError(sub.topic.id)+"; resubscribe", false)
		return false
	}
	sub.version = version
	sub.sess.enqueue(frame)
	return true
}

// end unregisters a subscription whose share data was removed. The caller
// holds topic.mu.
func (sub *subscription) end() {
	sub.ended = true
	sub.topic.remove(sub)
	sub.sess.forget(sub)
}
