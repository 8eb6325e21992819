//go:build unix

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/degenerate/realtime"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestMetricsUnderTraffic runs the demo binary and scrapes its /metrics
// while real clients use it: two subscribers and a proposer (accepted,
// rejected and unresolved proposals), a subscriber that stops reading
// (it keeps sending pongs, so only its queue can close it: 4001), and a
// client that never answers a ping (closed by the heartbeat). Each counter
// and histogram moves by what the clients did, and the exposition passes
// promlint, the checks of promtool check metrics.
func TestMetricsUnderTraffic(t *testing.T) {
	p := startDemo(t, buildDemo(t), t.TempDir(), "-memory", "-heartbeat", "300ms", "-send-buffer", "65536",
		"-proposals-per-second", "-1", "-metrics-addr", "127.0.0.1:0") // the board is filled as fast as the proposer can
	url := "ws://" + p.addr + "/realtime"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The slow consumer: a 4 KiB receive buffer, subscribed to the board,
	// never reading; it sends a pong every 50 ms, so the heartbeat keeps
	// it and only its queue passing -send-buffer closes it.
	var raw net.Conn
	small := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	slow, _, err := realtime.Dial(ctx, url, &realtime.DialOptions{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := small.DialContext(ctx, network, addr)
		raw = nc
		return nc, err
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.CloseNow()
	if err := slow.Write(ctx, realtime.MessageText, (&realtime.SubscribeMessage{ShareDataID: "board"}).AppendJSON(nil)); err != nil {
		t.Fatal(err)
	}
	pongsDone := make(chan struct{})
	stopPongs := make(chan struct{})
	go func() {
		defer close(pongsDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopPongs:
				return
			case <-tick.C:
				// An unsolicited pong (RFC 6455 section 5.5.3): masked,
				// empty.
				if _, err := raw.Write([]byte{0x8A, 0x80, 1, 2, 3, 4}); err != nil {
					return
				}
			}
		}
	}()
	defer func() { close(stopPongs); <-pongsDone }()

	// The silent client: connected, never reads, never answers a ping.
	silent, _, err := realtime.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.CloseNow()

	// Two subscribers to "demo" and a proposer.
	var subs []*realtime.Subscription
	for range 2 {
		_, _, sub := count(t, p.addr)
		subs = append(subs, sub)
	}
	_, proposer, _ := count(t, p.addr) // subscribed too: three on "demo"
	const increments = 20
	for range increments {
		if _, err := proposer.Propose(ctx, "demo", "increment", json.RawMessage(`{"by":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := proposer.Propose(ctx, "demo", "increment", json.RawMessage(`"not an object"`)); err == nil {
		t.Fatal("a bad increment was accepted")
	}
	if _, err := proposer.Propose(ctx, "demo", "no-such-function", json.RawMessage(`1`)); err == nil {
		t.Fatal("an unknown function was accepted")
	}
	for i, sub := range subs {
		for k := range increments {
			select {
			case <-sub.Messages():
			case <-ctx.Done():
				t.Fatalf("subscriber %d: transaction %d never came", i, k)
			}
		}
	}

	// Board items of 200 characters until the slow consumer is closed. Its
	// connection ends at most the close timeout (5 s) after the server
	// decided: the close frame waits that long behind the blocked write
	// for a peer that does not read.
	item := json.RawMessage(`{"text":"` + strings.Repeat("x", 200) + `"}`)
	adds := 0
	deadline := time.Now().Add(30 * time.Second)
	for got := scrape(t, p.metrics); got[`realtime_connections_closed_total{cause="slow_consumer",code="4001"}`] == 0; got = scrape(t, p.metrics) {
		if time.Now().After(deadline) {
			t.Fatalf("the slow consumer still open after %d board items", adds)
		}
		for range 10 {
			if _, err := proposer.Propose(ctx, "board", "add", item); err != nil {
				t.Fatal(err)
			}
			adds++
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The heartbeat closes the silent client within two intervals.
	got := scrape(t, p.metrics)
	for deadline := time.Now().Add(10 * time.Second); got[`realtime_connections_closed_total{cause="heartbeat",code="1006"}`] == 0; got = scrape(t, p.metrics) {
		if time.Now().After(deadline) {
			t.Fatal("the heartbeat did not close the silent client")
		}
		time.Sleep(50 * time.Millisecond)
	}

	t.Logf("slow consumer closed after %d board items; %v frames, %v bytes written; %v latency samples, sum %.4f s",
		adds, got["realtime_frames_written_total"], got["realtime_written_bytes_total"],
		got["realtime_delivery_latency_seconds_count"], got["realtime_delivery_latency_seconds_sum"])
	for series, want := range map[string]float64{
		"realtime_connections":              3, // the three Go clients
		"realtime_connections_opened_total": 5,
		`realtime_connections_closed_total{cause="slow_consumer",code="4001"}`: 1,
		`realtime_connections_closed_total{cause="heartbeat",code="1006"}`:     1,
		"realtime_subscriptions":                                                  3,
		`realtime_subscribes_total{outcome="new"}`:                                4,
		`realtime_subscribes_total{outcome="recovered"}`:                          0,
		`realtime_proposals_total{function="increment",outcome="accepted"}`:       increments,
		`realtime_proposals_total{function="increment",outcome="rejected"}`:       1,
		`realtime_proposals_total{function="other",outcome="unresolved"}`:         1,
		`realtime_proposals_total{function="add",outcome="accepted"}`:             float64(adds),
		`realtime_proposal_duration_seconds_count{function="increment"}`:          increments + 1,
		`realtime_proposal_duration_seconds_count{function="add"}`:                float64(adds),
		`realtime_proposal_duration_seconds_bucket{function="increment",le="10"}`: increments + 1,
	} {
		if v, ok := got[series]; !ok || v != want {
			t.Errorf("%s = %v (present: %v), want %v", series, v, ok, want)
		}
	}
	// Frames: at least the three state frames, the 20 increments to three
	// subscribers, every proposal's reply and the board frames the slow
	// consumer took before it fell behind.
	frames, bytes := got["realtime_frames_written_total"], got["realtime_written_bytes_total"]
	if min := float64(3 + 3*increments + increments + 2 + adds); frames < min || bytes < frames*50 {
		t.Errorf("frames written %v (want at least %v), bytes %v", frames, min, bytes)
	}
	// Each write carrying a transaction is one latency sample: at least
	// one per subscriber for the increments, and never more than writes.
	lat, writes := got["realtime_delivery_latency_seconds_count"], got["realtime_write_batch_frames_count"]
	if lat < 3 || lat > writes || got["realtime_delivery_latency_seconds_sum"] <= 0 {
		t.Errorf("latency samples %v (sum %v), writes %v", lat, got["realtime_delivery_latency_seconds_sum"], writes)
	}
	if got["realtime_write_batch_frames_sum"] != frames {
		t.Errorf("frames per write sum to %v, frames written %v", got["realtime_write_batch_frames_sum"], frames)
	}
	if got[`realtime_delivery_latency_seconds_bucket{le="+Inf"}`] != lat {
		t.Errorf("latency +Inf bucket %v, count %v", got[`realtime_delivery_latency_seconds_bucket{le="+Inf"}`], lat)
	}
}

// scrape reads the demo's /metrics, lints it as promtool check metrics
// does, and returns each series (written name{label="value",...}, labels
// in the exposition's order) with its value; a histogram gives its _count,
// _sum and _bucket series.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d, %v", resp.StatusCode, err)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name, mf := range fams {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			series := func(suffix string, extra ...string) string {
				ls := append(append([]string(nil), labels...), extra...)
				if len(ls) == 0 {
					return name + suffix
				}
				return name + suffix + "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[series("")] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[series("")] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				h := m.GetHistogram()
				out[series("_count")] = float64(h.GetSampleCount())
				out[series("_sum")] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					le := strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)
					out[series("_bucket", `le="`+le+`"`)] = float64(b.GetCumulativeCount())
				}
				out[series("_bucket", `le="+Inf"`)] = float64(h.GetSampleCount())
			}
		}
	}
	return out
}
