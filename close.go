package realtime

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// maxCloseReason is the longest close reason: a control frame carries at
// most 125 bytes, two of which are the code.
const maxCloseReason = maxControlPayload - 2

// parseClosePayload validates a received close frame's payload (RFC 6455
// section 5.5.1) and returns its code and reason. An empty payload yields
// CloseNoStatusReceived. A one-byte payload or an invalid code fails with
// 1002; a reason that is not UTF-8 fails with 1007.
func parseClosePayload(p []byte) (CloseCode, string, *CloseError) {
	switch len(p) {
	case 0:
		return CloseNoStatusReceived, "", nil
	case 1:
		return 0, "", &CloseError{Code: CloseProtocolError, Reason: "close frame payload of 1 byte"}
	}
	code := CloseCode(binary.BigEndian.Uint16(p))
	if !validWireCode(code) {
		return 0, "", &CloseError{Code: CloseProtocolError, Reason: "invalid close code " + strconv.Itoa(int(code))}
	}
	if !validUTF8(p[2:]) {
		return 0, "", &CloseError{Code: CloseInvalidPayload, Reason: "close reason is not valid UTF-8"}
	}
	return code, string(p[2:]), nil
}

// truncateReason cuts a close reason to maxCloseReason bytes without
// splitting a UTF-8 sequence.
func truncateReason(s string) string {
	if len(s) <= maxCloseReason {
		return s
	}
	i := maxCloseReason
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}

// Close starts the close handshake with code and reason (at most 123 bytes
// of UTF-8), waits up to the close timeout for the peer's close frame, and
// closes the network connection. It returns nil when the peer answered in
// time. It may be called concurrently with reads and writes: a goroutine
// blocked in Read sees the peer's answer and returns its *CloseError, while
// pending writes fail.
//
// Only codes that may appear on the wire are accepted: 1000-1003,
// 1007-1014 and 3000-4999.
func (c *Conn) Close(code CloseCode, reason string) error {
	if !validWireCode(code) {
		return fmt.Errorf("websocket: close: code %d may not be sent", int(code))
	}
	if len(reason) > maxCloseReason {
		return fmt.Errorf("websocket: close: reason is %d bytes, more than %d", len(reason), maxCloseReason)
	}
	if !validUTF8([]byte(reason)) {
		return errors.New("websocket: close: reason is not valid UTF-8")
	}
	if c.isClosed() {
		return c.endErr()
	}
	ce := &CloseError{Code: code, Reason: reason}
	c.setCloseErr(ce)
	if err := c.sendClose(code, reason); err != nil {
		c.closeTCP(ce)
		return err
	}
	deadline := c.opts.closeDeadline()
	c.nc.SetReadDeadline(deadline)
	if c.readMu.TryLock() {
		// Nobody is reading: read until the peer's close frame arrives.
		if c.readErr == nil {
			var err error
			for err == nil {
				_, _, err = c.readMessage(nil)
			}
			c.readErr = c.endErr()
		}
		c.readMu.Unlock()
	} else {
		// A reader is active and will see the peer's close frame.
		timeout, stop := c.closeTimer()
		select {
		case <-c.closeRecv:
			select {
			case <-c.closed:
			case <-timeout:
			}
		case <-c.closed:
		case <-timeout:
		}
		stop()
	}
	c.closeTCP(ce)
	select {
	case <-c.closeRecv:
		return nil
	default:
		return fmt.Errorf("websocket: close: no close frame from the peer within %v: %w", c.opts.CloseTimeout, ErrClosed)
	}
}

// closeTimer returns a channel that fires when the close timeout passes,
// and its stop function; with no timeout (negative) the channel is nil and
// never fires.
func (c *Conn) closeTimer() (<-chan time.Time, func() bool) {
	if c.opts.CloseTimeout < 0 {
		return nil, func() bool { return false }
	}
	t := time.NewTimer(c.opts.CloseTimeout)
	return t.C, t.Stop
}

// handleClose acts on a received close frame: it validates it, answers it
// (unless this side's close frame went first), closes the network
// connection (a client first gives the server a moment to close it, as RFC
// 6455 section 7.1.1 asks) and returns the peer's *CloseError.
func (c *Conn) handleClose(p []byte) error {
	code, reason, bad := parseClosePayload(p)
	if bad != nil {
		return c.fail(bad)
	}
	remote := &CloseError{Code: code, Reason: reason, Remote: true}
	c.setCloseErr(remote)
	c.recvOnce.Do(func() { close(c.closeRecv) })
	if !c.closeSent.Load() {
		echo := code
		if code == CloseNoStatusReceived {
			echo = 0 // an empty close is answered with an empty close
		}
		c.sendClose(echo, "")
	}
	if c.client {
		// Wait, briefly, for the server to close the TCP connection.
		c.nc.SetReadDeadline(c.opts.closeDeadline())
		for c.fill(len(c.rbuf)) == nil {
			c.rpos, c.rend = 0, 0
		}
	}
	c.closeTCP(remote)
	return remote
}

// fail fails the connection (RFC 6455 section 7.1.7): it sends a close
// frame with ce's code, best effort, closes the network connection and
// returns ce.
func (c *Conn) fail(ce *CloseError) error {
	c.setCloseErr(ce)
	c.sendClose(ce.Code, ce.Reason)
	c.closeTCP(ce)
	return ce
}

// sendClose writes a close frame unless one was written already. Code 0
// sends an empty close frame. It waits for the frame lock at most the
// close timeout, since a writer may be stuck on a peer that does not read.
func (c *Conn) sendClose(code CloseCode, reason string) error {
	if c.isClosed() {
		return c.endErr()
	}
	timeout, stop := c.closeTimer()
	defer stop()
	switch c.frameLock.lock(context.Background(), c.closed, timeout) {
	case lockClosed:
		return c.endErr()
	case lockTimedOut:
		return fmt.Errorf("websocket: close: another write held the connection for %v", c.opts.CloseTimeout)
	}
	defer c.releaseFrame()
	if c.closeSent.Swap(true) {
		return nil
	}
	var buf [maxControlPayload]byte
	n := 0
	if code != 0 {
		binary.BigEndian.PutUint16(buf[:2], uint16(code))
		n = 2 + copy(buf[2:], truncateReason(reason))
	}
	if err := c.writeFrameLocked(true, opClose, buf[:n]); err != nil {
		return fmt.Errorf("websocket: close: %w", err)
	}
	return nil
}
