package realtime

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file defines the realtime wire protocol: the messages of both
// directions as Go types, and their encoding. decode.go parses them.
//
// Every message is one JSON object in one WebSocket text message, with the
// envelope {"v":1,"type":"...", ...}. Field names are those of
// @degenerate/realtime. Encoding is compact and deterministic: the same
// value always gives the same bytes, fields in the order documented on each
// type, optional fields left out when empty. A server frame can therefore be
// encoded once and the same bytes sent to every subscriber.

// Subprotocol is the WebSocket subprotocol name of the realtime protocol.
// A Server selects it when the client offers it (clients need not).
const Subprotocol = "realtime.v1"

// protocolVersion is the value of the "v" field of every message.
const protocolVersion = 1

// MaxIDLength is the longest id, in bytes, that a message may carry: share
// data ids, function ids, transaction ids, cursors, correlation ids and
// error codes. Longer ids are refused by the decoder.
const MaxIDLength = 256

// maxNesting is how deeply JSON may nest in a message, counting the
// envelope object as the first level, so proposedData and currentState may
// nest 63 levels. Deeper messages are refused by the decoder, which keeps
// its work and stack bounded.
const maxNesting = 64

// Message type names, the values of the "type" field.
const (
	typeSubscribe      = "subscribe"
	typeUnsubscribe    = "unsubscribe"
	typePropose        = "propose"
	typePing           = "ping"
	typeState          = "state"
	typeTransaction    = "transaction"
	typeLifecycle      = "lifecycle"
	typeProposalResult = "proposal-result"
	typePong           = "pong"
	typeError          = "error"
)

// LifecycleEvent is the event of a lifecycle message.
type LifecycleEvent string

const (
	// LifecycleUpdated: the share data's state was replaced wholesale,
	// outside the transaction flow. The message carries the new state.
	LifecycleUpdated LifecycleEvent = "updated"
	// LifecycleRemoved: the share data was removed. It is terminal: the
	// subscription ends and no frame for that id follows.
	LifecycleRemoved LifecycleEvent = "removed"
)

// ClientMessage is a message from a client to the server: one of
// *SubscribeMessage, *UnsubscribeMessage, *ProposeMessage and
// *PingMessage.
type ClientMessage interface {
	// typeName returns the value of the "type" field.
	typeName() string
	// AppendJSON appends the message's compact JSON encoding to dst.
	AppendJSON(dst []byte) []byte
	clientMessage()
}

// ServerMessage is a message from the server to a client: one of
// *StateMessage, *TransactionMessage, *LifecycleMessage,
// *ProposalResultMessage, *PongMessage and *ErrorMessage.
type ServerMessage interface {
	// typeName returns the value of the "type" field.
	typeName() string
	// AppendJSON appends the message's compact JSON encoding to dst.
	AppendJSON(dst []byte) []byte
	serverMessage()
}

// SubscribeMessage asks for the frames of one share data item:
//
//	{"v":1,"type":"subscribe","shareDataId":"doc-1","since":"tx-41"}
//
// since is optional. When HasSince is set, the server replays the retained
// transactions after Since; an empty Since then means "from the first
// transaction".
type SubscribeMessage struct {
	ShareDataID string // the share data item
	Since       string // the cursor to replay from (see HasSince)
	HasSince    bool   // since was given
}

// UnsubscribeMessage stops the frames of one share data item:
//
//	{"v":1,"type":"unsubscribe","shareDataId":"doc-1"}
type UnsubscribeMessage struct {
	ShareDataID string // the share data item
}

// ProposeMessage proposes a change through a function the server
// registered:
//
//	{"v":1,"type":"propose","shareDataId":"doc-1","functionId":"set","proposedData":{"a":1},"correlationId":"c-7"}
//
// ProposedData is any JSON value, kept as compact raw bytes. The server
// answers with a ProposalResultMessage carrying the same CorrelationID.
//
// IdempotencyKey and Retry are optional, and absent from the seed's
// protocol: a proposal with a key is applied at most once however often it
// is sent, and a repeat is answered with the first one's outcome (see the
// README's "Exactly-once proposals"). Retry marks a resend after a lost
// connection:
//
//	{"v":1,"type":"propose",...,"idempotencyKey":"k-5fQ2","retry":true}
type ProposeMessage struct {
	ShareDataID    string          // the share data item
	FunctionID     string          // the function to run, as registered
	ProposedData   json.RawMessage // any JSON value, compact
	CorrelationID  string          // matches the answer to the request
	IdempotencyKey string          // optional: the proposal's key, unique per proposal
	Retry          bool            // optional: a resend of a proposal that may have arrived
}

// PingMessage is an application-level round-trip check, answered by a
// PongMessage with the same CorrelationID:
//
//	{"v":1,"type":"ping","correlationId":"c-8"}
type PingMessage struct {
	CorrelationID string // matches the answer to the request
}

// StateMessage is the snapshot sent once per subscribe:
//
//	{"v":1,"type":"state","shareDataId":"doc-1","currentState":{...},"lastTransactionId":"tx-41"}
//
// LastTransactionID is the id of the last transaction applied to the
// state, "" when none was; it is the subscription's cursor.
type StateMessage struct {
	ShareDataID       string          // the share data item
	CurrentState      json.RawMessage // the state, compact JSON
	LastTransactionID string          // the cursor: the last transaction applied, "" if none
}

// TransactionMessage reports one applied transaction:
//
//	{"v":1,"type":"transaction","shareDataId":"doc-1","transactionId":"tx-42","previousTransactionId":"tx-41","functionId":"set","proposedData":{...},"currentState":{...}}
//
// Live frames carry CurrentState, the state after the transaction.
// Replayed frames (sent after a subscribe with since) carry
// "replayed":true and no currentState. PreviousTransactionID is the id of
// the transaction before this one on the same share data ("" for the
// first): a client whose cursor differs has missed a frame. It is this
// package's addition; clients of @degenerate/realtime ignore it.
type TransactionMessage struct {
	ShareDataID           string          // the share data item
	TransactionID         string          // the transaction's id
	PreviousTransactionID string          // the previous transaction's id, "" for the first
	FunctionID            string          // the function to run, as registered
	ProposedData          json.RawMessage // any JSON value, compact
	CurrentState          json.RawMessage // live frames only
	Replayed              bool            // sent by a replay, not live
	// IdempotencyKey is the key the proposal carried, when it had one: a
	// proposer recognises its own transaction by it, also in a replay.
	IdempotencyKey string
}

// LifecycleMessage reports a change outside the transaction flow:
//
//	{"v":1,"type":"lifecycle","shareDataId":"doc-1","event":"updated","currentState":{...}}
//	{"v":1,"type":"lifecycle","shareDataId":"doc-1","event":"removed"}
//
// CurrentState is carried with LifecycleUpdated only.
type LifecycleMessage struct {
	ShareDataID  string          // the share data item
	Event        LifecycleEvent  // updated or removed
	CurrentState json.RawMessage // the state, compact JSON
}

// ProposalResultMessage answers a ProposeMessage:
//
//	{"v":1,"type":"proposal-result","correlationId":"c-7","accepted":true,"transactionId":"tx-42"}
//	{"v":1,"type":"proposal-result","correlationId":"c-7","accepted":false,"error":"unknown function"}
//
// TransactionID is carried when Accepted, Error when not. Code, optional,
// names for programs why a proposal was not accepted when that is not the
// function's or the authorizer's refusal: CodeOutcomeUnknown,
// CodeRateLimited, CodeTimeout, CodeInternal (the function panicked; the
// server logged it).
type ProposalResultMessage struct {
	CorrelationID string    // matches the answer to the request
	Accepted      bool      // whether the proposal was applied
	TransactionID string    // the transaction's id
	Error         string    // why not, when not accepted
	Code          ErrorCode // optional, when not accepted
}

// PongMessage answers a PingMessage:
//
//	{"v":1,"type":"pong","correlationId":"c-8"}
type PongMessage struct {
	CorrelationID string // matches the answer to the request
}

// ErrorMessage reports a non-fatal protocol or authorization error:
//
//	{"v":1,"type":"error","code":"replay-cursor-not-found","message":"...","shareDataId":"doc-1"}
//
// ShareDataID and CorrelationID are carried when the error concerns one
// share data item or one request.
type ErrorMessage struct {
	Code          ErrorCode // what went wrong, for programs (one of the Code constants)
	Message       string    // a human-readable explanation
	ShareDataID   string    // the share data item
	CorrelationID string    // matches the answer to the request
}

// Error makes an error frame an error, so that the Go client can return it
// as it came (Propose or Ping answered by an error frame) and a caller can
// match it with errors.As and decide on its Code.
func (m *ErrorMessage) Error() string {
	return "realtime: the server answered " + string(m.Code) + ": " + m.Message
}

func (*SubscribeMessage) typeName() string      { return typeSubscribe }
func (*UnsubscribeMessage) typeName() string    { return typeUnsubscribe }
func (*ProposeMessage) typeName() string        { return typePropose }
func (*PingMessage) typeName() string           { return typePing }
func (*StateMessage) typeName() string          { return typeState }
func (*TransactionMessage) typeName() string    { return typeTransaction }
func (*LifecycleMessage) typeName() string      { return typeLifecycle }
func (*ProposalResultMessage) typeName() string { return typeProposalResult }
func (*PongMessage) typeName() string           { return typePong }
func (*ErrorMessage) typeName() string          { return typeError }

func (*SubscribeMessage) clientMessage()      {}
func (*UnsubscribeMessage) clientMessage()    {}
func (*ProposeMessage) clientMessage()        {}
func (*PingMessage) clientMessage()           {}
func (*StateMessage) serverMessage()          {}
func (*TransactionMessage) serverMessage()    {}
func (*LifecycleMessage) serverMessage()      {}
func (*ProposalResultMessage) serverMessage() {}
func (*PongMessage) serverMessage()           {}
func (*ErrorMessage) serverMessage()          {}

// AppendJSON appends {"v":1,"type":"subscribe","shareDataId",["since"]}.
func (m *SubscribeMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typeSubscribe)
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	if m.HasSince {
		dst = appendStringField(dst, "since", m.Since)
	}
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"unsubscribe","shareDataId"}.
func (m *UnsubscribeMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typeUnsubscribe)
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"propose","shareDataId","functionId",
// "proposedData","correlationId"}.
func (m *ProposeMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typePropose)
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	dst = appendStringField(dst, "functionId", m.FunctionID)
	dst = appendRawField(dst, "proposedData", m.ProposedData)
	dst = appendStringField(dst, "correlationId", m.CorrelationID)
	if m.IdempotencyKey != "" {
		dst = appendStringField(dst, "idempotencyKey", m.IdempotencyKey)
	}
	if m.Retry {
		dst = append(dst, `,"retry":true`...)
	}
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"ping","correlationId"}.
func (m *PingMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typePing)
	dst = appendStringField(dst, "correlationId", m.CorrelationID)
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"state","shareDataId","currentState",
// "lastTransactionId"}.
func (m *StateMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typeState)
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	dst = appendRawField(dst, "currentState", m.CurrentState)
	dst = appendStringField(dst, "lastTransactionId", m.LastTransactionID)
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"transaction","shareDataId",
// "transactionId","previousTransactionId","functionId","proposedData",
// then "currentState" (live) or "replayed":true (replayed)}.
func (m *TransactionMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typeTransaction)
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	dst = appendStringField(dst, "transactionId", m.TransactionID)
	dst = appendStringField(dst, "previousTransactionId", m.PreviousTransactionID)
	dst = appendStringField(dst, "functionId", m.FunctionID)
	dst = appendRawField(dst, "proposedData", m.ProposedData)
	if m.Replayed {
		dst = append(dst, `,"replayed":true`...)
	} else {
		dst = appendRawField(dst, "currentState", m.CurrentState)
	}
	if m.IdempotencyKey != "" {
		dst = appendStringField(dst, "idempotencyKey", m.IdempotencyKey)
	}
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"lifecycle","shareDataId","event",
// ["currentState" with updated]}.
func (m *LifecycleMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typeLifecycle)
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	dst = appendStringField(dst, "event", string(m.Event))
	if m.Event == LifecycleUpdated {
		dst = appendRawField(dst, "currentState", m.CurrentState)
	}
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"proposal-result","correlationId",
// "accepted", then "transactionId" (accepted) or "error" (not)}.
func (m *ProposalResultMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typeProposalResult)
	dst = appendStringField(dst, "correlationId", m.CorrelationID)
	if m.Accepted {
		dst = append(dst, `,"accepted":true`...)
		dst = appendStringField(dst, "transactionId", m.TransactionID)
	} else {
		dst = append(dst, `,"accepted":false`...)
		dst = appendStringField(dst, "error", m.Error)
		if m.Code != "" {
			dst = appendStringField(dst, "code", string(m.Code))
		}
	}
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"pong","correlationId"}.
func (m *PongMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typePong)
	dst = appendStringField(dst, "correlationId", m.CorrelationID)
	return append(dst, '}')
}

// AppendJSON appends {"v":1,"type":"error","code","message",
// ["shareDataId"],["correlationId"]}.
func (m *ErrorMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, typeError)
	dst = appendStringField(dst, "code", string(m.Code))
	dst = appendStringField(dst, "message", m.Message)
	if m.ShareDataID != "" {
		dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	}
	if m.CorrelationID != "" {
		dst = appendStringField(dst, "correlationId", m.CorrelationID)
	}
	return append(dst, '}')
}

func appendEnvelope(dst []byte, typ string) []byte {
	dst = append(dst, `{"v":1,"type":"`...)
	dst = append(dst, typ...)
	return append(dst, '"')
}

// appendStringField appends ,"name":"value".
func appendStringField(dst []byte, name, value string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return appendJSONString(dst, value)
}

// appendRawField appends ,"name":raw, with null for an empty raw value.
// raw must be valid JSON, as values decoded by this package and produced
// by encoding/json are.
func appendRawField(dst []byte, name string, raw json.RawMessage) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	if len(raw) == 0 {
		return append(dst, "null"...)
	}
	return append(dst, raw...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters are escaped, everything else is copied as UTF-8, and
// invalid UTF-8 becomes U+FFFD so the output is always valid JSON.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i += size
				start = i
				continue
			}
			i += size
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// peerText is err's text as a peer reads it (a refusal reason, an error
// frame's message): without the "realtime: " prefix that tells Go callers
// where an error came from, which would only be noise on the wire.
func peerText(err error) string {
	return strings.TrimPrefix(err.Error(), "realtime: ")
}

// quoteForError quotes s for an error text, cut to 32 bytes so errors stay
// short enough to be a close reason.
func quoteForError(s string) string {
	if len(s) > 32 {
		cut := 32
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + "..."
	}
	return strconv.Quote(s)
}

// ErrorCode is the code of an error frame (ErrorMessage.Code), one of the
// values below. Clients decide by it; the message beside it is for people.
type ErrorCode string

// The codes of error frames the server sends.
const (
	// CodeReplayCursorNotFound: a subscribe's since is outside the
	// replay window; the state frame before it is current, but the
	// transactions between since and it are not replayed.
	CodeReplayCursorNotFound ErrorCode = "replay-cursor-not-found"
	// CodeForbidden: the subscribe authorizer refused.
	CodeForbidden ErrorCode = "forbidden"
	// CodeTooManySubscriptions: the connection is at
	// MaxSubscriptionsPerConnection.
	CodeTooManySubscriptions ErrorCode = "too-many-subscriptions"
	// CodeUnknownShareData: a subscribe named a share data id that
	// does not exist; the connection is then closed with 4003. The frame
	// carries the id whole, so a client knows which subscription to end
	// without reading the close reason.
	CodeUnknownShareData ErrorCode = "unknown-share-data"
	// CodeInternal: the server failed to serve a subscribe and may
	// succeed later (the manager or the replay store was unreachable). The
	// subscription is not kept; the client subscribes again after a pause.
	// On a proposal-result: the proposal failed on the server (its
	// function panicked); the error text is fixed, the details are in the
	// server's log.
	CodeInternal ErrorCode = "internal-error"
	// CodeOutcomeUnknown answers a retried proposal whose key the server
	// no longer remembers: it may have been applied, and is not applied
	// again.
	CodeOutcomeUnknown ErrorCode = "outcome-unknown"
	// CodeRateLimited answers a proposal past the connection's
	// ProposalsPerSecond: nothing ran and its key is not remembered, so
	// it may be sent again later.
	CodeRateLimited ErrorCode = "rate-limited"
	// CodeTimeout answers a proposal that took longer than the server's
	// ProposalTimeout: it was not applied, or (with a shared store
	// committing at that moment) its outcome is unknown; a keyed retry
	// tells which.
	CodeTimeout ErrorCode = "timeout"
)

// Application close codes of the realtime protocol (RFC 6455 leaves
// 4000-4999 to applications). Their numbers and meanings are those of
// @degenerate/realtime.
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

func init() {
	closeCodeNames[CloseFellBehind] = "fell behind"
	closeCodeNames[CloseUnauthorized] = "unauthorized"
	closeCodeNames[CloseUnknownShareData] = "unknown share data"
	closeCodeNames[CloseInvalidMessage] = "invalid message"
}
