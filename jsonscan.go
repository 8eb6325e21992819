package realtime

import (
	"encoding/json"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small JSON scanner: it checks syntax, nesting and
// escapes in one pass without allocating, and compacts or unescapes
// values on request. The protocol decoder (decode.go) and the manager
// (state validation) use it; it knows nothing of either.

// scanner walks JSON text.
type scanner struct {
	data []byte
	pos  int
}

func (s *scanner) peek() byte {
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

func (s *scanner) ws() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// value scans one JSON value starting at s.pos, which is at nesting level
// depth, and returns its kind and, for strings, whether it has escapes.
func (s *scanner) value(depth int) (kind byte, escaped bool, reason string) {
	switch c := s.peek(); {
	case c == '"':
		escaped, reason = s.str()
		return kString, escaped, reason
	case c == '{' || c == '[':
		if depth > maxNesting {
			return 0, false, "nested deeper than " + strconv.Itoa(maxNesting) + " levels"
		}
		return s.container(depth)
	case c == 't':
		return kTrue, false, s.literal("true")
	case c == 'f':
		return kFalse, false, s.literal("false")
	case c == 'n':
		return kNull, false, s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return kNumber, false, s.number()
	case s.pos >= len(s.data):
		return 0, false, "want a value"
	default:
		return 0, false, "unexpected character " + strconv.QuoteRune(rune(c))
	}
}

// container scans an object or an array.
func (s *scanner) container(depth int) (byte, bool, string) {
	object := s.data[s.pos] == '{'
	kind, end := kArray, byte(']')
	if object {
		kind, end = kObject, '}'
	}
	s.pos++
	s.ws()
	if s.peek() == end {
		s.pos++
		return kind, false, ""
	}
	for {
		if object {
			if s.peek() != '"' {
				return 0, false, "want a field name"
			}
			if _, reason := s.str(); reason != "" {
				return 0, false, reason
			}
			s.ws()
			if s.peek() != ':' {
				return 0, false, "want ':' after a field name"
			}
			s.pos++
			s.ws()
		}
		if _, _, reason := s.value(depth + 1); reason != "" {
			return 0, false, reason
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.pos++
			s.ws()
		case end:
			s.pos++
			return kind, false, ""
		default:
			return 0, false, "want ',' or '" + string(end) + "'"
		}
	}
}

// str scans a string; s.pos is at its opening quote.
func (s *scanner) str() (escaped bool, reason string) {
	s.pos++
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			return escaped, ""
		case c == '\\':
			escaped = true
			s.pos++
			switch s.peek() {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.pos++
			case 'u':
				if s.pos+5 > len(s.data) {
					return false, "short \\u escape"
				}
				for _, h := range s.data[s.pos+1 : s.pos+5] {
					if !isHex(h) {
						return false, "bad \\u escape"
					}
				}
				s.pos += 5
			default:
				return false, "bad escape in string"
			}
		case c < 0x20:
			return false, "control character in string"
		default:
			s.pos++
		}
	}
	return false, "unterminated string"
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func (s *scanner) literal(word string) string {
	if len(s.data)-s.pos < len(word) || string(s.data[s.pos:s.pos+len(word)]) != word {
		return "invalid literal, want " + word
	}
	s.pos += len(word)
	return ""
}

// number scans a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() string {
	if s.peek() == '-' {
		s.pos++
	}
	switch c := s.peek(); {
	case c == '0':
		s.pos++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return "invalid number"
	}
	if s.peek() == '.' {
		s.pos++
		if !s.digits() {
			return "invalid number: no digit after '.'"
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.pos++
		if c := s.peek(); c == '+' || c == '-' {
			s.pos++
		}
		if !s.digits() {
			return "invalid number: no digit in exponent"
		}
	}
	return ""
}

func (s *scanner) digits() bool {
	start := s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	return s.pos > start
}

// unescape decodes the escapes of a scanned JSON string's contents. A lone
// UTF-16 surrogate becomes U+FFFD, as in encoding/json.
func unescape(raw []byte) string {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		switch raw[i] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hex4(raw[i+1 : i+5])
			i += 4
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if i+6 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
					r2 = hex4(raw[i+3 : i+7])
				}
				if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			out = utf8.AppendRune(out, r)
		default: // '"', '\\', '/'
			out = append(out, raw[i])
		}
	}
	return string(out)
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

// compactJSON copies a scanned JSON value without the whitespace between
// its tokens, so equal values received with different spacing are stored,
// and sent on, as the same bytes.
func compactJSON(v []byte) json.RawMessage {
	out := make([]byte, 0, len(v))
	inString := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if inString {
			out = append(out, c)
			switch c {
			case '\\':
				i++
				out = append(out, v[i])
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '"':
			inString = true
		}
		out = append(out, c)
	}
	return out
}
