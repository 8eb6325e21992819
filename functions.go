package realtime

import (
	"context"
	"sort"
	"strings"
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
	m.mu.RLock()
	ids := make([]string, 0, len(m.items))
	items := make([]*memItem, 0, len(m.items))
	for id, it := range m.items {
		ids, items = append(ids, id), append(items, it)
	}
	m.mu.RUnlock()
	out := ids[:0]
	for i, it := range items {
		it.mu.Lock()
		removed := it.removed
		it.mu.Unlock()
		if !removed {
			out = append(out, ids[i])
		}
	}
	sort.Strings(out)
	return out, nil
}

// IDs implements ItemLister: the items on disk (created and not removed).
func (m *DiskManager) IDs(ctx context.Context) ([]string, error) {
	m.mu.RLock()
	ids := make([]string, 0, len(m.items))
	items := make([]*diskItem, 0, len(m.items))
	for id, it := range m.items {
		ids, items = append(ids, id), append(items, it)
	}
	m.mu.RUnlock()
	out := ids[:0]
	for i, it := range items {
		it.smu.Lock()
		live := it.live
		it.smu.Unlock()
		if live {
			out = append(out, ids[i])
		}
	}
	sort.Strings(out)
	return out, nil
}
