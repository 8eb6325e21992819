package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKeyedProposalsOnTheWire: a raw client sends a keyed proposal, then
// the same key again as a retry: one transaction, carrying the key, and two
// results naming it. A function's refusal is remembered, not run again. A
// retry whose key may have been pushed out of the window is answered
// outcome-unknown and applies nothing.
func TestKeyedProposalsOnTheWire(t *testing.T) {
	var calls atomic.Int64
	rs := newRTServer(t, nil)
	rs.mgr.AddFunction("doc", Function{ID: "picky", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		calls.Add(1)
		return nil, errors.New("picky says no")
	}})
	c := dialRT(t, rs.url, nil)
	c.subscribe("doc")
	// propose sends a proposal and returns its result, checking that a
	// transaction frame came before it exactly when it was accepted
	// afresh.
	propose := func(fn, key string, retry bool, cid string, fresh bool) *ProposalResultMessage {
		t.Helper()
		c.send(&ProposeMessage{ShareDataID: "doc", FunctionID: fn, ProposedData: json.RawMessage(`{"by":1}`), CorrelationID: cid, IdempotencyKey: key, Retry: retry})
		if fresh {
			if tx := nextAs[*TransactionMessage](c); tx.IdempotencyKey != key {
				t.Fatalf("transaction with key %q, want %q", tx.IdempotencyKey, key)
			}
		}
		return nextAs[*ProposalResultMessage](c)
	}
	c.send(&ProposeMessage{ShareDataID: "doc", FunctionID: "increment", ProposedData: json.RawMessage(`{"by":1}`), CorrelationID: "1", IdempotencyKey: "k-1"})
	tx := nextAs[*TransactionMessage](c)
	first := nextAs[*ProposalResultMessage](c)
	if tx.IdempotencyKey != "k-1" || !first.Accepted || first.TransactionID != tx.TransactionID {
		t.Fatalf("transaction %+v, result %+v", tx, first)
	}
	if again := propose("increment", "k-1", true, "2", false); !again.Accepted || again.TransactionID != tx.TransactionID {
		t.Fatalf("the retry was answered %+v, want the first transaction %s", again, tx.TransactionID)
	}
	c.quiet(50 * time.Millisecond) // and no second transaction
	if snap, _ := rs.mgr.Snapshot(context.Background(), "doc"); string(snap.State) != `{"count":1}` {
		t.Fatalf("state %s after a proposal and its retry", snap.State)
	}

	r1, r2 := propose("picky", "k-2", false, "3", false), propose("picky", "k-2", true, "4", false)
	if r1.Accepted || r2.Accepted || r1.Error != "picky says no" || r2.Error != r1.Error || calls.Load() != 1 {
		t.Fatalf("refusal %+v then %+v, function called %d times", r1, r2, calls.Load())
	}

	// A window of two keys: k-3 and k-4 push k-1 and k-2 out before their
	// age, so a retry of an unknown key cannot be told from theirs.
	it, _ := rs.mgr.item("doc")
	it.mu.Lock()
	it.keys.window("", time.Now()).max = 2 // the anonymous proposer's: no ProposerID
	it.mu.Unlock()
	for i, k := range []string{"k-3", "k-4"} {
		if r := propose("increment", k, false, string(rune('a'+i)), true); !r.Accepted {
			t.Fatal(r.Error)
		}
	}
	r := propose("increment", "k-1", true, "5", false)
	if r.Accepted || r.Code != CodeOutcomeUnknown {
		t.Fatalf("a retry of a forgotten key was answered %+v", r)
	}
	c.quiet(50 * time.Millisecond)
	// A first send of a new key is applied, window or not.
	if r := propose("increment", "k-5", false, "6", true); !r.Accepted {
		t.Fatal(r.Error)
	}
}

// TestSeedProtocolProposalsUnchanged: a client of the seed's protocol (no
// key) proposing the same thing twice gets two transactions, and no frame
// it receives carries a field it does not know.
func TestSeedProtocolProposalsUnchanged(t *testing.T) {
	rs := newRTServer(t, nil)
	rc := connectRaw(t, rs.hs)
	rc.send(fText, []byte(`{"v":1,"type":"subscribe","shareDataId":"doc"}`))
	rc.mustRead() // state
	var frames []string
	for _, cid := range []string{"c-1", "c-2"} {
		rc.send(fText, []byte(`{"v":1,"type":"propose","shareDataId":"doc","functionId":"increment","proposedData":{"by":1},"correlationId":"`+cid+`"}`))
		frames = append(frames, string(rc.mustRead().payload), string(rc.mustRead().payload))
	}
	var txs []string
	for _, f := range frames {
		if strings.Contains(f, "idempotencyKey") || strings.Contains(f, `"code"`) {
			t.Fatalf("a seed client got %s", f)
		}
		if m, err := DecodeServerMessage([]byte(f)); err == nil {
			if tx, ok := m.(*TransactionMessage); ok {
				txs = append(txs, tx.TransactionID)
			}
		}
	}
	if len(txs) != 2 || txs[0] == txs[1] {
		t.Fatalf("two identical proposals without a key made transactions %v; frames:\n%s", txs, strings.Join(frames, "\n"))
	}
	if want := `{"v":1,"type":"proposal-result","correlationId":"c-2","accepted":true,"transactionId":"` + txs[1] + `"}`; frames[3] != want {
		t.Fatalf("result %s, want %s", frames[3], want)
	}
}

// keyedStore is a manager that can hold the test's share data.
type keyedStore interface {
	Manager
	KeyedApplier
	FunctionLookup
	Create(ctx context.Context, shareDataID string, state json.RawMessage, fns ...Function) error
}

// serveStore runs a Server over store, holding "doc" (count 0).
func serveStore(t *testing.T, store keyedStore) *httptest.Server {
	t.Helper()
	if err := store.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), testFunctions...); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(store, &ServerOptions{ResolveFunction: IDFunctionResolver(store), Logger: quietLogger})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		hs.Close()
	})
	return hs
}

// TestProposeExactlyOnceAcrossCuts: a Go client proposes through a proxy
// that cuts connections at random points in both directions, so proposals
// are lost before they are sent, applied with their results lost, or cut
// in their results. Every Propose returns the outcome the manager
// recorded for it (one in five is refused by its function, and must come
// back refused, never applied), and no proposal is applied twice: over a
// MemoryManager and a DiskManager.
func TestProposeExactlyOnceAcrossCuts(t *testing.T) {
	for _, tc := range []struct {
		name string
		seed uint64
		open func(t *testing.T) keyedStore
	}{
		{"memory", 1, func(t *testing.T) keyedStore { return NewMemoryManager() }},
		{"memory", 2, func(t *testing.T) keyedStore { return NewMemoryManager() }},
		{"disk", 3, func(t *testing.T) keyedStore {
			dm, err := OpenDiskManager(t.TempDir(), &DiskManagerOptions{Logger: quietLogger})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dm.Close() })
			return dm
		}},
	} {
		seed, store := tc.seed, tc.open(t)
		hs := serveStore(t, store)
		rng := rand.New(rand.NewPCG(seed, 20))
		var mu sync.Mutex
		var cuts atomic.Int64
		p := newFaultProxy(t, hs.Listener.Addr().String(), func(n int) proxyPlan {
			mu.Lock()
			defer mu.Unlock()
			if n > 60 {
				return proxyPlan{} // let the run finish
			}
			// Every connection is cut after a few proposals: on the way
			// up (the proposal lost or cut, before the server read it) or
			// down (applied, its result lost or cut), with a FIN or a
			// reset.
			onCut := func() { cuts.Add(1) }
			switch rng.IntN(3) {
			case 0:
				return proxyPlan{cutUpAt: 250 + rng.Int64N(2000), onCut: onCut}
			case 1:
				return proxyPlan{cutDownAt: 130 + rng.Int64N(2000), onCut: onCut}
			}
			return proxyPlan{cutDownAt: 130 + rng.Int64N(2000), reset: true, onCut: onCut}
		})
		applied := map[string]string{} // transaction id -> key
		var appliedMu sync.Mutex
		cancel := store.Listen(func(ev Event) {
			if ev.Kind == EventTransaction {
				appliedMu.Lock()
				if _, dup := applied[ev.Transaction.ID]; dup {
					t.Errorf("transaction %s announced twice", ev.Transaction.ID)
				}
				applied[ev.Transaction.ID] = ev.Transaction.IdempotencyKey
				appliedMu.Unlock()
			}
		})
		c, err := NewClient(p.url(), &ClientOptions{ReconnectMin: time.Millisecond, ReconnectMax: 20 * time.Millisecond,
			RequestTimeout: 30 * time.Second, Logger: quietLogger})
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithTimeout(context.Background(), 20*time.Second)
		if err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		stop()
		const workers, each = 4, 50
		const accepted = workers * each * 4 / 5
		var refusedN atomic.Int64
		results := make(chan string, workers*each)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					if i%5 == 4 {
						_, err := c.Propose(context.Background(), "doc", "fail", json.RawMessage(`1`))
						var pe *ProposalError
						if !errors.As(err, &pe) || pe.Reason != "the function refused" {
							t.Errorf("a refused proposal returned %v", err)
						}
						refusedN.Add(1)
						continue
					}
					id, err := c.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`))
					if err != nil {
						t.Errorf("Propose: %v", err)
						return
					}
					results <- id
				}
			}()
		}
		wg.Wait()
		close(results)
		c.Close()
		cancel()
		seen := map[string]bool{}
		appliedMu.Lock()
		keys := map[string]bool{}
		for _, k := range applied {
			if k == "" || keys[k] {
				t.Errorf("a transaction with key %q (a key applied twice, or none)", k)
			}
			keys[k] = true
		}
		for id := range results {
			if seen[id] {
				t.Errorf("two proposals returned transaction %s", id)
			}
			seen[id] = true
			if _, ok := applied[id]; !ok {
				t.Errorf("Propose returned %s, which the manager never applied", id)
			}
		}
		n := len(applied)
		appliedMu.Unlock()
		if n != accepted || len(seen) != accepted || refusedN.Load() != workers*each-accepted {
			t.Errorf("seed %d: %d proposals returned %d transactions and %d refusals; the manager applied %d", seed, workers*each, len(seen), refusedN.Load(), n)
		}
		if snap, _ := store.Snapshot(context.Background(), "doc"); string(snap.State) != `{"count":160}` {
			t.Errorf("%s, seed %d: state %s", tc.name, seed, snap.State)
		}
		t.Logf("%s, seed %d: %d cuts, %d proposals, each applied once", tc.name, seed, cuts.Load(), workers*each)
		if cuts.Load() == 0 {
			t.Errorf("seed %d: no connection was cut", seed)
		}
	}
}

// BenchmarkKeyWindowMemory reports the heap a remembered key holds: a
// full window of 1,000 keys of 22 characters, as the Go client makes them,
// each applied as a transaction of a state of 2 KiB (which the window does
// not keep).
func BenchmarkKeyWindowMemory(b *testing.B) {
	for i := 0; i < b.N; i++ {
		m := NewMemoryManager()
		state := json.RawMessage(`"` + strings.Repeat("s", 2<<10) + `"`)
		set := Function{ID: "set", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) { return p, nil }}
		m.Create(context.Background(), "doc", nil, set)
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		for k := 0; k < KeyWindowSize; k++ {
			if _, err := m.ApplyKeyed(context.Background(), "doc", set, state, newIdempotencyKey(), false); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		// The item holds one state; everything else the keys hold.
		b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)-int64(len(state)))/KeyWindowSize, "B/key")
		runtime.KeepAlive(m)
	}
}

// TestDiskKeysSurviveRestart: a DiskManager remembers a keyed proposal's
// transaction across a close and a reopen (the key is in the log with the
// transaction): a retry returns it and applies nothing. A retry of an
// unknown key is applied while the log still holds every transaction; once
// older transactions left the replay window, such a retry is answered
// ErrOutcomeUnknown for as long as the missing keys could be younger than
// the window's age.
func TestDiskKeysSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	open := func() *DiskManager {
		dm, err := OpenDiskManager(dir, &DiskManagerOptions{ReplayWindow: 2, Logger: quietLogger})
		if err != nil {
			t.Fatal(err)
		}
		for _, fn := range testFunctions {
			if fn.ID != "" {
				dm.AddFunction("doc", fn) // functions are code: registered again at each start
			}
		}
		return dm
	}
	dm := open()
	if err := dm.Create(ctx, "doc", json.RawMessage(`{"count":0}`), testFunctions...); err != nil {
		t.Fatal(err)
	}
	inc, _ := dm.Function("doc", "increment")
	first, err := dm.ApplyKeyed(ctx, "doc", inc, json.RawMessage(`{"by":1}`), "k-1", false)
	if err != nil || first.IdempotencyKey != "k-1" {
		t.Fatalf("%+v, %v", first, err)
	}
	dm.Close()

	dm = open()
	inc, _ = dm.Function("doc", "increment")
	again, err := dm.ApplyKeyed(ctx, "doc", inc, json.RawMessage(`{"by":1}`), "k-1", true)
	if err != nil || again.ID != first.ID {
		t.Fatalf("retry after a restart: %+v, %v; want %s", again, err, first.ID)
	}
	if _, err := dm.ApplyKeyed(ctx, "doc", inc, json.RawMessage(`{"by":1}`), "k-new", true); err != nil {
		t.Fatalf("a retry of a key never seen, every transaction still in the log's window: %v", err)
	}
	for i := 0; i < 4; i++ { // push the first transactions out of a window of 2 (kept up to 4)
		if _, err := dm.Apply(ctx, "doc", inc, json.RawMessage(`{"by":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	dm.Close()

	dm = open()
	inc, _ = dm.Function("doc", "increment")
	if _, err := dm.ApplyKeyed(ctx, "doc", inc, json.RawMessage(`{"by":1}`), "k-1", true); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("a retry of a key the window lost: %v, want ErrOutcomeUnknown", err)
	}
	if snap, _ := dm.Snapshot(ctx, "doc"); string(snap.State) != `{"count":6}` {
		t.Fatalf("state %s, want 6 increments", snap.State)
	}
	if _, err := dm.ApplyKeyed(ctx, "doc", inc, json.RawMessage(`{"by":1}`), "k-fresh", false); err != nil {
		t.Fatalf("a first send is applied whatever the window: %v", err)
	}
	dm.Close()

	// With no replay window at all nothing of the keys is kept: after a
	// restart every retry of an unknown key is unsure.
	none, err := OpenDiskManager(dir, &DiskManagerOptions{ReplayWindow: -1, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	none.AddFunction("doc", inc)
	none.Close()
	none, err = OpenDiskManager(dir, &DiskManagerOptions{ReplayWindow: -1, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	defer none.Close()
	none.AddFunction("doc", inc)
	if _, err := none.ApplyKeyed(ctx, "doc", inc, json.RawMessage(`{"by":1}`), "k-1", true); !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("no window: a retry of a key applied before the restart: %v, want ErrOutcomeUnknown", err)
	}
}

// TestProposerFloodKeepsOthersKeys: one proposer that floods an item with
// keyed proposals its function refuses (nothing written, nothing
// broadcast) pushes out only its own keys: another proposer's retry is
// still answered with its first outcome, from a new connection, while
// the flooder's own oldest key is now unknown. The honest proposer's own
// 1,100 later proposals (a busy item) do not push its first key out
// either: at the rates a server allows, age decides, not count.
func TestProposerFloodKeepsOthersKeys(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{
		Authenticate:       func(r *http.Request) (any, error) { return r.Header.Get("X-User"), nil },
		ProposerID:         func(auth any) string { return auth.(string) },
		ProposalsPerSecond: -1, // the flood as fast as it can be sent; TestProposalRate bounds it
	})
	no := Function{ID: "no", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		return nil, errors.New("refused")
	}}
	if err := rs.mgr.AddFunction("doc", no); err != nil {
		t.Fatal(err)
	}
	user := func(name string) http.Header { return http.Header{"X-User": {name}} }
	propose := func(c *testClient, fn, key string, retry bool) *ProposalResultMessage {
		t.Helper()
		c.send(&ProposeMessage{ShareDataID: "doc", FunctionID: fn, ProposedData: json.RawMessage(`{"by":1}`),
			CorrelationID: key, IdempotencyKey: key, Retry: retry})
		return nextAs[*ProposalResultMessage](c)
	}
	honest := dialRT(t, rs.url, user("honest"))
	first := propose(honest, "increment", "h-1", false)
	if !first.Accepted {
		t.Fatal(first.Error)
	}
	for i := 0; i < 1100; i++ {
		if r := propose(honest, "increment", fmt.Sprint("h-busy-", i), false); !r.Accepted {
			t.Fatal(r.Error)
		}
	}

	mallory := dialRT(t, rs.url, user("mallory"))
	flood := KeyWindowSize + 100
	for i := 0; i < flood; i++ {
		mallory.send(&ProposeMessage{ShareDataID: "doc", FunctionID: "no", ProposedData: json.RawMessage(`1`),
			CorrelationID: "f", IdempotencyKey: fmt.Sprint("m-", i)})
	}
	for i := 0; i < flood; i++ {
		if r := nextAs[*ProposalResultMessage](mallory); r.Accepted || r.Error != "refused" {
			t.Fatalf("flood proposal %d: %+v", i, r)
		}
	}

	again := dialRT(t, rs.url, user("honest")) // the honest client reconnected
	start := time.Now()
	if r := propose(again, "increment", "h-1", true); !r.Accepted || r.TransactionID != first.TransactionID {
		t.Fatalf("the honest retry after another proposer's flood: %+v, want transaction %s", r, first.TransactionID)
	}
	t.Logf("after %d refused keyed proposals of another proposer, the honest retry got its first transaction in %v", flood, time.Since(start))
	if r := propose(mallory, "no", "m-0", true); r.Accepted || r.Code != CodeOutcomeUnknown {
		t.Fatalf("the flooder's own oldest key: %+v, want outcome-unknown", r)
	}
	if snap, _ := rs.mgr.Snapshot(context.Background(), "doc"); string(snap.State) != `{"count":1101}` {
		t.Fatalf("state %s", snap.State)
	}
}
