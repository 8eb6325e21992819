package redisrt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/degenerate/realtime"
)

// twoInstances returns two managers over one prefix, as two processes
// would have, with "doc" (count 0) and increment on both.
func twoInstances(t *testing.T) (*Manager, *Manager) {
	t.Helper()
	p := uniquePrefix(t)
	a, b := newTestManager(t, p), newTestManager(t, p)
	if err := a.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), increment); err != nil {
		t.Fatal(err)
	}
	if err := b.AddFunction("doc", increment); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// TestKeyedApplyAcrossInstances: the same key proposed at once through two
// instances commits once, both get its transaction; a refusal recorded
// through one is the answer through the other, whose function would have
// accepted; past the window's size a retry of an unknown key is
// ErrOutcomeUnknown, while a first send is applied.
func TestKeyedApplyAcrossInstances(t *testing.T) {
	a, b := twoInstances(t)
	ctx := context.Background()
	const pairs = 40
	var wg sync.WaitGroup
	ids := make([][2]string, pairs)
	for i := 0; i < pairs; i++ {
		for j, m := range []*Manager{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tx, err := m.ApplyKeyed(ctx, "doc", increment, json.RawMessage(`{"by":1}`), fmt.Sprint("k-", i), j == 1)
				if err != nil {
					t.Errorf("pair %d, instance %d: %v", i, j, err)
					return
				}
				ids[i][j] = tx.ID
			}()
		}
	}
	wg.Wait()
	for i, p := range ids {
		if p[0] == "" || p[0] != p[1] {
			t.Errorf("pair %d: transactions %q and %q", i, p[0], p[1])
		}
	}
	if snap, _ := a.Snapshot(ctx, "doc"); string(snap.State) != `{"count":40}` {
		t.Fatalf("state %s after %d keys proposed twice each", snap.State, pairs)
	}

	no := realtime.Function{ID: "maybe", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		return nil, errors.New("not now")
	}}
	yes := realtime.Function{ID: "maybe", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) { return p, nil }}
	if _, err := a.ApplyKeyed(ctx, "doc", no, json.RawMessage(`{"by":1}`), "k-refused", false); err == nil || err.Error() != "not now" {
		t.Fatalf("refusal: %v", err)
	}
	if _, err := b.ApplyKeyed(ctx, "doc", yes, json.RawMessage(`{"by":1}`), "k-refused", true); err == nil || err.Error() != "not now" {
		t.Fatalf("the retry through the other instance: %v, want the recorded refusal", err)
	}

	// Another proposer's key, remembered before the flood below.
	honest := realtime.WithProposer(ctx, "honest")
	htx, err := a.ApplyKeyed(honest, "doc", increment, json.RawMessage(`{"by":1}`), "h-1", false)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < realtime.KeyWindowSize+1; i++ { // push k-0 out, young
		if _, err := a.ApplyKeyed(ctx, "doc", increment, json.RawMessage(`{"by":1}`), fmt.Sprint("fill-", i), false); err != nil {
			t.Fatal(err)
		}
	}
	// What a full window costs in Redis, per key (the outcome hash and the
	// time index; keys of 6-9 characters here, 22 from the clients).
	var mem int64
	for _, k := range []string{a.keysKey("doc", ""), a.keyTimesKey("doc", "")} {
		n, err := a.rdb.MemoryUsage(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		mem += n
	}
	t.Logf("a full window of %d keys: %d bytes in Redis, %d per key", realtime.KeyWindowSize, mem, mem/realtime.KeyWindowSize)
	if _, err := b.ApplyKeyed(ctx, "doc", increment, json.RawMessage(`{"by":1}`), "k-0", true); !errors.Is(err, realtime.ErrOutcomeUnknown) {
		t.Fatalf("a retry of a key pushed out: %v, want ErrOutcomeUnknown", err)
	}
	// The flood pushed out only the anonymous proposer's keys: the honest
	// one's retry, through the other instance, gets its first outcome.
	if tx, err := b.ApplyKeyed(honest, "doc", increment, json.RawMessage(`{"by":1}`), "h-1", true); err != nil || tx.ID != htx.ID {
		t.Fatalf("the honest proposer's retry after another's flood: %v, %v; want transaction %s", tx, err, htx.ID)
	}
	if _, err := b.ApplyKeyed(ctx, "doc", increment, json.RawMessage(`{"by":1}`), "k-fresh", false); err != nil {
		t.Fatalf("a first send: %v", err)
	}
	if snap, _ := a.Snapshot(ctx, "doc"); string(snap.State) != `{"count":`+strconv.Itoa(40+realtime.KeyWindowSize+3)+`}` {
		t.Fatalf("state %s", snap.State)
	}
}

// cuttingProxy forwards each connection to one of targets in turn and
// cuts it after a random number of bytes in one direction, so a resent
// proposal lands on the other instance.
type cuttingProxy struct {
	ln   net.Listener
	mu   sync.Mutex
	rng  *rand.Rand
	n    int
	cuts atomic.Int64
	wg   sync.WaitGroup
}

func newCuttingProxy(t *testing.T, targets []string, seed uint64) *cuttingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, rng: rand.New(rand.NewPCG(seed, 7))}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			target := targets[p.n%len(targets)]
			cutAt, up := int64(0), false
			if p.n < 60 {
				cutAt, up = 150+p.rng.Int64N(2000), p.rng.IntN(2) == 0
			}
			p.n++
			p.mu.Unlock()
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.wg.Add(2)
			pipe := func(dst, src net.Conn, limit int64) {
				defer p.wg.Done()
				var err error
				if limit > 0 {
					_, err = io.CopyN(dst, src, limit)
					if err == nil {
						p.cuts.Add(1)
					}
				} else {
					_, err = io.Copy(dst, src)
				}
				c.Close()
				s.Close()
			}
			upLimit, downLimit := int64(0), cutAt
			if up {
				upLimit, downLimit = cutAt, 0
			}
			go pipe(s, c, upLimit)
			go pipe(c, s, downLimit)
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

// TestProposeExactlyOnceOverRedis: a Go client proposes through a proxy
// that sends each connection to one of two instances in turn (each with
// its own Manager over one Redis) and cuts it mid-proposal or mid-result:
// a resent proposal often lands on the instance that did not apply it.
// Every Propose returns the transaction Redis recorded for it, and none is
// applied twice.
func TestProposeExactlyOnceOverRedis(t *testing.T) {
	a, b := twoInstances(t)
	var addrs []string
	for _, m := range []*Manager{a, b} {
		srv := realtime.NewServer(m, &realtime.ServerOptions{ResolveFunction: realtime.IDFunctionResolver(m), ReplayStore: m, Logger: quiet})
		hs := httptest.NewServer(srv)
		t.Cleanup(func() { srv.Shutdown(context.Background()); hs.Close() })
		addrs = append(addrs, hs.Listener.Addr().String())
	}
	p := newCuttingProxy(t, addrs, 1)
	var applied sync.Map // transaction id -> key
	var dups atomic.Int64
	cancel := a.Listen(func(ev realtime.Event) {
		if ev.Kind == realtime.EventTransaction {
			if _, loaded := applied.LoadOrStore(ev.Transaction.ID, ev.Transaction.IdempotencyKey); loaded {
				dups.Add(1)
			}
		}
	})
	defer cancel()
	c, err := realtime.NewClient("ws://"+p.ln.Addr().String()+"/", &realtime.ClientOptions{Logger: quiet,
		ReconnectMin: time.Millisecond, ReconnectMax: 20 * time.Millisecond, RequestTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, stop := context.WithTimeout(context.Background(), 20*time.Second)
	defer stop()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	const workers, each = 4, 30
	results := make(chan string, workers*each)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
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
	seen := map[string]bool{}
	for id := range results {
		if seen[id] {
			t.Errorf("two proposals returned %s", id)
		}
		seen[id] = true
	}
	snap, err := a.Snapshot(context.Background(), "doc")
	if err != nil || string(snap.State) != `{"count":`+strconv.Itoa(workers*each)+`}` || len(seen) != workers*each {
		t.Fatalf("%d proposals: %d transactions returned, state %s (%v)", workers*each, len(seen), snap.State, err)
	}
	// Every returned transaction was announced, with a key, once.
	deadline := time.Now().Add(10 * time.Second)
	for id := range seen {
		for {
			if k, ok := applied.Load(id); ok {
				if k == "" {
					t.Errorf("transaction %s without its key", id)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("transaction %s never announced", id)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if dups.Load() != 0 {
		t.Fatalf("%d transactions announced twice", dups.Load())
	}
	if p.cuts.Load() == 0 {
		t.Fatal("no connection was cut")
	}
	t.Logf("%d proposals over two instances, %d cuts: each applied once", workers*each, p.cuts.Load())
}

// TestFunctionPanicOnRedis: a function that panics is returned as
// realtime.ErrFunctionPanicked, the process goes on, and the key is not
// remembered: a retry with a function that works applies it.
func TestFunctionPanicOnRedis(t *testing.T) {
	a, _ := twoInstances(t)
	ctx := context.Background()
	boom := realtime.Function{ID: "boom", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		panic("boom")
	}}
	if _, err := a.ApplyKeyed(ctx, "doc", boom, json.RawMessage(`{"by":1}`), "k-p", false); !errors.Is(err, realtime.ErrFunctionPanicked) {
		t.Fatalf("a panicking function: %v", err)
	}
	if tx, err := a.ApplyKeyed(ctx, "doc", increment, json.RawMessage(`{"by":1}`), "k-p", true); err != nil || tx == nil {
		t.Fatalf("the retry after the panic: %v", err)
	}
}
