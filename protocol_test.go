package realtime

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// validClient and validServer are one valid message of each type, in the
// exact bytes the encoder produces.
var validClient = map[string]string{
	"subscribe":          `{"v":1,"type":"subscribe","shareDataId":"doc-1"}`,
	"subscribe since":    `{"v":1,"type":"subscribe","shareDataId":"doc-1","since":"tx-41"}`,
	"subscribe since ''": `{"v":1,"type":"subscribe","shareDataId":"doc-1","since":""}`,
	"unsubscribe":        `{"v":1,"type":"unsubscribe","shareDataId":"doc-1"}`,
	"propose":            `{"v":1,"type":"propose","shareDataId":"doc-1","functionId":"set","proposedData":{"a":[1,2.5,"x",null,true]},"correlationId":"c-7"}`,
	"propose null":       `{"v":1,"type":"propose","shareDataId":"doc-1","functionId":"set","proposedData":null,"correlationId":"c-7"}`,
	"ping":               `{"v":1,"type":"ping","correlationId":"c-8"}`,
	"propose keyed":      `{"v":1,"type":"propose","shareDataId":"doc-1","functionId":"set","proposedData":1,"correlationId":"c-7","idempotencyKey":"k-5fQ2"}`,
	"propose retry":      `{"v":1,"type":"propose","shareDataId":"doc-1","functionId":"set","proposedData":1,"correlationId":"c-9","idempotencyKey":"k-5fQ2","retry":true}`,
}

var validServer = map[string]string{
	"state":          `{"v":1,"type":"state","shareDataId":"doc-1","currentState":{"count":3},"lastTransactionId":"tx-41"}`,
	"state fresh":    `{"v":1,"type":"state","shareDataId":"doc-1","currentState":null,"lastTransactionId":""}`,
	"transaction":    `{"v":1,"type":"transaction","shareDataId":"doc-1","transactionId":"tx-42","previousTransactionId":"tx-41","functionId":"set","proposedData":{"by":1},"currentState":{"count":4}}`,
	"first tx":       `{"v":1,"type":"transaction","shareDataId":"doc-1","transactionId":"tx-1","previousTransactionId":"","functionId":"set","proposedData":1,"currentState":1}`,
	"replayed":       `{"v":1,"type":"transaction","shareDataId":"doc-1","transactionId":"tx-42","previousTransactionId":"tx-41","functionId":"set","proposedData":{"by":1},"replayed":true}`,
	"updated":        `{"v":1,"type":"lifecycle","shareDataId":"doc-1","event":"updated","currentState":[]}`,
	"removed":        `{"v":1,"type":"lifecycle","shareDataId":"doc-1","event":"removed"}`,
	"accepted":       `{"v":1,"type":"proposal-result","correlationId":"c-7","accepted":true,"transactionId":"tx-42"}`,
	"rejected":       `{"v":1,"type":"proposal-result","correlationId":"c-7","accepted":false,"error":"propose is not enabled"}`,
	"pong":           `{"v":1,"type":"pong","correlationId":"c-8"}`,
	"error":          `{"v":1,"type":"error","code":"replay-cursor-not-found","message":"cursor tx-1 is outside the replay window","shareDataId":"doc-1"}`,
	"error with cid": `{"v":1,"type":"error","code":"unauthorized","message":"","correlationId":"c-9"}`,
	"keyed tx":       `{"v":1,"type":"transaction","shareDataId":"doc-1","transactionId":"tx-42","previousTransactionId":"tx-41","functionId":"set","proposedData":1,"currentState":1,"idempotencyKey":"k-5fQ2"}`,
	"keyed replayed": `{"v":1,"type":"transaction","shareDataId":"doc-1","transactionId":"tx-42","previousTransactionId":"tx-41","functionId":"set","proposedData":1,"replayed":true,"idempotencyKey":"k-5fQ2"}`,
	"unknown":        `{"v":1,"type":"proposal-result","correlationId":"c-9","accepted":false,"error":"the key left the window","code":"outcome-unknown"}`,
}

func TestDecodeValidAndReencode(t *testing.T) {
	for name, in := range validClient {
		m, err := DecodeClientMessage([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := string(m.AppendJSON(nil)); got != in {
			t.Fatalf("%s: re-encoded as\n%s\nwant\n%s", name, got, in)
		}
	}
	for name, in := range validServer {
		m, err := DecodeServerMessage([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := string(m.AppendJSON(nil)); got != in {
			t.Fatalf("%s: re-encoded as\n%s\nwant\n%s", name, got, in)
		}
	}
}

func TestDecodeValues(t *testing.T) {
	m, err := DecodeClientMessage([]byte(" {\n \"proposedData\" : { \"a\" : [ 1 , \"x y\" ] } ,\"type\":\"propose\",\"v\":1, \"functionId\":\"f\\u00e9\",\"shareDataId\":\"d\",\"correlationId\":\"c\",\"extra\":{\"newer\":[true]}}\t"))
	if err != nil {
		t.Fatal(err)
	}
	want := &ProposeMessage{ShareDataID: "d", FunctionID: "fé", ProposedData: []byte(`{"a":[1,"x y"]}`), CorrelationID: "c"}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %#v", m)
	}
	s, _ := DecodeClientMessage([]byte(`{"v":1,"type":"subscribe","shareDataId":"d","since":null}`))
	if s.(*SubscribeMessage).HasSince {
		t.Fatal("since null counts as absent")
	}
	s, _ = DecodeClientMessage([]byte(`{"v":1.0,"type":"subscribe","shareDataId":"\ud83d\ude00 \ud800"}`))
	if got := s.(*SubscribeMessage).ShareDataID; got != "😀 \ufffd" {
		t.Fatalf("surrogates decoded as %q", got)
	}
}

func TestRoundTrip(t *testing.T) {
	clients := []ClientMessage{
		&SubscribeMessage{ShareDataID: "a"},
		&SubscribeMessage{ShareDataID: "a", Since: "", HasSince: true},
		&SubscribeMessage{ShareDataID: "quote\" backslash\\ tab\t nl\n ctl\x01 é 😀", Since: "tx", HasSince: true},
		&UnsubscribeMessage{ShareDataID: "a"},
		&ProposeMessage{ShareDataID: "a", FunctionID: "f", ProposedData: []byte(`{"x":"\u2028"}`), CorrelationID: "c"},
		&ProposeMessage{ShareDataID: "a", FunctionID: "f", ProposedData: []byte(`1`), CorrelationID: "c", IdempotencyKey: "k\"q", Retry: true},
		&PingMessage{CorrelationID: "c"},
	}
	for _, m := range clients {
		got, err := DecodeClientMessage(m.AppendJSON(nil))
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("%#v: got %#v, %v", m, got, err)
		}
	}
	servers := []ServerMessage{
		&StateMessage{ShareDataID: "a", CurrentState: []byte(`{"n":1}`), LastTransactionID: "t"},
		&StateMessage{ShareDataID: "a", CurrentState: []byte(`null`)},
		&TransactionMessage{ShareDataID: "a", TransactionID: "t2", PreviousTransactionID: "t1", FunctionID: "f", ProposedData: []byte(`[]`), CurrentState: []byte(`{}`)},
		&TransactionMessage{ShareDataID: "a", TransactionID: "t2", FunctionID: "f", ProposedData: []byte(`"s"`), Replayed: true},
		&LifecycleMessage{ShareDataID: "a", Event: LifecycleUpdated, CurrentState: []byte(`3`)},
		&LifecycleMessage{ShareDataID: "a", Event: LifecycleRemoved},
		&ProposalResultMessage{CorrelationID: "c", Accepted: true, TransactionID: "t"},
		&ProposalResultMessage{CorrelationID: "c", Error: "no"},
		&ProposalResultMessage{CorrelationID: "c", Error: "gone", Code: CodeOutcomeUnknown},
		&TransactionMessage{ShareDataID: "a", TransactionID: "t2", FunctionID: "f", ProposedData: []byte(`"s"`), Replayed: true, IdempotencyKey: "k"},
		&PongMessage{CorrelationID: "c"},
		&ErrorMessage{Code: "x", Message: "m", ShareDataID: "a", CorrelationID: "c"},
		&ErrorMessage{Code: "x"},
	}
	for _, m := range servers {
		got, err := DecodeServerMessage(m.AppendJSON(nil))
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("%#v: got %#v, %v", m, got, err)
		}
	}
}

func TestEncodeInvalidUTF8(t *testing.T) {
	b := (&ErrorMessage{Code: "c", Message: "bad \xff byte"}).AppendJSON(nil)
	if string(b) != `{"v":1,"type":"error","code":"c","message":"bad \ufffd byte"}` {
		t.Fatalf("%s", b)
	}
}

// TestDecodeInvalid: each case names the field that must be blamed and a
// part of the reason.
func TestDecodeInvalid(t *testing.T) {
	deep := strings.Repeat("[", 64) + strings.Repeat("]", 64)
	okDeep := strings.Repeat("[", 63) + strings.Repeat("]", 63)
	long := strings.Repeat("x", MaxIDLength+1)
	cases := []struct {
		name, in, field, reason string
	}{
		// The envelope.
		{"not JSON", `hello`, "message", "not a JSON object"},
		{"empty", ``, "message", "empty"},
		{"array", `[1]`, "message", "not a JSON object"},
		{"invalid UTF-8", "{\"v\":1,\"type\":\"ping\",\"correlationId\":\"\xff\"}", "message", "UTF-8"},
		{"trailing garbage", `{"v":1,"type":"ping","correlationId":"c"}x`, "message", "trailing data at offset 41"},
		{"two objects", `{"v":1,"type":"ping","correlationId":"c"}{}`, "message", "trailing data"},
		{"truncated", `{"v":1,"type":"ping","correlationId":"c"`, "message", "unexpected end"},
		{"unterminated string", `{"v":1,"type":"ping","correlationId":"c}`, "correlationId", "unterminated string"},
		{"control char in string", "{\"v\":1,\"type\":\"ping\",\"correlationId\":\"a\nb\"}", "correlationId", "control character"},
		{"bad escape", `{"v":1,"type":"ping","correlationId":"\x"}`, "correlationId", "bad escape"},
		{"bad number", `{"v":01,"type":"ping","correlationId":"c"}`, "message", "want ',' or '}'"},
		{"bad literal", `{"v":1,"type":"ping","correlationId":"c","x":tru}`, `"x"`, "want true"},
		{"duplicate field", `{"v":1,"type":"ping","type":"ping","correlationId":"c"}`, "type", "appears twice"},
		{"missing v", `{"type":"ping","correlationId":"c"}`, "v", "missing"},
		{"v as string", `{"v":"1","type":"ping","correlationId":"c"}`, "v", "must be the number 1, got a string"},
		{"wrong v", `{"v":2,"type":"ping","correlationId":"c"}`, "v", `"2" is not supported`},
		{"missing type", `{"v":1,"correlationId":"c"}`, "type", "missing"},
		{"type as number", `{"v":1,"type":7}`, "type", "must be a string, got a number"},
		{"unknown type", `{"v":1,"type":"launch"}`, "type", `unknown message type "launch"`},
		{"server type from a client", `{"v":1,"type":"state"}`, "type", "is a server message"},
		// subscribe
		{"subscribe without shareDataId", `{"v":1,"type":"subscribe"}`, "shareDataId", "missing"},
		{"subscribe shareDataId number", `{"v":1,"type":"subscribe","shareDataId":5}`, "shareDataId", "must be a string, got a number"},
		{"subscribe shareDataId null", `{"v":1,"type":"subscribe","shareDataId":null}`, "shareDataId", "missing"},
		{"subscribe shareDataId empty", `{"v":1,"type":"subscribe","shareDataId":""}`, "shareDataId", "must not be empty"},
		{"subscribe shareDataId oversize", `{"v":1,"type":"subscribe","shareDataId":"` + long + `"}`, "shareDataId", "257 bytes, more than 256"},
		{"subscribe since number", `{"v":1,"type":"subscribe","shareDataId":"d","since":3}`, "since", "must be a string"},
		{"subscribe since oversize", `{"v":1,"type":"subscribe","shareDataId":"d","since":"` + long + `"}`, "since", "more than 256"},
		// unsubscribe
		{"unsubscribe without shareDataId", `{"v":1,"type":"unsubscribe"}`, "shareDataId", "missing"},
		{"unsubscribe shareDataId object", `{"v":1,"type":"unsubscribe","shareDataId":{}}`, "shareDataId", "got an object"},
		// propose
		{"propose without shareDataId", `{"v":1,"type":"propose","functionId":"f","proposedData":1,"correlationId":"c"}`, "shareDataId", "missing"},
		{"propose without functionId", `{"v":1,"type":"propose","shareDataId":"d","proposedData":1,"correlationId":"c"}`, "functionId", "missing"},
		{"propose functionId array", `{"v":1,"type":"propose","shareDataId":"d","functionId":[],"proposedData":1,"correlationId":"c"}`, "functionId", "got an array"},
		{"propose functionId oversize", `{"v":1,"type":"propose","shareDataId":"d","functionId":"` + long + `","proposedData":1,"correlationId":"c"}`, "functionId", "more than 256"},
		{"propose without proposedData", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","correlationId":"c"}`, "proposedData", "missing"},
		{"propose without correlationId", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":1}`, "correlationId", "missing"},
		{"propose correlationId boolean", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":1,"correlationId":true}`, "correlationId", "got a boolean"},
		{"propose deeply nested", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":` + deep + `,"correlationId":"c"}`, "proposedData", "nested deeper than 64 levels"},
		{"propose bad JSON inside", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":{"a":},"correlationId":"c"}`, "proposedData", "unexpected character '}'"},
		{"propose key number", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":1,"correlationId":"c","idempotencyKey":7}`, "idempotencyKey", "must be a string"},
		{"propose key empty", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":1,"correlationId":"c","idempotencyKey":""}`, "idempotencyKey", "must not be empty"},
		{"propose key oversize", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":1,"correlationId":"c","idempotencyKey":"` + long + `"}`, "idempotencyKey", "more than 256"},
		{"propose retry string", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":1,"correlationId":"c","idempotencyKey":"k","retry":"yes"}`, "retry", "must be a boolean"},
		{"propose retry without key", `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":1,"correlationId":"c","retry":true}`, "retry", "needs an idempotencyKey"},
		// ping
		{"ping without correlationId", `{"v":1,"type":"ping"}`, "correlationId", "missing"},
		{"ping correlationId empty", `{"v":1,"type":"ping","correlationId":""}`, "correlationId", "must not be empty"},
		{"ping correlationId oversize", `{"v":1,"type":"ping","correlationId":"` + long + `"}`, "correlationId", "more than 256"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeClientMessage([]byte(tc.in))
			checkDecodeErr(t, err, tc.field, tc.reason)
		})
	}
	t.Run("63 levels of proposedData are fine", func(t *testing.T) {
		in := `{"v":1,"type":"propose","shareDataId":"d","functionId":"f","proposedData":` + okDeep + `,"correlationId":"c"}`
		if _, err := DecodeClientMessage([]byte(in)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a million brackets", func(t *testing.T) {
		in := `{"v":1,"type":"propose","proposedData":` + strings.Repeat("[", 1_000_000)
		_, err := DecodeClientMessage([]byte(in))
		checkDecodeErr(t, err, "proposedData", "nested deeper")
	})
}

func TestDecodeInvalidServer(t *testing.T) {
	long := strings.Repeat("x", MaxIDLength+1)
	cases := []struct {
		name, in, field, reason string
	}{
		{"client type", `{"v":1,"type":"ping","correlationId":"c"}`, "type", "is a client message"},
		{"state without shareDataId", `{"v":1,"type":"state","currentState":1,"lastTransactionId":""}`, "shareDataId", "missing"},
		{"state without currentState", `{"v":1,"type":"state","shareDataId":"d","lastTransactionId":""}`, "currentState", "missing"},
		{"state lastTransactionId number", `{"v":1,"type":"state","shareDataId":"d","currentState":1,"lastTransactionId":1}`, "lastTransactionId", "must be a string"},
		{"transaction without transactionId", `{"v":1,"type":"transaction","shareDataId":"d","functionId":"f","proposedData":1,"currentState":1}`, "transactionId", "missing"},
		{"transaction transactionId oversize", `{"v":1,"type":"transaction","shareDataId":"d","transactionId":"` + long + `","functionId":"f","proposedData":1,"currentState":1}`, "transactionId", "more than 256"},
		{"transaction previousTransactionId number", `{"v":1,"type":"transaction","shareDataId":"d","transactionId":"t","previousTransactionId":1,"functionId":"f","proposedData":1,"currentState":1}`, "previousTransactionId", "must be a string"},
		{"transaction without functionId", `{"v":1,"type":"transaction","shareDataId":"d","transactionId":"t","proposedData":1,"currentState":1}`, "functionId", "missing"},
		{"transaction without proposedData", `{"v":1,"type":"transaction","shareDataId":"d","transactionId":"t","functionId":"f","currentState":1}`, "proposedData", "missing"},
		{"live transaction without currentState", `{"v":1,"type":"transaction","shareDataId":"d","transactionId":"t","functionId":"f","proposedData":1}`, "currentState", "missing"},
		{"replayed not boolean", `{"v":1,"type":"transaction","shareDataId":"d","transactionId":"t","functionId":"f","proposedData":1,"replayed":"yes"}`, "replayed", "must be a boolean"},
		{"lifecycle without event", `{"v":1,"type":"lifecycle","shareDataId":"d"}`, "event", "missing"},
		{"lifecycle unknown event", `{"v":1,"type":"lifecycle","shareDataId":"d","event":"exploded"}`, "event", `unknown event "exploded"`},
		{"updated without currentState", `{"v":1,"type":"lifecycle","shareDataId":"d","event":"updated"}`, "currentState", "missing"},
		{"proposal-result without accepted", `{"v":1,"type":"proposal-result","correlationId":"c"}`, "accepted", "missing"},
		{"proposal-result accepted string", `{"v":1,"type":"proposal-result","correlationId":"c","accepted":"true"}`, "accepted", "must be a boolean"},
		{"accepted without transactionId", `{"v":1,"type":"proposal-result","correlationId":"c","accepted":true}`, "transactionId", "missing"},
		{"rejected without error", `{"v":1,"type":"proposal-result","correlationId":"c","accepted":false}`, "error", "missing"},
		{"proposal-result without correlationId", `{"v":1,"type":"proposal-result","accepted":false,"error":"x"}`, "correlationId", "missing"},
		{"pong without correlationId", `{"v":1,"type":"pong"}`, "correlationId", "missing"},
		{"error without code", `{"v":1,"type":"error","message":"m"}`, "code", "missing"},
		{"error without message", `{"v":1,"type":"error","code":"c"}`, "message", "missing"},
		{"error shareDataId empty", `{"v":1,"type":"error","code":"c","message":"m","shareDataId":""}`, "shareDataId", "must not be empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeServerMessage([]byte(tc.in))
			checkDecodeErr(t, err, tc.field, tc.reason)
		})
	}
}

func checkDecodeErr(t *testing.T, err error, field, reason string) {
	t.Helper()
	var de *DecodeError
	if !errors.As(err, &de) || !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("got %v, want a DecodeError", err)
	}
	if de.Field != field || !strings.Contains(de.Reason, reason) {
		t.Fatalf("got %q, want field %s and a reason containing %q", err, field, reason)
	}
	if len(err.Error()) > maxCloseReason || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %q is not one line of at most %d bytes", err, maxCloseReason)
	}
}
