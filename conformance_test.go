package realtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The conformance suite drives our server with hand-built frames over real
// TCP connections, organised like the case groups of the Autobahn
// testsuite. Every case checks what a peer observes: the frames answered,
// the close code, and that the server closed the TCP connection.

func payloadOf(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte('*')
	}
	return p
}

// Group 1: framing and payload lengths.
func TestConformanceFraming(t *testing.T) {
	srv, _ := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
	lengths := []int{0, 1, 125, 126, 127, 128, 65535, 65536, 1 << 20}
	for _, b0 := range []byte{fText, fBinary} {
		for _, n := range lengths {
			t.Run(fmt.Sprintf("%s/%d", opcode(b0&0xf), n), func(t *testing.T) {
				rc := connectRaw(t, srv)
				p := payloadOf(n)
				rc.send(b0, p)
				// Up to 64 KiB the echo is one frame; beyond, 64 KiB fragments.
				var got []byte
				for i := 0; ; i++ {
					f := rc.mustRead()
					if i == 0 {
						// The length is in its minimal form: 7, 16 or 64 bits.
						want := map[int]string{0: "00", 1: "01", 125: "7d", 126: "7e007e", 127: "7e007f", 128: "7e0080",
							65535: "7effff", 65536: "7f0000000000010000", 1 << 20: "7f0000000000010000"}[n]
						if got := fmt.Sprintf("%x", f.hdr[1:]); got != want {
							t.Fatalf("header after the first byte: %s, want %s", got, want)
						}
					}
					wantB0 := b0 &^ finBit
					if i > 0 {
						wantB0 = byte(opContinuation)
					}
					if len(got)+len(f.payload) == n {
						wantB0 |= finBit
					} else if len(f.payload) != writeFragmentSize {
						t.Fatalf("fragment %d has %d bytes", i, len(f.payload))
					}
					if f.b0 != wantB0 {
						t.Fatalf("fragment %d: first byte 0x%02x, want 0x%02x", i, f.b0, wantB0)
					}
					got = append(got, f.payload...)
					if f.b0&finBit != 0 {
						break
					}
				}
				if !bytes.Equal(got, p) {
					t.Fatalf("echo differs")
				}
			})
		}
	}
	t.Run("byte-at-a-time", func(t *testing.T) {
		rc := connectRaw(t, srv)
		for _, b := range frame(fText, true, []byte("Hello, world")) {
			rc.sendRaw([]byte{b})
			time.Sleep(time.Millisecond)
		}
		rc.expectFrame(fText, []byte("Hello, world"))
	})
	t.Run("several frames in one write", func(t *testing.T) {
		rc := connectRaw(t, srv)
		var b []byte
		for i := 0; i < 50; i++ {
			b = append(b, frame(fText, true, []byte(fmt.Sprint(i)))...)
		}
		rc.sendRaw(b)
		for i := 0; i < 50; i++ {
			rc.expectFrame(fText, []byte(fmt.Sprint(i)))
		}
	})
	t.Run("64-bit length with the top bit set", func(t *testing.T) {
		rc := connectRaw(t, srv)
		hdr := []byte{fBinary, maskBit | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}
		rc.sendRaw(hdr)
		rc.expectClose(CloseProtocolError)
	})
	t.Run("unmasked client frame", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.sendRaw(frame(fText, false, []byte("hi")))
		if reason := rc.expectClose(CloseProtocolError); !strings.Contains(reason, "unmasked") {
			t.Fatalf("reason %q", reason)
		}
	})
}

// Group 2: pings and pongs.
func TestConformancePingPong(t *testing.T) {
	srv, _ := echoServer(t, nil)
	t.Run("empty ping", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fPing, nil)
		rc.expectFrame(fPong, nil)
	})
	t.Run("ping with 125 bytes", func(t *testing.T) {
		rc := connectRaw(t, srv)
		p := payloadOf(125)
		rc.send(fPing, p)
		rc.expectFrame(fPong, p)
	})
	t.Run("binary ping payload", func(t *testing.T) {
		rc := connectRaw(t, srv)
		p := []byte{0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff}
		rc.send(fPing, p)
		rc.expectFrame(fPong, p)
	})
	t.Run("ping with 126 bytes", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fPing, payloadOf(126))
		rc.expectClose(CloseProtocolError)
	})
	t.Run("unsolicited pong is ignored", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fPong, []byte("unsolicited"))
		rc.send(fText, []byte("after"))
		rc.expectFrame(fText, []byte("after"))
	})
	t.Run("ten pings", func(t *testing.T) {
		rc := connectRaw(t, srv)
		for i := 0; i < 10; i++ {
			rc.send(fPing, []byte(fmt.Sprint("ping ", i)))
			rc.expectFrame(fPong, []byte(fmt.Sprint("ping ", i)))
		}
	})
	t.Run("ping chopped into single bytes", func(t *testing.T) {
		rc := connectRaw(t, srv)
		for _, b := range frame(fPing, true, []byte("chopped")) {
			rc.sendRaw([]byte{b})
		}
		rc.expectFrame(fPong, []byte("chopped"))
	})
	t.Run("pong answered while a large message is being read", func(t *testing.T) {
		srv, _ := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
		rc := connectRaw(t, srv)
		rc.send(byte(opText), payloadOf(300<<10))
		rc.send(fPing, []byte("mid-message"))
		// The pong arrives before the message is complete.
		rc.expectFrame(fPong, []byte("mid-message"))
		rc.send(fCont, payloadOf(10))
		f := rc.mustRead()
		if f.b0 != byte(opText) || len(f.payload) != writeFragmentSize {
			t.Fatalf("got frame 0x%02x of %d bytes", f.b0, len(f.payload))
		}
	})
	t.Run("pong sent between the fragments of a large message being written", func(t *testing.T) {
		testPongDuringLargeWrite(t)
	})
}

// testPongDuringLargeWrite has the server write a 32 MiB message to a
// client that does not read, so the write blocks on TCP flow control (the
// socket buffers hold at most about 10 MiB); a ping sent meanwhile must be
// answered before the message ends.
func testPongDuringLargeWrite(t *testing.T) {
	const size = 32 << 20
	srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Write(ctx, MessageBinary, make([]byte, size))
		}()
		for {
			if _, _, err := c.Read(ctx); err != nil {
				break
			}
		}
		<-done
	})
	rc := connectRaw(t, srv)
	f := rc.mustRead() // the first fragment: the write has started
	if f.b0 != byte(opBinary) {
		t.Fatalf("first frame 0x%02x", f.b0)
	}
	rc.send(fPing, []byte("while writing"))
	time.Sleep(100 * time.Millisecond) // not reading: the server's write stays blocked
	read := len(f.payload)
	for {
		f = rc.mustRead()
		if f.op() == opPong {
			if string(f.payload) != "while writing" {
				t.Fatalf("pong payload %q", f.payload)
			}
			break
		}
		read += len(f.payload)
		if f.b0&finBit != 0 {
			t.Fatalf("the whole message (%d bytes) went out before the pong", read)
		}
	}
	if read >= size {
		t.Fatalf("pong came after %d bytes", read)
	}
	rc.send(fClose, closePayload(CloseNormalClosure, ""))
}

// Group 3: reserved bits.
func TestConformanceReservedBits(t *testing.T) {
	srv, _ := echoServer(t, nil)
	cases := []struct {
		name string
		b0   byte
	}{
		{"RSV1 on text", fText | rsv1Bit},
		{"RSV2 on text", fText | rsv2Bit},
		{"RSV3 on text", fText | rsv3Bit},
		{"RSV1+RSV2 on binary", fBinary | rsv1Bit | rsv2Bit},
		{"all RSV on binary", fBinary | rsvBits},
		{"RSV on ping", fPing | rsv3Bit},
		{"RSV on close", fClose | rsv1Bit},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := connectRaw(t, srv)
			rc.send(fText, []byte("before"))
			rc.expectFrame(fText, []byte("before"))
			rc.send(tc.b0, []byte("x"))
			if reason := rc.expectClose(CloseProtocolError); !strings.Contains(reason, "reserved bits") {
				t.Fatalf("reason %q", reason)
			}
		})
	}
}

// Group 4: opcodes.
func TestConformanceOpcodes(t *testing.T) {
	srv, _ := echoServer(t, nil)
	for _, op := range []byte{3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		for _, p := range [][]byte{nil, []byte("payload")} {
			t.Run(fmt.Sprintf("0x%x/%d", op, len(p)), func(t *testing.T) {
				rc := connectRaw(t, srv)
				rc.send(finBit|op, p)
				if reason := rc.expectClose(CloseProtocolError); !strings.Contains(reason, "unknown opcode") {
					t.Fatalf("reason %q", reason)
				}
			})
		}
	}
}

// Group 5: fragmentation.
func TestConformanceFragmentation(t *testing.T) {
	srv, _ := echoServer(t, nil)
	t.Run("two fragments", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), []byte("frag1"))
		rc.send(fCont, []byte("frag2"))
		rc.expectFrame(fText, []byte("frag1frag2"))
	})
	t.Run("binary in 100 one-byte fragments", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opBinary), []byte{0})
		for i := 1; i < 99; i++ {
			rc.send(byte(opContinuation), []byte{byte(i)})
		}
		rc.send(fCont, []byte{99})
		want := make([]byte, 100)
		for i := range want {
			want[i] = byte(i)
		}
		rc.expectFrame(fBinary, want)
	})
	t.Run("empty fragments", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), nil)
		rc.send(byte(opContinuation), nil)
		rc.send(fCont, nil)
		rc.expectFrame(fText, nil)
	})
	t.Run("ping between fragments", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), []byte("a"))
		rc.send(fPing, []byte("between"))
		rc.expectFrame(fPong, []byte("between"))
		rc.send(fCont, []byte("b"))
		rc.expectFrame(fText, []byte("ab"))
	})
	t.Run("pong between fragments", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), []byte("a"))
		rc.send(fPong, []byte("between"))
		rc.send(fCont, []byte("b"))
		rc.expectFrame(fText, []byte("ab"))
	})
	t.Run("close between fragments", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), []byte("a"))
		rc.send(fClose, closePayload(CloseNormalClosure, ""))
		rc.expectClose(CloseNormalClosure)
	})
	fails := []struct {
		name   string
		frames [][2]any
	}{
		{"continuation first", [][2]any{{fCont, "x"}}},
		{"unfinished continuation first", [][2]any{{byte(opContinuation), "x"}}},
		{"text inside a fragmented text", [][2]any{{byte(opText), "a"}, {fText, "b"}}},
		{"binary inside a fragmented text", [][2]any{{byte(opText), "a"}, {byte(opBinary), "b"}}},
		{"fragmented ping", [][2]any{{byte(opPing), "a"}, {fCont, "b"}}},
		{"fragmented pong", [][2]any{{byte(opPong), "a"}, {fCont, "b"}}},
		{"fragmented close", [][2]any{{byte(opClose), "\x03\xe8"}, {fCont, "b"}}},
	}
	for _, tc := range fails {
		t.Run(tc.name, func(t *testing.T) {
			rc := connectRaw(t, srv)
			for _, f := range tc.frames {
				rc.send(f[0].(byte), []byte(f[1].(string)))
			}
			rc.expectClose(CloseProtocolError)
		})
	}
}

// Group 6: UTF-8 handling.
func TestConformanceUTF8(t *testing.T) {
	srv, _ := echoServer(t, nil)
	valid := []string{
		"Hello-µ@ßöäüàá-UTF-8!!",
		"κόσμε",
		"\u0000", "\u0080", "\u0800", "\U00010000", // first of each length
		"\u007f", "\u07ff", "\uffff", "\U0010ffff", // last of each length
		"\ud7ff", "\ue000", "\ufffd", // around the surrogates
	}
	for _, s := range valid {
		t.Run(fmt.Sprintf("valid %q", s), func(t *testing.T) {
			rc := connectRaw(t, srv)
			rc.send(fText, []byte(s))
			rc.expectFrame(fText, []byte(s))
		})
	}
	t.Run("code point split across fragments", func(t *testing.T) {
		rc := connectRaw(t, srv)
		s := []byte("κόσμε\U0010ffff")
		rc.send(byte(opText), s[:1])
		for i := 1; i < len(s)-1; i++ {
			rc.send(byte(opContinuation), s[i:i+1])
		}
		rc.send(fCont, s[len(s)-1:])
		rc.expectFrame(fText, s)
	})
	invalid := []struct {
		name string
		b    []byte
	}{
		{"lone continuation byte", []byte{0x80}},
		{"overlong slash", []byte{0xc0, 0xaf}},
		{"overlong 3-byte", []byte{0xe0, 0x80, 0xaf}},
		{"overlong 4-byte", []byte{0xf0, 0x80, 0x80, 0xaf}},
		{"surrogate", []byte{0xed, 0xa0, 0x80}},
		{"above U+10FFFF", []byte{0xf4, 0x90, 0x80, 0x80}},
		{"5-byte form", []byte{0xf8, 0x88, 0x80, 0x80, 0x80}},
		{"0xFE", []byte{0xfe}},
		{"0xFF", []byte{0xff}},
		{"truncated 2-byte at end", []byte("ab\xc2")},
		{"truncated 4-byte at end", []byte("ab\xf0\x9f\x98")},
		{"valid then invalid", []byte("κόσμε\xed\xa0\x80edited")},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			rc := connectRaw(t, srv)
			rc.send(fText, tc.b)
			rc.expectClose(CloseInvalidPayload)
		})
	}
	t.Run("fails at the fragment where it appears", func(t *testing.T) {
		rc := connectRaw(t, srv)
		// F4 90 can never start a valid code point: the server must fail
		// now, without waiting for the rest of the message.
		rc.send(byte(opText), []byte("\xce\xba\xf4\x90"))
		rc.expectClose(CloseInvalidPayload)
	})
	t.Run("invalid in a later fragment", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), []byte("κόσμε"))
		rc.send(byte(opContinuation), []byte("\xce\xba\xe1\xbd"))
		rc.send(byte(opContinuation), []byte("\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"))
		rc.expectClose(CloseInvalidPayload)
	})
	t.Run("binary is not checked", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fBinary, []byte{0xff, 0xfe})
		rc.expectFrame(fBinary, []byte{0xff, 0xfe})
	})
}

// Group 7: close handling.
func TestConformanceClose(t *testing.T) {
	srv, errs := echoServer(t, nil)
	t.Run("normal close is echoed and TCP closed", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fClose, closePayload(CloseNormalClosure, "bye"))
		rc.expectClose(CloseNormalClosure)
		err := expectServerErr(t, errs, CloseNormalClosure)
		if ce, ok := err.(*CloseError); !ok || ce.Reason != "bye" || !ce.Remote {
			t.Fatalf("server Read error %#v", err)
		}
	})
	t.Run("empty close is answered with an empty close", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fClose, nil)
		rc.expectClose(CloseNoStatusReceived)
		expectServerErr(t, errs, CloseNoStatusReceived)
	})
	t.Run("close with a 123-byte reason", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fClose, closePayload(CloseNormalClosure, string(payloadOf(123))))
		rc.expectClose(CloseNormalClosure)
	})
	t.Run("close with a 124-byte reason", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fClose, closePayload(CloseNormalClosure, string(payloadOf(124))))
		rc.expectClose(CloseProtocolError)
	})
	t.Run("1-byte payload", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fClose, []byte{0x03})
		rc.expectClose(CloseProtocolError)
	})
	t.Run("reason not UTF-8", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fClose, closePayload(CloseNormalClosure, "\xce\xba\xf4\x90"))
		rc.expectClose(CloseInvalidPayload)
	})
	t.Run("frames after close are ignored", func(t *testing.T) {
		rc := connectRaw(t, srv)
		b := frame(fClose, true, closePayload(CloseNormalClosure, ""))
		b = append(b, frame(fText, true, []byte("after close"))...)
		b = append(b, frame(fPing, true, []byte("after close"))...)
		rc.sendRaw(b)
		rc.expectClose(CloseNormalClosure)
	})
	for _, code := range []int{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4001, 4999} {
		t.Run(fmt.Sprintf("valid code %d is echoed", code), func(t *testing.T) {
			rc := connectRaw(t, srv)
			rc.send(fClose, closePayload(CloseCode(code), ""))
			rc.expectClose(CloseCode(code))
		})
	}
	for _, code := range []int{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		t.Run(fmt.Sprintf("invalid code %d", code), func(t *testing.T) {
			rc := connectRaw(t, srv)
			rc.send(fClose, closePayload(CloseCode(code), ""))
			rc.expectClose(CloseProtocolError)
		})
	}
	t.Run("server-initiated close waits for the echo", func(t *testing.T) {
		result := make(chan error, 1)
		srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
			c, err := Accept(w, r, nil)
			if err != nil {
				return
			}
			result <- c.Close(CloseFellBehind, "too slow")
		})
		rc := connectRaw(t, srv)
		f := rc.mustRead()
		if f.op() != opClose || !bytes.Equal(f.payload, closePayload(CloseFellBehind, "too slow")) {
			t.Fatalf("got %s %q", f.op(), f.payload)
		}
		rc.send(fClose, closePayload(CloseFellBehind, ""))
		rc.expectTCPClosed()
		if err := <-result; err != nil {
			t.Fatalf("Close: %v", err)
		}
	})
	t.Run("server-initiated close times out", func(t *testing.T) {
		result := make(chan error, 1)
		srv := testServer(t, func(w http.ResponseWriter, r *http.Request) {
			c, err := Accept(w, r, &AcceptOptions{ConnOptions: ConnOptions{CloseTimeout: 100 * time.Millisecond}})
			if err != nil {
				return
			}
			result <- c.Close(CloseGoingAway, "")
		})
		rc := connectRaw(t, srv)
		if f := rc.mustRead(); f.op() != opClose {
			t.Fatalf("got %s", f.op())
		}
		rc.expectTCPClosed() // without our answer, after the timeout
		if err := <-result; err == nil || !strings.Contains(err.Error(), "no close frame") {
			t.Fatalf("Close: %v", err)
		}
	})
}

// Group 9: limits.
func TestConformanceLimits(t *testing.T) {
	srv, errs := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{ReadLimit: 1000}})
	t.Run("at the limit", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fBinary, payloadOf(1000))
		rc.expectFrame(fBinary, payloadOf(1000))
	})
	t.Run("one frame over the limit", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(fBinary, payloadOf(1001))
		reason := rc.expectClose(CloseMessageTooBig)
		if !strings.Contains(reason, "1000 bytes") {
			t.Fatalf("reason %q", reason)
		}
		expectServerErr(t, errs, CloseMessageTooBig)
	})
	t.Run("fragments adding up over the limit", func(t *testing.T) {
		rc := connectRaw(t, srv)
		rc.send(byte(opText), payloadOf(600))
		rc.send(fCont, payloadOf(600))
		rc.expectClose(CloseMessageTooBig)
	})
	t.Run("header announcing 2^62 bytes", func(t *testing.T) {
		rc := connectRaw(t, srv)
		var b [14]byte
		b[0], b[1] = fBinary, maskBit|127
		binary.BigEndian.PutUint64(b[2:], 1<<62)
		rc.sendRaw(b[:])
		rc.expectClose(CloseMessageTooBig)
	})
	t.Run("idle timeout", func(t *testing.T) {
		srv, _ := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{IdleTimeout: 200 * time.Millisecond}})
		rc := connectRaw(t, srv)
		rc.send(fText, []byte("alive"))
		rc.expectFrame(fText, []byte("alive"))
		if reason := rc.expectClose(CloseGoingAway); reason != "idle timeout" {
			t.Fatalf("reason %q", reason)
		}
	})
	t.Run("trickled frame", func(t *testing.T) {
		srv, _ := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{IdleTimeout: 300 * time.Millisecond}})
		rc := connectRaw(t, srv)
		f := frame(fText, true, payloadOf(100))
		go func() {
			for _, b := range f {
				if _, err := rc.nc.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		rc.expectClose(CloseGoingAway)
	})
}

// expectServerErr waits for the echo server to report an error with code,
// skipping errors of other connections of the same server.
func expectServerErr(t *testing.T, errs chan error, code CloseCode) error {
	t.Helper()
	return waitServerErr(t, errs, code.String(), func(err error) bool { return CloseCodeOf(err) == code })
}

// waitServerErr waits for an error that match accepts.
func waitServerErr(t *testing.T, errs chan error, what string, match func(error) bool) error {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var seen []string
	for {
		select {
		case err := <-errs:
			if match(err) {
				return err
			}
			seen = append(seen, err.Error())
		case <-timeout:
			t.Fatalf("the server reported no error with %s; it reported %q", what, seen)
		}
	}
}
