package realtime

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// The crafted deflate streams of the inflate attacks: messages that cost
// the reader far more than their bytes.

// bitWriter writes a deflate stream, least significant bit first.
type bitWriter struct {
	b []byte
	n uint
}

func (w *bitWriter) bits(v uint32, k uint) {
	for i := uint(0); i < k; i++ {
		if w.n%8 == 0 {
			w.b = append(w.b, 0)
		}
		if v>>i&1 == 1 {
			w.b[len(w.b)-1] |= 1 << (w.n % 8)
		}
		w.n++
	}
}

// code writes a Huffman code, most significant bit first.
func (w *bitWriter) code(c uint32, k uint) {
	for i := int(k) - 1; i >= 0; i-- {
		w.bits(c>>uint(i)&1, 1)
	}
}

// emptyDynamicBlock writes a dynamic-Huffman block with no data: the
// reader builds its code tables (the costly part) for nothing.
func (w *bitWriter) emptyDynamicBlock() {
	w.bits(0, 1)  // not final
	w.bits(2, 2)  // dynamic Huffman
	w.bits(0, 5)  // 257 literal/length codes
	w.bits(0, 5)  // 1 distance code
	w.bits(14, 4) // 18 code length codes
	order := []int{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
	lens := map[int]uint32{18: 1, 0: 2, 1: 2}
	for _, s := range order[:18] {
		w.bits(lens[s], 3)
	}
	w.code(0, 1) // 18: 138 zeros
	w.bits(127, 7)
	w.code(0, 1) // 18: 118 zeros
	w.bits(107, 7)
	w.code(3, 2) // 1: end of block has a 1-bit code
	w.code(2, 2) // 0: no distance code
	w.code(0, 1) // end of block
}

// blocksWithOutputMessage is empty dynamic blocks each followed by a
// fixed-Huffman block of one literal and one match (259 bytes out of 4):
// the form of the block attack that the inflate budget lets through (it
// inflates about 18 times, and to more than it takes).
func blocksWithOutputMessage() []byte {
	var w bitWriter
	for len(w.b) < 4000 {
		w.emptyDynamicBlock()
		w.bits(0, 1)       // not final
		w.bits(1, 2)       // fixed Huffman
		w.code(0x30+97, 8) // literal 'a'
		w.code(0xc0+5, 8)  // length 258 (symbol 285)
		w.code(0, 5)       // distance 1
		w.code(0, 7)       // end of block
	}
	w.bits(0, 3)
	for w.n%8 != 0 {
		w.bits(0, 1)
	}
	return w.b
}

// emptyBlocksMessage is a compressed message of n bytes of empty dynamic
// blocks, ending as a sender's flushed message does.
func emptyBlocksMessage(n int) []byte {
	var w bitWriter
	for len(w.b) < n || w.n%8 != 0 {
		w.emptyDynamicBlock()
	}
	w.bits(0, 3) // the empty stored block whose 00 00 ff ff the sender removed
	for w.n%8 != 0 {
		w.bits(0, 1)
	}
	return w.b
}

// compressMessage compresses p as a sender does (flushed, without the
// final 00 00 ff ff).
func compressMessage(p []byte) []byte {
	var zb bytes.Buffer
	fw, _ := flate.NewWriter(&zb, flate.BestCompression)
	fw.Write(p)
	fw.Flush()
	return zb.Bytes()[:zb.Len()-4]
}

// ratioMessage returns a text message of about size bytes that
// compresses ratio times or a little less, and its compressed form:
// random letters, each followed by a run of one letter.
func ratioMessage(size, ratio int) ([]byte, []byte) {
	key := [2]int{size, ratio}
	if m, ok := ratioMessages.Load(key); ok {
		pz := m.([2][]byte)
		return pz[0], pz[1]
	}
	p, z := makeRatioMessage(size, ratio)
	ratioMessages.Store(key, [2][]byte{p, z})
	return p, z
}

// ratioMessages caches ratioMessage's search, which compresses the
// message many times.
var ratioMessages sync.Map

func makeRatioMessage(size, ratio int) ([]byte, []byte) {
	rng := rand.New(rand.NewPCG(1, 2))
	var best, bestZ []byte
	for run := 1; run < 4096; run += 1 + run/8 {
		var p []byte
		for len(p) < size {
			p = append(p, byte('a'+rng.IntN(26)))
			p = append(p, bytes.Repeat([]byte{'x'}, run)...)
		}
		p = p[:size]
		z := compressMessage(p)
		if len(p) > ratio*len(z) {
			break
		}
		best, bestZ = p, z
	}
	return best, bestZ
}

// BenchmarkInflateAttack measures the reader's work per byte received for
// crafted compressed messages, against plain frames: bomb (79 bytes that
// inflate to 64 KiB), ratio32 (the most a connection may inflate for long,
// 32 bytes per byte received), emptyblocks (dynamic-Huffman blocks with no
// data, which cost their table builds). ns/op is per message; MB/s is of
// bytes received.
func BenchmarkInflateAttack(b *testing.B) {
	_, ratio32 := ratioMessage(64<<10, 32)
	blocksWithOutput := blocksWithOutputMessage()
	for _, tc := range []struct {
		name    string
		payload []byte
		rsv     byte
		opts    ConnOptions
	}{
		{"plain", bytes.Repeat([]byte("a"), 1000), 0, ConnOptions{}},
		{"bomb", compressMessage(bytes.Repeat([]byte("a"), 64<<10)), rsv1Bit, ConnOptions{InflateRatio: -1}},
		{"ratio32", ratio32, rsv1Bit, ConnOptions{}},
		{"emptyblocks", emptyBlocksMessage(1000), rsv1Bit, ConnOptions{InflateRatio: -1}},
		{"emptyblocks+output", blocksWithOutput, rsv1Bit, ConnOptions{}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			stream := frame(fText|tc.rsv, true, tc.payload)
			opts := tc.opts
			opts.ReadLimit = 1 << 20
			c := newConn(&memConn{r: &loopReader{b: stream}, w: io.Discard}, false, "", opts, nil)
			c.deflate = true
			buf := make([]byte, 0, 64<<10)
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var err error
				if _, buf, err = c.ReadInto(context.Background(), buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestInflateBudget: over a real connection, compressed messages that each
// inflate to the read limit from 79 bytes fail the connection with 1008
// once the inflate budget is spent (they were each accepted: 830 times
// their size of work, without end); a message of empty blocks that
// inflates to nothing fails it at once; honest compressed JSON, 3 to 20
// times smaller, passes however long it goes on.
func TestInflateBudget(t *testing.T) {
	bomb := compressMessage(bytes.Repeat([]byte("a"), 60<<10))
	if len(bomb) > 100 {
		t.Fatalf("bomb of %d bytes", len(bomb))
	}
	deflateHandshake := func(t *testing.T, srv *httptest.Server) *rawClient {
		rc, resp := dialRaw(t, srv, handshakeRequest(srv.Listener.Addr().String(), "Sec-WebSocket-Extensions: permessage-deflate"), nil)
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("handshake %d", resp.StatusCode)
		}
		return rc
	}
	t.Run("bombs", func(t *testing.T) {
		srv, _ := echoServer(t, &AcceptOptions{EnableCompression: true})
		rc := deflateHandshake(t, srv)
		sent := 0
		for ; sent < 100; sent++ {
			rc.sendRaw(frame(fText|rsv1Bit, true, bomb))
			f := rc.mustRead()
			if f.op() == opClose {
				code := CloseCode(binary.BigEndian.Uint16(f.payload))
				if code != ClosePolicyViolation || !strings.Contains(string(f.payload[2:]), "inflate") {
					t.Fatalf("closed with %s %q", code, f.payload[2:])
				}
				break
			}
		}
		// The reserve is four read limits: the fifth such message is
		// refused.
		if sent != 4 {
			t.Fatalf("closed after %d messages inflating to 60 KiB from %d bytes, want 4", sent, len(bomb))
		}
	})
	t.Run("empty blocks", func(t *testing.T) {
		srv, _ := echoServer(t, &AcceptOptions{EnableCompression: true})
		rc := deflateHandshake(t, srv)
		rc.sendRaw(frame(fText|rsv1Bit, true, emptyBlocksMessage(1000)))
		if reason := rc.expectClose(ClosePolicyViolation); !strings.Contains(reason, "larger than what it inflates to") {
			t.Fatalf("reason %q", reason)
		}
	})
	t.Run("honest", func(t *testing.T) {
		// The messages first (compressing is slow under the race
		// detector), then the connection.
		type msg struct{ p, z []byte }
		var msgs []msg
		for _, ratio := range []int{3, 10, 20, 30} {
			p, z := ratioMessage(16<<10, ratio)
			msgs = append(msgs, msg{p, z})
		}
		srv, _ := echoServer(t, &AcceptOptions{EnableCompression: true})
		rc := deflateHandshake(t, srv)
		rc.nc.SetDeadline(time.Now().Add(time.Minute))
		for _, m := range msgs {
			p, z := m.p, m.z
			ratio := len(p) / len(z)
			for i := 0; i < 50; i++ {
				rc.sendRaw(frame(fText|rsv1Bit, true, z))
				f := rc.mustRead()
				if f.op() == opClose {
					t.Fatalf("ratio %d (%d -> %d bytes), message %d: closed %q", ratio, len(z), len(p), i, f.payload)
				}
			}
		}
	})
}

// TestInflateLimitWithLargeBuffer: the read limit holds for a compressed
// message read into a buffer with more capacity than the limit (the
// inflater filled whatever capacity it was given, so a reused 1 MiB
// buffer let a 64 KiB limit pass).
func TestInflateLimitWithLargeBuffer(t *testing.T) {
	z := compressMessage(bytes.Repeat([]byte("a"), 100<<10))
	c := newConn(&memConn{r: bytes.NewReader(frame(fText|rsv1Bit, true, z)), w: io.Discard}, false, "",
		ConnOptions{ReadLimit: 64 << 10, InflateRatio: -1}, nil)
	c.deflate = true
	_, msg, err := c.ReadInto(context.Background(), make([]byte, 0, 1<<20))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != CloseMessageTooBig {
		t.Fatalf("a message inflating to 100 KiB with a limit of 64 KiB: %d bytes, %v", len(msg), err)
	}
}
