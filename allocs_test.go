//go:build !race

package realtime

import (
	"context"
	"io"
	"runtime/debug"
	"testing"
)

// TestSteadyStateAllocs checks, on the allocation counter rather than the
// clock, that a warm connection reads into a reused buffer and writes
// without allocating. (The race detector allocates on its own, so this file
// is built without it; test.sh runs it separately.)
func TestSteadyStateAllocs(t *testing.T) {
	ctx := context.Background()
	for _, client := range []bool{false, true} {
		for _, n := range []int{16, 1024, 64 << 10} {
			stream := frame(fText, !client, payloadOf(n))
			c := newConn(&memConn{r: &loopReader{b: stream}, w: io.Discard}, client, "", ConnOptions{}, nil)
			buf := make([]byte, 0, n)
			msg := payloadOf(n)
			c.Write(ctx, MessageText, msg) // warm the pools
			if a := testing.AllocsPerRun(100, func() { c.ReadInto(ctx, buf) }); a != 0 {
				t.Errorf("client=%v: reading %d bytes: %v allocs", client, n, a)
			}
			if a := testing.AllocsPerRun(100, func() { c.Write(ctx, MessageText, msg) }); a != 0 {
				t.Errorf("client=%v: writing %d bytes: %v allocs", client, n, a)
			}
		}
	}
}

// TestGatheredWriteAllocs: on a real TCP socket a server connection writes
// a message, and a batch of pre-encoded frames (a subscriber's queue), with
// no allocation once warm: the writev path keeps nothing per write.
func TestGatheredWriteAllocs(t *testing.T) {
	nc, stop := dialDiscard(t)
	defer stop()
	c := newConn(nc, false, "", ConnOptions{}, nil)
	ctx := context.Background()
	msg := payloadOf(1024)
	batch := make([][]byte, 100)
	for i := range batch {
		batch[i] = appendServerFrame(nil, payloadOf(200))
	}
	frames := make([][]byte, len(batch))
	c.Write(ctx, MessageText, msg) // warm the pools
	if a := testing.AllocsPerRun(100, func() { c.Write(ctx, MessageText, msg) }); a != 0 {
		t.Errorf("writing 1024 bytes: %v allocs", a)
	}
	if a := testing.AllocsPerRun(100, func() {
		copy(frames, batch) // the write consumes its slice
		if err := c.writeFrames(frames); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("writing a batch of %d frames: %v allocs", len(batch), a)
	}
}

// TestFanOutAllocs: once warm, fanning a frame out to 100 live
// subscribers allocates nothing, with no observer and with one that
// receives every write's report: nothing per subscriber per frame.
func TestFanOutAllocs(t *testing.T) {
	for _, observed := range []bool{false, true} {
		rig := newFanOutRig(100, observed)
		rig.warm()
		i := 0
		if a := allocsNoGC(200, func() { rig.send(i); i++ }); a != 0 {
			t.Errorf("observer %v: %v allocs per frame fanned out to 100 subscribers", observed, a)
		}
		rig.idle()
		if observed && rig.writes.Load() == 0 {
			t.Error("the observer saw no write with a latency")
		}
		rig.close()
	}
}

// allocsNoGC is testing.AllocsPerRun with the collector off: a collection
// empties the sync.Pools (the write buffers of these in-memory
// connections among them), and their refills, once per collection and not
// per frame, would be counted against whatever ran meanwhile.
func allocsNoGC(runs int, f func()) float64 {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	return testing.AllocsPerRun(runs, f)
}

// TestCompressedFanOutAllocs: a 2 KiB state frame fanned out to 200
// subscribers that negotiated permessage-deflate is compressed once per
// event, and fanning it out costs the same few allocations (the one
// compressed frame) with 10 subscribers as with 200: none per subscriber.
func TestCompressedFanOutAllocs(t *testing.T) {
	payload := benchStateFrame(2 << 10)
	rig := newFanOutRigWith(200, false, true, payload)
	rig.warm()
	before := compressions.Load()
	for i := 0; i < 100; i++ {
		rig.send(i)
	}
	if n := compressions.Load() - before; n != 100 {
		t.Fatalf("100 events to 200 subscribers compressed %d times", n)
	}
	rig.idle()
	rig.close()
	small := newFanOutRigWith(10, false, true, payload)
	small.warm()
	i := 0
	if a := testing.AllocsPerRun(200, func() { small.send(i); i++ }); a < 1 || a > 2 {
		t.Errorf("%v allocations per compressed event to 10 subscribers, want 1 or 2 (the compressed frame)", a)
	}
	small.idle()
	small.close()
}
