package realtime

import (
	"context"
	"encoding/json"
	"runtime"
	"testing"
	"time"
)

// TestCursorAfterEveryMessage: an application that saves the cursor after
// each message it handles, under load (transactions arrive faster than it
// reads), then resumes from what it saved, receives exactly the next
// transaction: CursorAfter(m) is the point after m, and Cursor never names
// a message the reader has not taken (it named the next one queued, so a
// saved cursor skipped a transaction).
func TestCursorAfterEveryMessage(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{ReplayBufferSize: 1000})
	inc, _ := rs.mgr.Function("doc", "increment")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _ := newTestClient(t, rs.url, ClientOptions{})
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe("doc", nil)
	if err != nil {
		t.Fatal(err)
	}
	const total = 400
	produce := func() {
		for i := 0; i < total; i++ {
			if _, err := rs.mgr.Apply(context.Background(), "doc", inc, json.RawMessage(`{"by":1}`)); err != nil {
				return
			}
		}
	}
	var saved string
	var hasSaved bool
	ahead := 0
	seen := 0
	for seen < total {
		var m ServerMessage
		select {
		case m = <-sub.Messages():
		case <-ctx.Done():
			t.Fatalf("%d of %d transactions came", seen, total)
		}
		runtime.Gosched() // handling takes a moment: the next message is queued meanwhile
		before := saved
		cur, ok := sub.CursorAfter(m)
		switch m := m.(type) {
		case *StateMessage:
			if !ok || cur != m.LastTransactionID {
				t.Fatalf("after the state: %q %v, want %q", cur, ok, m.LastTransactionID)
			}
			go produce() // once subscribed, so every transaction comes live
		case *TransactionMessage:
			seen++
			if !ok || cur != m.TransactionID {
				t.Fatalf("after transaction %s: %q %v", m.TransactionID, cur, ok)
			}
		}
		saved, hasSaved = cur, ok
		// Cursor is at most as far as the message in hand.
		if c, _ := sub.Cursor(); c != saved && c != before {
			ahead++
		}
		if seen == total/2 {
			break
		}
	}
	if ahead > 0 {
		t.Errorf("Cursor named a message not yet taken %d times", ahead)
	}
	if !hasSaved {
		t.Fatal("no cursor saved")
	}
	// Resume from the saved cursor on another client: the first
	// transaction is the one after it.
	c2, _ := newTestClient(t, rs.url, ClientOptions{})
	if err := c2.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	sub2, err := c2.Subscribe("doc", &SubscribeOptions{Since: saved, HasSince: true})
	if err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case m := <-sub2.Messages():
			switch m := m.(type) {
			case *TransactionMessage:
				if m.PreviousTransactionID != saved {
					t.Fatalf("resumed at %s (after %s), want right after the saved cursor %s", m.TransactionID, m.PreviousTransactionID, saved)
				}
				return
			case *ErrorMessage:
				t.Fatalf("resume: %s", m.AppendJSON(nil))
			}
		case <-ctx.Done():
			t.Fatal("no transaction after the resume")
		}
	}
}

// TestCursorAfterUnknownMessage: a message that did not come from the
// subscription has no cursor.
func TestCursorAfterUnknownMessage(t *testing.T) {
	c, err := NewClient("ws://127.0.0.1:1/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sub, _ := c.Subscribe("doc", nil)
	if cur, ok := sub.CursorAfter(&TransactionMessage{TransactionID: "x"}); ok || cur != "" {
		t.Fatalf("CursorAfter of a foreign message: %q %v", cur, ok)
	}
}
