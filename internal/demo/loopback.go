package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"time"

	"github.com/degenerate/realtime"
)

// Loopback runs a server and a Go client in one process through the whole
// protocol (subscribe, propose, ping, replay after a reconnect, lifecycle,
// unsubscribe), writes what happens to out, and returns an error at the
// first step that did not behave as the protocol says.
func Loopback(ctx context.Context, out io.Writer) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	mgr := NewManager()
	opts := &realtime.ServerOptions{ResolveFunction: realtime.IDFunctionResolver(mgr), Logger: quiet}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	srv := realtime.NewServer(mgr, opts)
	hs := &http.Server{Handler: Handler(srv)}
	go hs.Serve(ln)
	defer func() {
		srv.Shutdown(context.Background())
		hs.Close()
	}()
	fmt.Fprintf(out, "server listening on %s\n", addr)

	client, err := realtime.NewClient("ws://"+addr+"/realtime", &realtime.ClientOptions{Logger: quiet,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	if err != nil {
		return err
	}
	defer client.Close()

	ok := func(format string, args ...any) { fmt.Fprintf(out, "ok    "+format+"\n", args...) }

	// 1. subscribe: the state frame comes first, with the snapshot.
	demo, _ := client.Subscribe("demo", nil)
	board, _ := client.Subscribe("board", nil)
	if err := client.Connect(ctx); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	st, err := next[*realtime.StateMessage](demo)
	if err != nil || string(st.CurrentState) != `{"count":0}` || st.LastTransactionID != "" {
		return fmt.Errorf("subscribe: want the state {\"count\":0}, got %v %v", describe(st), err)
	}
	ok("subscribe demo: state %s, cursor %q", st.CurrentState, st.LastTransactionID)
	if _, err := next[*realtime.StateMessage](board); err != nil {
		return fmt.Errorf("subscribe board: %w", err)
	}
	ok("subscribe board: state received")

	// 2. propose: accepted, and the transaction arrives live.
	txID, err := client.Propose(ctx, "demo", "increment", json.RawMessage(`{"by":2}`))
	if err != nil {
		return fmt.Errorf("propose increment: %w", err)
	}
	tx, err := next[*realtime.TransactionMessage](demo)
	if err != nil || tx.TransactionID != txID || tx.Replayed || string(tx.CurrentState) != `{"count":2}` {
		return fmt.Errorf("propose: want live transaction %s with count 2, got %v %v", txID, describe(tx), err)
	}
	ok("propose increment {\"by\":2}: accepted as %s, live frame with state %s", txID, tx.CurrentState)

	var pe *realtime.ProposalError
	if _, err := client.Propose(ctx, "demo", "launch", json.RawMessage(`{}`)); !errors.As(err, &pe) {
		return fmt.Errorf("propose to an unknown function: want a refusal, got %v", err)
	}
	ok("propose to an unknown function: refused (%s)", pe.Reason)

	// 3. ping.
	rtt, err := client.Ping(ctx)
	if err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	ok("ping: pong after %v", rtt.Round(time.Microsecond))

	// 4. replay after a reconnect: the server restarts (same manager, same
	// address); three transactions are applied while it is down.
	srv.Shutdown(ctx)
	hs.Close()
	srv = realtime.NewServer(mgr, opts)
	var missed []string
	for i := 0; i < 3; i++ {
		tx, err := mgr.Apply(ctx, "demo", Increment, json.RawMessage(`{"by":1}`))
		if err != nil {
			return err
		}
		missed = append(missed, tx.ID)
	}
	if ln, err = listenAgain(addr); err != nil {
		return err
	}
	hs = &http.Server{Handler: Handler(srv)}
	go hs.Serve(ln)
	ok("server restarted; 3 transactions applied while it was down")
	st, err = next[*realtime.StateMessage](demo)
	if err != nil || st.LastTransactionID != missed[2] || string(st.CurrentState) != `{"count":5}` {
		return fmt.Errorf("reconnect: want the state with count 5, got %v %v", describe(st), err)
	}
	for _, id := range missed {
		tx, err := next[*realtime.TransactionMessage](demo)
		if err != nil || tx.TransactionID != id || !tx.Replayed || tx.CurrentState != nil {
			return fmt.Errorf("replay: want replayed %s, got %v %v", id, describe(tx), err)
		}
	}
	end, err := next[*realtime.ReplayEndMessage](demo)
	if err != nil || end.LastTransactionID != missed[2] || end.Transactions != 3 {
		return fmt.Errorf("replay end: want the client's replay-end after %s, got %v %v", missed[2], describe(end), err)
	}
	ok("reconnected with since: state %s, then the 3 missed transactions replayed, then replay-end", st.CurrentState)
	if _, err := next[*realtime.StateMessage](board); err != nil {
		return fmt.Errorf("board after the reconnect: %w", err)
	}

	// 5. lifecycle: updated, then removed (terminal).
	if err := mgr.Update(context.Background(), "demo", json.RawMessage(`{"count":0,"note":"reset"}`)); err != nil {
		return err
	}
	lc, err := next[*realtime.LifecycleMessage](demo)
	if err != nil || lc.Event != realtime.LifecycleUpdated || string(lc.CurrentState) != `{"count":0,"note":"reset"}` {
		return fmt.Errorf("lifecycle updated: got %v %v", describe(lc), err)
	}
	ok("lifecycle updated: state %s", lc.CurrentState)
	mgr.Create(context.Background(), "scratch", json.RawMessage(`[]`))
	scratch, _ := client.Subscribe("scratch", nil)
	if _, err := next[*realtime.StateMessage](scratch); err != nil {
		return fmt.Errorf("subscribe scratch: %w", err)
	}
	mgr.Remove(context.Background(), "scratch")
	lc, err = next[*realtime.LifecycleMessage](scratch)
	if err != nil || lc.Event != realtime.LifecycleRemoved {
		return fmt.Errorf("lifecycle removed: got %v %v", describe(lc), err)
	}
	if _, open := <-scratch.Messages(); open || !errors.Is(scratch.Err(), realtime.ErrShareDataRemoved) {
		return fmt.Errorf("removed is terminal: the subscription should end, got %v", scratch.Err())
	}
	ok("lifecycle removed: the subscription ended (%v)", scratch.Err())

	// 6. unsubscribe: the server stops sending board frames.
	before := srv.Stats().Subscriptions
	board.Unsubscribe()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Subscriptions != before-1 {
		if time.Now().After(deadline) {
			return errors.New("unsubscribe: the server still counts the board subscription")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := mgr.Apply(ctx, "board", Add, json.RawMessage(`{"text":"after unsubscribe"}`)); err != nil {
		return err
	}
	ok("unsubscribe board: the server dropped the subscription (%d left)", srv.Stats().Subscriptions)

	if err := client.Close(); err != nil {
		return err
	}
	ok("client closed")
	return nil
}

// next waits up to 5 s for the subscription's next message, of type T.
func next[T realtime.ServerMessage](s *realtime.Subscription) (T, error) {
	var zero T
	select {
	case m, open := <-s.Messages():
		if !open {
			return zero, fmt.Errorf("subscription ended: %v", s.Err())
		}
		v, ok := m.(T)
		if !ok {
			return zero, fmt.Errorf("got %s, want %T", m.AppendJSON(nil), zero)
		}
		return v, nil
	case <-time.After(5 * time.Second):
		return zero, fmt.Errorf("no %T within 5 s", zero)
	}
}

func describe(m realtime.ServerMessage) string {
	if m == nil || reflect.ValueOf(m).IsNil() {
		return "nothing"
	}
	return string(m.AppendJSON(nil))
}

func listenAgain(addr string) (net.Listener, error) {
	var err error
	for i := 0; i < 100; i++ {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, err
}
