package redisrt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/degenerate/realtime"
)

// The tests run against a real redis-server (Debian's package, which the
// repository's test command installs), started here on a free loopback
// port.

var (
	redisAddr string
	redisCmd  *exec.Cmd
	redisMu   sync.Mutex
)

func TestMain(m *testing.M) {
	port, err := freePort()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	redisAddr = "127.0.0.1:" + strconv.Itoa(port)
	if os.Getenv(instanceEnv) != "" {
		// A re-executed instance process (process_test.go) uses the
		// parent's Redis: a server of its own would outlive its SIGKILL.
		os.Exit(m.Run())
	}
	if err := startRedis(); err != nil {
		fmt.Fprintln(os.Stderr, "redis-server:", err, "(./test.sh installs Debian's redis-server)")
		os.Exit(1)
	}
	code := m.Run()
	stopRedis()
	os.Exit(code)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startRedis starts redis-server on redisAddr, without persistence, and
// waits until it answers.
func startRedis() error {
	_, port, _ := net.SplitHostPort(redisAddr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	redisMu.Lock()
	redisCmd = cmd
	redisMu.Unlock()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	for i := 0; i < 200; i++ {
		if rdb.Ping(context.Background()).Err() == nil {
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return errors.New("redis-server did not answer within 5 s")
}

func stopRedis() {
	redisMu.Lock()
	cmd := redisCmd
	redisCmd = nil
	redisMu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var increment = realtime.Function{ID: "increment", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
	var st struct{ Count int }
	var by struct{ By int }
	json.Unmarshal(cur, &st)
	json.Unmarshal(p, &by)
	return json.RawMessage(`{"count":` + strconv.Itoa(st.Count+by.By) + `}`), nil
}}

// cluster is two realtime instances sharing one manager and one Redis.
type cluster struct {
	mgr   *realtime.MemoryManager
	rdb   *redis.Client
	urls  [2]string
	srvs  [2]*realtime.Server
	regs  [2]*Registry
	store *ReplayStore
}

func newCluster(t *testing.T, window int) *cluster { return newClusterB(t, window) }

func newClusterB(t testing.TB, window int) *cluster {
	mgr := realtime.NewMemoryManager()
	mgr.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), increment)
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, MaxRetries: -1})
	opts := Options{Prefix: "t-" + strings.ReplaceAll(t.Name(), "/", "-"), ReplayBufferSize: window, Logger: quiet}
	c := &cluster{mgr: mgr, rdb: rdb, store: NewReplayStore(rdb, opts)}
	for i := range c.srvs {
		c.regs[i] = NewRegistry(rdb, opts)
		c.srvs[i] = realtime.NewServer(mgr, &realtime.ServerOptions{
			ResolveFunction:   realtime.IDFunctionResolver(mgr),
			ReplayStore:       NewReplayStore(rdb, opts),
			Registry:          c.regs[i],
			SkipManagerEvents: i == 1, // instance 0 publishes each event, once
			Logger:            quiet,
		})
		hs := httptest.NewServer(c.srvs[i])
		c.urls[i] = "ws" + strings.TrimPrefix(hs.URL, "http")
		t.Cleanup(func() {
			c.srvs[i].Shutdown(context.Background())
			hs.Close()
			c.regs[i].Close()
		})
	}
	t.Cleanup(func() { rdb.Close() })
	return c
}

type stateLog struct {
	mu  sync.Mutex
	all []realtime.StateChange
}

func (l *stateLog) add(sc realtime.StateChange) {
	l.mu.Lock()
	l.all = append(l.all, sc)
	l.mu.Unlock()
}

func (l *stateLog) closedWith(code realtime.CloseCode) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, sc := range l.all {
		if sc.State == realtime.ClientClosed && sc.Code == code {
			n++
		}
	}
	return n
}

func newClient(t *testing.T, url string) (*realtime.Client, *stateLog) {
	states := &stateLog{}
	c, err := realtime.NewClient(url, &realtime.ClientOptions{Logger: quiet, OnStateChange: states.add,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c, states
}

// follower checks a subscription's live chain: every transaction after its
// snapshot exactly once, in order. It returns the last cursor reached.
type follower struct {
	mu       sync.Mutex
	cursor   string
	live     int
	replayed int
	errFrame int
	err      error
}

func follow(s *realtime.Subscription) *follower {
	f := &follower{}
	go func() {
		for m := range s.Messages() {
			f.mu.Lock()
			switch m := m.(type) {
			case *realtime.StateMessage:
				f.cursor = m.LastTransactionID
			case *realtime.TransactionMessage:
				if m.Replayed {
					f.replayed++
					break
				}
				if m.PreviousTransactionID != f.cursor && f.err == nil {
					f.err = fmt.Errorf("live %s follows %q, cursor %q", m.TransactionID, m.PreviousTransactionID, f.cursor)
				}
				f.cursor = m.TransactionID
				f.live++
			case *realtime.ErrorMessage:
				f.errFrame++
			}
			f.mu.Unlock()
		}
	}()
	return f
}

func (f *follower) reached(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cursor == id
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTwoInstances: clients on both instances, concurrent proposers on
// both; every client receives every transaction exactly once in order. A
// client moved from one instance to the other with since is replayed what
// it missed, from Redis.
func TestTwoInstances(t *testing.T) {
	c := newCluster(t, 1000)
	var followers []*follower
	for i := 0; i < 6; i++ {
		cl, _ := newClient(t, c.urls[i%2])
		sub, _ := cl.Subscribe("doc", nil)
		followers = append(followers, follow(sub))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for p := 0; p < 4; p++ {
		cl, _ := newClient(t, c.urls[p%2])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := cl.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	snap, _ := c.mgr.Snapshot(context.Background(), "doc")
	if string(snap.State) != `{"count":200}` {
		t.Fatalf("state %s", snap.State)
	}
	for i, f := range followers {
		waitFor(t, fmt.Sprint("follower ", i, " to reach the last transaction"), func() bool { return f.reached(snap.LastTransactionID) })
		f.mu.Lock()
		if f.err != nil {
			t.Errorf("follower %d (instance %d): %v", i, i%2, f.err)
		}
		f.mu.Unlock()
	}

	// A client leaves instance 0 at a cursor and comes back on instance 1.
	cursor := snap.LastTransactionID
	var missed []string
	for i := 0; i < 10; i++ {
		tx, _ := c.mgr.Apply(context.Background(), "doc", increment, json.RawMessage(`{"by":1}`))
		missed = append(missed, tx.ID)
	}
	conn, _, err := realtime.Dial(context.Background(), c.urls[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.Write(context.Background(), realtime.MessageText, (&realtime.SubscribeMessage{ShareDataID: "doc", Since: cursor, HasSince: true}).AppendJSON(nil))
	read := func() realtime.ServerMessage {
		_, b, err := conn.Read(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		m, err := realtime.DecodeServerMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if st, ok := read().(*realtime.StateMessage); !ok || st.LastTransactionID != missed[9] {
		t.Fatalf("state %v", st)
	}
	for _, id := range missed {
		tx, ok := read().(*realtime.TransactionMessage)
		if !ok || !tx.Replayed || tx.TransactionID != id {
			t.Fatalf("want replayed %s, got %v", id, tx)
		}
	}
	// A cursor outside the window is said so.
	conn.Write(context.Background(), realtime.MessageText, (&realtime.SubscribeMessage{ShareDataID: "doc", Since: "no-such-cursor", HasSince: true}).AppendJSON(nil))
	read()
	if e, ok := read().(*realtime.ErrorMessage); !ok || e.Code != realtime.CodeReplayCursorNotFound {
		t.Fatalf("want replay-cursor-not-found, got %v", e)
	}
}

// TestWindowBoundedInRedis: the list never holds more than the window,
// and is deleted with its share data.
func TestWindowBoundedInRedis(t *testing.T) {
	c := newCluster(t, 20)
	for i := 0; i < 50; i++ {
		c.mgr.Apply(context.Background(), "doc", increment, json.RawMessage(`{"by":1}`))
	}
	key := c.store.key("doc")
	if n := c.rdb.LLen(context.Background(), key).Val(); n != 20 {
		t.Fatalf("window holds %d records, want 20", n)
	}
	c.mgr.Remove(context.Background(), "doc")
	if n := c.rdb.Exists(context.Background(), key).Val(); n != 0 {
		t.Fatal("the window outlived its share data")
	}
}

// TestRedisRestart: Redis restarts during traffic. The publishing
// instance's subscribers keep receiving everything; the other instance's
// subscribers are closed with 4001 once it is subscribed again, resubscribe
// with since, and end at the current state, told what could not be
// replayed.
func TestRedisRestart(t *testing.T) {
	c := newCluster(t, 1000)
	clA, statesA := newClient(t, c.urls[0])
	subA, _ := clA.Subscribe("doc", nil)
	fa := follow(subA)
	clB, statesB := newClient(t, c.urls[1])
	subB, _ := clB.Subscribe("doc", nil)
	fb := follow(subB)

	var applied atomic.Int32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.mgr.Apply(context.Background(), "doc", increment, json.RawMessage(`{"by":1}`))
			applied.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	waitFor(t, "traffic", func() bool { return applied.Load() > 50 })
	stopRedis()
	time.Sleep(300 * time.Millisecond) // transactions go on while Redis is down
	if err := startRedis(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "instance B's subscriber to be closed with 4001", func() bool { return statesB.closedWith(realtime.CloseFellBehind) >= 1 })
	time.Sleep(200 * time.Millisecond)
	close(stop)
	<-done
	snap, _ := c.mgr.Snapshot(context.Background(), "doc")
	waitFor(t, "A's subscriber at the last transaction", func() bool { return fa.reached(snap.LastTransactionID) })
	waitFor(t, "B's subscriber at the last transaction", func() bool { return fb.reached(snap.LastTransactionID) })
	// A's subscriber was never interrupted: every transaction live, in order.
	fa.mu.Lock()
	if fa.err != nil || fa.replayed != 0 || statesA.closedWith(realtime.CloseFellBehind) != 0 {
		t.Errorf("A: %d live, %d replayed, %v", fa.live, fa.replayed, fa.err)
	}
	fa.mu.Unlock()
	fb.mu.Lock()
	if fb.err != nil {
		t.Errorf("B: %v", fb.err)
	}
	if fb.errFrame == 0 && fb.replayed == 0 {
		t.Errorf("B was neither replayed nor told what was lost")
	}
	fb.mu.Unlock()
}

// TestOptionsRule: zero means the documented default (100), negative means
// no window, as in the root package.
func TestOptionsRule(t *testing.T) {
	if got := (Options{}).withDefaults().ReplayBufferSize; got != 100 {
		t.Errorf("zero resolves to %d, documented 100", got)
	}
	if got := (Options{ReplayBufferSize: -1}).withDefaults().ReplayBufferSize; got != 0 {
		t.Errorf("negative resolves to %d, want no window (0)", got)
	}
	if got := (Options{}).withDefaults().MaxConflictRetries; got != 10 {
		t.Errorf("MaxConflictRetries: zero resolves to %d, documented 10", got)
	}
	if got := (Options{MaxConflictRetries: -1}).withDefaults().MaxConflictRetries; got != 0 {
		t.Errorf("MaxConflictRetries: negative resolves to %d, want none (0)", got)
	}
}
