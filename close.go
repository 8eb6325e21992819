package realtime

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// CloseCode is a WebSocket close status code (RFC 6455 section 7.4). The
// codes 1000-1015 are defined by the RFC and the IANA registry; 4001-4004
// are this package's application codes, shared with the npm package
// @degenerate/realtime.
type CloseCode int

// RFC 6455 and IANA-registered close codes.
const (
	// CloseNormalClosure (1000): the purpose of the connection was fulfilled.
	CloseNormalClosure CloseCode = 1000
	// CloseGoingAway (1001): a server going down or a browser leaving the page.
	CloseGoingAway CloseCode = 1001
	// CloseProtocolError (1002): the peer broke the WebSocket protocol.
	CloseProtocolError CloseCode = 1002
	// CloseUnsupportedData (1003): a data type the endpoint cannot accept.
	CloseUnsupportedData CloseCode = 1003
	// CloseNoStatusReceived (1005) is never sent. It is reported when a
	// close frame carried no status code.
	CloseNoStatusReceived CloseCode = 1005
	// CloseAbnormalClosure (1006) is never sent. It is reported when the
	// connection ended without a close frame.
	CloseAbnormalClosure CloseCode = 1006
	// CloseInvalidPayload (1007): a text message or close reason was not
	// valid UTF-8.
	CloseInvalidPayload CloseCode = 1007
	// ClosePolicyViolation (1008): a message violated the endpoint's policy.
	ClosePolicyViolation CloseCode = 1008
	// CloseMessageTooBig (1009): a message exceeded the read limit.
	CloseMessageTooBig CloseCode = 1009
	// CloseMandatoryExtension (1010): the client needed an extension the
	// server did not negotiate.
	CloseMandatoryExtension CloseCode = 1010
	// CloseInternalError (1011): the endpoint met an unexpected condition.
	CloseInternalError CloseCode = 1011
	// CloseServiceRestart (1012): the server is restarting; reconnect.
	CloseServiceRestart CloseCode = 1012
	// CloseTryAgainLater (1013): the server is overloaded; reconnect later.
	CloseTryAgainLater CloseCode = 1013
	// CloseBadGateway (1014): a gateway got an invalid upstream response.
	CloseBadGateway CloseCode = 1014
	// CloseTLSHandshake (1015) is never sent. It reports a failed TLS
	// handshake.
	CloseTLSHandshake CloseCode = 1015
)

// Application close codes of the realtime protocol. Their numbers and
// meanings are those of @degenerate/realtime.
const (
	// CloseFellBehind (4001): the connection's send buffer overflowed; the
	// client was too slow. A client reconnects and resubscribes with since.
	CloseFellBehind CloseCode = 4001
	// CloseUnauthorized (4002): the upgrade was rejected or the
	// connection's authentication ended (for example its token expired).
	CloseUnauthorized CloseCode = 4002
	// CloseUnknownShareData (4003): a subscribe named a share data id that
	// does not exist.
	CloseUnknownShareData CloseCode = 4003
	// CloseInvalidMessage (4004): an incoming message could not be parsed.
	// The close reason says which field and why.
	CloseInvalidMessage CloseCode = 4004
)

var statusNames = map[CloseCode]string{
	CloseNormalClosure:      "normal closure",
	CloseGoingAway:          "going away",
	CloseProtocolError:      "protocol error",
	CloseUnsupportedData:    "unsupported data",
	CloseNoStatusReceived:   "no status received",
	CloseAbnormalClosure:    "abnormal closure",
	CloseInvalidPayload:     "invalid payload data",
	ClosePolicyViolation:    "policy violation",
	CloseMessageTooBig:      "message too big",
	CloseMandatoryExtension: "mandatory extension",
	CloseInternalError:      "internal error",
	CloseServiceRestart:     "service restart",
	CloseTryAgainLater:      "try again later",
	CloseBadGateway:         "bad gateway",
	CloseTLSHandshake:       "TLS handshake",
	CloseFellBehind:         "fell behind",
	CloseUnauthorized:       "unauthorized",
	CloseUnknownShareData:   "unknown share data",
	CloseInvalidMessage:     "invalid message",
}

// String returns the code's number and, when it has one, its name, such as
// "1000 (normal closure)".
func (c CloseCode) String() string {
	if n, ok := statusNames[c]; ok {
		return strconv.Itoa(int(c)) + " (" + n + ")"
	}
	return strconv.Itoa(int(c))
}

// validWireCode reports whether c may appear in a close frame on the wire:
// 1000-1003, 1007-1014 and 3000-4999. 1004-1006 and 1015 are reserved,
// 1016-2999 unassigned, and nothing from 5000 is valid.
func validWireCode(c CloseCode) bool {
	switch {
	case c >= 1000 && c <= 1003:
		return true
	case c >= 1007 && c <= 1014:
		return true
	case c >= 3000 && c <= 4999:
		return true
	}
	return false
}

// maxCloseReason is the longest close reason: a control frame carries at
// most 125 bytes, two of which are the code.
const maxCloseReason = maxControlPayload - 2

// CloseError reports how a connection was closed. Read, Write and the other
// methods of Conn return it (wrapped or not: use errors.As) once the
// connection has closed with a close frame.
//
// Remote is true when the peer sent the close frame, false when this side
// did, either through Close or because it failed the connection (for
// example with 1002 after a protocol violation, 1007 after invalid UTF-8 or
// 1009 after a message over the read limit). Code is
// CloseNoStatusReceived when the peer's close frame had no code, and
// CloseAbnormalClosure when the connection ended with no close frame.
type CloseError struct {
	Code   CloseCode // the close code
	Reason string    // the close reason
	Remote bool      // the peer sent the close frame
}

func (e *CloseError) Error() string {
	who := "closed by this side"
	if e.Remote {
		who = "closed by peer"
	}
	if e.Reason == "" {
		return fmt.Sprintf("websocket: %s: %s", who, e.Code)
	}
	return fmt.Sprintf("websocket: %s: %s: %s", who, e.Code, e.Reason)
}

// CloseCodeOf returns the code of the CloseError in err's chain, or -1 when
// there is none.
func CloseCodeOf(err error) CloseCode {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

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
// sends an empty close frame. It waits for the frame semaphore at most the
// close timeout, since a writer may be stuck on a peer that does not read.
func (c *Conn) sendClose(code CloseCode, reason string) error {
	if c.isClosed() {
		return c.endErr()
	}
	timeout, stop := c.closeTimer()
	defer stop()
	select {
	case c.frameSem <- struct{}{}:
	case <-c.closed:
		return c.endErr()
	case <-timeout:
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
