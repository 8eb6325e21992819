package realtime

import (
	"encoding/json"
	"errors"
	"strconv"
)

// This file parses and validates protocol messages by hand: one pass over
// the bytes checks the JSON syntax and records where each known field's
// value lies; a second step checks each field the message type needs.

// ErrInvalidMessage is matched, with errors.Is, by every error that
// DecodeClientMessage and DecodeServerMessage return.
var ErrInvalidMessage = errors.New("realtime: invalid message")

// DecodeError says why a message was refused: which field and why, in one
// short line (at most 123 bytes, so it fits the reason of a close frame,
// which is how the server reports it with code 4004). Field is "message"
// when the fault is not in one field.
type DecodeError struct {
	Field  string // the JSON field at fault, or "message"
	Reason string // why, in a few words
}

func (e *DecodeError) Error() string {
	return "realtime: invalid message: " + e.closeReason()
}

// closeReasonOf is a decoding error as the reason of a 4004 close.
func closeReasonOf(err error) string {
	var de *DecodeError
	if errors.As(err, &de) {
		return de.closeReason()
	}
	return truncateReason(peerText(err))
}

// closeReason is the error as the close reason of a 4004: the field and
// why, cut to fit a close frame.
func (e *DecodeError) closeReason() string {
	return truncateReason(e.Field + ": " + e.Reason)
}

// Is reports whether target is ErrInvalidMessage.
func (e *DecodeError) Is(target error) bool { return target == ErrInvalidMessage }

// The fields the protocol knows. Others are skipped (after their syntax is
// checked), so newer peers can add fields.
const (
	fV = iota
	fType
	fShareDataID
	fSince
	fFunctionID
	fProposedData
	fCorrelationID
	fCurrentState
	fLastTransactionID
	fTransactionID
	fPreviousTransactionID
	fReplayed
	fEvent
	fAccepted
	fError
	fCode
	fMessage
	fIdempotencyKey
	fRetry
	numFields
)

var fieldNames = [numFields]string{
	"v", "type", "shareDataId", "since", "functionId", "proposedData", "correlationId",
	"currentState", "lastTransactionId", "transactionId", "previousTransactionId",
	"replayed", "event", "accepted", "error", "code", "message", "idempotencyKey", "retry",
}

func fieldIndex(key []byte) int {
	switch string(key) { // no allocation: the compiler switches on the bytes
	case "v":
		return fV
	case "type":
		return fType
	case "shareDataId":
		return fShareDataID
	case "since":
		return fSince
	case "functionId":
		return fFunctionID
	case "proposedData":
		return fProposedData
	case "correlationId":
		return fCorrelationID
	case "currentState":
		return fCurrentState
	case "lastTransactionId":
		return fLastTransactionID
	case "transactionId":
		return fTransactionID
	case "previousTransactionId":
		return fPreviousTransactionID
	case "replayed":
		return fReplayed
	case "event":
		return fEvent
	case "accepted":
		return fAccepted
	case "error":
		return fError
	case "code":
		return fCode
	case "message":
		return fMessage
	case "idempotencyKey":
		return fIdempotencyKey
	case "retry":
		return fRetry
	}
	return -1
}

// JSON value kinds; zero means the field is absent.
const (
	kAbsent byte = iota
	kString
	kNumber
	kTrue
	kFalse
	kNull
	kObject
	kArray
)

var kindNames = [...]string{"absent", "a string", "a number", "a boolean", "a boolean", "null", "an object", "an array"}

// slot is where a known field's value lies in the message.
type slot struct {
	kind       byte
	escaped    bool // a string with escape sequences
	start, end int
}

// envelope is a parsed message: the input and its known fields.
type envelope struct {
	data  []byte
	slots [numFields]slot
}

func decodeErr(field int, reason string) error {
	return &DecodeError{Field: fieldNames[field], Reason: reason}
}

func messageErr(reason string) error {
	return &DecodeError{Field: "message", Reason: reason}
}

// parse checks that data is exactly one JSON object (whitespace around it
// allowed) in valid UTF-8, nested at most MaxNesting deep, with no known
// field twice, and records the known fields.
func (e *envelope) parse(data []byte) error {
	e.data = data
	if !validUTF8(data) {
		return messageErr("not valid UTF-8")
	}
	s := scanner{data: data}
	s.ws()
	if s.pos >= len(data) || data[s.pos] != '{' {
		if s.pos >= len(data) {
			return messageErr("empty, want a JSON object")
		}
		return messageErr("not a JSON object")
	}
	s.pos++
	s.ws()
	if s.peek() == '}' {
		s.pos++
	} else {
		for {
			if s.peek() != '"' {
				return s.syntaxErr("message", "want a field name")
			}
			keyStart := s.pos + 1
			escaped, reason := s.str()
			if reason != "" {
				return s.syntaxErr("message", reason)
			}
			key := data[keyStart : s.pos-1]
			if escaped {
				key = []byte(unescape(key))
			}
			s.ws()
			if s.peek() != ':' {
				return s.syntaxErr("message", "want ':' after a field name")
			}
			s.pos++
			s.ws()
			idx := fieldIndex(key)
			name := fieldLabel(idx, key)
			start := s.pos
			kind, escaped, reason := s.value(2)
			if reason != "" {
				return s.syntaxErr(name, reason)
			}
			if idx >= 0 {
				if e.slots[idx].kind != kAbsent {
					return decodeErr(idx, "appears twice")
				}
				e.slots[idx] = slot{kind: kind, escaped: escaped, start: start, end: s.pos}
			}
			s.ws()
			switch s.peek() {
			case ',':
				s.pos++
				s.ws()
				continue
			case '}':
				s.pos++
			default:
				return s.syntaxErr("message", "want ',' or '}' after a field")
			}
			break
		}
	}
	s.ws()
	if s.pos != len(data) {
		return messageErr("trailing data at offset " + strconv.Itoa(s.pos) + " after the JSON object")
	}
	return nil
}

// fieldLabel names a field in an error: its protocol name, or the key
// quoted and cut short.
func fieldLabel(idx int, key []byte) string {
	if idx >= 0 {
		return fieldNames[idx]
	}
	return quoteForError(string(key))
}

// header checks "v" and returns "type", without copying it.
func (e *envelope) header() ([]byte, error) {
	v := e.slots[fV]
	switch {
	case v.kind == kAbsent:
		return nil, decodeErr(fV, "missing")
	case v.kind != kNumber:
		return nil, decodeErr(fV, "must be the number 1, got "+kindNames[v.kind])
	}
	if text := e.data[v.start:v.end]; string(text) != "1" {
		if f, err := strconv.ParseFloat(string(text), 64); err != nil || f != protocolVersion {
			return nil, decodeErr(fV, "protocol version "+quoteForError(string(text))+" is not supported, want 1")
		}
	}
	t := e.slots[fType]
	switch {
	case t.kind == kAbsent:
		return nil, decodeErr(fType, "missing")
	case t.kind != kString:
		return nil, decodeErr(fType, "must be a string, got "+kindNames[t.kind])
	}
	if t.escaped {
		return []byte(e.stringAt(t)), nil
	}
	return e.data[t.start+1 : t.end-1], nil
}

// stringAt returns the string value of a slot of kind kString.
func (e *envelope) stringAt(s slot) string {
	raw := e.data[s.start+1 : s.end-1]
	if s.escaped {
		return unescape(raw)
	}
	return string(raw)
}

// Rules for string fields.
const (
	ruleID     = iota // non-empty, at most MaxIDLength bytes
	ruleCursor        // may be empty, at most MaxIDLength bytes
	ruleText          // any string
)

// str returns a required string field.
func (e *envelope) str(f int, rule int) (string, error) {
	s, present, err := e.optStr(f, rule)
	if err == nil && !present {
		err = decodeErr(f, "missing")
	}
	return s, err
}

// optStr returns an optional string field; null counts as absent.
func (e *envelope) optStr(f int, rule int) (string, bool, error) {
	s := e.slots[f]
	switch s.kind {
	case kAbsent, kNull:
		return "", false, nil
	case kString:
	default:
		return "", false, decodeErr(f, "must be a string, got "+kindNames[s.kind])
	}
	v := e.stringAt(s)
	if rule != ruleText {
		if rule == ruleID && v == "" {
			return "", false, decodeErr(f, "must not be empty")
		}
		if len(v) > MaxIDLength {
			return "", false, decodeErr(f, "is "+strconv.Itoa(len(v))+" bytes, more than "+strconv.Itoa(MaxIDLength))
		}
	}
	return v, true, nil
}

// raw returns a required field of any JSON value, compacted into a new
// slice.
func (e *envelope) raw(f int) (json.RawMessage, error) {
	s := e.slots[f]
	if s.kind == kAbsent {
		return nil, decodeErr(f, "missing")
	}
	return compactJSON(e.data[s.start:s.end]), nil
}

// boolean returns a boolean field; required says whether it may be absent.
func (e *envelope) boolean(f int, required bool) (bool, error) {
	switch s := e.slots[f]; s.kind {
	case kTrue:
		return true, nil
	case kFalse:
		return false, nil
	case kAbsent:
		if required {
			return false, decodeErr(f, "missing")
		}
		return false, nil
	default:
		return false, decodeErr(f, "must be a boolean, got "+kindNames[s.kind])
	}
}

// DecodeClientMessage parses and validates a message sent by a client. It
// returns a *SubscribeMessage, *UnsubscribeMessage, *ProposeMessage or
// *PingMessage, or a *DecodeError (matching ErrInvalidMessage) that names
// the field at fault. The result does not alias data.
func DecodeClientMessage(data []byte) (ClientMessage, error) {
	var e envelope
	if err := e.parse(data); err != nil {
		return nil, err
	}
	typ, err := e.header()
	if err != nil {
		return nil, err
	}
	switch string(typ) {
	case typeSubscribe:
		m := &SubscribeMessage{}
		if m.ShareDataID, err = e.str(fShareDataID, ruleID); err != nil {
			return nil, err
		}
		if m.Since, m.HasSince, err = e.optStr(fSince, ruleCursor); err != nil {
			return nil, err
		}
		return m, nil
	case typeUnsubscribe:
		m := &UnsubscribeMessage{}
		if m.ShareDataID, err = e.str(fShareDataID, ruleID); err != nil {
			return nil, err
		}
		return m, nil
	case typePropose:
		m := &ProposeMessage{}
		if m.ShareDataID, err = e.str(fShareDataID, ruleID); err != nil {
			return nil, err
		}
		if m.FunctionID, err = e.str(fFunctionID, ruleID); err != nil {
			return nil, err
		}
		if m.ProposedData, err = e.raw(fProposedData); err != nil {
			return nil, err
		}
		if m.CorrelationID, err = e.str(fCorrelationID, ruleID); err != nil {
			return nil, err
		}
		if m.IdempotencyKey, _, err = e.optStr(fIdempotencyKey, ruleID); err != nil {
			return nil, err
		}
		if m.Retry, err = e.boolean(fRetry, false); err != nil {
			return nil, err
		}
		if m.Retry && m.IdempotencyKey == "" {
			return nil, decodeErr(fRetry, "a retry needs an idempotencyKey: without one it could be applied twice")
		}
		return m, nil
	case typePing:
		m := &PingMessage{}
		if m.CorrelationID, err = e.str(fCorrelationID, ruleID); err != nil {
			return nil, err
		}
		return m, nil
	case typeState, typeTransaction, typeLifecycle, typeProposalResult, typePong, typeError:
		return nil, decodeErr(fType, quoteForError(string(typ))+" is a server message")
	}
	return nil, decodeErr(fType, "unknown message type "+quoteForError(string(typ)))
}

// DecodeServerMessage parses and validates a message sent by a server. It
// returns a *StateMessage, *TransactionMessage, *LifecycleMessage,
// *ProposalResultMessage, *PongMessage or *ErrorMessage, or a *DecodeError
// (matching ErrInvalidMessage). The result does not alias data.
func DecodeServerMessage(data []byte) (ServerMessage, error) {
	var e envelope
	if err := e.parse(data); err != nil {
		return nil, err
	}
	typ, err := e.header()
	if err != nil {
		return nil, err
	}
	switch string(typ) {
	case typeState:
		m := &StateMessage{}
		if m.ShareDataID, err = e.str(fShareDataID, ruleID); err != nil {
			return nil, err
		}
		if m.CurrentState, err = e.raw(fCurrentState); err != nil {
			return nil, err
		}
		if m.LastTransactionID, _, err = e.optStr(fLastTransactionID, ruleCursor); err != nil {
			return nil, err
		}
		return m, nil
	case typeTransaction:
		return e.transaction()
	case typeLifecycle:
		m := &LifecycleMessage{}
		if m.ShareDataID, err = e.str(fShareDataID, ruleID); err != nil {
			return nil, err
		}
		ev, err := e.str(fEvent, ruleID)
		if err != nil {
			return nil, err
		}
		m.Event = LifecycleEvent(ev)
		switch m.Event {
		case LifecycleUpdated:
			if m.CurrentState, err = e.raw(fCurrentState); err != nil {
				return nil, err
			}
		case LifecycleRemoved:
		default:
			return nil, decodeErr(fEvent, "unknown event "+quoteForError(ev)+", want updated or removed")
		}
		return m, nil
	case typeProposalResult:
		m := &ProposalResultMessage{}
		if m.CorrelationID, err = e.str(fCorrelationID, ruleID); err != nil {
			return nil, err
		}
		if m.Accepted, err = e.boolean(fAccepted, true); err != nil {
			return nil, err
		}
		if m.Accepted {
			m.TransactionID, err = e.str(fTransactionID, ruleID)
		} else if m.Error, err = e.str(fError, ruleText); err == nil {
			var code string
			code, _, err = e.optStr(fCode, ruleID)
			m.Code = ErrorCode(code)
		}
		if err != nil {
			return nil, err
		}
		return m, nil
	case typePong:
		m := &PongMessage{}
		if m.CorrelationID, err = e.str(fCorrelationID, ruleID); err != nil {
			return nil, err
		}
		return m, nil
	case typeError:
		m := &ErrorMessage{}
		code, err := e.str(fCode, ruleID)
		if err != nil {
			return nil, err
		}
		m.Code = ErrorCode(code)
		if m.Message, err = e.str(fMessage, ruleText); err != nil {
			return nil, err
		}
		if m.ShareDataID, _, err = e.optStr(fShareDataID, ruleID); err != nil {
			return nil, err
		}
		if m.CorrelationID, _, err = e.optStr(fCorrelationID, ruleID); err != nil {
			return nil, err
		}
		return m, nil
	case typeSubscribe, typeUnsubscribe, typePropose, typePing:
		return nil, decodeErr(fType, quoteForError(string(typ))+" is a client message")
	}
	return nil, decodeErr(fType, "unknown message type "+quoteForError(string(typ)))
}

func (e *envelope) transaction() (ServerMessage, error) {
	m := &TransactionMessage{}
	var err error
	if m.ShareDataID, err = e.str(fShareDataID, ruleID); err != nil {
		return nil, err
	}
	if m.TransactionID, err = e.str(fTransactionID, ruleID); err != nil {
		return nil, err
	}
	if m.PreviousTransactionID, _, err = e.optStr(fPreviousTransactionID, ruleCursor); err != nil {
		return nil, err
	}
	if m.FunctionID, err = e.str(fFunctionID, ruleID); err != nil {
		return nil, err
	}
	if m.ProposedData, err = e.raw(fProposedData); err != nil {
		return nil, err
	}
	if m.Replayed, err = e.boolean(fReplayed, false); err != nil {
		return nil, err
	}
	if m.IdempotencyKey, _, err = e.optStr(fIdempotencyKey, ruleID); err != nil {
		return nil, err
	}
	if !m.Replayed {
		// Live frames carry the state after the transaction; replayed
		// frames do not (one sent anyway is ignored).
		if m.CurrentState, err = e.raw(fCurrentState); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// syntaxErr reports a JSON syntax fault as a protocol DecodeError.
func (s *scanner) syntaxErr(field, reason string) error {
	if s.pos >= len(s.data) {
		return &DecodeError{Field: field, Reason: "not valid JSON: unexpected end: " + reason}
	}
	return &DecodeError{Field: field, Reason: "not valid JSON at offset " + strconv.Itoa(s.pos) + ": " + reason}
}
