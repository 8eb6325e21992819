package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
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
