//go:build unix

package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu           sync.Mutex
	opened       int
	ends         []ConnectionEnd
	subscribes   map[SubscribeOutcome]int
	unsubscribes int
	proposals    []ProposalReport
	writes       []WriteReport
	ended        chan ConnectionEnd
}

func newRecorder() *recorder {
	return &recorder{subscribes: map[SubscribeOutcome]int{}, ended: make(chan ConnectionEnd, 100)}
}

func (r *recorder) observer() Observer {
	return Observer{
		ConnectionOpened: func() { r.mu.Lock(); r.opened++; r.mu.Unlock() },
		ConnectionClosed: func(e ConnectionEnd) {
			r.mu.Lock()
			r.ends = append(r.ends, e)
			r.mu.Unlock()
			r.ended <- e
		},
		Subscribed:   func(o SubscribeOutcome) { r.mu.Lock(); r.subscribes[o]++; r.mu.Unlock() },
		Unsubscribed: func() { r.mu.Lock(); r.unsubscribes++; r.mu.Unlock() },
		Proposed:     func(p ProposalReport) { r.mu.Lock(); r.proposals = append(r.proposals, p); r.mu.Unlock() },
		Wrote:        func(w WriteReport) { r.mu.Lock(); r.writes = append(r.writes, w); r.mu.Unlock() },
	}
}

// nextEnd returns the next connection end reported.
func (r *recorder) nextEnd(t *testing.T) ConnectionEnd {
	t.Helper()
	select {
	case e := <-r.ended:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no connection end reported within 10 s")
	}
	return ConnectionEnd{}
}

func (r *recorder) count(o SubscribeOutcome) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.subscribes[o]
}

// TestObserverReports: the observer hears of every connection, subscribe
// outcome, proposal outcome and write, with the values a client saw.
func TestObserverReports(t *testing.T) {
	rec := newRecorder()
	rs := newRTServer(t, &ServerOptions{
		Observer:                      rec.observer(),
		MaxSubscriptionsPerConnection: 1,
		AuthorizeSubscribe: func(ctx context.Context, auth any, id string) error {
			if id == "other" {
				return errors.New("not yours")
			}
			return nil
		},
		AuthorizePropose: func(ctx context.Context, auth any, id, fn string) error {
			if fn == "set" {
				return errors.New("read only")
			}
			return nil
		},
	})
	a := dialRT(t, rs.url, nil)
	a.subscribe("doc") // new
	start := time.Now()
	a.send(&ProposeMessage{ShareDataID: "doc", FunctionID: "increment", ProposedData: json.RawMessage(`{"by":1}`), CorrelationID: "1"})
	tx := nextAs[*TransactionMessage](a)
	if r := nextAs[*ProposalResultMessage](a); !r.Accepted {
		t.Fatalf("proposal refused: %s", r.Error)
	}
	took := time.Since(start)
	for i, fn := range []string{"set", "nope", "fail"} { // forbidden, unresolved, rejected
		a.send(&ProposeMessage{ShareDataID: "doc", FunctionID: fn, ProposedData: json.RawMessage(`1`), CorrelationID: fmt.Sprint(i + 2)})
		if r := nextAs[*ProposalResultMessage](a); r.Accepted {
			t.Fatalf("proposal of %q accepted", fn)
		}
	}
	a.send(&SubscribeMessage{ShareDataID: "other"}) // forbidden
	nextAs[*ErrorMessage](a)
	a.send(&SubscribeMessage{ShareDataID: "third"}) // past the limit of 1
	if e := nextAs[*ErrorMessage](a); e.Code != CodeTooManySubscriptions {
		t.Fatalf("error %s", e.Code)
	}
	a.send(&SubscribeMessage{ShareDataID: "doc", Since: tx.TransactionID, HasSince: true}) // resubscribe: recovered
	nextAs[*StateMessage](a)

	b := dialRT(t, rs.url, nil)
	b.send(&SubscribeMessage{ShareDataID: "doc", Since: "not-a-transaction", HasSince: true})
	nextAs[*StateMessage](b)
	if e := nextAs[*ErrorMessage](b); e.Code != CodeReplayCursorNotFound {
		t.Fatalf("error %s", e.Code)
	}
	unknown := dialRT(t, rs.url, nil)
	unknown.send(&SubscribeMessage{ShareDataID: "missing"})
	nextAs[*ErrorMessage](unknown)
	unknown.expectClosed(CloseUnknownShareData, "")
	if e := rec.nextEnd(t); e != (ConnectionEnd{Code: CloseUnknownShareData, Cause: CauseProtocol}) {
		t.Fatalf("unknown share data: reported %+v", e)
	}
	a.c.Close(CloseNormalClosure, "bye")
	if e := rec.nextEnd(t); e != (ConnectionEnd{Code: CloseNormalClosure, Remote: true, Cause: CausePeer}) {
		t.Fatalf("client's close: reported %+v", e)
	}
	if n, err := rs.Disconnect(func(any) bool { return true }, 4010, "revoked"); n != 1 || err != nil {
		t.Fatalf("Disconnect: %d, %v", n, err)
	}
	b.expectClosed(4010, "revoked")
	if e := rec.nextEnd(t); e != (ConnectionEnd{Code: 4010, Cause: CauseDisconnect}) {
		t.Fatalf("Disconnect: reported %+v", e)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := map[SubscribeOutcome]int{SubscribeNew: 1, SubscribeForbidden: 1, SubscribeLimit: 1, SubscribeRecovered: 1,
		SubscribeCursorNotFound: 1, SubscribeUnknown: 1}
	if fmt.Sprint(rec.subscribes) != fmt.Sprint(want) {
		t.Errorf("subscribes %v, want %v", rec.subscribes, want)
	}
	if rec.opened != 3 || rec.unsubscribes != 3 { // a's two (one a resubscribe) and b's
		t.Errorf("opened %d, unsubscribed %d; want 3 and 3", rec.opened, rec.unsubscribes)
	}
	var got []string
	for _, p := range rec.proposals {
		got = append(got, p.FunctionID+" "+string(p.Outcome))
		if p.Duration <= 0 || p.Duration > took && p.Outcome == ProposalAccepted {
			t.Errorf("proposal %s took %v; the client waited %v", p.FunctionID, p.Duration, took)
		}
	}
	if s := strings.Join(got, ", "); s != "increment accepted, set forbidden, nope unresolved, fail rejected" {
		t.Errorf("proposals: %s", s)
	}
	// The transaction frame was written to a in a write of its own (the
	// client waited for it), with a latency within the client's wait.
	latencies, frames, bytes := 0, 0, 0
	for _, w := range rec.writes {
		frames += w.Frames
		bytes += w.Bytes
		if w.Latency > 0 {
			latencies++
			if w.Latency > took {
				t.Errorf("write latency %v, longer than the client's wait of %v", w.Latency, took)
			}
		}
	}
	if latencies != 1 {
		t.Errorf("%d writes with a latency, want 1 (one transaction)", latencies)
	}
	if st := rs.Stats(); uint64(frames) != st.FramesSent || uint64(bytes) != st.BytesSent {
		t.Errorf("writes reported %d frames, %d bytes; stats say %d, %d", frames, bytes, st.FramesSent, st.BytesSent)
	}
}

// TestObserverCloseCauses: a slow consumer, a connection that does not
// answer pings and one closed by Shutdown are reported with their codes
// and causes.
func TestObserverCloseCauses(t *testing.T) {
	rec := newRecorder()
	// No heartbeat here: it would close the slow consumer first, as its
	// pings wait behind the blocked write.
	rs := newRTServer(t, &ServerOptions{Observer: rec.observer(), MaxBufferedBytes: 64 << 10, HeartbeatInterval: -1})
	slow := dialSlowRaw(t, rs)
	set, _ := rs.mgr.Function("doc", "set")
	big := json.RawMessage(`"` + strings.Repeat("x", 8<<10) + `"`)
	for rs.Stats().SlowConsumerCloses == 0 {
		if _, err := rs.mgr.Apply(context.Background(), "doc", set, big); err != nil {
			t.Fatal(err)
		}
	}
	go func() { // read, and answer the close frame, so the handshake ends
		for {
			f, err := slow.readFrame()
			if err != nil {
				return
			}
			if f.op() == opClose {
				slow.nc.Write(frame(fClose, true, f.payload))
			}
		}
	}()
	if e := rec.nextEnd(t); e.Code != CloseFellBehind || e.Cause != CauseSlowConsumer {
		t.Fatalf("slow consumer: reported %+v", e)
	}

	rs = newRTServer(t, &ServerOptions{Observer: rec.observer(), HeartbeatInterval: 100 * time.Millisecond})
	silent := connectRaw(t, rs.hs) // reads, never answers a ping
	for {
		if _, err := silent.readFrame(); err != nil {
			break
		}
	}
	if e := rec.nextEnd(t); e != (ConnectionEnd{Code: CloseAbnormalClosure, Cause: CauseHeartbeat}) {
		t.Fatalf("heartbeat: reported %+v", e)
	}

	c := dialRT(t, rs.url, nil)
	c.subscribe("doc")
	if err := rs.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.expectClosed(CloseGoingAway, "")
	if e := rec.nextEnd(t); e.Code != CloseGoingAway || e.Cause != CauseShutdown {
		t.Fatalf("shutdown: reported %+v", e)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.opened != 3 || len(rec.ends) != 3 || rec.unsubscribes != 2 {
		t.Fatalf("opened %d, ended %d, unsubscribed %d; want 3, 3, 2", rec.opened, len(rec.ends), rec.unsubscribes)
	}
}
