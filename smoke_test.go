package realtime

import (
	"context"
	"testing"
)

func TestEchoRoundTrip(t *testing.T) {
	srv, _ := echoServer(t, nil)
	ctx := context.Background()
	c, _, err := Dial(ctx, wsURL(srv), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 125, 126, 65535, 65536} {
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = byte('a' + i%26)
		}
		if err := c.Write(ctx, MessageText, msg); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ != MessageText || string(got) != string(msg) {
			t.Fatalf("len %d: got %v %d bytes", n, typ, len(got))
		}
	}
	if err := c.Close(CloseNormalClosure, "bye"); err != nil {
		t.Fatal(err)
	}
}
