// Package interop tests the realtime package's WebSocket layer against real
// peers: gorilla/websocket and coder/websocket clients against our server,
// and our client against their servers. It is a module of its own so that
// the root module does not depend on them.
package interop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coder "github.com/coder/websocket"
	"github.com/gorilla/websocket"

	"github.com/degenerate/realtime"
)

// sizes are the message sizes every pair exchanges, 0 B to 1 MiB.
var sizes = []int{0, 1, 125, 126, 127, 65535, 65536, 65537, 200_000, 1 << 20}

const limit = 2 << 20 // read limit on every side, above the largest message

func message(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// server runs h and waits, at cleanup, for every call of it to return.
func server(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		h(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// ourServer accepts with our package and runs fn on the connection; the
// error fn returns is sent on the channel.
func ourServer(t *testing.T, fn func(c *realtime.Conn) error) (string, chan error) {
	errs := make(chan error, 10)
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := realtime.Accept(w, r, &realtime.AcceptOptions{ConnOptions: realtime.ConnOptions{ReadLimit: limit}})
		if err != nil {
			errs <- err
			return
		}
		defer c.CloseNow()
		errs <- fn(c)
	})
	return url, errs
}

// ourEcho echoes messages until the connection ends and returns the error
// that ended it.
func ourEcho(c *realtime.Conn) error {
	ctx := context.Background()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return err
		}
	}
}

func waitErr(t *testing.T, errs chan error) error {
	t.Helper()
	select {
	case err := <-errs:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("server handler did not return")
		return nil
	}
}

func wantOurClose(t *testing.T, err error, code realtime.CloseCode, remote bool) {
	t.Helper()
	var ce *realtime.CloseError
	if !errors.As(err, &ce) || ce.Code != code || ce.Remote != remote {
		t.Fatalf("got %v, want our CloseError %s (remote %v)", err, code, remote)
	}
}

func TestGorillaClientOurServer(t *testing.T) {
	var errs chan error // the current subtest's server's
	dial := func(t *testing.T) *websocket.Conn {
		var url string
		url, errs = ourServer(t, ourEcho)
		d := websocket.Dialer{WriteBufferSize: 1024}
		c, _, err := d.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("text messages", func(t *testing.T) {
		c := dial(t)
		for _, n := range sizes {
			// With a 1 KiB write buffer, gorilla sends anything longer
			// than that as fragments.
			if err := c.WriteMessage(websocket.TextMessage, message(n)); err != nil {
				t.Fatal(err)
			}
			typ, got, err := c.ReadMessage()
			if err != nil || typ != websocket.TextMessage || !bytes.Equal(got, message(n)) {
				t.Fatalf("%d bytes: got %d bytes, type %d, %v", n, len(got), typ, err)
			}
		}
	})
	t.Run("fragmented send", func(t *testing.T) {
		c := dial(t)
		w, _ := c.NextWriter(websocket.BinaryMessage)
		for i := 0; i < 10; i++ {
			w.Write(message(5000))
		}
		w.Close()
		_, got, err := c.ReadMessage()
		if err != nil || len(got) != 50000 {
			t.Fatalf("%d bytes, %v", len(got), err)
		}
	})
	t.Run("ping and pong", func(t *testing.T) {
		c := dial(t)
		pong := make(chan string, 1)
		c.SetPongHandler(func(s string) error { pong <- s; return nil })
		if err := c.WriteControl(websocket.PingMessage, []byte("gorilla ping"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		c.WriteMessage(websocket.TextMessage, []byte("after ping"))
		if _, got, err := c.ReadMessage(); err != nil || string(got) != "after ping" {
			t.Fatalf("%q %v", got, err)
		}
		if got := <-pong; got != "gorilla ping" {
			t.Fatalf("pong %q", got)
		}
	})
	t.Run("client closes", func(t *testing.T) {
		c := dial(t)
		c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
		_, _, err := c.ReadMessage()
		if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			t.Fatalf("gorilla got %v", err)
		}
		err = waitErr(t, errs)
		wantOurClose(t, err, realtime.CloseNormalClosure, true)
		if ce := new(realtime.CloseError); errors.As(err, &ce) && ce.Reason != "bye" {
			t.Fatalf("reason %q", ce.Reason)
		}
	})
	t.Run("invalid UTF-8 is failed with 1007", func(t *testing.T) {
		c := dial(t)
		c.WriteMessage(websocket.TextMessage, []byte{0xed, 0xa0, 0x80})
		_, _, err := c.ReadMessage()
		if !websocket.IsCloseError(err, websocket.CloseInvalidFramePayloadData) {
			t.Fatalf("gorilla got %v", err)
		}
		wantOurClose(t, waitErr(t, errs), realtime.CloseInvalidPayload, false)
	})
	t.Run("message over the limit is failed with 1009", func(t *testing.T) {
		c := dial(t)
		c.WriteMessage(websocket.BinaryMessage, make([]byte, limit+1))
		_, _, err := c.ReadMessage()
		if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
			t.Fatalf("gorilla got %v", err)
		}
		wantOurClose(t, waitErr(t, errs), realtime.CloseMessageTooBig, false)
	})
	t.Run("server closes", func(t *testing.T) {
		url, errs := ourServer(t, func(c *realtime.Conn) error {
			go c.Read(context.Background()) // sees the echo
			return c.Close(realtime.CloseFellBehind, "too slow")
		})
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _, err = c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4001 || ce.Text != "too slow" {
			t.Fatalf("gorilla got %v", err)
		}
		if err := waitErr(t, errs); err != nil {
			t.Fatalf("our Close: %v", err)
		}
	})
	t.Run("server pings", func(t *testing.T) {
		url, errs := ourServer(t, func(c *realtime.Conn) error {
			go c.Read(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.Ping(ctx); err != nil {
				return err
			}
			return c.Close(realtime.CloseNormalClosure, "")
		})
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _, err = c.ReadMessage() // answers the ping, then sees the close
		if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			t.Fatalf("gorilla got %v", err)
		}
		if err := waitErr(t, errs); err != nil {
			t.Fatalf("our Ping/Close: %v", err)
		}
	})
	t.Run("server drops the connection", func(t *testing.T) {
		url, _ := ourServer(t, func(c *realtime.Conn) error { return c.CloseNow() })
		c, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _, err = c.ReadMessage()
		if !websocket.IsUnexpectedCloseError(err) {
			t.Fatalf("gorilla got %v", err)
		}
	})
}

func TestCoderClientOurServer(t *testing.T) {
	var errs chan error // the current subtest's server's
	ctx := context.Background()
	dial := func(t *testing.T) *coder.Conn {
		var url string
		url, errs = ourServer(t, ourEcho)
		c, _, err := coder.Dial(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadLimit(limit)
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	t.Run("text messages", func(t *testing.T) {
		c := dial(t)
		for _, n := range sizes {
			if err := c.Write(ctx, coder.MessageText, message(n)); err != nil {
				t.Fatal(err)
			}
			typ, got, err := c.Read(ctx)
			if err != nil || typ != coder.MessageText || !bytes.Equal(got, message(n)) {
				t.Fatalf("%d bytes: got %d bytes, type %v, %v", n, len(got), typ, err)
			}
		}
	})
	t.Run("fragmented send", func(t *testing.T) {
		c := dial(t)
		w, err := c.Writer(ctx, coder.MessageText)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			w.Write([]byte(fmt.Sprint("fragment ", i, ";")))
		}
		w.Close()
		_, got, err := c.Read(ctx)
		if err != nil || !strings.HasPrefix(string(got), "fragment 0;fragment 1;") || !strings.HasSuffix(string(got), "fragment 9;") {
			t.Fatalf("%q %v", got, err)
		}
	})
	t.Run("ping and pong", func(t *testing.T) {
		c := dial(t)
		go c.Read(ctx) // coder needs a reader to see the pong
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := c.Ping(pctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("client closes", func(t *testing.T) {
		c := dial(t)
		if err := c.Close(coder.StatusNormalClosure, "bye"); err != nil {
			t.Fatalf("coder Close: %v", err)
		}
		wantOurClose(t, waitErr(t, errs), realtime.CloseNormalClosure, true)
	})
	t.Run("invalid UTF-8 is failed with 1007", func(t *testing.T) {
		c := dial(t)
		c.Write(ctx, coder.MessageText, []byte("ok \xf4\x90\x80\x80"))
		_, _, err := c.Read(ctx)
		if coder.CloseStatus(err) != coder.StatusInvalidFramePayloadData {
			t.Fatalf("coder got %v", err)
		}
		wantOurClose(t, waitErr(t, errs), realtime.CloseInvalidPayload, false)
	})
	t.Run("server closes", func(t *testing.T) {
		url, errs := ourServer(t, func(c *realtime.Conn) error {
			go c.Read(context.Background())
			return c.Close(realtime.CloseUnauthorized, "token expired")
		})
		c, _, err := coder.Dial(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		_, _, err = c.Read(ctx)
		var ce coder.CloseError
		if !errors.As(err, &ce) || ce.Code != 4002 || ce.Reason != "token expired" {
			t.Fatalf("coder got %v", err)
		}
		if err := waitErr(t, errs); err != nil {
			t.Fatalf("our Close: %v", err)
		}
	})
}

// gorillaServer echoes with gorilla's Upgrader and reports how each
// connection ended.
func gorillaServer(t *testing.T, fn func(c *websocket.Conn) error) (string, chan error) {
	errs := make(chan error, 10)
	up := websocket.Upgrader{}
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			errs <- err
			return
		}
		defer c.Close()
		c.SetReadLimit(limit)
		errs <- fn(c)
	})
	return url, errs
}

func gorillaEcho(c *websocket.Conn) error {
	for {
		typ, msg, err := c.ReadMessage()
		if err != nil {
			return err
		}
		if err := c.WriteMessage(typ, msg); err != nil {
			return err
		}
	}
}

func coderServer(t *testing.T, fn func(c *coder.Conn) error) (string, chan error) {
	errs := make(chan error, 10)
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		c, err := coder.Accept(w, r, nil)
		if err != nil {
			errs <- err
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(limit)
		errs <- fn(c)
	})
	return url, errs
}

func coderEcho(c *coder.Conn) error {
	ctx := context.Background()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return err
		}
	}
}

// ourClientSuite runs our client against a peer's echo server.
func ourClientSuite(t *testing.T, newServer func(t *testing.T) (string, chan error), peerCloseCode func(error) int) {
	ctx := context.Background()
	var errs chan error // the current subtest's server's
	dial := func(t *testing.T) *realtime.Conn {
		var url string
		url, errs = newServer(t)
		c, _, err := realtime.Dial(ctx, url, &realtime.DialOptions{ConnOptions: realtime.ConnOptions{ReadLimit: limit}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	t.Run("text messages", func(t *testing.T) {
		c := dial(t)
		for _, n := range sizes {
			if err := c.Write(ctx, realtime.MessageText, message(n)); err != nil {
				t.Fatal(err)
			}
			typ, got, err := c.Read(ctx)
			if err != nil || typ != realtime.MessageText || !bytes.Equal(got, message(n)) {
				t.Fatalf("%d bytes: got %d bytes, type %v, %v", n, len(got), typ, err)
			}
		}
	})
	t.Run("fragmented send", func(t *testing.T) {
		c := dial(t)
		w, err := c.Writer(ctx, realtime.MessageBinary)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			w.Write(message(1000))
		}
		w.Close()
		typ, got, err := c.Read(ctx)
		if err != nil || typ != realtime.MessageBinary || len(got) != 100_000 {
			t.Fatalf("%d bytes, %v", len(got), err)
		}
	})
	t.Run("ping and pong", func(t *testing.T) {
		c := dial(t)
		readDone := make(chan error, 1)
		go func() {
			_, _, err := c.Read(ctx)
			readDone <- err
		}()
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for i := 0; i < 3; i++ {
			if err := c.Ping(pctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Close(realtime.CloseNormalClosure, ""); err != nil {
			t.Fatalf("Close: %v", err)
		}
		wantOurClose(t, <-readDone, realtime.CloseNormalClosure, true)
	})
	t.Run("client closes", func(t *testing.T) {
		c := dial(t)
		if err := c.Close(realtime.CloseGoingAway, "leaving"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if got := peerCloseCode(waitErr(t, errs)); got != 1001 {
			t.Fatalf("peer saw close code %d", got)
		}
	})
}

func TestOurClientGorillaServer(t *testing.T) {
	ourClientSuite(t, func(t *testing.T) (string, chan error) { return gorillaServer(t, gorillaEcho) }, func(err error) int {
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		return 0
	})
	t.Run("server closes", func(t *testing.T) {
		url, _ := gorillaServer(t, func(c *websocket.Conn) error {
			c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4002, "unauthorized"), time.Now().Add(time.Second))
			_, _, err := c.ReadMessage() // our echo
			return err
		})
		c, _, err := realtime.Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Read(context.Background())
		wantOurClose(t, err, realtime.CloseUnauthorized, true)
	})
	t.Run("server sends invalid UTF-8", func(t *testing.T) {
		url, errs := gorillaServer(t, func(c *websocket.Conn) error {
			c.WriteMessage(websocket.TextMessage, []byte("bad \xc0\xaf"))
			_, _, err := c.ReadMessage()
			return err
		})
		c, _, err := realtime.Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Read(context.Background())
		wantOurClose(t, err, realtime.CloseInvalidPayload, false)
		if err := waitErr(t, errs); !websocket.IsCloseError(err, websocket.CloseInvalidFramePayloadData) {
			t.Fatalf("gorilla saw %v", err)
		}
	})
	t.Run("server pings", func(t *testing.T) {
		url, errs := gorillaServer(t, func(c *websocket.Conn) error {
			pong := make(chan string, 1)
			c.SetPongHandler(func(s string) error { pong <- s; return nil })
			c.WriteControl(websocket.PingMessage, []byte("gorilla asks"), time.Now().Add(time.Second))
			go c.ReadMessage()
			select {
			case s := <-pong:
				if s != "gorilla asks" {
					return fmt.Errorf("pong %q", s)
				}
				return nil
			case <-time.After(5 * time.Second):
				return errors.New("no pong")
			}
		})
		c, _, err := realtime.Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		go c.Read(context.Background())
		if err := waitErr(t, errs); err != nil {
			t.Fatal(err)
		}
	})
}

func TestOurClientCoderServer(t *testing.T) {
	ourClientSuite(t, func(t *testing.T) (string, chan error) { return coderServer(t, coderEcho) }, func(err error) int { return int(coder.CloseStatus(err)) })
	t.Run("server closes", func(t *testing.T) {
		url, errs := coderServer(t, func(c *coder.Conn) error {
			return c.Close(4003, "unknown share data")
		})
		c, _, err := realtime.Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Read(context.Background())
		wantOurClose(t, err, realtime.CloseUnknownShareData, true)
		if err := waitErr(t, errs); err != nil {
			t.Fatalf("coder Close: %v", err)
		}
	})
	t.Run("server sends invalid UTF-8", func(t *testing.T) {
		url, errs := coderServer(t, func(c *coder.Conn) error {
			ctx := context.Background()
			c.Write(ctx, coder.MessageText, []byte("bad \xed\xa0\x80"))
			_, _, err := c.Read(ctx)
			return err
		})
		c, _, err := realtime.Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Read(context.Background())
		wantOurClose(t, err, realtime.CloseInvalidPayload, false)
		if err := waitErr(t, errs); coder.CloseStatus(err) != coder.StatusInvalidFramePayloadData {
			t.Fatalf("coder saw %v", err)
		}
	})
	t.Run("server pings", func(t *testing.T) {
		url, errs := coderServer(t, func(c *coder.Conn) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			go c.Read(ctx)
			return c.Ping(ctx)
		})
		c, _, err := realtime.Dial(context.Background(), url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		go c.Read(context.Background())
		if err := waitErr(t, errs); err != nil {
			t.Fatal(err)
		}
	})
}
