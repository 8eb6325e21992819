package redisrt

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/degenerate/realtime"
	"github.com/degenerate/realtime/realtimetest"
)

var prefixSeq atomic.Uint64

// newTestManager returns a Manager over the test Redis with a prefix of
// its own, so tests do not see each other's keys.
func newTestManager(t *testing.T, prefix string) *Manager {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	m, err := NewManager(t.Context(), rdb, Options{Prefix: prefix, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		rdb.Close()
	})
	return m
}

func uniquePrefix(t testing.TB) string {
	return "m-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + strconv.FormatUint(prefixSeq.Add(1), 10)
}

// TestManagerContract runs the contract kit against the Redis manager;
// reopening is a new Manager (a new process) over the same keys.
func TestManagerContract(t *testing.T) {
	prefixes := map[realtimetest.Manager]string{}
	realtimetest.TestManager(t,
		func(t *testing.T) realtimetest.Manager {
			p := uniquePrefix(t)
			m := newTestManager(t, p)
			prefixes[m] = p
			return m
		},
		func(t *testing.T, old realtimetest.Manager) realtimetest.Manager {
			old.(*Manager).Close()
			return newTestManager(t, prefixes[old])
		})
}

// TestFunctionProviderOnNewInstance: an item created at run time through
// one instance is served by a new instance (a new process on the same
// Redis) with no AddFunction, through a provider registered once by kind;
// the new instance lists the items (IDs), also with glob characters in
// the prefix and the ids.
func TestFunctionProviderOnNewInstance(t *testing.T) {
	ctx := context.Background()
	prefix := uniquePrefix(t) + "[*?]"
	a := newTestManager(t, prefix)
	for _, id := range []string{"doc-1", "doc-*", "other"} {
		if err := a.Create(ctx, id, json.RawMessage(`{"count":0}`)); err != nil {
			t.Fatal(err)
		}
	}
	b := newTestManager(t, prefix) // the new instance: nothing registered
	provider := realtime.FunctionsByPrefix(map[string][]realtime.Function{"doc-": {increment}})
	srv := realtime.NewServer(b, &realtime.ServerOptions{ResolveFunction: realtime.IDFunctionResolver(provider), Logger: quiet})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Shutdown(ctx)
	c, err := realtime.NewClient("ws"+strings.TrimPrefix(hs.URL, "http"), &realtime.ClientOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Propose(ctx, "doc-1", "increment", json.RawMessage(`{"by":3}`)); err != nil {
		t.Fatalf("a proposal through the new instance: %v", err)
	}
	if snap, _ := a.Snapshot(ctx, "doc-1"); string(snap.State) != `{"count":3}` {
		t.Fatalf("state %s", snap.State)
	}
	if ids, err := b.IDs(ctx); err != nil || strings.Join(ids, ",") != "doc-*,doc-1,other" {
		t.Fatalf("IDs: %v, %v", ids, err)
	}
}
