package realtime

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

var benchSizes = []int{16, 1024, 64 << 10}

// BenchmarkWrite measures writing one message per op. "server" frames are
// unmasked and go out by writev on TCP; "client" frames are copied into a
// pooled buffer and masked.
func BenchmarkWrite(b *testing.B) {
	for _, side := range []string{"server", "client"} {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/%d", side, n), func(b *testing.B) {
				c := newConn(&memConn{r: eofReader{}, w: io.Discard}, side == "client", "", ConnOptions{}, nil)
				msg := payloadOf(n)
				ctx := context.Background()
				b.SetBytes(int64(n))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := c.Write(ctx, MessageBinary, msg); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkWriteTCP writes server frames to a real loopback TCP
// connection, through the writev path, with a goroutine discarding them.
func BenchmarkWriteTCP(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			nc, stop := dialDiscard(b)
			defer stop()
			c := newConn(nc, false, "", ConnOptions{}, nil)
			msg := payloadOf(n)
			ctx := context.Background()
			b.SetBytes(int64(n))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.Write(ctx, MessageBinary, msg); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
		})
	}
}

// BenchmarkRead measures reading one message per op into a reused buffer:
// masked client frames on a server connection, and unmasked server frames
// on a client connection.
func BenchmarkRead(b *testing.B) {
	for _, side := range []string{"server", "client"} {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/%d", side, n), func(b *testing.B) {
				client := side == "client"
				typ := byte(fBinary)
				if n == 16 {
					typ = fText // small text: the UTF-8 check is included
				}
				stream := frame(typ, !client, payloadOf(n))
				c := newConn(&memConn{r: &loopReader{b: stream}, w: io.Discard}, client, "", ConnOptions{ReadLimit: 1 << 20}, nil)
				buf := make([]byte, 0, n)
				ctx := context.Background()
				b.SetBytes(int64(n))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					_, msg, err := c.ReadInto(ctx, buf)
					if err != nil || len(msg) != n {
						b.Fatal(err, len(msg))
					}
				}
			})
		}
	}
}

// BenchmarkMask measures masking throughput, word at a time, against the
// byte-at-a-time loop it replaces.
func BenchmarkMask(b *testing.B) {
	for _, n := range benchSizes {
		p := payloadOf(n)
		b.Run(fmt.Sprint("word/", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				maskBytes(0x12345678, i&3, p)
			}
		})
		b.Run(fmt.Sprint("bytewise/", n), func(b *testing.B) {
			key := [4]byte{0x12, 0x34, 0x56, 0x78}
			b.SetBytes(int64(n))
			for i := 0; i < b.N; i++ {
				for j := range p {
					p[j] ^= key[j&3]
				}
			}
		})
	}
}

// BenchmarkUTF8 measures the incremental validator on ASCII and on
// multi-byte text.
func BenchmarkUTF8(b *testing.B) {
	for _, s := range []struct{ name, text string }{{"ascii", string(payloadOf(1024))}, {"greek", string(make([]byte, 0)) + repeat("κόσμε", 100)}} {
		b.Run(s.name, func(b *testing.B) {
			p := []byte(s.text)
			b.SetBytes(int64(len(p)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if !validUTF8(p) {
					b.Fatal("invalid")
				}
			}
		})
	}
}

func repeat(s string, n int) string {
	out := ""
	for i := 0; i < n; i++ {
		out += s
	}
	return out
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// BenchmarkDecodeClient measures decoding each client message type.
func BenchmarkDecodeClient(b *testing.B) {
	for _, name := range []string{"subscribe since", "unsubscribe", "propose", "ping"} {
		in := []byte(validClient[name])
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := DecodeClientMessage(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEncodeTransaction measures encoding a live transaction frame
// into a reused buffer.
func BenchmarkEncodeTransaction(b *testing.B) {
	m := &TransactionMessage{ShareDataID: "doc-1", TransactionID: "01J9Z3K4X5", PreviousTransactionID: "01J9Z3K4X4",
		FunctionID: "increment", ProposedData: []byte(`{"by":1}`), CurrentState: []byte(`{"count":42,"title":"shared"}`)}
	buf := m.AppendJSON(nil)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = m.AppendJSON(buf[:0])
	}
}

// BenchmarkDecodeProposeEncodingJSON is a yardstick: encoding/json
// unmarshalling the same propose message into a struct, with no validation.
func BenchmarkDecodeProposeEncodingJSON(b *testing.B) {
	in := []byte(validClient["propose"])
	var m struct {
		V             int             `json:"v"`
		Type          string          `json:"type"`
		ShareDataID   string          `json:"shareDataId"`
		FunctionID    string          `json:"functionId"`
		ProposedData  json.RawMessage `json:"proposedData"`
		CorrelationID string          `json:"correlationId"`
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := json.Unmarshal(in, &m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTopicFanOut measures the fan-out alone: one pre-encoded frame
// queued for 1,000 subscribed sessions whose connections discard what they
// are sent, with no observer and with one that counts every report (as
// promrt's collector does). allocs/op is per frame fanned out to all 1,000;
// it is 0 once warm either way: nothing is allocated per subscriber per
// delivered frame (TestFanOutAllocs checks it).
func BenchmarkTopicFanOut(b *testing.B) {
	const subs = 1000
	for _, observed := range []bool{false, true} {
		b.Run("observer="+strconv.FormatBool(observed), func(b *testing.B) {
			rig := newFanOutRig(subs, observed)
			defer rig.close()
			rig.warm()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rig.send(i)
			}
			rig.idle()
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/subs, "ns/delivery")
		})
	}
}

// fanOutRig is a topic with live subscribers on sessions whose
// connections discard what they are sent.
type fanOutRig struct {
	srv      *Server
	t        *topic
	sessions []*session
	frame    []byte
	version  uint64
	writes   atomic.Int64 // reports to the observer, when there is one
}

func newFanOutRig(subs int, observed bool) *fanOutRig {
	return newFanOutRigWith(subs, observed, false, validServerFrame())
}

// newFanOutRigWith is newFanOutRig with every connection negotiating
// permessage-deflate or none, fanning out payload.
func newFanOutRigWith(subs int, observed, deflate bool, payload []byte) *fanOutRig {
	rig := &fanOutRig{t: &topic{id: "doc"}, frame: appendServerFrame(nil, payload)}
	opts := &ServerOptions{HeartbeatInterval: -1, MaxBufferedBytes: 64 << 20, Logger: quietLogger}
	if observed {
		opts.Observer.Wrote = func(r WriteReport) {
			if r.Frames > 0 && r.Latency > 0 {
				rig.writes.Add(1)
			}
		}
	}
	rig.srv = NewServer(NewMemoryManager(), opts)
	rig.sessions = make([]*session, subs)
	for i := range rig.sessions {
		c := newConn(&memConn{r: eofReader{}, w: io.Discard}, false, "", ConnOptions{}, nil)
		c.deflate = deflate
		// Queues as a warm connection has them: room for the 64 frames
		// send queues between waits, whichever of the two slices the
		// writer alternates between holds them (growing them is a
		// warm-up cost, which the timing of a short warm-up would leave
		// to chance).
		s := &session{srv: rig.srv, conn: c, ctx: context.Background(), queue: make([][]byte, 0, 64), spare: make([][]byte, 0, 64)}
		s.writeFn = s.writeLoop
		rig.sessions[i] = s
		rig.t.add(&subscriber{sess: s, id: rig.t.id, topic: rig.t, state: subLive})
	}
	return rig
}

// send fans one frame out, as the hub does for an event it received now,
// and every 64 frames waits for the writers to finish, so queues stay
// short as they do when clients keep up.
func (rig *fanOutRig) send(i int) {
	rig.version++
	var at int64
	if rig.srv.hub.stampEvents {
		at = stamp()
	}
	rig.t.fanOut(heldFrame{version: rig.version, frame: rig.frame, at: at}, 64<<20)
	if i%64 == 63 {
		rig.idle()
	}
}

// warm grows the queues and the writers' goroutines to what send needs.
func (rig *fanOutRig) warm() {
	for i := 0; i < 2000; i++ {
		rig.send(i)
	}
	rig.idle()
}

// idle waits until no writer runs.
func (rig *fanOutRig) idle() {
	for _, s := range rig.sessions {
		for {
			s.mu.Lock()
			w := s.writing
			s.mu.Unlock()
			if !w {
				break
			}
			runtime.Gosched()
		}
	}
}

func (rig *fanOutRig) close() { rig.srv.Shutdown(context.Background()) }

func validServerFrame() []byte { return []byte(validServer["transaction"]) }

// benchStateFrame is the payload of a transaction frame whose state is
// about n bytes of JSON, a board of short items as the demo's: what
// permessage-deflate meets in practice.
func benchStateFrame(n int) []byte {
	var st strings.Builder
	st.WriteString(`{"items":[`)
	for i := 0; st.Len() < n-40; i++ {
		if i > 0 {
			st.WriteByte(',')
		}
		fmt.Fprintf(&st, `{"id":%d,"text":"item number %d","done":%v}`, i, i*7919%1000, i%3 == 0)
	}
	st.WriteString(`]}`)
	return (&TransactionMessage{ShareDataID: "board", TransactionID: "01J9Z3K4X5-000123", PreviousTransactionID: "01J9Z3K4X5-000122",
		FunctionID: "add", ProposedData: json.RawMessage(`{"text":"item"}`), CurrentState: json.RawMessage(st.String())}).AppendJSON(nil)
}
