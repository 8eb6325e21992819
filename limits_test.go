package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestReplayBudget: the bytes replayed to one connection are bounded
// (ReplayBytesPerMinute): a client that subscribes with since over and
// over gets whole replays while its budget lasts, then the state frame and
// replay-cursor-not-found with no replay, as when its cursor has left the
// window. Each subscribe is a few bytes; each replay here is 100 KB.
func TestReplayBudget(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{ReplayBytesPerMinute: 150 << 10})
	set, _ := rs.mgr.Function("doc", "set")
	var first string
	for i := 0; i < 100; i++ {
		tx, err := rs.mgr.Apply(context.Background(), "doc", set, json.RawMessage(`"`+strings.Repeat("x", 1000)+`"`))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = tx.ID
		}
	}
	c := dialRT(t, rs.url, nil)
	sub := &SubscribeMessage{ShareDataID: "doc", Since: first, HasSince: true}
	replayed := func() (int, *ErrorMessage) {
		t.Helper()
		c.send(sub)
		nextAs[*StateMessage](c)
		n := 0
		for {
			switch m := c.next().(type) {
			case *TransactionMessage:
				n++
				if n == 99 {
					return n, nil
				}
			case *ErrorMessage:
				return n, m
			default:
				t.Fatalf("got %s", m.AppendJSON(nil))
			}
		}
	}
	// 150 KiB: the first replay (about 110 KB) is whole, the second starts
	// with budget left and is whole too (a replay is never cut), the third
	// finds the budget spent.
	for i := 0; i < 2; i++ {
		if n, e := replayed(); n != 99 || e != nil {
			t.Fatalf("replay %d: %d transactions, error %v", i+1, n, e)
		}
	}
	n, e := replayed()
	if n != 0 || e == nil || e.Code != CodeReplayCursorNotFound || !strings.Contains(e.Message, "replay budget") {
		t.Fatalf("third replay: %d transactions, error %+v; want none and replay-cursor-not-found", n, e)
	}
	// A subscribe without since is not a replay: still served.
	c.send(&SubscribeMessage{ShareDataID: "other"})
	if st := nextAs[*StateMessage](c); st.ShareDataID != "other" {
		t.Fatalf("state of %q", st.ShareDataID)
	}
}

// TestProposalRate: one connection's proposals are bounded
// (ProposalsPerSecond); past it a proposal is answered rate-limited,
// nothing runs, and its key is not remembered, so the same key sent
// again later is applied. Another connection is not affected.
func TestProposalRate(t *testing.T) {
	rs := newRTServer(t, &ServerOptions{ProposalsPerSecond: 3})
	c := dialRT(t, rs.url, nil)
	accepted, limited := 0, 0
	var limitedKey string
	for i := 0; i < 12; i++ {
		key := fmt.Sprint("k", i)
		c.send(&ProposeMessage{ShareDataID: "doc", FunctionID: "increment", ProposedData: json.RawMessage(`{"by":1}`),
			CorrelationID: key, IdempotencyKey: key})
		res := nextAs[*ProposalResultMessage](c)
		switch {
		case res.Accepted:
			accepted++
		case res.Code == CodeRateLimited && strings.Contains(res.Error, "at most 3 per second"):
			limited++
			limitedKey = key
		default:
			t.Fatalf("result %s", res.AppendJSON(nil))
		}
	}
	if accepted < 3 || limited == 0 {
		t.Fatalf("%d accepted, %d rate-limited of 12 sent at once with a rate of 3/s", accepted, limited)
	}
	if snap, _ := rs.mgr.Snapshot(context.Background(), "doc"); string(snap.State) != fmt.Sprintf(`{"count":%d}`, accepted) {
		t.Fatalf("state %s after %d accepted", snap.State, accepted)
	}
	// Another connection has its own budget; the refused key, sent again
	// there, is applied (it was not remembered as refused).
	other := dialRT(t, rs.url, nil)
	other.send(&ProposeMessage{ShareDataID: "doc", FunctionID: "increment", ProposedData: json.RawMessage(`{"by":1}`),
		CorrelationID: "again", IdempotencyKey: limitedKey, Retry: true})
	if res := nextAs[*ProposalResultMessage](other); !res.Accepted {
		t.Fatalf("the rate-limited key sent again: %s", res.AppendJSON(nil))
	}

	// The Go client reports the code.
	cl, err := NewClient(rs.url, &ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	var pe *ProposalError
	for i := 0; i < 20; i++ {
		if _, err = cl.Propose(context.Background(), "doc", "increment", json.RawMessage(`{"by":1}`)); err != nil {
			break
		}
	}
	if !errors.As(err, &pe) || pe.Code != CodeRateLimited {
		t.Fatalf("the Go client's error %v, want a ProposalError with CodeRateLimited", err)
	}
}
