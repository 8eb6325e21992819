package main

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/degenerate/realtime"
)

// demoProcess is the demo binary running with a data directory.
type demoProcess struct {
	cmd     *exec.Cmd
	addr    string
	metrics string // the metrics listener's address, with -metrics-addr
}

var (
	listening        = regexp.MustCompile(`open http://([0-9.:]+)/`)
	metricsListening = regexp.MustCompile(`metrics on http://([0-9.:]+)/metrics`)
)

func startDemo(t *testing.T, bin, dir string, args ...string) *demoProcess {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0", "-data", dir}, args...)...)
	dieWithParent(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	metrics := ""
	for sc.Scan() {
		if m := metricsListening.FindStringSubmatch(sc.Text()); m != nil {
			metrics = m[1]
		}
		if m := listening.FindStringSubmatch(sc.Text()); m != nil {
			go func() {
				for sc.Scan() {
				}
			}()
			return &demoProcess{cmd: cmd, addr: m[1], metrics: metrics}
		}
	}
	t.Fatal("the demo ended before it listened")
	return nil
}

// count subscribes to "demo" and returns its count.
func count(t *testing.T, addr string) (float64, *realtime.Client, *realtime.Subscription) {
	t.Helper()
	c, err := realtime.NewClient("ws://"+addr+"/realtime", &realtime.ClientOptions{ReconnectMin: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe("demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-sub.Messages():
		st, ok := m.(*realtime.StateMessage)
		if !ok {
			t.Fatalf("first message %T", m)
		}
		var s struct{ Count float64 }
		json.Unmarshal(st.CurrentState, &s)
		return s.Count, c, sub
	case <-ctx.Done():
		t.Fatal("no state")
	}
	return 0, nil, nil
}

// TestDemoRestartKeepsData runs the demo binary over a data directory,
// increments its counter, stops it (SIGTERM, then SIGKILL the second
// time) and starts it again: the counter is still there. (The replay of
// what a subscribed client missed across a restart is
// TestServerRestartReplaysFromDisk in the root package.)
func TestDemoRestartKeepsData(t *testing.T) {
	bin := buildDemo(t)
	dir := filepath.Join(t.TempDir(), "data")
	want := 0.0
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		p := startDemo(t, bin, dir)
		got, c, _ := count(t, p.addr)
		if got != want {
			t.Fatalf("before %v: count %v, want %v", sig, got, want)
		}
		for range 3 {
			if _, err := c.Propose(t.Context(), "demo", "increment", json.RawMessage(`{"by":2}`)); err != nil {
				t.Fatal(err)
			}
			want += 2
		}
		c.Close()
		p.cmd.Process.Signal(sig)
		p.cmd.Wait()
		p = startDemo(t, bin, dir)
		if got, _, _ := count(t, p.addr); got != want {
			t.Fatalf("after %v and a restart: count %v, want %v", sig, got, want)
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
	}
}

func buildDemo(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "realtime-demo")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestTwoDemosOnRedis runs two demo processes with -redis against a real
// redis-server (./test.sh installs Debian's): a proposal through one is
// seen live by a page's client on the other, and both serve the same
// count.
func TestTwoDemosOnRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	rs := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	dieWithParent(rs)
	if err := rs.Start(); err != nil {
		t.Fatalf("redis-server: %v (./test.sh installs Debian's redis-server)", err)
	}
	t.Cleanup(func() { rs.Process.Kill(); rs.Wait() })
	addr := "127.0.0.1:" + port
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i == 200 {
			t.Fatal("redis-server did not listen")
		}
		time.Sleep(25 * time.Millisecond)
	}
	bin := buildDemo(t)
	one := startDemo(t, bin, t.TempDir(), "-redis", addr)
	two := startDemo(t, bin, t.TempDir(), "-redis", addr)
	_, c1, _ := count(t, one.addr)
	start, _, sub2 := count(t, two.addr)
	if _, err := c1.Propose(t.Context(), "demo", "increment", json.RawMessage(`{"by":2}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-sub2.Messages():
		tx, ok := m.(*realtime.TransactionMessage)
		if !ok || string(tx.CurrentState) != `{"count":`+strconv.Itoa(int(start)+2)+`}` {
			t.Fatalf("the other demo sent %T %+v", m, m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the other demo did not send the transaction")
	}
	if got, _, _ := count(t, two.addr); got != start+2 {
		t.Fatalf("the other demo serves %v, want %v", got, start+2)
	}
}

// TestDemoSafeSetup: what people copy from the demo is safe by default:
// no metrics on the public listener (a scrape costs the server CPU; they
// go to -metrics-addr), a connection limit (past it 503, before the
// process runs out of file descriptors), and a bounded state for set.
func TestDemoSafeSetup(t *testing.T) {
	p := startDemo(t, buildDemo(t), t.TempDir(), "-memory", "-max-connections", "2")
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics on the public listener: %d, want 404", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	url := "ws://" + p.addr + "/realtime"
	var held []*realtime.Conn
	for i := 0; i < 2; i++ {
		c, _, err := realtime.Dial(ctx, url, nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		// A protocol ping answered: the server has registered it (the
		// 101 comes before that).
		if err := c.Write(ctx, realtime.MessageText, []byte(`{"v":1,"type":"ping","correlationId":"p"}`)); err != nil {
			t.Fatal(err)
		}
		if _, m, err := c.Read(ctx); err != nil || !strings.Contains(string(m), `"pong"`) {
			t.Fatalf("connection %d: %s, %v", i+1, m, err)
		}
		held = append(held, c)
	}
	_, resp, err = realtime.Dial(ctx, url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a third connection past -max-connections 2: %v (response %v), want 503", err, resp)
	}
	for _, c := range held {
		c.Close(realtime.CloseNormalClosure, "")
	}
	_, proposer, _ := count(t, p.addr) // connects once the server has let the two go
	if _, err := proposer.Propose(ctx, "demo", "set", json.RawMessage(`"`+strings.Repeat("x", 5000)+`"`)); err == nil {
		t.Fatal("set accepted a 5 KB state")
	}
}
