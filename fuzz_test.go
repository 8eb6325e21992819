package realtime

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// fuzzReadLimit and fuzzMaxFragments are small so that the 1009 paths are
// reached often, from small inputs.
const (
	fuzzReadLimit    = 4096
	fuzzMaxFragments = 8
)

// FuzzReadFrames feeds arbitrary bytes to the frame reader of a server
// connection (mode byte even) or a client connection (mode byte odd) and
// reads messages until it fails. It must not panic, must not hang (the input
// ends with EOF), and must fail with a CloseError or a clean end of stream.
// The invariant of the read limit: the bytes buffered for one message (the
// length of the buffer returned, and its capacity, since the reader
// allocates it) never exceed the limit, whether the read succeeded or
// failed part way.
func FuzzReadFrames(f *testing.F) {
	for _, seed := range frameSeeds() {
		f.Add(byte(0), frameSeedsMasked(seed, true))
		f.Add(byte(1), frameSeedsMasked(seed, false))
	}
	// The attacks: a limit check that overflowed, and a message of
	// endless empty continuation frames.
	f.Add(byte(0), append(overflowShape(), payloadOf(16)...))
	empties := frame(byte(opText), true, []byte("a"))
	for i := 0; i < fuzzMaxFragments+2; i++ {
		empties = append(empties, frame(byte(opContinuation), true, nil)...)
	}
	f.Add(byte(0), empties)
	atLimit := frame(byte(opText), true, payloadOf(fuzzReadLimit-1))
	f.Add(byte(0), append(atLimit, frame(fCont, true, []byte("x"))...))
	// Compressed messages (mode bit 2: permessage-deflate negotiated):
	// whole, fragmented, a ping between fragments, a bomb that inflates
	// far past the limit, corrupt data, RSV1 where it may not be.
	z := compress(nil, []byte(strings.Repeat(`{"count":1,"title":"shared"} `, 40)))
	f.Add(byte(2), frame(fText|rsv1Bit, true, z))
	frag := frame(byte(opText)|rsv1Bit, true, z[:len(z)/2])
	frag = append(frag, frame(fPing, true, []byte("p"))...)
	f.Add(byte(2), append(frag, frame(fCont, true, z[len(z)/2:])...))
	f.Add(byte(2), frame(fBinary|rsv1Bit, true, compress(nil, make([]byte, 16*fuzzReadLimit))))
	f.Add(byte(2), frame(fText|rsv1Bit, true, []byte{0xff, 0xfe, 0x00, 0x01}))
	f.Add(byte(2), frame(fPing|rsv1Bit, true, nil))
	f.Add(byte(2), append(frame(byte(opText)|rsv1Bit, true, z[:4]), frame(fCont|rsv1Bit, true, z[4:])...))
	f.Add(byte(3), frame(fText|rsv1Bit, false, z))
	// The inflate attacks: blocks that inflate to nothing, a message that
	// inflates 800 times its size, the blocks padded with output.
	f.Add(byte(2), frame(fText|rsv1Bit, true, emptyBlocksMessage(100)))
	f.Add(byte(2), frame(fText|rsv1Bit, true, compressMessage(bytes.Repeat([]byte("a"), 2*fuzzReadLimit))))
	f.Add(byte(2), frame(fBinary|rsv1Bit, true, blocksWithOutputMessage()[:300]))
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		client := mode&1 == 1
		nc := &memConn{r: bytes.NewReader(data), w: io.Discard}
		c := newConn(nc, client, "", ConnOptions{ReadLimit: fuzzReadLimit, MaxFragments: fuzzMaxFragments}, nil)
		c.deflate = mode&2 != 0
		var buf []byte
		for i := 0; ; i++ {
			typ, msg, err := c.ReadInto(context.Background(), buf)
			if len(msg) > fuzzReadLimit || cap(msg) > fuzzReadLimit {
				t.Fatalf("%d bytes buffered for one message (capacity %d) with a read limit of %d (err %v)", len(msg), cap(msg), fuzzReadLimit, err)
			}
			if err != nil {
				var ce *CloseError
				if !errors.As(err, &ce) && !errors.Is(err, ErrClosed) {
					t.Fatalf("error is neither a CloseError nor ErrClosed: %v", err)
				}
				if _, _, err2 := c.Read(context.Background()); err2 == nil {
					t.Fatalf("read after failure succeeded")
				}
				return
			}
			if typ == MessageText && !validUTF8(msg) {
				t.Fatalf("invalid UTF-8 text message accepted: %q", msg)
			}
			if i > len(data) {
				t.Fatalf("more messages than input bytes")
			}
			buf = msg
		}
	})
}

// frameSeeds is one sequence of frames per frame kind, as (first byte,
// payload) pairs.
func frameSeeds() [][][2][]byte {
	f := func(b0 byte, p string) [2][]byte { return [2][]byte{{b0}, []byte(p)} }
	return [][][2][]byte{
		{f(fText, "hello")},
		{f(fBinary, string(payloadOf(200)))},
		{f(fText, string(payloadOf(70000)))},
		{f(byte(opText), "frag"), f(fPing, "p"), f(fCont, "ment")},
		{f(fPing, "ping")},
		{f(fPong, "pong")},
		{f(fClose, "\x03\xe8bye")},
		{f(fClose, "")},
		{f(fClose, "\x03")},
		{f(fText, "\xce\xba\xf4\x90")},
		{f(fText|rsv1Bit, "x")},
		{f(finBit|0x3, "")},
		{f(fCont, "x")},
		{f(byte(opPing), "x")},
		{f(fText, "κόσμε"), f(fBinary, "\x00\xff")},
	}
}

// frameSeedsMasked encodes a seed's frames, masked or not.
func frameSeedsMasked(frames [][2][]byte, masked bool) []byte {
	var out []byte
	for _, fr := range frames {
		out = append(out, frame(fr[0][0], masked, fr[1])...)
	}
	return out
}

// FuzzDecodeClientMessage: no input panics; whatever is accepted
// re-encodes to bytes that decode to the same value and re-encode to the
// same bytes; whatever is refused gets a short DecodeError.
func FuzzDecodeClientMessage(f *testing.F) {
	for _, s := range validClient {
		f.Add([]byte(s))
	}
	for _, s := range []string{`{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":{ "a" : [1, -2.5e3, "\u00e9\ud83d\ude00"] },"correlationId":"c"}`,
		`{"v":1,"type":"subscribe","shareDataId":"d","since":null,"x":[{}]}`, `{"v":2}`, `[`, `{"v":1,"type":"ping","correlationId":"\ud800"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkRoundTrip(t, data, DecodeClientMessage) })
}

// FuzzDecodeServerMessage is FuzzDecodeClientMessage for server messages.
func FuzzDecodeServerMessage(f *testing.F) {
	for _, s := range validServer {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"v":1,"type":"transaction","shareDataId":"d","transactionId":"t","functionId":"f","proposedData":1,"replayed":true,"currentState":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) { checkRoundTrip(t, data, DecodeServerMessage) })
}

// checkRoundTrip decodes data; an accepted message must re-encode to bytes
// that decode to the same value and re-encode to the same bytes, a refused
// one must get a short DecodeError.
func checkRoundTrip[M interface{ AppendJSON([]byte) []byte }](t *testing.T, data []byte, decode func([]byte) (M, error)) {
	m, err := decode(data)
	if err != nil {
		checkFuzzDecodeErr(t, err)
		return
	}
	enc := m.AppendJSON(nil)
	m2, err := decode(enc)
	if err != nil {
		t.Fatalf("re-encoded %s does not decode: %v", enc, err)
	}
	if !reflect.DeepEqual(m, m2) {
		t.Fatalf("round trip changed %#v into %#v", m, m2)
	}
	if enc2 := m2.AppendJSON(nil); !bytes.Equal(enc, enc2) {
		t.Fatalf("encoding not stable: %s then %s", enc, enc2)
	}
}

func checkFuzzDecodeErr(t *testing.T, err error) {
	var de *DecodeError
	if !errors.As(err, &de) || !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("error %v is not a DecodeError", err)
	}
	// What goes on the wire is the close reason of the 4004, not the Go
	// error's text (which carries the package's prefix).
	if s := closeReasonOf(err); len(s) > maxCloseReason || !utf8.ValidString(s) || strings.ContainsAny(s, "\r\n") {
		t.Fatalf("close reason %q is longer than %d bytes, not UTF-8, or not one line", s, maxCloseReason)
	}
	if s := err.Error(); !strings.HasPrefix(s, "realtime: invalid message: ") || !utf8.ValidString(s) {
		t.Fatalf("error %q lacks the package's prefix or is not UTF-8", s)
	}
}
