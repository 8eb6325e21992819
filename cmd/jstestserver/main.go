// Command jstestserver is the real Go server the JavaScript client's tests
// (js/test) run against: a realtime.Server over a DiskManager, with
// control endpoints the tests drive (apply transactions, take the server
// down and up again) and scripted connections for what a correct server
// never does (a gap in the transactions, a chosen close code).
//
//	jstestserver [-addr 127.0.0.1:0]
//
// It prints "listening HOST:PORT" and serves until stdin closes.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/degenerate/realtime"
)

var increment = realtime.Function{ID: "increment", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
	var st struct {
		Count int `json:"count"`
	}
	var by struct {
		By *int `json:"by"`
	}
	json.Unmarshal(cur, &st)
	if err := json.Unmarshal(p, &by); err != nil || by.By == nil {
		return nil, errors.New(`proposedData must be {"by": <integer>}`)
	}
	return json.RawMessage(`{"count":` + strconv.Itoa(st.Count+*by.By) + `}`), nil
}}

// expiring is the authentication of a connection whose token ends.
type expiring struct{ at time.Time }

func (e expiring) ExpiresAt() time.Time { return e.at }

// authenticate admits a connection without token, with token "good", and
// with "expiring:MS" for MS milliseconds (then 4002); it refuses others.
func authenticate(r *http.Request) (any, error) {
	for _, p := range strings.Split(r.Header.Get("Sec-WebSocket-Protocol"), ",") {
		enc, ok := strings.CutPrefix(strings.TrimSpace(p), realtime.SubprotocolTokenPrefix)
		if !ok {
			continue
		}
		b, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil {
			return nil, &realtime.AuthError{Status: http.StatusUnauthorized, Reason: "token is not base64url"}
		}
		tok := string(b)
		switch {
		case tok == "good":
			return "good", nil
		case strings.HasPrefix(tok, "expiring:"):
			ms, _ := strconv.Atoi(strings.TrimPrefix(tok, "expiring:"))
			return expiring{time.Now().Add(time.Duration(ms) * time.Millisecond)}, nil
		}
		return nil, &realtime.AuthError{Status: http.StatusUnauthorized, Reason: "token refused"}
	}
	return nil, nil
}

type testServer struct {
	mgr *realtime.DiskManager // also the replay store: it records what is applied while the server is down
	log *slog.Logger

	cmu   sync.Mutex
	conns []net.Conn // the WebSocket connections (hijacked), for incrementAndCut

	mu   sync.Mutex
	srv  *realtime.Server // nil while down
	seen map[string]int   // scripted keys: connections so far
	logs map[string][]json.RawMessage
}

// incrementAndCut increments, and before it returns (so before the
// transaction is committed and answered) cuts every WebSocket connection's
// TCP: the proposal is applied and its result lost, which a client can
// only settle by resending it with its idempotency key.
func (ts *testServer) incrementAndCut() realtime.Function {
	return realtime.Function{ID: "incrementAndCut", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		next, err := increment.Apply(ctx, cur, json.RawMessage(`{"by":1}`))
		ts.cmu.Lock()
		for _, c := range ts.conns {
			c.Close()
		}
		ts.conns = nil
		ts.cmu.Unlock()
		return next, err
	}}
}

func (ts *testServer) newServer() *realtime.Server {
	return realtime.NewServer(ts.mgr, &realtime.ServerOptions{
		ReplayStore:     ts.mgr,
		ResolveFunction: realtime.IDFunctionResolver(ts.mgr),
		Authenticate:    authenticate,
		Accept:          realtime.AcceptOptions{ConnOptions: realtime.ConnOptions{ReadLimit: 1 << 20}},
		Logger:          ts.log,
	})
}

func (ts *testServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/realtime":
		ts.realtime(w, r)
	case "/control/apply":
		ts.apply(w, r)
	case "/control/down":
		ts.mu.Lock()
		srv := ts.srv
		ts.srv = nil
		ts.mu.Unlock()
		if srv != nil {
			srv.Shutdown(r.Context()) // every client is told 1001
		}
		fmt.Fprintln(w, "down")
	case "/control/up":
		ts.mu.Lock()
		if ts.srv == nil {
			ts.srv = ts.newServer()
		}
		ts.mu.Unlock()
		fmt.Fprintln(w, "up")
	case "/control/state":
		snap, err := ts.mgr.Snapshot(r.Context(), r.URL.Query().Get("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"state": snap.State, "lastTransactionId": snap.LastTransactionID, "version": snap.Version})
	case "/control/log":
		ts.mu.Lock()
		msgs := ts.logs[r.URL.Query().Get("key")]
		ts.mu.Unlock()
		json.NewEncoder(w).Encode(msgs)
	default:
		http.NotFound(w, r)
	}
}

// apply applies n increments to id, each with pad bytes of padding in its
// proposal, and answers the last transaction id.
func (ts *testServer) apply(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, _ := strconv.Atoi(q.Get("n"))
	pad, _ := strconv.Atoi(q.Get("pad"))
	p := json.RawMessage(`{"by":1}`)
	if pad > 0 {
		p = json.RawMessage(`{"by":1,"pad":"` + strings.Repeat("x", pad) + `"}`)
	}
	var last string
	for range n {
		tx, err := ts.mgr.Apply(r.Context(), q.Get("id"), increment, p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		last = tx.ID
	}
	json.NewEncoder(w).Encode(map[string]string{"last": last})
}

func (ts *testServer) realtime(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if script, key := q.Get("script"), q.Get("key"); script != "" {
		ts.mu.Lock()
		ts.seen[key]++
		first := ts.seen[key] == 1
		ts.mu.Unlock()
		if first || script == "gap" {
			ts.scripted(w, r, script, key)
			return
		}
	}
	ts.mu.Lock()
	srv := ts.srv
	ts.mu.Unlock()
	if srv == nil {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	srv.ServeHTTP(w, r)
}

// scripted serves a connection by script: "close-CODE" reads one message
// and closes with CODE; "gap" plays a server that sends a transaction out
// of sequence, then a duplicate, answering each resubscribe.
func (ts *testServer) scripted(w http.ResponseWriter, r *http.Request, script, key string) {
	c, err := realtime.Accept(w, r, &realtime.AcceptOptions{Subprotocols: []string{realtime.Subprotocol}})
	if err != nil {
		return
	}
	defer c.CloseNow()
	ctx := r.Context()
	read := func() bool {
		_, b, err := c.Read(ctx)
		if err != nil {
			return false
		}
		ts.mu.Lock()
		ts.logs[key] = append(ts.logs[key], json.RawMessage(b))
		ts.mu.Unlock()
		return true
	}
	send := func(m realtime.ServerMessage) { c.Write(ctx, realtime.MessageText, m.AppendJSON(nil)) }
	if code, ok := strings.CutPrefix(script, "close-"); ok {
		n, _ := strconv.Atoi(code)
		if read() {
			c.Close(realtime.CloseCode(n), "scripted close "+code)
		}
		return
	}
	// gap
	state := func(last, count string) {
		send(&realtime.StateMessage{ShareDataID: "doc", CurrentState: json.RawMessage(`{"count":` + count + `}`), LastTransactionID: last})
	}
	tx := func(id, prev, count string) {
		send(&realtime.TransactionMessage{ShareDataID: "doc", TransactionID: id, PreviousTransactionID: prev, FunctionID: "increment",
			ProposedData: json.RawMessage(`{"by":1}`), CurrentState: json.RawMessage(`{"count":` + count + `}`)})
	}
	if !read() {
		return
	}
	state("t0", "0")
	tx("t2", "t1", "2") // t1 never came: a gap
	if !read() {        // the client resubscribes with since t0
		return
	}
	state("t0", "0")
	tx("t1", "t0", "1")
	tx("t1", "t0", "1") // a duplicate
	if !read() {        // resubscribe with since t1
		return
	}
	state("t1", "1")
	for read() {
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to serve on")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir, err := os.MkdirTemp("", "jstestserver-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	mgr, err := realtime.OpenDiskManager(dir, &realtime.DiskManagerOptions{ReplayWindow: 1000, UnsafeNoSync: true, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer mgr.Close()
	ts := &testServer{mgr: mgr, log: log, seen: map[string]int{}, logs: map[string][]json.RawMessage{}}
	for _, id := range []string{"doc", "big"} {
		mgr.Create(context.Background(), id, json.RawMessage(`{"count":0}`), increment, ts.incrementAndCut())
	}
	ts.srv = ts.newServer()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr())
	hs := &http.Server{Handler: ts, ReadHeaderTimeout: 5 * time.Second, ConnState: func(c net.Conn, st http.ConnState) {
		if st == http.StateHijacked {
			ts.cmu.Lock()
			ts.conns = append(ts.conns, c)
			ts.cmu.Unlock()
		}
	}}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		hs.Close()
	}()
	hs.Serve(ln)
}
