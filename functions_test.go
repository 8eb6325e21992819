package realtime

import (
	"context"
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"
)

// TestFunctionProviderAcrossRestart: an item created while the process
// runs keeps its functions after a DiskManager restart, through a provider
// registered once by kind (FunctionsByPrefix), with no AddFunction for
// the item; the restarted manager lists it (IDs).
func TestFunctionProviderAcrossRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	inc := testFunctions[1] // increment
	provider := FunctionsByPrefix(map[string][]Function{"doc-": {inc}, "": {testFunctions[0]}})
	opts := &DiskManagerOptions{Logger: slog.New(slog.DiscardHandler)}
	propose := func(dm *DiskManager) *ProposalResultMessage {
		t.Helper()
		srv := NewServer(dm, &ServerOptions{ResolveFunction: IDFunctionResolver(provider), Logger: quietLogger})
		c := dialRT(t, serveRT(t, srv), nil)
		c.propose("doc-42", "increment", `{"by":2}`, "c")
		return nextAs[*ProposalResultMessage](c)
	}
	dm, err := OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Created at run time, with no functions of its own.
	if err := dm.Create(ctx, "doc-42", json.RawMessage(`{"count":0}`)); err != nil {
		t.Fatal(err)
	}
	if err := dm.Create(ctx, "gone", nil); err != nil {
		t.Fatal(err)
	}
	dm.Remove(ctx, "gone")
	if res := propose(dm); !res.Accepted {
		t.Fatalf("before the restart: %s", res.AppendJSON(nil))
	}
	dm.Close()

	dm, err = OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dm.Close()
	if res := propose(dm); !res.Accepted {
		t.Fatalf("after the restart, with no registration: %s", res.AppendJSON(nil))
	}
	if snap, _ := dm.Snapshot(ctx, "doc-42"); string(snap.State) != `{"count":4}` {
		t.Fatalf("state %s", snap.State)
	}
	if ids, err := dm.IDs(ctx); err != nil || !reflect.DeepEqual(ids, []string{"doc-42"}) {
		t.Fatalf("IDs after the restart: %v, %v", ids, err)
	}
}

// TestFunctionsByPrefix: the longest prefix an id starts with decides; ""
// is every item; a kind's unknown function is unknown even when a shorter
// prefix has it.
func TestFunctionsByPrefix(t *testing.T) {
	set, inc := testFunctions[0], testFunctions[1]
	p := FunctionsByPrefix(map[string][]Function{"": {set}, "doc-": {inc}, "doc-special-": {set, inc}})
	for _, tc := range []struct {
		id, fn string
		want   bool
	}{
		{"anything", "set", true},
		{"anything", "increment", false},
		{"doc-1", "increment", true},
		{"doc-1", "set", false},
		{"doc-special-1", "set", true},
		{"doc-special-1", "increment", true},
	} {
		fn, ok := p.Function(tc.id, tc.fn)
		if ok != tc.want || ok && fn.ID != tc.fn {
			t.Errorf("%s %s: %v %v, want %v", tc.id, tc.fn, fn.ID, ok, tc.want)
		}
	}
	m := NewMemoryManager()
	m.Create(context.Background(), "b", nil)
	m.Create(context.Background(), "a", nil)
	m.Create(context.Background(), "c", nil)
	m.Remove(context.Background(), "c")
	if ids, _ := m.IDs(context.Background()); !reflect.DeepEqual(ids, []string{"a", "b"}) {
		t.Fatalf("MemoryManager.IDs: %v", ids)
	}
}
