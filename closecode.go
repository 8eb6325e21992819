package realtime

import (
	"errors"
	"fmt"
	"strconv"
)

// This file is the vocabulary of closing: the close code, its names, and
// the CloseError that every layer returns. The close handshake itself is
// close.go.

// CloseCode is a WebSocket close status code (RFC 6455 section 7.4). The
// codes 1000-1015 are defined by the RFC and the IANA registry (below);
// 4001-4004 are the realtime protocol's application codes (CloseFellBehind
// and the others, in protocol.go), shared with the npm package
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

// closeCodeNames names the codes for String. The protocol layer adds its
// application codes (protocol.go).
var closeCodeNames = map[CloseCode]string{
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
}

// String returns the code's number and, when it has one, its name, such as
// "1000 (normal closure)".
func (c CloseCode) String() string {
	if n, ok := closeCodeNames[c]; ok {
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
