//go:build unix

package realtime

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The server benchmarks deliver transactions to 1,000 and 10,000
// subscriber connections over loopback, and compare with a bare baseline
// measured in the same harness: a writer goroutine per connection that
// sends pre-encoded frames, every queued frame in one writev per wake-up.

// fanOutHarness runs the broadcast loop shared by both contenders:
// broadcast is called b.N times in bursts, and after each burst the
// harness waits until the swarm's subscribers have read every frame. It
// reports wall time and this process's CPU time (the server's alone: the
// clients are in the swarm's process) per delivered frame, and the
// allocations per delivered frame.
func fanOutHarness(b *testing.B, subs int, sw *swarm, frameLen int, broadcast func(i int)) {
	burst := max(1, 20_000/subs) // about 20,000 deliveries a burst
	// Warm up with 10 bursts, so the counts below are of a warm server:
	// its queues and pools have grown to what a burst needs.
	warm := sw.delivered()
	for k := 0; k < 10*burst; k++ {
		broadcast(-1 - k)
	}
	for sw.delivered() < warm+int64(10*burst)*int64(subs) {
		time.Sleep(time.Millisecond)
	}
	base := sw.delivered()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		n := min(burst, b.N-i)
		for k := 0; k < n; k++ {
			broadcast(i + k)
		}
		i += n
		want := base + int64(i)*int64(subs)
		for {
			d := sw.delivered()
			if d >= want {
				break
			}
			if d < 0 {
				b.Fatal("the swarm exited before reading every frame")
			}
		}
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	runtime.ReadMemStats(&m1)
	deliveries := float64(b.N) * float64(subs)
	b.ReportMetric(float64(elapsed.Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "server-cpu-ns/delivery")
	b.ReportMetric(deliveries/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/deliveries, "allocs/delivery")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(b.N), "allocs/tx")
	b.ReportMetric(float64(frameLen), "B/delivery")
}

// BenchmarkFanOutCompression delivers a 2 KiB JSON state (a list of
// items, one of them changed per transaction) to 1,000 subscribers, with
// and without permessage-deflate. B/delivery is the frame on the wire;
// the compressed frame is made once per transaction for all of them.
func BenchmarkFanOutCompression(b *testing.B) {
	for _, deflate := range []bool{false, true} {
		name := "plain"
		if deflate {
			name = "deflate"
		}
		b.Run(name+"/subs=1000", func(b *testing.B) {
			rt := startRealtimeFanOut(b, 1000, fanOutConfig{deflate: deflate, state: boardState})
			defer rt.stop()
			fanOutHarness(b, 1000, rt.sw, rt.frameLen, rt.broadcast)
		})
	}
}

// boardState is a 1 KiB JSON state whose i-th item changes with i: the
// transaction frame, which carries it as proposedData and currentState,
// is about 2 KiB.
func boardState(i int) json.RawMessage {
	var b strings.Builder
	b.WriteString(`{"items":[`)
	for k := 0; k < 22; k++ {
		if k > 0 {
			b.WriteByte(',')
		}
		n := k
		if k == i%22 {
			n = i
		}
		fmt.Fprintf(&b, `{"id":%d,"text":"item %06d","done":%v}`, k, n, k%3 == 0)
	}
	b.WriteString(`]}`)
	return json.RawMessage(b.String())
}

// countingObserver does per report what a metrics collector does: a few
// atomic counters and a histogram bucket for each write's frames and
// latency. (promrt's Prometheus collector costs more per write: its own
// benchmark, BenchmarkObserverWrote, measures it.)
func countingObserver() Observer {
	var frames, bytes, writes atomic.Uint64
	var latency [16]atomic.Uint64 // powers of 4 from 1 µs
	return Observer{
		Wrote: func(r WriteReport) {
			writes.Add(1)
			frames.Add(uint64(r.Frames))
			bytes.Add(uint64(r.Bytes))
			if r.Latency > 0 {
				i := 0
				for d := r.Latency / time.Microsecond; d > 1 && i < len(latency)-1; d /= 4 {
					i++
				}
				latency[i].Add(1)
			}
		},
	}
}

// cpuTime is the user and system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchState is a fixed-size state, so every frame has the same length.
func benchState(i int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"count":"%012d"}`, i))
}

func BenchmarkFanOut(b *testing.B) {
	for _, subs := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("realtime/subs=%d", subs), func(b *testing.B) { benchFanOutRealtime(b, subs, Observer{}) })
		b.Run(fmt.Sprintf("realtime+observer/subs=%d", subs), func(b *testing.B) { benchFanOutRealtime(b, subs, countingObserver()) })
		b.Run(fmt.Sprintf("baseline/subs=%d", subs), func(b *testing.B) { benchFanOutBaseline(b, subs) })
	}
}

func benchFanOutRealtime(b *testing.B, subs int, obs Observer) {
	rt := startRealtimeFanOut(b, subs, fanOutConfig{observer: obs})
	defer rt.stop()
	fanOutHarness(b, subs, rt.sw, rt.frameLen, rt.broadcast)
}

// fanOutConfig varies the server contender; the zero value is the
// default server with benchState's small states.
type fanOutConfig struct {
	observer Observer
	deflate  bool                        // compression on, and offered by every client
	state    func(i int) json.RawMessage // nil: benchState
}

// startRealtimeFanOut is the server contender: a Server over a
// MemoryManager whose "doc" the swarm's subs connections subscribe to; each
// broadcast applies one transaction.
func startRealtimeFanOut(b *testing.B, subs int, cfg fanOutConfig) *baseline {
	state := cfg.state
	if state == nil {
		state = benchState
	}
	mgr := NewMemoryManager()
	set := Function{ID: "set", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) { return p, nil }}
	mgr.Create(context.Background(), "doc", state(0), set)
	// The swarm's clients only read, and a run at 10,000 subscribers can
	// last past the default idle timeout (which would close them all).
	srv := NewServer(mgr, &ServerOptions{HeartbeatInterval: -1,
		Accept: AcceptOptions{EnableCompression: cfg.deflate, ConnOptions: ConnOptions{IdleTimeout: -1}},
		Logger: quietLogger, Observer: cfg.observer})
	hs := httptest.NewServer(srv)
	sw := startSwarm(b, hs.Listener.Addr().String(), subs, true, cfg.deflate)
	tx, _ := mgr.Apply(context.Background(), "doc", set, state(1))
	for sw.delivered() < int64(subs) {
		// Every subscriber reads this first transaction before the
		// harness counts from here.
		time.Sleep(time.Millisecond)
	}
	frame := appendServerFrame(nil, (&TransactionMessage{ShareDataID: "doc", TransactionID: tx.ID, PreviousTransactionID: tx.ID,
		FunctionID: "set", ProposedData: tx.ProposedData, CurrentState: tx.State}).AppendJSON(nil))
	if cfg.deflate {
		frame = compressFrame(frame)
	}
	ctx := context.Background()
	return &baseline{sw: sw, frameLen: len(frame),
		broadcast: func(i int) {
			if _, err := mgr.Apply(ctx, "doc", set, state(i)); err != nil {
				b.Fatal(err)
			}
		},
		stop: func() {
			sw.stop()
			srv.Shutdown(context.Background())
			hs.Close()
		}}
}

// baselineConn is the bare baseline's connection: a queue of pre-encoded
// frames and a writer goroutine woken per broadcast.
type baselineConn struct {
	nc    net.Conn
	mu    sync.Mutex
	queue [][]byte
	spare [][]byte
	wake  chan struct{}
}

func (c *baselineConn) writer(wg *sync.WaitGroup) {
	defer wg.Done()
	for range c.wake {
		c.mu.Lock()
		batch := c.queue
		c.queue, c.spare = c.spare[:0], nil
		c.mu.Unlock()
		bufs := net.Buffers(batch)
		if _, err := bufs.WriteTo(c.nc); err != nil {
			return
		}
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()
	}
}

func benchFanOutBaseline(b *testing.B, subs int) {
	bl := startBaseline(b, subs)
	defer bl.stop()
	fanOutHarness(b, subs, bl.sw, bl.frameLen, bl.broadcast)
}

// baseline is a fan-out contender with the swarm reading it: the bare
// baseline (startBaseline) or the server (startRealtimeFanOut).
type baseline struct {
	sw        *swarm
	frameLen  int
	broadcast func(i int)
	stop      func()
}

// acceptBare accepts connections on ln until it is closed, completes each
// one's WebSocket handshake with no checks and hands it to got.
func acceptBare(ln net.Listener, got func(net.Conn)) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(nc))
		if err != nil {
			nc.Close()
			continue
		}
		io.WriteString(nc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+acceptKey(req.Header.Get("Sec-WebSocket-Key"))+"\r\n\r\n")
		got(nc)
	}
}

func startBaseline(b *testing.B, subs int) *baseline {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var conns []*baselineConn
	var mu sync.Mutex
	var wg sync.WaitGroup
	accepted := make(chan struct{}, subs)
	wg.Add(1)
	go func() {
		defer wg.Done()
		acceptBare(ln, func(nc net.Conn) {
			c := &baselineConn{nc: nc, wake: make(chan struct{}, 1)}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go c.writer(&wg)
			accepted <- struct{}{}
		})
	}()
	sw := startSwarm(b, ln.Addr().String(), subs, false, false)
	for i := 0; i < subs; i++ {
		<-accepted
	}
	tx := func(i int) []byte {
		return appendServerFrame(nil, (&TransactionMessage{ShareDataID: "doc", TransactionID: "KJE3F10F8S3P9APR-" + strconv.FormatInt(int64(i), 36),
			PreviousTransactionID: "KJE3F10F8S3P9APR-" + strconv.FormatInt(int64(i-1), 36), FunctionID: "set", ProposedData: benchState(i), CurrentState: benchState(i)}).AppendJSON(nil))
	}
	return &baseline{sw: sw, frameLen: len(tx(2)),
		broadcast: func(i int) {
			f := tx(i)
			for _, c := range conns {
				c.mu.Lock()
				c.queue = append(c.queue, f)
				c.mu.Unlock()
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}
		},
		stop: func() {
			sw.stop()
			ln.Close()
			for _, c := range conns {
				close(c.wake)
				c.nc.Close()
			}
			wg.Wait()
		}}
}

// BenchmarkIdleConnectionMemory reports the memory a server process holds
// per idle subscribed connection, with 2,000 (or REALTIME_IDLE_CONNS)
// connections from a client swarm. Each round starts a fresh server process
// (the test binary re-executed), so nothing one round made (a goroutine
// kept for reuse, a grown runtime table) hides in the next one's figure.
// The server process collects garbage and returns free memory to the
// system before each reading; the figures are what it holds after the
// connections minus before, divided by their number:
//
//   - RSS-B/conn: resident memory (VmRSS), as an operator sees it;
//   - B/conn: heap in use plus goroutine stacks; stack-B/conn the stacks;
//   - bare-RSS-B/conn and bare-B/conn: the same for a server that only
//     completes the handshake and holds the TCP connection;
//   - deflate-RSS-B/conn and deflate-B/conn: the same for connections
//     that negotiated permessage-deflate, each of which sent a compressed
//     subscribe and received a compressed 1 KiB state.
//
// REALTIME_BENCH_HEAPPROFILE=file writes the server's heap profile with
// the connections open, every allocation recorded.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("REALTIME_IDLE_CONNS")); err == nil && v > 0 {
		n = v
	}
	for i := 0; i < b.N; i++ {
		bare := measureServer(b, "bare", n, false)
		ours := measureServer(b, "realtime", n, true)
		deflate := measureServer(b, "realtime+deflate", n, true)
		b.ReportMetric(deflate.total()/float64(n), "deflate-B/conn")
		b.ReportMetric(deflate.rss/float64(n), "deflate-RSS-B/conn")
		b.ReportMetric(ours.total()/float64(n), "B/conn")
		b.ReportMetric(ours.stack/float64(n), "stack-B/conn")
		b.ReportMetric(ours.rss/float64(n), "RSS-B/conn")
		b.ReportMetric(bare.total()/float64(n), "bare-B/conn")
		b.ReportMetric(bare.rss/float64(n), "bare-RSS-B/conn")
	}
}

type memUse struct{ heap, stack, rss float64 }

func (m memUse) total() float64 { return m.heap + m.stack }

// measureServer starts a server process of kind and returns what it holds
// with n swarm connections minus what it held before.
func measureServer(b *testing.B, kind string, n int, subscribe bool) memUse {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), idleServerEnv+"="+kind)
	dieWithParent(cmd)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	outPipe, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer in.Close()
	out := bufio.NewReader(outPipe)
	addr, err := out.ReadString('\n')
	if err != nil {
		b.Fatalf("idle server did not start: %v", err)
	}
	ask := func(cmd string) memUse {
		io.WriteString(in, cmd+"\n")
		line, err := out.ReadString('\n')
		var m memUse
		if err == nil {
			_, err = fmt.Sscan(line, &m.heap, &m.stack, &m.rss)
		}
		if err != nil {
			b.Fatalf("idle server: %q: %v", line, err)
		}
		return m
	}
	before := ask("measure")
	sw := startSwarm(b, strings.TrimSpace(addr), n, subscribe, kind == "realtime+deflate")
	after := ask("measure")
	if f := os.Getenv("REALTIME_BENCH_HEAPPROFILE"); f != "" && subscribe {
		ask("profile " + f)
	}
	sw.stop()
	return memUse{after.heap - before.heap, after.stack - before.stack, after.rss - before.rss}
}

// runIdleServer is the idle-memory server process's main: serve, print the
// address, answer "measure" (and "profile file") with heap, stack and
// resident bytes, and exit when stdin closes.
func runIdleServer(kind string) int {
	if os.Getenv("REALTIME_BENCH_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 1 // every allocation, so the profile is exact
	}
	var addr string
	switch kind {
	case "bare":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		var held []net.Conn
		go acceptBare(ln, func(nc net.Conn) { held = append(held, nc) })
		addr = ln.Addr().String()
	default:
		deflate := kind == "realtime+deflate"
		state := json.RawMessage(`{"count":0}`)
		if deflate {
			state = boardState(0) // long enough to be compressed
		}
		mgr := NewMemoryManager()
		mgr.Create(context.Background(), "doc", state)
		srv := NewServer(mgr, &ServerOptions{HeartbeatInterval: -1,
			Accept: AcceptOptions{EnableCompression: deflate, ConnOptions: ConnOptions{IdleTimeout: -1}}, Logger: quietLogger})
		hs := httptest.NewServer(srv)
		addr = hs.Listener.Addr().String()
	}
	fmt.Println(addr)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		if cmd == "profile" {
			out, _ := os.Create(arg)
			pprof.WriteHeapProfile(out)
			out.Close()
		}
		for i := 0; i < 3; i++ {
			runtime.GC()
			time.Sleep(50 * time.Millisecond)
		}
		debug.FreeOSMemory() // return what the heap does not use, so RSS counts what is held
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Println(m.HeapInuse, m.StackInuse, residentBytes())
	}
	return 0 // the process exits with its connections
}

// residentBytes is this process's resident set (VmRSS), or 0 where
// /proc is missing.
func residentBytes() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb * 1024
		}
	}
	return 0
}
