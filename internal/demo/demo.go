// Package demo is the realtime demo: its share data, its web page and its
// loopback walk through the protocol. cmd/realtime-demo serves it; the
// browser tests drive it.
package demo

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/degenerate/realtime"
	"github.com/degenerate/realtime/js"
)

//go:embed index.html
var indexHTML []byte

// Board limits.
const (
	MaxBoardItems = 50
	MaxItemLength = 200
)

// Store is what the demo's share data live in: realtime.MemoryManager or
// realtime.DiskManager.
type Store interface {
	realtime.Manager
	realtime.FunctionLookup
	Create(ctx context.Context, shareDataID string, state json.RawMessage, fns ...realtime.Function) error
	AddFunction(shareDataID string, fn realtime.Function) error
}

// Populate gives m the demo's share data, creating the items that do not
// exist yet and registering the functions of those that do (a DiskManager
// reopened after a restart keeps the data, and functions are code):
//
//   - "demo", state {"count":0}, with function "set" (the state becomes
//     proposedData, any JSON value) and "increment" (adds proposedData's
//     "by" to the state's "count");
//   - "board", state {"items":[]}, a shared list, with function "add"
//     (proposedData {"text": "..."} appends an item, keeping the last 50)
//     and "clear".
func Populate(ctx context.Context, m Store) error {
	items := []struct {
		id    string
		state string
		fns   []realtime.Function
	}{
		{"demo", `{"count":0}`, []realtime.Function{Set, Increment}},
		{"board", `{"items":[]}`, []realtime.Function{Add, Clear}},
	}
	for _, it := range items {
		err := m.Create(ctx, it.id, json.RawMessage(it.state), it.fns...)
		if errors.Is(err, realtime.ErrShareDataExists) {
			for _, fn := range it.fns {
				if err := m.AddFunction(it.id, fn); err != nil {
					return err
				}
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// NewManager returns an in-memory manager holding the demo's share data
// (see Populate).
func NewManager() *realtime.MemoryManager {
	m := realtime.NewMemoryManager()
	Populate(context.Background(), m)
	return m
}

// MaxSetBytes bounds the state set stores: a function that stores what a
// client sends must bound it, or any client fills the log, the replay
// window and every subscriber's screen up to the read limit.
const MaxSetBytes = 4096

// Set makes proposedData (at most MaxSetBytes) the state.
var Set = realtime.Function{ID: "set", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
	if len(p) > MaxSetBytes {
		return nil, errors.New("proposedData must be at most 4096 bytes")
	}
	return p, nil
}}

// Increment adds proposedData's "by" (a number) to the state's "count",
// keeping the state's other fields when it is an object.
var Increment = realtime.Function{ID: "increment", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
	var by struct {
		By *float64 `json:"by"`
	}
	if err := json.Unmarshal(p, &by); err != nil || by.By == nil {
		return nil, errors.New(`proposedData must be {"by": <number>}`)
	}
	state := map[string]any{}
	if err := json.Unmarshal(cur, &state); err != nil || state == nil {
		state = map[string]any{}
	}
	count, _ := state["count"].(float64)
	state["count"] = count + *by.By
	return json.Marshal(state)
}}

type board struct {
	Items []item `json:"items"`
}

type item struct {
	Text string `json:"text"`
}

// Add appends proposedData's "text" (1 to 200 characters) to the board.
var Add = realtime.Function{ID: "add", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
	var in item
	if err := json.Unmarshal(p, &in); err != nil {
		return nil, errors.New(`proposedData must be {"text": "..."}`)
	}
	in.Text = strings.TrimSpace(in.Text)
	if in.Text == "" || utf8.RuneCountInString(in.Text) > MaxItemLength {
		return nil, errors.New("text must be 1 to 200 characters")
	}
	var b board
	json.Unmarshal(cur, &b)
	b.Items = append(b.Items, in)
	if len(b.Items) > MaxBoardItems {
		b.Items = b.Items[len(b.Items)-MaxBoardItems:]
	}
	return json.Marshal(b)
}}

// Clear empties the board.
var Clear = realtime.Function{ID: "clear", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
	return json.RawMessage(`{"items":[]}`), nil
}}

// Handler serves the page at / and the realtime endpoint at /realtime,
// and, when srv reports readiness (as *realtime.Server does), a readiness
// probe at /ready: 200 while it takes connections, 503 from the moment it
// begins to shut down.
func Handler(srv http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/realtime", srv)
	if r, ok := srv.(interface{ Ready() bool }); ok {
		mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			if !r.Ready() {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
				return
			}
			io.WriteString(w, "ready\n")
		})
	}
	mux.HandleFunc("/realtime.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(js.Module)
	})
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(indexHTML)
	})
	return mux
}

// The demo's HTTP server limits (see NewHTTPServer).
const (
	// ReadHeaderTimeout bounds the reading of a request's headers, the
	// WebSocket opening handshake included: a client that sends its
	// handshake a byte at a time (slowloris) is cut off.
	ReadHeaderTimeout = 10 * time.Second
	// IdleTimeout closes keep-alive connections that carry no request,
	// so idle clients cannot hold file descriptors forever. WebSocket
	// connections are hijacked and not affected.
	IdleTimeout = 60 * time.Second
	// MaxHeaderBytes bounds a request's headers: room for a token of
	// the JWT bridge's default MaxTokenSize (8 KiB) in base64url and the usual
	// headers, far below net/http's default of 1 MiB.
	MaxHeaderBytes = 32 << 10
)

// NewHTTPServer returns the demo's http.Server for h. An http.Server's zero
// timeouts mean none at all, so every server reachable from outside sets
// them.
func NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// UseJWT turns on the JWT bridge in opts: tokens signed with the HS256
// secret by issuer are admitted, and both subscribe and propose go through
// the SHAREDATA audience rule, so a token that may not read a share data
// cannot change it either.
func UseJWT(opts *realtime.ServerOptions, secret []byte, issuer string) error {
	auth, err := realtime.NewJWTAuthenticator(realtime.JWTOptions{Authorities: []realtime.Authority{{
		Issuer: issuer, Keys: []realtime.VerificationKey{{Key: secret, Algorithms: []string{"HS256"}}},
	}}})
	if err != nil {
		return err
	}
	opts.Authenticate = auth
	opts.AuthorizeSubscribe = realtime.ShareDataAudienceAuthorizer
	opts.AuthorizePropose = realtime.ShareDataAudienceProposeAuthorizer
	return nil
}
