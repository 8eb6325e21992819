// Package browsertest drives the demo page in real headless Chromium
// (Debian's chromium package, which the repository's test command
// installs when it is missing). It is a module of its own so that the root
// module does not depend on chromedp.
package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"

	"github.com/degenerate/realtime"
	"github.com/degenerate/realtime/internal/demo"
)

// demoServer serves the demo on a fixed address and can be restarted: a
// new realtime.Server and listener over the same manager, or, with dir set,
// over a new DiskManager reopened from the directory, as a restarted demo
// process does.
type demoServer struct {
	t        *testing.T
	mgr      demo.Store
	compress bool         // permessage-deflate on, as cmd/realtime-demo has it
	written  atomic.Int64 // bytes written to the browsers' connections
	dir      string       // when set, the share data live in a DiskManager there
	disk     *realtime.DiskManager
	addr     string
	mu       sync.Mutex
	srv      *realtime.Server
	hs       *http.Server
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func (d *demoServer) newServer() {
	d.mu.Lock()
	defer d.mu.Unlock()
	var store realtime.ReplayStore
	if d.dir != "" {
		if d.disk != nil {
			d.disk.Close() // the old process is gone
		}
		dm, err := realtime.OpenDiskManager(d.dir, &realtime.DiskManagerOptions{Logger: quiet})
		if err != nil {
			d.t.Fatal(err)
		}
		if err := demo.Populate(context.Background(), dm); err != nil {
			d.t.Fatal(err)
		}
		d.t.Cleanup(func() { dm.Close() })
		d.disk, d.mgr, store = dm, dm, dm
	}
	d.srv = realtime.NewServer(d.mgr, &realtime.ServerOptions{ReplayStore: store, ResolveFunction: realtime.IDFunctionResolver(d.mgr), Logger: quiet,
		Accept: realtime.AcceptOptions{EnableCompression: d.compress}})
}

func (d *demoServer) listen() {
	addr := d.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		d.t.Fatal(err)
	}
	d.addr = ln.Addr().String()
	ln = countingListener{Listener: ln, n: &d.written}
	d.mu.Lock()
	d.hs = &http.Server{Handler: demo.Handler(d.srv)}
	hs := d.hs
	d.mu.Unlock()
	go hs.Serve(ln)
}

// countingListener counts the bytes written to the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: nc, n: l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (d *demoServer) stop() {
	d.mu.Lock()
	srv, hs := d.srv, d.hs
	d.hs = nil
	d.mu.Unlock()
	if hs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	hs.Close()
}

// chromium finds the browser; the test command installs Debian's package.
func chromium(t *testing.T) string {
	for _, p := range []string{os.Getenv("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: run the repository's test command (./test.sh), which installs Debian's chromium")
	return ""
}

// newBrowser starts headless Chromium, with the flags this machine's
// closed network needs, for at most two minutes, and returns its first tab.
// It is stopped when the test ends.
func newBrowser(t *testing.T) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // root in CI
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	tab, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		cancel()
	})
	return tab
}

// id selects the element with an id. chromedp's plain-string selectors
// are searches that also match page text (a stylesheet's "#items", say), so
// the tests name elements by an XPath that appears nowhere in the page.
func id(name string) string { return fmt.Sprintf(`//*[@id=%q]`, name) }

// waitText polls the text of sel in a tab until it equals want.
func waitText(t *testing.T, tab context.Context, name, sel, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var got string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(tab, 2*time.Second)
		text, err := chromedp.Run(ctx, chromedp.Text(sel))
		cancel()
		got = text
		if err == nil && strings.TrimSpace(got) == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %s shows %q, want %q", name, sel, got, want)
}

func evalInt(t *testing.T, tab context.Context, js string) int {
	t.Helper()
	n, err := chromedp.Run(tab, chromedp.Evaluate[int](js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDemoPageInChromium opens the demo page in two tabs: a change
// proposed in one appears in the other; after the server restarts, with
// transactions applied while it was down, both pages catch up, the missed
// transactions arriving replayed.
// TestDemoPageInChromium runs the demo as cmd/realtime-demo does, over a
// DiskManager, and restarts it from its directory while two pages are
// open: they reconnect, are replayed what was applied while it was down,
// and show no error.
func TestDemoPageInChromium(t *testing.T) {
	d := &demoServer{t: t, dir: t.TempDir()}
	d.newServer()
	d.listen()
	defer d.stop()
	url := "http://" + d.addr + "/"

	tab1 := newBrowser(t)
	if err := chromedp.Do(tab1, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	tab2, cancel2 := chromedp.NewContext(tab1) // a second tab of the same browser
	defer cancel2()
	if err := chromedp.Do(tab2, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open a second tab: %v", err)
	}
	for i, tab := range []context.Context{tab1, tab2} {
		waitText(t, tab, fmt.Sprint("tab ", i+1), id("status"), "open")
		waitText(t, tab, fmt.Sprint("tab ", i+1), id("count"), "0")
	}

	// A change in one tab appears in the other.
	if err := chromedp.Do(tab1, chromedp.Click(id("inc"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab2, "tab 2", id("count"), "1")
	if err := chromedp.Do(tab2,
		chromedp.SendKeys(id("item"), "hello from tab 2"),
		chromedp.Click(id("add"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab1, "tab 1", id("items"), "hello from tab 2")

	// The demo restarts (a new manager over the directory); three
	// transactions are applied while it is down.
	d.stop()
	// Each page was told 1001 (its status may already show a failed redial).
	for i, tab := range []context.Context{tab1, tab2} {
		deadline := time.Now().Add(20 * time.Second)
		for evalInt(t, tab, `realtimeDemo.closes.filter(c => c === 1001).length`) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("tab %d was not closed with 1001", i+1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// While it is down, a page says it is reconnecting and why, and a
	// proposal is refused on the page.
	// (Which reason it shows depends on the redials since: 1001, then
	// 1006 for each refused dial.)
	deadline := time.Now().Add(20 * time.Second)
	for evalInt(t, tab1, `document.getElementById("status").textContent.startsWith("reconnecting… ") ? 1 : 0`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("tab 1 does not say it is reconnecting")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := chromedp.Do(tab1, chromedp.Click(id("inc"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab1, "tab 1", id("error"), "not connected")
	d.disk.Close() // the demo process is gone; the three land in its directory
	down, err := realtime.OpenDiskManager(d.dir, &realtime.DiskManagerOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := down.Apply(context.Background(), "demo", demo.Increment, json.RawMessage(`{"by":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	down.Close()
	d.newServer() // a new demo process: a new manager and server over the directory
	d.listen()
	for i, tab := range []context.Context{tab1, tab2} {
		name := fmt.Sprint("tab ", i+1)
		waitText(t, tab, name, id("status"), "open")
		waitText(t, tab, name, id("count"), "4")
		if n := evalInt(t, tab, `[...document.querySelectorAll("#log li")].filter(li => li.textContent.startsWith("[state] disconnected: the server is going away (1001")).length`); n != 1 {
			t.Fatalf("%s logged %d disconnects with 1001, want 1", name, n)
		}
		if n := evalInt(t, tab, `[...document.querySelectorAll("#log li")].filter(li => li.textContent === "[state] reconnected").length`); n != 1 {
			t.Fatalf("%s logged %d reconnects, want 1", name, n)
		}
		if n := evalInt(t, tab, `document.querySelectorAll("#log li.replayed").length`); n != 3 {
			logText, _ := chromedp.Run(tab, chromedp.Evaluate[string](`[...document.querySelectorAll("#log li")].map(li => li.textContent.slice(0, 80)).join("\n")`))
			t.Fatalf("%s shows %d replayed transactions, want 3; its log:\n%s", name, n, logText)
		}
	}
	waitText(t, tab1, "tab 1", id("error"), "") // the banner cleared once recovered
	// The pages go on working after the restart.
	if err := chromedp.Do(tab2, chromedp.Click(id("inc"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab1, "tab 1", id("count"), "5")

	if dir := os.Getenv("BROWSERTEST_SCREENSHOT_DIR"); dir != "" {
		shot, err := chromedp.Run(tab1, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		os.WriteFile(dir+"/demo.png", shot, 0o644)
	}
}

// jwtDemo serves the demo with its JWT setup (demo.UseJWT) until the test
// ends. It returns the server, a count of the upgrade requests it got, and
// a function that signs a token for the page expiring at exp.
func jwtDemo(t *testing.T) (*httptest.Server, *atomic.Int32, func(exp time.Time) string) {
	secret := []byte("browser-test-secret")
	mgr := demo.NewManager()
	opts := &realtime.ServerOptions{ResolveFunction: realtime.IDFunctionResolver(mgr), Logger: quiet}
	if err := demo.UseJWT(opts, secret, "browsertest"); err != nil {
		t.Fatal(err)
	}
	srv := realtime.NewServer(mgr, opts)
	upgrades := new(atomic.Int32)
	handler := demo.Handler(srv)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/realtime" {
			upgrades.Add(1)
		}
		handler.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		hs.Close()
	})
	token := func(exp time.Time) string {
		tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"iss": "browsertest", "sub": "tab", "aud": realtime.AudienceShareData, "exp": exp.Unix(),
		}).SignedString(secret)
		return tok
	}
	return hs, upgrades, token
}

// TestDemoPageWithToken: with the JWT bridge on, the page carries the
// token from its URL in a WebSocket subprotocol (browsers cannot set an
// Authorization header), Chromium accepts the server's choice of
// realtime.v1, and the subscription goes through the audience authorizer.
// Without the token the page cannot connect.
func TestDemoPageWithToken(t *testing.T) {
	hs, _, token := jwtDemo(t)
	tok := token(time.Now().Add(time.Hour))

	tab := newBrowser(t)
	if err := chromedp.Do(tab, chromedp.Navigate(hs.URL+"/?token="+tok)); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "with token", id("status"), "open")
	waitText(t, tab, "with token", id("count"), "0")
	if err := chromedp.Do(tab, chromedp.Click(id("inc"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "with token", id("count"), "1")

	// Without a token: refused before any WebSocket byte, so the page
	// never opens.
	if err := chromedp.Do(tab, chromedp.Navigate(hs.URL+"/")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if n := evalInt(t, tab, `realtimeDemo.closes.length`); n == 0 {
		t.Fatal("the page without a token did not see its connection fail")
	}
	status, _ := chromedp.Run(tab, chromedp.Text(id("status")))
	if strings.TrimSpace(status) == "open" {
		t.Fatal("the page connected without a token")
	}
}

// TestDemoPageStopsAfterTokenExpiry: a token that expired a moment ago,
// inside the leeway, opens the page's connection; at the end of the
// leeway the server closes it with 4002, and the page, which has no fresh
// token, says so and stops: one upgrade attempt in all, not a redial loop.
func TestDemoPageStopsAfterTokenExpiry(t *testing.T) {
	hs, upgrades, token := jwtDemo(t)
	// Expired a second ago: inside the default 5 s leeway, with four
	// seconds for a loaded machine to load the page and upgrade.
	tok := token(time.Now().Add(-time.Second))

	tab := newBrowser(t)
	if err := chromedp.Do(tab, chromedp.Navigate(hs.URL+"/?token="+tok)); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "expiring token", id("count"), "0") // admitted, subscribed
	waitText(t, tab, "expiring token", id("status"), "stopped: the token expired or was refused (4002: token expired)")
	waitText(t, tab, "expiring token", id("error"), "Your token has expired: reload the page with a fresh one.")
	// The page used to redial within 250 ms of a 4002; give it four times
	// that to show it does not.
	time.Sleep(time.Second)
	if n := upgrades.Load(); n != 1 {
		t.Fatalf("%d upgrade attempts, want 1", n)
	}
	if n := evalInt(t, tab, `realtimeDemo.closes.length`); n != 1 {
		t.Fatalf("the page saw %d closes, want 1", n)
	}
}

// TestCompressionInChromium: with compression on, as cmd/realtime-demo
// has it, Chromium negotiates permessage-deflate with the demo (no
// context takeover either way: the answer every subscriber gets, so a
// broadcast is compressed once), the page works through it both ways,
// and a 3 KiB board state crosses the wire in a fraction of its size.
func TestCompressionInChromium(t *testing.T) {
	d := &demoServer{t: t, mgr: demo.NewManager(), compress: true}
	d.newServer()
	d.listen()
	defer d.stop()
	for i := 0; i < 12; i++ {
		if _, err := d.mgr.Apply(context.Background(), "board", demo.Add, json.RawMessage(`{"text":"`+strings.Repeat("shared ", 28)+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	tab := newBrowser(t)
	if err := chromedp.Do(tab, chromedp.Navigate("http://"+d.addr+"/")); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	waitText(t, tab, "page", id("status"), "open")
	// The page's client works through the extension: a proposal from the
	// page (compressed by Chromium if long enough) and its transaction.
	if err := chromedp.Do(tab, chromedp.Click(id("inc"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "page", id("count"), "1")
	if err := chromedp.Do(tab, chromedp.SendKeys(id("item"), strings.Repeat("long item ", 19)), chromedp.Click(id("add"))); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "page", `//*[@id="items"]/*[last()]`, strings.TrimSpace(strings.Repeat("long item ", 19)))

	// A socket of the page's own: what Chromium negotiated, and the size
	// of the board's state frame once inflated, against the bytes the
	// server wrote for it.
	before := d.written.Load()
	got, err := chromedp.Run(tab, chromedp.Evaluate[string](`new Promise((resolve, reject) => {
		const ws = new WebSocket("ws://" + location.host + "/realtime", "realtime.v1");
		ws.onopen = () => ws.send(JSON.stringify({v: 1, type: "subscribe", shareDataId: "board"}));
		ws.onmessage = (e) => { resolve(ws.extensions + "|" + e.data.length); ws.close(); };
		ws.onerror = () => reject(new Error("websocket error"));
	})`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	ext, size, _ := strings.Cut(got, "|")
	if ext != "permessage-deflate; server_no_context_takeover; client_no_context_takeover" {
		t.Fatalf("Chromium negotiated %q", ext)
	}
	var n int64
	fmt.Sscan(size, &n)
	wrote := d.written.Load() - before // the 101 response and the state frame
	if n < 2000 || wrote > n/2 {
		t.Fatalf("a state of %d bytes took %d bytes on the wire, handshake included", n, wrote)
	}
	t.Logf("Chromium negotiated %q; a %d-byte state frame took %d bytes, the 101 response included", ext, n, wrote)
}
