package realtime

import (
	"context"
	"sync"
)

// ChannelRegistry carries share data events from where they happen (the
// manager of the instance that applied them) to every server instance with
// subscribers. MemoryChannelRegistry is the in-process default; a registry
// over a message broker (Redis pub/sub, for one) lets several instances behind a
// load balancer serve the same share data.
type ChannelRegistry interface {
	// Publish delivers ev to every attached receiver, on every instance.
	// Events of one share data item reach each receiver in Publish order.
	Publish(ctx context.Context, ev Event) error
	// Attach registers a receiver of published events until detach is
	// called. A receiver must not block for long.
	Attach(receive func(Event)) (detach func())
}

// MemoryChannelRegistry delivers published events synchronously to the
// receivers attached in this process. It is safe for concurrent use.
type MemoryChannelRegistry struct {
	mu        sync.RWMutex
	receivers map[*func(Event)]struct{}
}

// NewMemoryChannelRegistry returns a registry with no receivers.
func NewMemoryChannelRegistry() *MemoryChannelRegistry {
	return &MemoryChannelRegistry{receivers: make(map[*func(Event)]struct{})}
}

// Publish implements ChannelRegistry: it calls every receiver before it
// returns.
func (r *MemoryChannelRegistry) Publish(ctx context.Context, ev Event) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for fn := range r.receivers {
		(*fn)(ev)
	}
	return nil
}

// Attach implements ChannelRegistry.
func (r *MemoryChannelRegistry) Attach(receive func(Event)) (detach func()) {
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
