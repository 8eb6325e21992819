package realtime

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultProxy is a TCP proxy that breaks connections on purpose: it cuts
// them after a given number of bytes in either direction (mid-frame,
// mid-handshake, mid-replay, wherever the offset falls), with a FIN or a
// reset, and stalls the server-to-client direction for a while. Each
// accepted connection follows the plan that plan(n) returns for it, n
// counting from 0.
type faultProxy struct {
	t      testing.TB
	ln     net.Listener
	target atomic.Pointer[string]
	plan   func(n int) proxyPlan

	mu     sync.Mutex
	n      int
	links  map[*proxyLink]struct{}
	closed bool
	wg     sync.WaitGroup

	cuts, resets, stalls atomic.Int64
}

// proxyPlan says how one connection breaks. Zero fields mean never.
type proxyPlan struct {
	cutDownAt  int64 // cut once this many server-to-client bytes passed
	cutUpAt    int64 // cut once this many client-to-server bytes passed
	reset      bool  // cut with a reset (RST) rather than a FIN
	stallAt    int64 // stop reading from the server after this many bytes...
	stallFor   time.Duration
	refuse     bool // close the connection at once, before any byte
	onCut      func()
	upstreamRB int // the upstream socket's receive buffer (0: the system's)
}

type proxyLink struct {
	client, server net.Conn
	once           sync.Once
}

func newFaultProxy(t testing.TB, target string, plan func(n int) proxyPlan) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, ln: ln, plan: plan, links: make(map[*proxyLink]struct{})}
	p.setTarget(target)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) url() string { return "ws://" + p.ln.Addr().String() + "/" }

func (p *faultProxy) setTarget(addr string) { p.target.Store(&addr) }

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		n := p.n
		p.n++
		p.wg.Add(1)
		p.mu.Unlock()
		var plan proxyPlan
		if p.plan != nil {
			plan = p.plan(n)
		}
		go p.serve(c, plan)
	}
}

func (p *faultProxy) serve(c net.Conn, plan proxyPlan) {
	defer p.wg.Done()
	if plan.refuse {
		p.cuts.Add(1)
		c.Close()
		return
	}
	s, err := net.DialTimeout("tcp", *p.target.Load(), 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if plan.upstreamRB > 0 {
		s.(*net.TCPConn).SetReadBuffer(plan.upstreamRB)
	}
	l := &proxyLink{client: c, server: s}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		p.pipe(l, c, s, plan.cutUpAt, 0, 0, plan)
	}()
	go func() {
		defer wg.Done()
		p.pipe(l, s, c, plan.cutDownAt, plan.stallAt, plan.stallFor, plan)
	}()
	wg.Wait()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// pipe copies src to dst until either ends, cutting the link at cutAt
// bytes and pausing for stallFor once stallAt bytes went through.
func (p *faultProxy) pipe(l *proxyLink, src, dst net.Conn, cutAt, stallAt int64, stallFor time.Duration, plan proxyPlan) {
	buf := make([]byte, 32<<10)
	var sent int64
	stalled := false
	for {
		n, err := src.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if cutAt > 0 && sent+int64(n) >= cutAt {
				dst.Write(chunk[:cutAt-sent])
				if plan.reset {
					p.resets.Add(1)
				} else {
					p.cuts.Add(1)
				}
				p.cut(l, plan.reset)
				if plan.onCut != nil {
					plan.onCut()
				}
				return
			}
			if _, werr := dst.Write(chunk); werr != nil {
				p.cut(l, false)
				return
			}
			sent += int64(n)
			if !stalled && stallAt > 0 && sent >= stallAt {
				stalled = true
				p.stalls.Add(1)
				time.Sleep(stallFor) // the fault itself: the proxy reads nothing for this long
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				// Pass the half-close on, then let the other side end.
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
					return
				}
			}
			p.cut(l, false)
			return
		}
	}
}

// cut closes both sides of a link, with resets when asked.
func (p *faultProxy) cut(l *proxyLink, reset bool) {
	l.once.Do(func() {
		if reset {
			l.client.(*net.TCPConn).SetLinger(0)
			l.server.(*net.TCPConn).SetLinger(0)
		}
		l.client.Close()
		l.server.Close()
	})
}

// cutAll cuts every open link (a network outage).
func (p *faultProxy) cutAll() {
	p.mu.Lock()
	links := make([]*proxyLink, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		p.cuts.Add(1)
		p.cut(l, false)
	}
}

func (p *faultProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.cutAll()
	p.wg.Wait()
}
