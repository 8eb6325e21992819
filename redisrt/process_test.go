package redisrt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/degenerate/realtime"
)

// The tests in this file run realtime instances as separate OS processes:
// the test binary re-executed with REDISRT_INSTANCE set, a Server over a
// Manager on Redis, as a user runs several instances behind a load
// balancer.

const instanceEnv = "REDISRT_INSTANCE" // redisAddr|prefix

// processWindow keeps the whole history of the tests in the window, so the
// checker can read it back.
const processWindow = 100000

func TestRedisInstanceProcess(t *testing.T) {
	spec := os.Getenv(instanceEnv)
	if spec == "" {
		return // only as a child of the process tests
	}
	addr, prefix, _ := strings.Cut(spec, "|")
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	ctx := context.Background()
	m, err := NewManager(ctx, rdb, Options{Prefix: prefix, ReplayBufferSize: processWindow, Logger: quiet})
	if err != nil {
		fmt.Println("manager:", err)
		os.Exit(3)
	}
	if err := m.Create(ctx, "doc", json.RawMessage(`{"count":0}`), increment); err != nil && !errors.Is(err, realtime.ErrShareDataExists) {
		fmt.Println("create:", err)
		os.Exit(3)
	}
	m.AddFunction("doc", increment)
	srv := realtime.NewServer(m, &realtime.ServerOptions{ReplayStore: m, ResolveFunction: realtime.IDFunctionResolver(m), Logger: quiet})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(3)
	}
	fmt.Println("listening", ln.Addr().String())
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
		srv.Shutdown(context.Background())
		hs.Close()
	}()
	hs.Serve(ln)
	fmt.Println("conflicts", m.conflicts.Load())
	m.Close()
	os.Exit(0)
}

// instance is one child process.
type instance struct {
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	addr      string
	conflicts chan uint64 // reported when it stops
}

// stop ends the instance gracefully and returns the conflicts its
// manager retried.
func (in *instance) stop() uint64 {
	in.stdin.Close()
	select {
	case n := <-in.conflicts:
		in.cmd.Wait()
		return n
	case <-time.After(10 * time.Second):
		return 0
	}
}

func startInstance(t testing.TB, redisAt, prefix string) *instance {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRedisInstanceProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), instanceEnv+"="+redisAt+"|"+prefix)
	dieWithParent(cmd)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in := &instance{cmd: cmd, stdin: stdin}
	t.Cleanup(func() { in.kill() })
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
			in.addr = a
			in.conflicts = make(chan uint64, 1)
			go func() {
				for sc.Scan() {
					if n, ok := strings.CutPrefix(sc.Text(), "conflicts "); ok {
						v, _ := strconv.ParseUint(n, 10, 64)
						in.conflicts <- v
					}
				}
			}()
			return in
		}
	}
	t.Fatal("an instance ended before it listened")
	return nil
}

func (in *instance) url() string { return "ws://" + in.addr + "/" }

func (in *instance) kill() {
	in.cmd.Process.Signal(syscall.SIGKILL)
	in.cmd.Wait()
}

// balancer forwards each new TCP connection to the first instance that
// accepts it, as a load balancer with health checks does.
type balancer struct {
	ln       net.Listener
	backends []string
}

func newBalancer(t *testing.T, backends ...string) *balancer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, backends: backends}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.forward(c)
		}
	}()
	return b
}

func (b *balancer) url() string { return "ws://" + b.ln.Addr().String() + "/" }

func (b *balancer) forward(c net.Conn) {
	defer c.Close()
	for _, addr := range b.backends {
		up, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			continue
		}
		defer up.Close()
		go func() { io.Copy(up, c); up.Close() }()
		io.Copy(c, up)
		return
	}
}

// fellBehind counts the 4001 closes the process tests' clients saw.
var fellBehind atomic.Int64

func processClient(t testing.TB, url string) *realtime.Client {
	t.Helper()
	c, err := realtime.NewClient(url, &realtime.ClientOptions{ReconnectMin: 10 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		RequestTimeout: 5 * time.Second, Logger: quiet, OnStateChange: func(sc realtime.StateChange) {
			if sc.State == realtime.ClientClosed && sc.Code == realtime.CloseFellBehind {
				fellBehind.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// chainFollower checks one subscription's stream: every transaction follows
// the one before (the client restarts the subscription on a gap, with a
// ResyncMessage, and a replay-cursor-not-found error frame says when a
// replay could not be given: both count as told).
type chainFollower struct {
	mu        sync.Mutex
	cursor    string
	lastState string
	started   bool
	ids       []string
	told      int
	broken    []string
	closes    atomic.Int32 // 4001 closes seen by the client
}

func followChain(t *testing.T, c *realtime.Client, opts *realtime.SubscribeOptions) *chainFollower {
	t.Helper()
	sub, err := c.Subscribe("doc", opts)
	if err != nil {
		t.Fatal(err)
	}
	f := &chainFollower{}
	if opts != nil && opts.HasSince {
		f.cursor, f.started = opts.Since, true
	}
	ready := make(chan struct{})
	go func() {
		var once sync.Once
		for m := range sub.Messages() {
			f.mu.Lock()
			switch m := m.(type) {
			case *realtime.StateMessage:
				f.lastState = m.LastTransactionID
				if !f.started {
					f.cursor, f.started = m.LastTransactionID, true
				}
				once.Do(func() { close(ready) })
			case *realtime.TransactionMessage:
				if m.PreviousTransactionID != f.cursor {
					f.broken = append(f.broken, fmt.Sprintf("%s after %s, not %s", m.TransactionID, m.PreviousTransactionID, f.cursor))
				}
				f.cursor = m.TransactionID
				f.ids = append(f.ids, m.TransactionID)
			case *realtime.ErrorMessage:
				if m.Code == realtime.CodeReplayCursorNotFound {
					f.told++
					f.cursor = f.lastState
				}
			case *realtime.ResyncMessage:
				f.told++
			}
			f.mu.Unlock()
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("no state frame")
	}
	return f
}

// waitAt waits until the chainFollower's cursor is final.
func (f *chainFollower) waitAt(t *testing.T, name, final string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		f.mu.Lock()
		at := f.cursor
		f.mu.Unlock()
		if at == final {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: at %s after 20 s, want %s", name, at, final)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// history reads the item's whole chain from Redis.
func history(t *testing.T, redisAt, prefix string) (realtime.Snapshot, []string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAt})
	defer rdb.Close()
	m, err := NewManager(t.Context(), rdb, Options{Prefix: prefix, ReplayBufferSize: processWindow, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	snap, err := m.Snapshot(t.Context(), "doc")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := m.Replay(t.Context(), "doc", "", snap.LastTransactionID)
	if err != nil && snap.LastTransactionID != "" {
		t.Fatal(err)
	}
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.TransactionID
	}
	return snap, ids
}

// checkHistory: every accepted transaction exactly once, the count equal
// to the history's length.
func checkHistory(t *testing.T, snap realtime.Snapshot, hist []string, accepted []string) {
	t.Helper()
	pos := map[string]int{}
	for i, id := range hist {
		if _, dup := pos[id]; dup {
			t.Fatalf("transaction %s twice in the history", id)
		}
		pos[id] = i
	}
	for _, id := range accepted {
		if _, ok := pos[id]; !ok {
			t.Fatalf("accepted transaction %s is not in the history", id)
		}
	}
	var st struct{ Count int }
	json.Unmarshal(snap.State, &st)
	if st.Count != len(hist) || snap.Version != uint64(len(hist)) {
		t.Fatalf("count %d, version %d, history of %d", st.Count, snap.Version, len(hist))
	}
}

// checkFollowers: each chainFollower's chain has no break, and one that was
// never told received exactly the history after its start.
func checkFollowers(t *testing.T, fs map[string]*chainFollower, hist []string) {
	t.Helper()
	for name, f := range fs {
		f.mu.Lock()
		t.Logf("%s: %d transactions received, told of %d gaps", name, len(f.ids), f.told)
		if len(f.broken) > 0 {
			t.Errorf("%s: chain broken: %v", name, f.broken)
		}
		if f.told == 0 && len(f.ids) > 0 {
			start := -1
			for i, id := range hist {
				if id == f.ids[0] {
					start = i
				}
			}
			if start < 0 || len(f.ids) != len(hist)-start {
				t.Errorf("%s: received %d transactions from %d in a history of %d, never told of a gap", name, len(f.ids), start, len(hist))
			} else {
				for i, id := range f.ids {
					if hist[start+i] != id {
						t.Errorf("%s: transaction %d is %s, history has %s", name, i, id, hist[start+i])
						break
					}
				}
			}
		}
		f.mu.Unlock()
	}
}

// propose runs n proposals through c, collecting the accepted ids.
func propose(c *realtime.Client, n int, accepted chan<- string, stop <-chan struct{}) {
	for i := 0; i < n; i++ {
		select {
		case <-stop:
			return
		default:
		}
		id, err := c.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`))
		if err == nil {
			accepted <- id
		}
	}
}

// drive runs every proposer until n proposals are accepted, calling fault
// once when at of them are, and returns the accepted ids.
func drive(proposers []*realtime.Client, n, at int, fault func()) []string {
	accepted := make(chan string, 10000)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range proposers {
		wg.Add(1)
		go func() { defer wg.Done(); propose(c, 100000, accepted, stop) }()
	}
	var ids []string
	for id := range accepted {
		ids = append(ids, id)
		if len(ids) == at {
			fault()
		}
		if len(ids) == n {
			break
		}
	}
	close(stop)
	wg.Wait()
	close(accepted)
	for id := range accepted {
		ids = append(ids, id)
	}
	return ids
}

// verify checks the history against the accepted ids and every follower
// against the history once each has reached its end.
func verify(t *testing.T, redisAt, prefix string, ids []string, fs map[string]*chainFollower) realtime.Snapshot {
	t.Helper()
	snap, hist := history(t, redisAt, prefix)
	checkHistory(t, snap, hist, ids)
	for name, f := range fs {
		f.waitAt(t, name, snap.LastTransactionID)
	}
	checkFollowers(t, fs, hist)
	return snap
}

// TestTwoProcesses: two instances, subscribers and concurrent proposers
// on each to the same item. Every subscriber's chain is exact, no
// subscriber is closed for missed events, and a client that moves from
// one process to the other with since is replayed what it missed.
func TestTwoProcesses(t *testing.T) {
	closesBefore := fellBehind.Load()
	prefix := uniquePrefix(t)
	a, b := startInstance(t, redisAddr, prefix), startInstance(t, redisAddr, prefix)
	fs := map[string]*chainFollower{}
	for i := range 3 {
		for _, in := range []*instance{a, b} {
			c := processClient(t, in.url())
			fs[fmt.Sprintf("%s-%d", in.addr, i)] = followChain(t, c, nil)
		}
	}
	accepted := make(chan string, 1000)
	var wg sync.WaitGroup
	for range 2 {
		for _, in := range []*instance{a, b} {
			c := processClient(t, in.url())
			wg.Add(1)
			go func() { defer wg.Done(); propose(c, 50, accepted, nil) }()
		}
	}
	wg.Wait()
	close(accepted)
	var ids []string
	for id := range accepted {
		ids = append(ids, id)
	}
	if len(ids) != 200 {
		t.Fatalf("%d of 200 proposals accepted", len(ids))
	}
	snap, hist := history(t, redisAddr, prefix)
	checkHistory(t, snap, hist, ids)
	for name, f := range fs {
		f.waitAt(t, name, snap.LastTransactionID)
	}
	checkFollowers(t, fs, hist)
	for name, f := range fs {
		if f.told != 0 {
			t.Errorf("%s: told of %d gaps with no fault at all", name, f.told)
		}
	}
	if n := fellBehind.Load() - closesBefore; n != 0 {
		t.Errorf("%d clients were closed with 4001 with no fault at all (two instances proposing to one item)", n)
	}

	// A client moves from a to b with its cursor.
	ca := processClient(t, a.url())
	fa := followChain(t, ca, nil)
	cursor := fa.cursor
	ca.Close()
	cb := processClient(t, b.url())
	for range 10 {
		if _, err := cb.Propose(t.Context(), "doc", "increment", json.RawMessage(`{"by":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	moved := followChain(t, processClient(t, b.url()), &realtime.SubscribeOptions{Since: cursor, HasSince: true})
	snap, hist = history(t, redisAddr, prefix)
	moved.waitAt(t, "moved", snap.LastTransactionID)
	checkFollowers(t, map[string]*chainFollower{"moved": moved}, hist)
	if len(moved.ids) != 10 || moved.told != 0 {
		t.Errorf("moved client: %d transactions, told %d; want the 10 it missed", len(moved.ids), moved.told)
	}
}

// TestKillInstanceDuringTraffic: one of two instances is killed with
// SIGKILL while proposals flow; clients behind the balancer reconnect to
// the survivor and are replayed, and every accepted proposal is in the
// history exactly once.
func TestKillInstanceDuringTraffic(t *testing.T) {
	prefix := uniquePrefix(t)
	a, b := startInstance(t, redisAddr, prefix), startInstance(t, redisAddr, prefix)
	lb := newBalancer(t, a.addr, b.addr) // a while it lives, then b
	fs := map[string]*chainFollower{}
	for i := range 4 {
		fs[fmt.Sprintf("lb-%d", i)] = followChain(t, processClient(t, lb.url()), nil)
	}
	for i := range 2 {
		fs[fmt.Sprintf("b-%d", i)] = followChain(t, processClient(t, b.url()), nil)
	}
	var proposers []*realtime.Client
	for _, url := range []string{lb.url(), lb.url(), b.url()} {
		proposers = append(proposers, processClient(t, url))
	}
	ids := drive(proposers, 300, 100, a.kill) // a dies mid-traffic
	verify(t, redisAddr, prefix, ids, fs)
}

// TestRedisRestartWithAOF: Redis (appendonly, appendfsync always) is
// killed and restarted while proposals flow through two instances.
// Afterwards both instances serve the same state, every accepted
// proposal is in the history exactly once, and every subscriber received
// everything or was told.
func TestRedisRestartWithAOF(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	dir := t.TempDir()
	start := func() *exec.Cmd {
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--appendonly", "yes", "--appendfsync", "always", "--save", "")
		dieWithParent(cmd)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		for i := 0; rdb.Ping(context.Background()).Err() != nil; i++ {
			if i == 400 {
				t.Fatal("redis-server did not answer")
			}
			time.Sleep(25 * time.Millisecond)
		}
		return cmd
	}
	rs := start()
	t.Cleanup(func() { rs.Process.Kill(); rs.Wait() })
	prefix := uniquePrefix(t)
	a, b := startInstance(t, addr, prefix), startInstance(t, addr, prefix)
	fs := map[string]*chainFollower{}
	for i := range 2 {
		for _, in := range []*instance{a, b} {
			fs[fmt.Sprintf("%s-%d", in.addr, i)] = followChain(t, processClient(t, in.url()), nil)
		}
	}
	var proposers []*realtime.Client
	for _, in := range []*instance{a, b} {
		proposers = append(proposers, processClient(t, in.url()))
	}
	ids := drive(proposers, 250, 100, func() {
		rs.Process.Signal(syscall.SIGKILL)
		rs.Wait()
		rs = start() // the same directory: the AOF is replayed
	})
	snap := verify(t, addr, prefix, ids, fs)
	// Both instances serve the same state.
	for _, in := range []*instance{a, b} {
		f := followChain(t, processClient(t, in.url()), nil)
		if f.lastState != snap.LastTransactionID {
			t.Errorf("instance %s serves %s, Redis has %s", in.addr, f.lastState, snap.LastTransactionID)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "appendonlydir")); err != nil {
		if _, err2 := os.Stat(filepath.Join(dir, "appendonly.aof")); err2 != nil {
			t.Errorf("no AOF in %s: %v", dir, err)
		}
	}
}

// TestInstanceStartsNoRedis: a re-executed instance process uses the
// parent's redis-server and starts none of its own. One it started would
// outlive it: the tests end instances with SIGKILL, which no cleanup in
// the instance survives (six redis-servers were left after each run).
func TestInstanceStartsNoRedis(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads the process table from /proc")
	}
	in := startInstance(t, redisAddr, uniquePrefix(t))
	pid := in.cmd.Process.Pid
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // not a process, or gone
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after
		// its closing parenthesis.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			t.Errorf("the instance process %d has a child %s", pid, s[:i+1])
		}
	}
}
