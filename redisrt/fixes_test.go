package redisrt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/degenerate/realtime"
)

// (a) Registry.Close returns while the Redis client is still open: the
// subscriber loop's Receive is unblocked by closing the pub/sub
// connection, not by its context alone.
func TestRegistryCloseWithClientOpen(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	reg := NewRegistry(rdb, Options{Prefix: uniquePrefix(t), Logger: quiet})
	reg.Attach(func(realtime.Event) {})
	done := make(chan struct{})
	go func() { reg.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Registry.Close did not return within 5 s with the Redis client open")
	}
}

// (b) Two instances appending to one window at nearly the same moment, in
// the wrong order (205, 207, 206, 208): the window stays one chain, so a
// replay across the break is refused rather than served out of order.
func TestReplayStoreKeepsOneChain(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	s := NewReplayStore(rdb, Options{Prefix: uniquePrefix(t), Logger: quiet})
	ctx := t.Context()
	rec := func(id, prev string) realtime.ReplayRecord {
		return realtime.ReplayRecord{TransactionID: id, PreviousTransactionID: prev, Message: []byte(`{"id":"` + id + `"}`)}
	}
	for _, r := range []realtime.ReplayRecord{rec("204", "203"), rec("205", "204"), rec("207", "206"), rec("206", "205"), rec("208", "207")} {
		if err := s.Append(ctx, "doc", r); err != nil {
			t.Fatal(err)
		}
	}
	raw, _ := rdb.LRange(ctx, s.key("doc"), 0, -1).Result()
	var ids []string
	for _, r := range raw {
		var x record
		json.Unmarshal([]byte(r), &x)
		ids = append(ids, x.ID)
	}
	for i := 1; i < len(raw); i++ {
		var a, b record
		json.Unmarshal([]byte(raw[i-1]), &a)
		json.Unmarshal([]byte(raw[i]), &b)
		if b.Prev != a.ID {
			t.Fatalf("the window is not one chain: %v", ids)
		}
	}
	if recs, err := s.Replay(ctx, "doc", "204", "208"); !errors.Is(err, realtime.ErrReplayCursorNotFound) {
		t.Fatalf("a replay across the break: %d records, %v; want ErrReplayCursorNotFound", len(recs), err)
	}
	// In order, the window is kept and replayed.
	for _, r := range []realtime.ReplayRecord{rec("209", "208"), rec("210", "209"), rec("210", "209")} {
		s.Append(ctx, "doc", r)
	}
	recs, err := s.Replay(ctx, "doc", "208", "210")
	if err != nil || len(recs) != 2 || recs[0].TransactionID != "209" || recs[1].TransactionID != "210" {
		t.Fatalf("in-order replay: %v %v", recs, err)
	}
}

// (c) While Redis is down, an Apply fails within its context, and holds no
// lock that another item's Apply waits for.
func TestApplyWhileRedisDown(t *testing.T) {
	m := newTestManager(t, uniquePrefix(t))
	for _, id := range []string{"a", "b"} {
		if err := m.Create(t.Context(), id, json.RawMessage(`{"count":0}`), increment); err != nil {
			t.Fatal(err)
		}
	}
	stopRedis()
	defer func() {
		if err := startRedis(); err != nil {
			t.Fatal(err)
		}
	}()
	errs := make(chan error, 2)
	start := time.Now()
	for _, id := range []string{"a", "b"} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := m.Apply(ctx, id, increment, json.RawMessage(`{"by":1}`))
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err == nil {
			t.Fatal("Apply succeeded with Redis down")
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("two Applies with 300 ms contexts took %v with Redis down", d)
	}
}

// (e) go-redis's own log lines go to Options.Logger, not to the standard
// logger.
func TestGoRedisLogsToOptionsLogger(t *testing.T) {
	var std bytes.Buffer
	log.SetOutput(&std)
	defer log.SetOutput(os.Stderr)
	var ours bytes.Buffer
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	NewReplayStore(rdb, Options{Prefix: uniquePrefix(t), Logger: slog.New(slog.NewTextHandler(&ours, nil))})
	defer NewReplayStore(rdb, Options{Logger: quiet})
	// go-redis logs that it truncates a sub-millisecond expiry.
	if err := rdb.Set(t.Context(), uniquePrefix(t), "x", 500*time.Microsecond).Err(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ours.String(), "truncating to 1ms") {
		t.Errorf("Options.Logger got %q", ours.String())
	}
	if std.Len() != 0 {
		t.Errorf("the standard logger got %q", std.String())
	}
}
