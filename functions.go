package realtime

import (
	"context"
	"sort"
	"strings"
	"sync"
)

// This file is functions offered by kind of item, registered once, and the
// listing of a manager's items: what lets an item created while the
// process runs keep its functions after a restart, with no registration
// code per item.

// FunctionProvider is a FunctionLookup in a func, as http.HandlerFunc is a
// Handler: the application decides, for any item, which function an id
// names (by the item's kind, its id's prefix, a table of its own).
// IDFunctionResolver(provider) makes it the server's resolver; items need
// no AddFunction, after a restart or on a new instance either.
type FunctionProvider func(shareDataID, functionID string) (Function, bool)

// Function implements FunctionLookup.
func (p FunctionProvider) Function(shareDataID, functionID string) (Function, bool) {
	return p(shareDataID, functionID)
}

// FunctionsByPrefix returns a provider of the functions listed for each id
// prefix (a kind of item: "doc-", "board-"; "" for every item): an item's
// functions are those of the longest prefix its id starts with. The map is
// read once; changing it afterwards changes nothing.
func FunctionsByPrefix(kinds map[string][]Function) FunctionProvider {
	type kind struct {
		prefix string
		fns    map[string]Function
	}
	var ks []kind
	for prefix, fns := range kinds {
		k := kind{prefix: prefix, fns: make(map[string]Function, len(fns))}
		for _, fn := range fns {
			if fn.ID != "" && fn.Apply != nil {
				k.fns[fn.ID] = fn
			}
		}
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return len(ks[i].prefix) > len(ks[j].prefix) }) // longest first
	return func(shareDataID, functionID string) (Function, bool) {
		for _, k := range ks {
			if strings.HasPrefix(shareDataID, k.prefix) {
				fn, ok := k.fns[functionID]
				return fn, ok
			}
		}
		return Function{}, false
	}
}

// ItemLister is a manager that can list its items, so that an application
// can walk them after a restart (to check them, to mirror them). The
// managers of this package and redisrt implement it.
type ItemLister interface {
	// IDs returns the ids of the items the manager holds now, sorted.
	IDs(ctx context.Context) ([]string, error)
}

// IDs implements ItemLister.
func (m *MemoryManager) IDs(ctx context.Context) ([]string, error) {
	return liveIDs(&m.mu, m.items, func(it *memItem) bool {
		it.mu.Lock()
		defer it.mu.Unlock()
		return !it.removed
	}), nil
}

// IDs implements ItemLister: the items on disk (created and not removed).
func (m *DiskManager) IDs(ctx context.Context) ([]string, error) {
	return liveIDs(&m.mu, m.items, func(it *diskItem) bool {
		it.smu.Lock()
		defer it.smu.Unlock()
		return it.live
	}), nil
}

// liveIDs returns the sorted ids of the items for which live holds. The
// map is read under mu; live runs after, with no manager lock held.
func liveIDs[T any](mu *sync.RWMutex, items map[string]T, live func(T) bool) []string {
	mu.RLock()
	ids := make([]string, 0, len(items))
	its := make([]T, 0, len(items))
	for id, it := range items {
		ids, its = append(ids, id), append(its, it)
	}
	mu.RUnlock()
	out := ids[:0]
	for i, it := range its {
		if live(it) {
			out = append(out, ids[i])
		}
	}
	sort.Strings(out)
	return out
}
