package realtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/degenerate/realtime"
)

// increment adds proposedData's "by" to the state's "count".
var increment = realtime.Function{
	ID: "increment",
	Apply: func(ctx context.Context, cur, proposed json.RawMessage) (json.RawMessage, error) {
		var st struct{ Count int }
		var p struct{ By int }
		if err := json.Unmarshal(cur, &st); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(proposed, &p); err != nil {
			return nil, errors.New(`proposedData must be {"by": n}`)
		}
		return json.Marshal(map[string]int{"count": st.Count + p.By})
	},
}

// readMessage reads and decodes the next server message.
func readMessage(c *realtime.Conn) realtime.ServerMessage {
	_, b, err := c.Read(context.Background())
	if err != nil {
		panic(err)
	}
	m, err := realtime.DecodeServerMessage(b)
	if err != nil {
		panic(err)
	}
	return m
}

// Mount a server that admits only tokens signed by a trusted issuer and
// lets them subscribe and propose only with the SHAREDATA audience.
func ExampleNewJWTAuthenticator() {
	secret := []byte("a-shared-secret-of-the-auth-service")
	authenticate, err := realtime.NewJWTAuthenticator(realtime.JWTOptions{
		Authorities: []realtime.Authority{{
			Issuer: "https://auth.example",
			Keys:   []realtime.VerificationKey{{ID: "2026-11", Key: secret, Algorithms: []string{"HS256"}}},
		}},
	})
	if err != nil {
		panic(err)
	}
	mgr := realtime.NewMemoryManager()
	mgr.Create(context.Background(), "counter", json.RawMessage(`{"count":0}`), increment)
	srv := realtime.NewServer(mgr, &realtime.ServerOptions{
		Authenticate:       authenticate,
		AuthorizeSubscribe: realtime.ShareDataAudienceAuthorizer,
		AuthorizePropose:   realtime.ShareDataAudienceProposeAuthorizer,
	})
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 32 << 10}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go hs.Serve(ln)
	defer hs.Close()
	defer srv.Shutdown(context.Background())
	url := "ws://" + ln.Addr().String()

	// Without a token, the upgrade is refused before any WebSocket byte.
	_, _, err = realtime.Dial(context.Background(), url, nil)
	var he *realtime.HandshakeError
	if errors.As(err, &he) {
		fmt.Println("no token:", he.StatusCode)
	}

	// With one, from a Go service: Authorization: Bearer.
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": "https://auth.example", "sub": "ann", "aud": realtime.AudienceShareData,
		"exp": time.Now().Add(time.Hour).Unix(),
	})
	tok.Header["kid"] = "2026-11"
	signed, _ := tok.SignedString(secret)
	c, _, err := realtime.Dial(context.Background(), url, &realtime.DialOptions{
		Header: http.Header{"Authorization": {"Bearer " + signed}},
	})
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	sub := &realtime.SubscribeMessage{ShareDataID: "counter"}
	c.Write(context.Background(), realtime.MessageText, sub.AppendJSON(nil))
	st := readMessage(c).(*realtime.StateMessage)
	fmt.Println("subscribed:", string(st.CurrentState))
	// Output:
	// no token: 401
	// subscribed: {"count":0}
}

// Mount the realtime server on a mux and follow a share data item with the
// Go client.
func Example() {
	mgr := realtime.NewMemoryManager()
	mgr.Create(context.Background(), "counter", json.RawMessage(`{"count":0}`), increment)
	srv := realtime.NewServer(mgr, &realtime.ServerOptions{
		ResolveFunction: realtime.IDFunctionResolver(mgr),
	})
	mux := http.NewServeMux()
	mux.Handle("/realtime", srv)
	// An http.Server's zero timeouts mean none: without these, a client
	// that sends its handshake a byte at a time, or keeps idle keep-alive
	// connections open, holds a connection forever.
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second, // the request, the WebSocket handshake included
		IdleTimeout:       60 * time.Second, // keep-alive connections between requests
		MaxHeaderBytes:    32 << 10,         // room for a bearer token; net/http's default is 1 MiB
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go hs.Serve(ln)
	defer hs.Close()
	defer srv.Shutdown(context.Background())

	client, err := realtime.NewClient("ws://"+ln.Addr().String()+"/realtime", nil)
	if err != nil {
		panic(err)
	}
	defer client.Close()
	sub, _ := client.Subscribe("counter", nil)
	if err := client.Connect(context.Background()); err != nil {
		panic(err)
	}
	st := (<-sub.Messages()).(*realtime.StateMessage)
	fmt.Println("state:", string(st.CurrentState))

	if _, err := client.Propose(context.Background(), "counter", "increment", json.RawMessage(`{"by":5}`)); err != nil {
		panic(err)
	}
	tx := (<-sub.Messages()).(*realtime.TransactionMessage)
	fmt.Println("transaction:", tx.FunctionID, string(tx.ProposedData), "->", string(tx.CurrentState))

	_, err = client.Propose(context.Background(), "counter", "reset", json.RawMessage(`{}`))
	fmt.Println("refused:", err)
	// Output:
	// state: {"count":0}
	// transaction: increment {"by":5} -> {"count":5}
	// refused: realtime: proposal refused: unknown function "reset"
}

// After a reconnect, the client resubscribes with since = its cursor and
// the server replays what it missed, marked Replayed.
func ExampleClient_replay() {
	mgr := realtime.NewMemoryManager()
	mgr.Create(context.Background(), "counter", json.RawMessage(`{"count":0}`), increment)
	srv := realtime.NewServer(mgr, nil)
	var current atomic.Pointer[realtime.Server] // the server now answering
	current.Store(srv)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		current.Load().ServeHTTP(w, r)
	}))
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http")

	client, _ := realtime.NewClient(url, &realtime.ClientOptions{ReconnectMin: 10 * time.Millisecond})
	defer client.Close()
	sub, _ := client.Subscribe("counter", nil)
	client.Connect(context.Background())
	fmt.Println("state:", string((<-sub.Messages()).(*realtime.StateMessage).CurrentState))

	// The server goes away; two transactions happen; a new server over the
	// same manager (it records transactions from its start) takes its place
	// at the same address.
	srv.Shutdown(context.Background())
	srv2 := realtime.NewServer(mgr, nil)
	defer srv2.Shutdown(context.Background())
	for i := 0; i < 2; i++ {
		mgr.Apply(context.Background(), "counter", increment, json.RawMessage(`{"by":1}`))
	}
	current.Store(srv2)

	for i := 0; i < 3; i++ {
		switch m := (<-sub.Messages()).(type) {
		case *realtime.StateMessage:
			fmt.Println("state after the reconnect:", string(m.CurrentState))
		case *realtime.TransactionMessage:
			fmt.Println("replayed:", m.Replayed, string(m.ProposedData))
		}
	}
	// Output:
	// state: {"count":0}
	// state after the reconnect: {"count":2}
	// replayed: true {"by":1}
	// replayed: true {"by":1}
}

// Any function can resolve a propose's function id: here, per-tenant
// function sets chosen by the share data id's prefix.
func ExampleFunctionResolver() {
	double := realtime.Function{ID: "double", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		var st struct{ Count int }
		json.Unmarshal(cur, &st)
		return json.Marshal(map[string]int{"count": 2 * st.Count})
	}}
	tenants := map[string][]realtime.Function{"acme": {increment, double}, "free": {increment}}
	resolve := func(ctx context.Context, shareDataID, functionID string) (realtime.Function, error) {
		tenant, _, _ := strings.Cut(shareDataID, "/")
		for _, fn := range tenants[tenant] {
			if fn.ID == functionID {
				return fn, nil
			}
		}
		return realtime.Function{}, fmt.Errorf("%w %q for tenant %s", realtime.ErrUnknownFunction, functionID, tenant)
	}

	mgr := realtime.NewMemoryManager()
	mgr.Create(context.Background(), "acme/counter", json.RawMessage(`{"count":3}`))
	mgr.Create(context.Background(), "free/counter", json.RawMessage(`{"count":3}`))
	srv := realtime.NewServer(mgr, &realtime.ServerOptions{ResolveFunction: resolve})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Shutdown(context.Background())

	client, _ := realtime.NewClient("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	defer client.Close()
	client.Connect(context.Background())
	_, err := client.Propose(context.Background(), "acme/counter", "double", json.RawMessage(`null`))
	fmt.Println("acme double:", err)
	_, err = client.Propose(context.Background(), "free/counter", "double", json.RawMessage(`null`))
	fmt.Println("free double:", err)
	// Output:
	// acme double: <nil>
	// free double: realtime: proposal refused: unknown function "double" for tenant free
}

// countingStore is a custom ReplayStore: it wraps the in-memory one and
// counts what it is asked, as a store backed by a database or Redis would
// be plugged in.
// A ReplayStore is called from many goroutines, hence the atomics.
type countingStore struct {
	*realtime.MemoryReplayStore
	appends, replays atomic.Int32
}

func (s *countingStore) Append(ctx context.Context, id string, rec realtime.ReplayRecord) error {
	s.appends.Add(1)
	return s.MemoryReplayStore.Append(ctx, id, rec)
}

func (s *countingStore) Replay(ctx context.Context, id, since, until string) ([]realtime.ReplayRecord, error) {
	s.replays.Add(1)
	return s.MemoryReplayStore.Replay(ctx, id, since, until)
}

// Plug in a custom replay store.
func ExampleReplayStore() {
	store := &countingStore{MemoryReplayStore: realtime.NewMemoryReplayStore(10)}
	mgr := realtime.NewMemoryManager()
	mgr.Create(context.Background(), "counter", json.RawMessage(`{"count":0}`), increment)
	srv := realtime.NewServer(mgr, &realtime.ServerOptions{ReplayStore: store})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Shutdown(context.Background())

	var first string
	for i := 0; i < 3; i++ {
		tx, _ := mgr.Apply(context.Background(), "counter", increment, json.RawMessage(`{"by":1}`))
		if i == 0 {
			first = tx.ID
		}
	}
	c, _, err := realtime.Dial(context.Background(), "ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	sub := &realtime.SubscribeMessage{ShareDataID: "counter", Since: first, HasSince: true}
	c.Write(context.Background(), realtime.MessageText, sub.AppendJSON(nil))
	for i := 0; i < 3; i++ {
		fmt.Printf("%T\n", readMessage(c))
	}
	fmt.Println("appends:", store.appends.Load(), "replays:", store.replays.Load())
	// Output:
	// *realtime.StateMessage
	// *realtime.TransactionMessage
	// *realtime.TransactionMessage
	// appends: 3 replays: 1
}
