package realtime

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A client swarm is a second process (this test binary, started with
// swarmEnv set) that holds many subscriber connections to a server under
// benchmark and counts the frames they read. Keeping the clients out of the
// benchmark's process leaves its CPU time and memory to the server alone,
// and gives each process its own file descriptor limit.

const swarmEnv = "REALTIME_BENCH_SWARM" // "addr n subscribe(0|1) deflate(0|1)"

// idleServerEnv makes the test binary an idle-memory benchmark's server
// process (runIdleServer): "bare" or "realtime".
const idleServerEnv = "REALTIME_BENCH_IDLE_SERVER"

// swarm is the parent's handle on a client swarm.
type swarm struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// startSwarm starts a swarm of n clients connected to addr, subscribed to
// "doc" when subscribe is set, offering permessage-deflate when deflate is
// (they count compressed frames without inflating them), and returns when
// all are connected.
func startSwarm(tb testing.TB, addr string, n int, subscribe, deflate bool) *swarm {
	tb.Helper()
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), swarmEnv+"="+addr+" "+strconv.Itoa(n)+" "+flag(subscribe)+" "+flag(deflate))
	dieWithParent(cmd)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	outPipe, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	s := &swarm{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
	line, err := s.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		s.stop()
		tb.Fatalf("swarm did not start: %q %v", line, err)
	}
	return s
}

// delivered asks the swarm how many frames its clients have read. It
// allocates nothing, so the benchmark's allocation counts are the server's.
func (s *swarm) delivered() int64 {
	io.WriteString(s.in, "?\n")
	line, err := s.out.ReadSlice('\n')
	if err != nil {
		return -1
	}
	var n int64
	for _, c := range line {
		if c >= '0' && c <= '9' {
			n = n*10 + int64(c-'0')
		}
	}
	return n
}

// stop ends the swarm, closing its connections.
func (s *swarm) stop() {
	s.in.Close()
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// runSwarm is the swarm process's main: connect, report "ready", answer
// each "?" with the count of frames read, exit when stdin closes.
func runSwarm() int {
	f := strings.Fields(os.Getenv(swarmEnv))
	if len(f) != 4 {
		fmt.Fprintln(os.Stderr, "swarm: bad", swarmEnv)
		return 2
	}
	addr, subscribe, deflate := f[0], f[2] == "1", f[3] == "1"
	n, _ := strconv.Atoi(f[1])
	var delivered atomic.Int64
	var wg sync.WaitGroup
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		nc, br, err := swarmDial(addr, subscribe, deflate)
		if err != nil {
			fmt.Fprintln(os.Stderr, "swarm:", err)
			return 1
		}
		conns = append(conns, nc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := skipFrame(br); err != nil {
					return
				}
				delivered.Add(1)
			}
		}()
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Println(delivered.Load())
	}
	for _, nc := range conns {
		nc.Close()
	}
	wg.Wait()
	return 0
}

func swarmDial(addr string, subscribe, deflate bool) (net.Conn, *bufio.Reader, error) {
	var nc net.Conn
	var err error
	for try := 0; try < 100; try++ {
		if nc, err = net.Dial("tcp", addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond) // listen backlog full
	}
	if err != nil {
		return nil, nil, err
	}
	var extra []string
	if deflate {
		extra = append(extra, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
	}
	if _, err := nc.Write([]byte(handshakeRequest(addr, extra...))); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(nc, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		return nil, nil, fmt.Errorf("handshake: %v", err)
	}
	if deflate && resp.Header.Get("Sec-WebSocket-Extensions") == "" {
		return nil, nil, fmt.Errorf("handshake: permessage-deflate was not negotiated")
	}
	if subscribe {
		msg := (&SubscribeMessage{ShareDataID: "doc"}).AppendJSON(nil)
		if deflate {
			nc.Write(frame(fText|rsv1Bit, true, compress(nil, msg))) // the server inflates it
		} else {
			nc.Write(frame(fText, true, msg))
		}
		if err := skipFrame(br); err != nil { // the state frame
			return nil, nil, err
		}
	}
	return nc, br, nil
}

// skipFrame reads one unmasked frame and discards its payload.
func skipFrame(br *bufio.Reader) error {
	var h [10]byte
	if _, err := io.ReadFull(br, h[:2]); err != nil {
		return err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		if _, err := io.ReadFull(br, h[2:4]); err != nil {
			return err
		}
		n = int(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		if _, err := io.ReadFull(br, h[2:10]); err != nil {
			return err
		}
		n = int(binary.BigEndian.Uint64(h[2:10]))
	}
	_, err := br.Discard(n)
	return err
}
