package realtime

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// This file holds the RFC 6455 section 5.2 frame header: its layout, how it
// is parsed from bytes and how it is written into bytes. It knows nothing of
// connections; read.go and write.go drive it.

// opcode is the 4-bit frame opcode of RFC 6455 section 5.2.
type opcode byte

const (
	opContinuation opcode = 0x0
	opText         opcode = 0x1
	opBinary       opcode = 0x2
	opClose        opcode = 0x8
	opPing         opcode = 0x9
	opPong         opcode = 0xA
)

// isControl reports whether the opcode is a control opcode (0x8-0xF).
func (o opcode) isControl() bool { return o&0x8 != 0 }

// known reports whether RFC 6455 defines the opcode.
func (o opcode) known() bool {
	switch o {
	case opContinuation, opText, opBinary, opClose, opPing, opPong:
		return true
	}
	return false
}

func (o opcode) String() string {
	switch o {
	case opContinuation:
		return "continuation"
	case opText:
		return "text"
	case opBinary:
		return "binary"
	case opClose:
		return "close"
	case opPing:
		return "ping"
	case opPong:
		return "pong"
	}
	return fmt.Sprintf("opcode 0x%x", byte(o))
}

// MessageType is the type of a WebSocket data message.
type MessageType int

const (
	// MessageText is a UTF-8 text message (opcode 0x1). Text messages are
	// validated as UTF-8 on receipt; an invalid one fails the connection
	// with close code 1007.
	MessageText MessageType = MessageType(opText)
	// MessageBinary is a binary message (opcode 0x2).
	MessageBinary MessageType = MessageType(opBinary)
)

func (t MessageType) String() string {
	switch t {
	case MessageText:
		return "text"
	case MessageBinary:
		return "binary"
	}
	return fmt.Sprintf("MessageType(%d)", int(t))
}

// Frame header bit layout.
const (
	finBit  = 0x80
	rsv1Bit = 0x40
	rsv2Bit = 0x20
	rsv3Bit = 0x10
	rsvBits = rsv1Bit | rsv2Bit | rsv3Bit
	maskBit = 0x80

	// maxHeaderSize is the largest frame header: 2 fixed bytes, 8 bytes
	// of extended length and a 4-byte masking key.
	maxHeaderSize = 14
	// maxControlPayload is the largest payload a control frame may carry
	// (RFC 6455 section 5.5).
	maxControlPayload = 125
)

// header is a parsed frame header.
type header struct {
	fin    bool
	rsv    byte // the three RSV bits, in place (0x70 mask)
	op     opcode
	masked bool
	key    uint32 // masking key, big-endian as on the wire
	length int64
}

// errShortHeader means more bytes are needed to parse a header.
var errShortHeader = errors.New("short frame header")

// headerLen returns the total header length announced by the first two
// bytes of a frame.
func headerLen(b0, b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&maskBit != 0 {
		n += 4
	}
	return n
}

// parseHeader parses a complete header from b, which must hold at least
// headerLen(b[0], b[1]) bytes. It rejects only what the header alone makes
// invalid in every context: a 64-bit length with the top bit set and a
// length not encoded in its minimal form is accepted (RFC 6455 asks the
// sender for the minimal form but does not ask the receiver to fail).
func parseHeader(b []byte) (header, int, error) {
	if len(b) < 2 {
		return header{}, 0, errShortHeader
	}
	n := headerLen(b[0], b[1])
	if len(b) < n {
		return header{}, 0, errShortHeader
	}
	h := header{
		fin:    b[0]&finBit != 0,
		rsv:    b[0] & rsvBits,
		op:     opcode(b[0] & 0x0f),
		masked: b[1]&maskBit != 0,
	}
	p := 2
	switch l := b[1] & 0x7f; l {
	case 126:
		h.length = int64(binary.BigEndian.Uint16(b[2:4]))
		p = 4
	case 127:
		u := binary.BigEndian.Uint64(b[2:10])
		if u>>63 != 0 {
			return header{}, 0, errors.New("64-bit payload length has its most significant bit set")
		}
		h.length = int64(u)
		p = 10
	default:
		h.length = int64(l)
	}
	if h.masked {
		h.key = binary.BigEndian.Uint32(b[p : p+4])
	}
	return h, n, nil
}

// putHeader writes the header into b, which must have room for
// maxHeaderSize bytes, and returns the number of bytes written. The length
// is always written in its minimal form.
func putHeader(b []byte, fin bool, op opcode, masked bool, key uint32, length int) int {
	b0 := byte(op)
	if fin {
		b0 |= finBit
	}
	b[0] = b0
	var b1 byte
	if masked {
		b1 = maskBit
	}
	n := 2
	switch {
	case length <= 125:
		b[1] = b1 | byte(length)
	case length <= 0xffff:
		b[1] = b1 | 126
		binary.BigEndian.PutUint16(b[2:4], uint16(length))
		n = 4
	default:
		b[1] = b1 | 127
		binary.BigEndian.PutUint64(b[2:10], uint64(length))
		n = 10
	}
	if masked {
		binary.BigEndian.PutUint32(b[n:n+4], key)
		n += 4
	}
	return n
}
