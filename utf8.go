package realtime

import "encoding/binary"

// utf8Validator checks UTF-8 incrementally: a text message may arrive in
// fragments that split a code point, and RFC 6455 section 8.1 wants an
// invalid sequence to fail the connection as soon as it is seen, not when
// the message ends. The validator is a small state machine that knows, after
// every byte, whether the bytes so far can still be the prefix of valid
// UTF-8 (so 0xF4 0x90 fails at once: no code point above U+10FFFF exists).
type utf8Validator struct {
	state uint8
}

// Validator states. utf8Accept means "at a code point boundary".
const (
	utf8Accept  uint8 = iota
	utf8Need1         // one continuation byte 80..BF to go
	utf8Need2         // two continuation bytes to go
	utf8Need3         // three continuation bytes to go
	utf8AfterE0       // next byte A0..BF (no overlong 3-byte forms)
	utf8AfterED       // next byte 80..9F (no surrogates)
	utf8AfterF0       // next byte 90..BF (no overlong 4-byte forms)
	utf8AfterF4       // next byte 80..8F (nothing above U+10FFFF)
	utf8Reject
)

// write feeds p and reports whether the bytes seen so far can still be
// valid UTF-8. Once it returns false it keeps returning false.
func (v *utf8Validator) write(p []byte) bool {
	s := v.state
	i := 0
	for i < len(p) {
		if s == utf8Accept {
			// ASCII fast path, eight bytes at a time.
			for len(p)-i >= 8 && binary.LittleEndian.Uint64(p[i:i+8])&0x8080808080808080 == 0 {
				i += 8
			}
			if i == len(p) {
				break
			}
		}
		c := p[i]
		i++
		switch s {
		case utf8Accept:
			switch {
			case c < 0x80:
			case c >= 0xC2 && c <= 0xDF:
				s = utf8Need1
			case c == 0xE0:
				s = utf8AfterE0
			case c == 0xED:
				s = utf8AfterED
			case c >= 0xE1 && c <= 0xEF:
				s = utf8Need2
			case c == 0xF0:
				s = utf8AfterF0
			case c >= 0xF1 && c <= 0xF3:
				s = utf8Need3
			case c == 0xF4:
				s = utf8AfterF4
			default:
				s = utf8Reject
			}
		case utf8Need1, utf8Need2, utf8Need3:
			if c < 0x80 || c > 0xBF {
				s = utf8Reject
			} else {
				s--
			}
		case utf8AfterE0:
			if c < 0xA0 || c > 0xBF {
				s = utf8Reject
			} else {
				s = utf8Need1
			}
		case utf8AfterED:
			if c < 0x80 || c > 0x9F {
				s = utf8Reject
			} else {
				s = utf8Need1
			}
		case utf8AfterF0:
			if c < 0x90 || c > 0xBF {
				s = utf8Reject
			} else {
				s = utf8Need2
			}
		case utf8AfterF4:
			if c < 0x80 || c > 0x8F {
				s = utf8Reject
			} else {
				s = utf8Need2
			}
		}
		if s == utf8Reject {
			v.state = s
			return false
		}
	}
	v.state = s
	return true
}

// complete reports whether the bytes seen so far end on a code point
// boundary, that is whether the message may end here.
func (v *utf8Validator) complete() bool { return v.state == utf8Accept }

// reset readies the validator for a new message.
func (v *utf8Validator) reset() { v.state = utf8Accept }

// validUTF8 reports whether p is complete, valid UTF-8 by the same rules.
func validUTF8(p []byte) bool {
	var v utf8Validator
	return v.write(p) && v.complete()
}
