package realtime

import (
	"compress/flate"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// This file is permessage-deflate (RFC 7692): the negotiation of its
// parameters in the opening handshake, and the compression and inflation
// of one message. read.go and write.go call it for messages whose first
// frame has RSV1 set.
//
// Both directions are negotiated without context takeover: every message
// is compressed on its own. That is what lets a server compress a
// broadcast once and send the same bytes to every subscriber, and it means
// that no connection keeps a compressor or an inflater (with its 32 KiB
// window) between messages: both come from pools, so an idle connection
// costs what it costs without compression.

// CompressionThreshold is the smallest payload, in bytes, that a
// connection with permessage-deflate compresses; shorter messages, and
// those that would not shrink, are sent as they are.
const CompressionThreshold = 256

// deflateOffer is what a client offers, and deflateAnswer what a server
// answers: no context takeover either way, 32 KiB windows.
const (
	deflateOffer  = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
	deflateAnswer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
)

// rsv1Op marks a frame's first byte with RSV1 when or'ed into its opcode:
// putHeader writes the opcode byte as given.
const rsv1Op = opcode(rsv1Bit)

// extension is one element of a Sec-WebSocket-Extensions list.
type extension struct {
	name   string
	params []extParam
}

type extParam struct {
	name, value string
	hasValue    bool
}

// parseExtensions parses Sec-WebSocket-Extensions values (RFC 6455
// section 9.1): a comma-separated list of name *(";" param [= value]),
// values being tokens or quoted strings.
func parseExtensions(values []string) ([]extension, error) {
	var out []extension
	for _, v := range values {
		s := v
		for {
			s = strings.TrimLeft(s, " \t")
			if s == "" {
				break
			}
			if s[0] == ',' {
				s = s[1:]
				continue
			}
			var ext extension
			ext.name, s = cutToken(s)
			if ext.name == "" {
				return nil, errors.New("extension name is not a token")
			}
			for {
				s = strings.TrimLeft(s, " \t")
				if s == "" || s[0] == ',' {
					break
				}
				if s[0] != ';' {
					return nil, errors.New("expected ';' or ',' after " + strconv.Quote(ext.name))
				}
				s = strings.TrimLeft(s[1:], " \t")
				var p extParam
				p.name, s = cutToken(s)
				if p.name == "" {
					return nil, errors.New("parameter name is not a token")
				}
				s = strings.TrimLeft(s, " \t")
				if s != "" && s[0] == '=' {
					s = strings.TrimLeft(s[1:], " \t")
					p.hasValue = true
					if s != "" && s[0] == '"' {
						var ok bool
						if p.value, s, ok = cutQuoted(s); !ok {
							return nil, errors.New("unterminated quoted string")
						}
					} else {
						p.value, s = cutToken(s)
					}
					if p.value == "" {
						return nil, errors.New("parameter " + p.name + " has an empty value")
					}
				}
				ext.params = append(ext.params, p)
			}
			out = append(out, ext)
		}
	}
	return out, nil
}

// cutToken splits s after its leading RFC 7230 token.
func cutToken(s string) (string, string) {
	i := 0
	for i < len(s) && isTokenByte(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

func isTokenByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// cutQuoted splits s, which starts with '"', after its quoted string,
// returning the unescaped content.
func cutQuoted(s string) (string, string, bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '"':
			return b.String(), s[i+1:], true
		case '\\':
			i++
			if i == len(s) {
				return "", "", false
			}
		}
		b.WriteByte(s[i])
	}
	return "", "", false
}

// windowBits parses a max_window_bits value: 8 to 15, decimal.
func windowBits(v string) (int, bool) {
	if len(v) == 0 || len(v) > 2 || v[0] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil && n >= 8 && n <= 15
}

// deflateParams are the parameters of one permessage-deflate offer or
// answer (RFC 7692 section 7). serverBits 0 means the parameter is absent;
// clientBitsAsked records client_max_window_bits, with or without a value.
type deflateParams struct {
	serverNoContext, clientNoContext bool
	serverBits                       int
	clientBitsAsked                  bool
}

// parseDeflateParams reads the parameters, refusing an unknown or
// repeated one and an invalid value (section 5: such an offer is declined,
// such an answer fails the handshake).
func parseDeflateParams(params []extParam) (deflateParams, error) {
	var d deflateParams
	seen := map[string]bool{}
	for _, p := range params {
		name := strings.ToLower(p.name)
		if seen[name] {
			return d, errors.New("permessage-deflate parameter " + name + " repeated")
		}
		seen[name] = true
		switch name {
		case "server_no_context_takeover", "client_no_context_takeover":
			if p.hasValue {
				return d, errors.New("permessage-deflate parameter " + name + " has a value")
			}
			d.serverNoContext = d.serverNoContext || name == "server_no_context_takeover"
			d.clientNoContext = d.clientNoContext || name == "client_no_context_takeover"
		case "server_max_window_bits":
			n, ok := windowBits(p.value)
			if !ok {
				return d, errors.New("invalid server_max_window_bits " + strconv.Quote(p.value))
			}
			d.serverBits = n
		case "client_max_window_bits":
			d.clientBitsAsked = true
			if _, ok := windowBits(p.value); p.hasValue && !ok {
				return d, errors.New("invalid client_max_window_bits " + strconv.Quote(p.value))
			}
		default:
			return d, errors.New("unknown permessage-deflate parameter " + strconv.Quote(name))
		}
	}
	return d, nil
}

// acceptDeflate reports whether one of the client's offers of
// permessage-deflate can be accepted (the answer is then deflateAnswer).
// An offer is declined when a parameter is unknown, repeated or has an
// invalid value (RFC 7692 section 5), and when it asks for a server window
// below 15 bits: compress/flate always uses 32 KiB. The client can limit
// its own window if asked (client_max_window_bits); we do not ask.
func acceptDeflate(values []string) bool {
	exts, err := parseExtensions(values)
	if err != nil {
		return false
	}
	for _, e := range exts {
		if !strings.EqualFold(e.name, "permessage-deflate") {
			continue
		}
		if d, err := parseDeflateParams(e.params); err == nil && (d.serverBits == 0 || d.serverBits == 15) {
			return true
		}
	}
	return false
}

// checkDeflateAnswer checks a server's Sec-WebSocket-Extensions answer to
// deflateOffer and reports whether permessage-deflate was accepted. A
// smaller server window is fine for inflating; client_max_window_bits was
// not offered, so it is not allowed (RFC 7692 section 7.1.2.2), and
// compress/flate could not honour it anyway.
func checkDeflateAnswer(values []string) (bool, error) {
	exts, err := parseExtensions(values)
	if err != nil {
		return false, err
	}
	if len(exts) == 0 {
		return false, nil
	}
	if len(exts) > 1 || !strings.EqualFold(exts[0].name, "permessage-deflate") {
		return false, errors.New("server selected extensions " + strconv.Quote(strings.Join(values, ", ")) + "; only permessage-deflate was offered")
	}
	d, err := parseDeflateParams(exts[0].params)
	switch {
	case err != nil:
		return false, err
	case d.clientBitsAsked:
		return false, errors.New("server set client_max_window_bits, which was not offered")
	case !d.serverNoContext:
		// Offered, so a server accepting the offer must include it.
		return false, errors.New("server accepted permessage-deflate without server_no_context_takeover")
	}
	return true, nil
}

// deflater compresses one message at a time into out.
type deflater struct {
	fw  *flate.Writer
	out appendWriter
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// deflaters holds compressors between messages: each is about 1 MiB, and
// one is busy only while a message is compressed.
var deflaters = sync.Pool{New: func() any {
	d := &deflater{}
	d.fw, _ = flate.NewWriter(&d.out, flate.BestSpeed)
	return d
}}

// compressions counts the messages compressed, so tests and benchmarks
// can tell that a broadcast is compressed once, not per subscriber.
var compressions atomic.Uint64

// compress appends p compressed as one permessage-deflate message (RFC
// 7692 section 7.2.1: deflate with no context, flushed, without the final
// 0x00 0x00 0xff 0xff) to dst.
func compress(dst, p []byte) []byte {
	compressions.Add(1)
	d := deflaters.Get().(*deflater)
	d.out.b = dst
	d.fw.Reset(&d.out)
	d.fw.Write(p) // an appendWriter never fails
	d.fw.Flush()
	out := d.out.b
	d.out.b = nil
	deflaters.Put(d)
	return out[:len(out)-4]
}

// appendServerFrameCompressed appends one unmasked final text frame
// carrying payload compressed, with RSV1 set, and reports true; or, when
// payload is shorter than CompressionThreshold or would not shrink, the
// plain frame of appendServerFrame and false.
func appendServerFrameCompressed(dst, payload []byte) ([]byte, bool) {
	if len(payload) < CompressionThreshold {
		return appendServerFrame(dst, payload), false
	}
	start := len(dst)
	// Room for the longest header and for JSON compressed to half (it
	// usually shrinks more), so that one allocation is the usual cost;
	// the header is moved up to the payload once its length is known.
	if need := maxHeaderSize + len(payload)/2 + 64; cap(dst)-len(dst) < need {
		dst = append(make([]byte, 0, len(dst)+need), dst...)
	}
	z := compress(append(dst, make([]byte, maxHeaderSize)...), payload)
	n := len(z) - start - maxHeaderSize
	if n >= len(payload) {
		return appendServerFrame(dst[:start], payload), false
	}
	var hdr [maxHeaderSize]byte
	h := putHeader(hdr[:], true, opText|rsv1Op, false, 0, n)
	copy(z[start+maxHeaderSize-h:], hdr[:h])
	frame := z[start+maxHeaderSize-h:]
	return append(z[:start], frame...), true
}

// compressFrame returns the compressed form of a frame made by
// appendServerFrame, or the frame itself when compressing would not pay.
func compressFrame(frame []byte) []byte {
	n := headerLen(frame[0], frame[1])
	z, ok := appendServerFrameCompressed(nil, frame[n:])
	if !ok {
		return frame
	}
	return z
}

// inflateTail ends a message's compressed bytes: the 0x00 0x00 0xff 0xff
// that the sender removed, then an empty final stored block, so that the
// inflater reports io.EOF at the message's end.
var inflateTail = []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}

// inflateSource serves a message's compressed bytes, then inflateTail. It
// is an io.ByteReader, so flate reads from it without a bufio.Reader.
type inflateSource struct {
	p   []byte
	pos int
}

func (s *inflateSource) Read(b []byte) (int, error) {
	if s.pos >= len(s.p)+len(inflateTail) {
		return 0, io.EOF
	}
	n := 0
	if s.pos < len(s.p) {
		n = copy(b, s.p[s.pos:])
	} else {
		n = copy(b, inflateTail[s.pos-len(s.p):])
	}
	s.pos += n
	return n, nil
}

func (s *inflateSource) ReadByte() (byte, error) {
	switch {
	case s.pos < len(s.p):
		s.pos++
		return s.p[s.pos-1], nil
	case s.pos < len(s.p)+len(inflateTail):
		s.pos++
		return inflateTail[s.pos-1-len(s.p)], nil
	}
	return 0, io.EOF
}

// inflater inflates one message at a time; about 40 KiB, pooled.
type inflater struct {
	src inflateSource
	fr  io.ReadCloser
}

var inflaters sync.Pool

// errInflatedTooBig reports a message that inflates past the read limit.
var errInflatedTooBig = errors.New("inflated message exceeds the read limit")

// inflate appends the inflation of the compressed message z to buf. With
// limit > 0, no more than limit bytes are inflated (whatever buf's
// capacity) and buf grows by no more than that: a message that would
// inflate to more returns errInflatedTooBig as soon as it passes. Corrupt
// data returns the flate error.
func inflate(buf, z []byte, limit int64) ([]byte, error) {
	inf, _ := inflaters.Get().(*inflater)
	if inf == nil {
		inf = &inflater{}
		inf.src = inflateSource{p: z}
		inf.fr = flate.NewReader(&inf.src)
	} else {
		inf.src = inflateSource{p: z}
		inf.fr.(flate.Resetter).Reset(&inf.src, nil)
	}
	defer func() {
		inf.src = inflateSource{}
		inflaters.Put(inf)
	}()
	base := int64(len(buf)) // the limit is on the bytes inflated, after what buf held
	for {
		left := limit - (int64(len(buf)) - base) // what the limit still allows, when there is one
		if limit > 0 && left <= 0 {
			// Full to the limit: any byte more is one too many.
			var one [1]byte
			n, err := io.ReadFull(inf.fr, one[:])
			if n > 0 {
				return buf, errInflatedTooBig
			}
			if err == io.EOF {
				return buf, nil
			}
			return buf, err
		}
		if len(buf) == cap(buf) {
			grow := max(len(buf), 512)
			if limit > 0 && int64(grow) > left { // 0 < left <= limit: cannot overflow
				grow = int(left)
			}
			nb := make([]byte, len(buf), len(buf)+grow)
			copy(nb, buf)
			buf = nb
		}
		// Never more than the limit, also into a buffer reused with a
		// larger capacity.
		room := buf[len(buf):cap(buf)]
		if limit > 0 && int64(len(room)) > left {
			room = room[:left]
		}
		n, err := inf.fr.Read(room)
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// inflateBudget is what a connection's compressed messages may still
// inflate to (ConnOptions.InflateRatio): credit earned by the compressed
// bytes received and by time, spent by the bytes inflated.
type inflateBudget struct {
	credit int64 // bytes
	last   int64 // stamp() of the last refill
}

// inflateReserve is the most credit a connection holds: four read
// limits (4 MiB when there is no read limit, or a huge one).
func inflateReserve(readLimit int64) int64 {
	if readLimit <= 0 || readLimit > 1<<40 {
		return 4 << 20
	}
	return 4 * readLimit
}

// allow refills the budget for a compressed message of n bytes received
// at the stamp now and returns what it may inflate to. It starts full; it
// refills by ratio bytes per byte received and by a read limit per second.
func (b *inflateBudget) allow(n int, now int64, ratio int, readLimit int64) int64 {
	reserve := inflateReserve(readLimit)
	if b.last == 0 {
		b.credit = reserve
	} else if now > b.last {
		perSec := reserve / 4
		if el := now - b.last; el >= int64(time.Second) {
			b.credit = reserve
		} else {
			b.credit += int64(float64(perSec) * float64(el) / float64(time.Second)) // el < 1 s: less than perSec
		}
	}
	b.last = now
	if int64(n) > reserve/int64(ratio) { // a message this large earns at least the reserve
		b.credit = reserve
	} else {
		b.credit = min(reserve, b.credit+int64(n)*int64(ratio))
	}
	return b.credit
}
