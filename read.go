package realtime

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Read reads the next data message and returns its type and payload in a
// newly allocated slice. It answers pings and handles close frames that
// arrive on the way. See ReadInto for the errors and for a variant that
// reuses a buffer.
func (c *Conn) Read(ctx context.Context) (MessageType, []byte, error) {
	return c.ReadInto(ctx, nil)
}

// ReadInto reads the next data message, appends its payload to buf[:0] and
// returns the result, which aliases buf when it had the capacity. Reading
// into a buffer reused from message to message allocates nothing.
//
// Fragmented messages are reassembled. Pings that arrive (also between
// fragments) are answered with a pong carrying the same payload; pongs
// complete the Ping calls waiting for them.
//
// Errors: when the peer sends a close frame, ReadInto answers it and returns
// a *CloseError with Remote set. When the peer breaks the protocol, the
// connection is failed: a close frame with 1002 (protocol error), 1007
// (invalid UTF-8) or 1009 (message over the read limit) is sent, the
// network connection is closed, and ReadInto returns that *CloseError. If
// ctx ends or the idle timeout passes first, the connection is closed too,
// since a frame may have been cut in half; the error then matches ctx's
// error or os.ErrDeadlineExceeded. Once ReadInto has failed, every later
// read returns the same error.
//
// Only one goroutine reads at a time; concurrent calls wait for each other.
func (c *Conn) ReadInto(ctx context.Context, buf []byte) (MessageType, []byte, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	buf = buf[:0]
	if c.readErr != nil {
		return 0, buf, c.readErr
	}
	stop := c.rdl.watch(ctx)
	typ, buf, err := c.readMessage(buf)
	c.rdl.unwatch(stop)
	if err != nil {
		err = c.readFailed(ctx, err)
		c.readErr = err
		return 0, buf, err
	}
	return typ, buf, nil
}

// readMessage reads frames until a data message is complete. The caller
// holds readMu.
//
// A compressed message (its first frame has RSV1) takes the same path:
// its payloads are gathered in a pooled buffer instead of buf, bounded by
// the read limit like any message, and inflated into buf at the end.
func (c *Conn) readMessage(buf []byte) (MessageType, []byte, error) {
	var typ MessageType
	inMessage := false
	compressed := false // the message has RSV1: its payloads go to z
	var zp *[]byte      // the pooled buffer z is in (nil: none yet)
	var z []byte        // a compressed message's payloads so far
	frames := 0         // data frames of the message so far
	for {
		h, err := c.readHeader()
		if err != nil {
			return 0, buf, err
		}
		if ce := c.checkHeader(&h, inMessage); ce != nil {
			return 0, buf, c.fail(ce)
		}
		if h.op.isControl() {
			if err := c.readControl(&h); err != nil {
				return 0, buf, err
			}
			continue
		}
		if !inMessage {
			inMessage = true
			typ = MessageType(h.op)
			frames = 0
			c.utf8.reset()
			if h.rsv != 0 { // checkHeader allowed only RSV1, on a first frame
				// The pooled buffer is taken as the payload arrives
				// (readPayload), not for the length the header
				// announces: a stalled peer holds only what it sent.
				compressed = true
				zp, z = nil, nil
			}
		}
		frames++
		if max := c.opts.MaxFragments; max > 0 && frames > max {
			return 0, buf, c.fail(&CloseError{Code: CloseMessageTooBig,
				Reason: "message arrives in more than " + strconv.Itoa(max) + " fragments"})
		}
		// The bytes gathered never exceed the limit, so lim-n cannot
		// overflow, whatever length the header announces (up to 2^63-1).
		n := len(buf)
		if compressed {
			n = len(z)
		}
		if lim := c.opts.ReadLimit; lim > 0 && h.length > lim-int64(n) {
			return 0, buf, c.fail(&CloseError{Code: CloseMessageTooBig,
				Reason: "message exceeds the read limit of " + strconv.FormatInt(lim, 10) + " bytes"})
		}
		// (On an error a pooled buffer is left to the collector: the
		// connection has failed.)
		if compressed {
			z, err = c.readPayload(z, &h, false, &zp)
		} else {
			buf, err = c.readPayload(buf, &h, typ == MessageText, nil)
		}
		if err != nil {
			return 0, buf, err
		}
		if h.fin {
			if compressed {
				buf, err = c.inflateMessage(buf, z, typ, frames)
				if zp != nil {
					putWriteBuf(zp, z)
				}
				if err != nil {
					return 0, buf, err
				}
			}
			if typ == MessageText && !c.utf8.complete() {
				return 0, buf, c.fail(&CloseError{Code: CloseInvalidPayload, Reason: "text message ends inside a UTF-8 sequence"})
			}
			return typ, buf, nil
		}
	}
}

// inflateMessage appends the inflation of a compressed message's payload
// z, received in frames frames, to buf, checking it against the read limit
// and the connection's inflate budget as it inflates (a small frame that
// would inflate past either fails the connection, with 1009 or 1008,
// without inflating or allocating past it) and, for text, validating its
// UTF-8.
func (c *Conn) inflateMessage(buf, z []byte, typ MessageType, frames int) ([]byte, error) {
	limit := c.opts.ReadLimit
	budgeted := false
	if ratio := c.opts.InflateRatio; ratio > 0 {
		if c.inflated == nil {
			c.inflated = &inflateBudget{}
		}
		if credit := c.inflated.allow(len(z), stamp(), ratio, limit); limit <= 0 || credit < limit {
			// inflate takes 0 for no limit: a spent budget still lets
			// no more than a byte through.
			limit, budgeted = max(credit, 1), true
		}
	}
	start := len(buf)
	buf, err := inflate(buf, z, limit)
	if c.inflated != nil {
		c.inflated.credit -= int64(len(buf) - start)
	}
	switch {
	case errors.Is(err, errInflatedTooBig) && budgeted:
		return buf, c.fail(&CloseError{Code: ClosePolicyViolation,
			Reason: "compressed messages inflate to more than " + strconv.Itoa(c.opts.InflateRatio) + " bytes per byte received"})
	case errors.Is(err, errInflatedTooBig):
		return buf, c.fail(&CloseError{Code: CloseMessageTooBig,
			Reason: "message inflates past the read limit of " + strconv.FormatInt(c.opts.ReadLimit, 10) + " bytes"})
	case err != nil:
		// flate's text (offsets into the stream) is of no use to the
		// peer: the reason is fixed.
		return buf, c.fail(&CloseError{Code: CloseInvalidPayload, Reason: "invalid compressed data"})
	}
	// A deflate stream may take more bytes than it produces (a stored
	// block's header, a flush marker per frame, a tiny message), but
	// never many more: blocks that produce nothing cost their decoding
	// (a table build each) and are refused.
	if c.opts.InflateRatio > 0 && len(z) > len(buf)-start+64+8*frames {
		return buf, c.fail(&CloseError{Code: ClosePolicyViolation, Reason: "compressed data larger than what it inflates to"})
	}
	if typ == MessageText && !c.utf8.write(buf[start:]) {
		return buf, c.fail(&CloseError{Code: CloseInvalidPayload, Reason: "invalid UTF-8 in text message"})
	}
	return buf, nil
}

// readHeader reads the next frame header. The idle timeout starts over
// with each frame, unless a close handshake is under way (then its own
// deadline holds).
func (c *Conn) readHeader() (header, error) {
	c.idleRearm = !c.closeSent.Load()
	if err := c.fill(2); err != nil {
		return header{}, err
	}
	n := headerLen(c.rbuf[c.rpos], c.rbuf[c.rpos+1])
	if err := c.fill(n); err != nil {
		return header{}, err
	}
	h, _, err := parseHeader(c.rbuf[c.rpos : c.rpos+n])
	c.rpos += n
	if err != nil {
		return header{}, c.fail(&CloseError{Code: CloseProtocolError, Reason: err.Error()})
	}
	return h, nil
}

// checkHeader applies the rules of RFC 6455 section 5 that depend on the
// side and on the message in progress.
func (c *Conn) checkHeader(h *header, inMessage bool) *CloseError {
	if h.rsv != 0 {
		switch {
		case !c.deflate:
			return &CloseError{Code: CloseProtocolError, Reason: fmt.Sprintf("reserved bits set (0x%02x) with no extension negotiated", h.rsv)}
		case h.rsv != rsv1Bit:
			return &CloseError{Code: CloseProtocolError, Reason: fmt.Sprintf("reserved bits set (0x%02x); permessage-deflate uses RSV1 alone", h.rsv)}
		case h.op.isControl():
			return &CloseError{Code: CloseProtocolError, Reason: "RSV1 set on a " + h.op.String() + " frame: control frames are never compressed"}
		case h.op == opContinuation:
			return &CloseError{Code: CloseProtocolError, Reason: "RSV1 set on a continuation frame"}
		}
	}
	switch {
	case !h.op.known():
		return &CloseError{Code: CloseProtocolError, Reason: "unknown " + h.op.String()}
	case c.client && h.masked:
		return &CloseError{Code: CloseProtocolError, Reason: "masked frame from the server"}
	case !c.client && !h.masked:
		return &CloseError{Code: CloseProtocolError, Reason: "unmasked frame from the client"}
	}
	if h.op.isControl() {
		if !h.fin {
			return &CloseError{Code: CloseProtocolError, Reason: "fragmented " + h.op.String() + " frame"}
		}
		if h.length > maxControlPayload {
			return &CloseError{Code: CloseProtocolError, Reason: h.op.String() + " frame payload over 125 bytes"}
		}
		return nil
	}
	if h.op == opContinuation && !inMessage {
		return &CloseError{Code: CloseProtocolError, Reason: "continuation frame with no message in progress"}
	}
	if h.op != opContinuation && inMessage {
		return &CloseError{Code: CloseProtocolError, Reason: h.op.String() + " frame inside a fragmented message"}
	}
	return nil
}

// readPayload appends the frame's payload to buf, unmasking it and, for
// text, validating its UTF-8 as each network read returns it, so that
// invalid text fails the connection as soon as it arrives, not when the
// frame completes. buf grows only as bytes actually arrive, so a header
// announcing a huge length cannot by itself make the reader allocate; and
// it never grows past len(buf)+h.length, which the caller checked against
// the read limit, so the memory one message holds is bounded by the limit,
// not by what the allocator rounds up to. With zp non-nil, buf is a buffer
// of the write pools (a compressed message's, which *zp holds) and grows
// through their size classes.
func (c *Conn) readPayload(buf []byte, h *header, text bool, zp **[]byte) ([]byte, error) {
	remaining := h.length
	pos := 0
	for remaining > 0 {
		if len(buf) == cap(buf) {
			// Grow once bytes are there to fill the room: a peer that
			// sends a header and stalls holds no payload buffer.
			if err := c.await(); err != nil {
				return buf, err
			}
			buf = growPayload(buf, remaining, zp)
		}
		room := cap(buf) - len(buf)
		if int64(room) > remaining {
			room = int(remaining)
		}
		start := len(buf)
		n, err := c.readSome(buf[start : start+room])
		buf = buf[:start+n]
		if n > 0 {
			p := buf[start:]
			if h.masked {
				pos = maskBytes(h.key, pos, p)
			}
			if text && !c.utf8.write(p) {
				return buf, c.fail(&CloseError{Code: CloseInvalidPayload, Reason: "invalid UTF-8 in text message"})
			}
			remaining -= int64(n)
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// growPayload returns buf with room for more of a frame's remaining
// bytes: doubled from 512 bytes, never beyond the frame's end. A pooled
// buffer (zp non-nil) moves to the next size class of the write pools, and
// the one it leaves goes back to its pool.
func growPayload(buf []byte, remaining int64, zp **[]byte) []byte {
	grow := max(len(buf), 512)
	if int64(grow) > remaining {
		grow = int(remaining)
	}
	if zp != nil && len(buf)+grow <= writeBufClasses[len(writeBufClasses)-1] {
		old := *zp
		*zp = getWriteBuf(len(buf) + grow)
		nb := append((**zp)[:0], buf...)
		if old != nil {
			putWriteBuf(old, buf)
		}
		return nb
	}
	nb := make([]byte, len(buf), len(buf)+grow)
	copy(nb, buf)
	if zp != nil && *zp != nil {
		putWriteBuf(*zp, buf) // past the largest class: back to its pool
		*zp = nil
	}
	return nb
}

// readSome fills the start of p with what the read buffer holds or, when
// it is empty, with what one network read returns, and returns how many
// bytes it filled: at least one unless it fails. Small reads go through
// the read buffer, which may take the next frames with them; large ones
// go straight into p.
func (c *Conn) readSome(p []byte) (int, error) {
	if c.rend == c.rpos && len(p) >= len(c.rbuf) {
		return c.netRead(p)
	}
	if err := c.await(); err != nil {
		return 0, err
	}
	n := copy(p, c.rbuf[c.rpos:c.rend])
	c.rpos += n
	return n, nil
}

// await makes sure the read buffer holds at least one byte, reading once
// from the network if it is empty.
func (c *Conn) await() error {
	if c.rend > c.rpos {
		return nil
	}
	n, err := c.netRead(c.rbuf)
	c.rpos, c.rend = 0, n
	return err
}

// netRead is one network read inside a frame: at least one byte, or an
// error (io.ErrUnexpectedEOF for the end of the stream). An error that
// comes with bytes is kept for the next read.
func (c *Conn) netRead(p []byte) (int, error) {
	if err := c.waitErr; err != nil {
		c.waitErr = nil
		return 0, err
	}
	c.rearmIdle()
	for {
		n, err := c.nc.Read(p)
		if n > 0 {
			if err != nil {
				c.waitErr = err
			}
			return n, nil
		}
		if err == io.EOF {
			return 0, io.ErrUnexpectedEOF
		}
		if err != nil {
			return 0, err
		}
	}
}

// readControl reads a control frame's payload and acts on it.
func (c *Conn) readControl(h *header) error {
	p := c.ctrl[:h.length]
	if err := c.readFull(p); err != nil {
		return err
	}
	if h.masked {
		maskBytes(h.key, 0, p)
	}
	switch h.op {
	case opPing:
		c.queuePong(p)
	case opPong:
		c.handlePong(p)
	case opClose:
		return c.handleClose(p)
	}
	return nil
}

// handlePong completes the Ping call whose payload the pong echoes.
func (c *Conn) handlePong(p []byte) {
	c.pongs.Add(1)
	if len(p) != 8 {
		return
	}
	seq := binary.BigEndian.Uint64(p)
	c.pingMu.Lock()
	if ch, ok := c.pings[seq]; ok {
		close(ch)
		delete(c.pings, seq)
	}
	c.pingMu.Unlock()
}

// fill makes at least n bytes (n <= len(c.rbuf)) available in the read
// buffer.
func (c *Conn) fill(n int) error {
	if c.rend-c.rpos >= n {
		return nil
	}
	if c.rpos > 0 {
		c.rend = copy(c.rbuf, c.rbuf[c.rpos:c.rend])
		c.rpos = 0
	}
	if err := c.waitErr; err != nil {
		c.waitErr = nil
		return err
	}
	c.rearmIdle()
	for c.rend < n {
		m, err := c.nc.Read(c.rbuf[c.rend:])
		c.rend += m
		if err != nil {
			if c.rend >= n {
				return nil
			}
			if err == io.EOF && c.rend > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// readFull fills p from the buffer and then the network (readSome).
func (c *Conn) readFull(p []byte) error {
	for len(p) > 0 {
		n, err := c.readSome(p)
		p = p[n:]
		if err != nil {
			return err
		}
	}
	return nil
}

// rearmIdle restarts the idle timeout before the first network read of a
// frame. Frames already buffered need no deadline, and later reads of the
// same frame keep it, so a peer cannot stretch a frame by trickling bytes.
// (Setting it lazily keeps the clock read off the path of buffered frames.)
func (c *Conn) rearmIdle() {
	if c.idleRearm {
		c.idleRearm = false
		c.rdl.extend(c.opts.IdleTimeout)
	}
}

// readFailed turns a read error into the error Read reports, and closes the
// connection when the error leaves it unusable.
func (c *Conn) readFailed(ctx context.Context, err error) error {
	var ce *CloseError
	if errors.As(err, &ce) {
		return err // a close frame was received, or the connection failed
	}
	if c.isClosed() {
		return c.endErr()
	}
	if c.closeSent.Load() && isTimeout(err) {
		// Close is waiting for the peer's answer and its deadline passed.
		c.closeTCP(&CloseError{Code: CloseAbnormalClosure, Reason: "no answer to the close frame"})
		return c.endErr()
	}
	if cerr := ctx.Err(); cerr != nil {
		c.fail(&CloseError{Code: CloseGoingAway, Reason: "read canceled"})
		return fmt.Errorf("websocket: read: %w", cerr)
	}
	if isTimeout(err) {
		c.fail(&CloseError{Code: CloseGoingAway, Reason: "idle timeout"})
		return fmt.Errorf("websocket: read: no frame within the idle timeout of %v: %w", c.opts.IdleTimeout, err)
	}
	if isEOF(err) {
		c.closeTCP(&CloseError{Code: CloseAbnormalClosure, Reason: "connection closed without a close frame"})
		return c.endErr()
	}
	c.closeTCP(&CloseError{Code: CloseAbnormalClosure, Reason: err.Error()})
	return fmt.Errorf("websocket: read: %w", err)
}

// buffered returns the number of bytes read from the network and not yet
// consumed by ReadInto.
func (c *Conn) buffered() int {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	return c.rend - c.rpos
}

// waitReadable blocks until some bytes are buffered, reading them from the
// network with as few stack frames as possible. An error is kept for the
// next ReadInto to report.
func (c *Conn) waitReadable() {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.rend > c.rpos || c.readErr != nil {
		return
	}
	c.rpos, c.rend = 0, 0
	if !c.closeSent.Load() {
		c.rdl.extend(c.opts.IdleTimeout)
	}
	if c.idleRead() {
		return
	}
	n, err := c.nc.Read(c.rbuf)
	c.rend = n
	c.waitErr = err
}
