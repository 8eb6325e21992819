package realtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestFunctionPanic: a function that panics costs its proposer a refusal
// with code internal-error and a fixed text (not the panic's), the server
// logs it at Error with the stack, the connection and the server go on
// serving, and a keyed proposal's key is not remembered as refused.
func TestFunctionPanic(t *testing.T) {
	for _, kind := range []string{"memory", "disk"} {
		t.Run(kind, func(t *testing.T) {
			var logs syncBuffer
			var mgr interface {
				Manager
				FunctionLookup
				AddFunction(string, Function) error
				Create(context.Context, string, json.RawMessage, ...Function) error
			}
			if kind == "memory" {
				mgr = NewMemoryManager()
			} else {
				dm, err := OpenDiskManager(t.TempDir(), &DiskManagerOptions{Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					t.Fatal(err)
				}
				defer dm.Close()
				mgr = dm
			}
			if err := mgr.Create(context.Background(), "doc", json.RawMessage(`{"count":0}`), testFunctions...); err != nil {
				t.Fatal(err)
			}
			boom := Function{ID: "boom", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
				panic("secret-internal-detail")
			}}
			mgr.AddFunction("doc", boom)
			srv := NewServer(mgr, &ServerOptions{ResolveFunction: IDFunctionResolver(mgr),
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			url := serveRT(t, srv)
			c := dialRT(t, url, nil)
			for _, key := range []string{"", "k-1"} {
				c.send(&ProposeMessage{ShareDataID: "doc", FunctionID: "boom", ProposedData: json.RawMessage(`1`), CorrelationID: "c", IdempotencyKey: key})
				res := nextAs[*ProposalResultMessage](c)
				if res.Accepted || res.Code != CodeInternal || res.Error != "internal error" {
					t.Fatalf("a panicking function's result: %s", res.AppendJSON(nil))
				}
			}
			log := logs.String()
			if !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "secret-internal-detail") ||
				!strings.Contains(log, "panic_test.go") || !strings.Contains(log, "function_id=boom") {
				t.Fatalf("the log does not say what panicked where:\n%s", log)
			}
			// The key was not remembered as refused: the same key with a
			// function that works now applies.
			c.send(&ProposeMessage{ShareDataID: "doc", FunctionID: "increment", ProposedData: json.RawMessage(`{"by":1}`),
				CorrelationID: "d", IdempotencyKey: "k-1", Retry: true})
			if res := nextAs[*ProposalResultMessage](c); !res.Accepted {
				t.Fatalf("after the panic: %s", res.AppendJSON(nil))
			}
		})
	}
}

// TestFunctionCallRecovers: Function.Call returns a panic as a
// *PanicError with the function's id and the stack.
func TestFunctionCallRecovers(t *testing.T) {
	f := Function{ID: "f", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		var m map[string]int
		m["x"] = 1 // a nil map: a runtime panic
		return nil, nil
	}}
	_, err := f.Call(context.Background(), nil, nil)
	var pe *PanicError
	if !errors.Is(err, ErrFunctionPanicked) || !errors.As(err, &pe) || pe.FunctionID != "f" || !bytes.Contains(pe.Stack, []byte("panic_test.go")) {
		t.Fatalf("Call of a panicking function: %v", err)
	}
}

// serveRT serves srv over HTTP until the test ends and returns its
// WebSocket URL.
func serveRT(t *testing.T, srv *Server) string {
	t.Helper()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		hs.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}
