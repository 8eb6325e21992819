package realtime_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/degenerate/realtime"
)

// The WebSocket layer on its own: Accept in a handler, Dial from a client,
// Read and Write messages, and the close handshake with its status.

// An echo server: Accept upgrades the request, then the handler reads and
// writes messages until the peer closes.
func ExampleAccept() {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := realtime.Accept(w, r, nil) // same-origin requests only, by default
		if err != nil {
			return // Accept has answered the request with the reason
		}
		defer c.CloseNow()
		ctx := context.Background()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return // the peer closed, or the connection broke
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(handler)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := realtime.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	for _, text := range []string{"hello", "world"} {
		if err := c.Write(ctx, realtime.MessageText, []byte(text)); err != nil {
			log.Fatal(err)
		}
		_, echo, err := c.Read(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s\n", echo)
	}
	c.Close(realtime.CloseNormalClosure, "done")
	// Output:
	// hello
	// world
}

// Dial opens a client connection; its context bounds the handshake only.
// A refused handshake is a *HandshakeError with the HTTP status.
func ExampleDial() {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := realtime.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/nowhere", nil)
	var he *realtime.HandshakeError
	if errors.As(err, &he) {
		fmt.Println("refused with", he.StatusCode)
	}
	// Output:
	// refused with 404
}

// A peer's close frame ends Read with a *CloseError carrying its status
// code and reason.
func ExampleCloseError() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := realtime.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.Close(realtime.CloseTryAgainLater, "too busy, come back later")
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := realtime.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	_, _, err = c.Read(ctx)
	var ce *realtime.CloseError
	if errors.As(err, &ce) {
		fmt.Println(int(ce.Code), ce.Reason, "remote:", ce.Remote)
	}
	// Output:
	// 1013 too busy, come back later remote: true
}

// Writer streams one message in fragments, for a payload produced piece
// by piece; the message ends when the writer is closed.
func ExampleConn_Writer() {
	received := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := realtime.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		_, msg, err := c.Read(context.Background())
		if err == nil {
			received <- string(msg)
		}
		c.Close(realtime.CloseNormalClosure, "")
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := realtime.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	w, err := c.Writer(ctx, realtime.MessageText)
	if err != nil {
		log.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		fmt.Fprintf(w, "part %d; ", i)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-received)
	c.Read(ctx) // the server's close frame ends the connection
	// Output:
	// part 1; part 2; part 3;
}
