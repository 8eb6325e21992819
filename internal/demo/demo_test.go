package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/degenerate/realtime"
)

// TestLoopback runs the demo's -loopback walk: every step must behave.
func TestLoopback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := Loopback(ctx, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if n := strings.Count(out.String(), "\nok "); n != 11 {
		t.Fatalf("%d steps reported ok, want 11:\n%s", n, out.String())
	}
}

func TestFunctions(t *testing.T) {
	ctx := context.Background()
	m := NewManager()
	cases := []struct {
		fn       string
		id, data string
		want     string // state, or "error: ..." text
	}{
		{"increment", "demo", `{"by":2}`, `{"count":2}`},
		{"increment", "demo", `{"by":-0.5}`, `{"count":1.5}`},
		{"increment", "demo", `{"by":"x"}`, `error: proposedData must be`},
		{"set", "demo", `"hello"`, `"hello"`},
		{"increment", "demo", `{"by":1}`, `{"count":1}`},
		{"add", "board", `{"text":"  first  "}`, `{"items":[{"text":"first"}]}`},
		{"add", "board", `{"text":""}`, `error: text must be 1 to 200 characters`},
		{"add", "board", `{"text":"` + strings.Repeat("é", 201) + `"}`, `error: text must be 1 to 200 characters`},
		{"clear", "board", `null`, `{"items":[]}`},
	}
	for _, tc := range cases {
		fn, _ := m.Function(tc.id, tc.fn)
		_, err := m.Apply(ctx, tc.id, fn, json.RawMessage(tc.data))
		if strings.HasPrefix(tc.want, "error: ") {
			if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "error: ")) {
				t.Errorf("%s %s: got %v, want %s", tc.fn, tc.data, err, tc.want)
			}
			continue
		}
		snap, _ := m.Snapshot(ctx, tc.id)
		if err != nil || string(snap.State) != tc.want {
			t.Errorf("%s %s: state %s (%v), want %s", tc.fn, tc.data, snap.State, err, tc.want)
		}
	}
	add, _ := m.Function("board", "add")
	for i := 0; i < MaxBoardItems+5; i++ {
		m.Apply(ctx, "board", add, json.RawMessage(`{"text":"x"}`))
	}
	snap, _ := m.Snapshot(ctx, "board")
	var b board
	json.Unmarshal(snap.State, &b)
	if len(b.Items) != MaxBoardItems {
		t.Errorf("board holds %d items, want %d", len(b.Items), MaxBoardItems)
	}
}

// TestHTTPServerLimits: the demo's http.Server has the timeouts and
// header bound an exposed server needs (zero would mean none), and the
// header bound holds on a real connection.
func TestHTTPServerLimits(t *testing.T) {
	hs := NewHTTPServer(http.NotFoundHandler())
	if hs.ReadHeaderTimeout != 10*time.Second || hs.IdleTimeout != 60*time.Second || hs.MaxHeaderBytes != 32<<10 {
		t.Fatalf("ReadHeaderTimeout %v, IdleTimeout %v, MaxHeaderBytes %d", hs.ReadHeaderTimeout, hs.IdleTimeout, hs.MaxHeaderBytes)
	}
	// Headers past the bound get 431 rather than being buffered.
	srv := httptest.NewUnstartedServer(hs.Handler)
	srv.Config = hs
	srv.Start()
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d for 64 KiB of headers", resp.StatusCode)
	}
}

// TestUseJWT: the demo's JWT setup refuses a proposal to a share data the
// token does not grant, as it refuses the subscribe.
func TestUseJWT(t *testing.T) {
	secret := []byte("demo-test-secret")
	mgr := NewManager()
	opts := &realtime.ServerOptions{ResolveFunction: realtime.IDFunctionResolver(mgr), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := UseJWT(opts, secret, "demo-test"); err != nil {
		t.Fatal(err)
	}
	srv := realtime.NewServer(mgr, opts)
	hs := httptest.NewServer(Handler(srv))
	defer hs.Close()
	defer srv.Shutdown(context.Background())
	boardOnly, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": "demo-test", "aud": realtime.AudienceShareData, "shareDataIds": []string{"board"}, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString(secret)
	client, err := realtime.NewClient("ws"+strings.TrimPrefix(hs.URL, "http")+"/realtime", &realtime.ClientOptions{
		Header: http.Header{"Authorization": {"Bearer " + boardOnly}}})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = client.Propose(ctx, "demo", "set", json.RawMessage(`{"count":666}`))
	var pe *realtime.ProposalError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), `token does not grant share data "demo"`) {
		t.Fatalf("propose to demo with a board-only token: %v", err)
	}
	if _, err := client.Propose(ctx, "board", "add", json.RawMessage(`{"text":"hi"}`)); err != nil {
		t.Fatalf("propose to board: %v", err)
	}
	if snap, _ := mgr.Snapshot(ctx, "demo"); string(snap.State) != `{"count":0}` {
		t.Fatalf("demo is %s", snap.State)
	}
}

// TestReadyProbe: the demo's /ready answers 200 while the server takes
// connections and 503 once it has begun to shut down.
func TestReadyProbe(t *testing.T) {
	srv := realtime.NewServer(realtime.NewMemoryManager(), &realtime.ServerOptions{Logger: slog.New(slog.DiscardHandler)})
	hs := httptest.NewServer(Handler(srv))
	defer hs.Close()
	get := func() (int, string) {
		resp, err := http.Get(hs.URL + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := get(); code != http.StatusOK || body != "ready" {
		t.Fatalf("before Shutdown: %d %q", code, body)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code, body := get(); code != http.StatusServiceUnavailable || body != "shutting down" {
		t.Fatalf("after Shutdown: %d %q", code, body)
	}
}
