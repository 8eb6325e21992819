package browsertest

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/degenerate/realtime/internal/demo"
)

// cutProxy forwards TCP to target and, once, cuts the first connection
// that carries more than cutAt bytes from the server: with the page's own
// requests being small, that is the WebSocket in the middle of a replay.
type cutProxy struct {
	ln     net.Listener
	target string
	cutAt  int64
	armed  atomic.Bool
	cuts   atomic.Int32
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string, cutAt int64) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, cutAt: cutAt}
	p.armed.Store(true)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go p.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) serve(c net.Conn) {
	defer p.wg.Done()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, s)
	p.mu.Unlock()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				s.Write(buf[:n])
			}
			if err != nil {
				s.Close()
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	var sent int64
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if sent+int64(n) > p.cutAt && p.armed.CompareAndSwap(true, false) {
				c.Write(buf[:p.cutAt-sent]) // mid-frame, mid-replay
				p.cuts.Add(1)
				c.Close()
				s.Close()
				return
			}
			sent += int64(n)
			c.Write(buf[:n])
		}
		if err != nil {
			c.Close()
			return
		}
	}
}

// TestDemoPageResumesMidReplay: 100 transactions of 20 KiB are applied
// while the page is away; its connection is cut 1 MiB into the replay. The
// page resumes from the last replayed transaction it received, so it shows
// every one of the 100 once. (Taking the state's cursor at once, as the
// page did before, resumed after all of them and lost most.)
func TestDemoPageResumesMidReplay(t *testing.T) {
	d := &demoServer{t: t, mgr: demo.NewManager()}
	d.newServer()
	d.listen()
	defer d.stop()
	p := newCutProxy(t, d.addr, 1<<20)
	tab := newBrowser(t)
	if err := chromedp.Do(tab, chromedp.Navigate("http://"+p.ln.Addr().String()+"/")); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	waitText(t, tab, "page", id("status"), "open")
	waitText(t, tab, "page", id("count"), "0")

	d.stop()
	deadline := time.Now().Add(20 * time.Second)
	for evalInt(t, tab, `realtimeDemo.closes.filter(c => c === 1001).length`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the page was not closed with 1001")
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.newServer()
	var ids []string
	pad := strings.Repeat("x", 20<<10)
	for i := 0; i < 100; i++ {
		tx, err := d.mgr.Apply(context.Background(), "demo", demo.Increment, json.RawMessage(`{"by":1,"pad":"`+pad+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tx.ID)
	}
	d.listen()
	waitText(t, tab, "page", id("count"), "100")
	deadline = time.Now().Add(30 * time.Second)
	for evalInt(t, tab, `realtimeDemo.subs.demo.cursor === `+jsString(ids[99])+` ? 1 : 0`) == 0 {
		if time.Now().After(deadline) {
			n := evalInt(t, tab, `document.querySelectorAll("#log li.replayed").length`)
			t.Fatalf("the page never caught up: %d replayed transactions shown, want 100", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.cuts.Load() != 1 {
		t.Fatalf("the replay was not cut (%d cuts)", p.cuts.Load())
	}
	shown, err := chromedp.Run(tab, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll("#log li.replayed")].map(li => li.textContent.split(" ")[2])`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(shown, ",") != strings.Join(ids, ",") {
		t.Fatalf("the page shows %d replayed transactions; want the 100 missed, each once, in order", len(shown))
	}
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
