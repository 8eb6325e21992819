package realtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// TestConcurrentWriters has 8 goroutines write 100 messages each (some
// long enough to be fragmented) on one client connection while pings are
// exchanged; the echo must return every message intact, none interleaved.
func TestConcurrentWriters(t *testing.T) {
	srv, _ := echoServer(t, &AcceptOptions{ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
	ctx := context.Background()
	c, _, err := Dial(ctx, wsURL(srv), &DialOptions{ConnOptions: ConnOptions{ReadLimit: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	const writers, each = 8, 100
	want := map[string]bool{}
	msgs := make([][][]byte, writers)
	for w := range msgs {
		for i := 0; i < each; i++ {
			n := 10
			if i%25 == 0 {
				n = 150_000 // three fragments
			}
			m := bytes.Repeat([]byte{byte('A' + w)}, n)
			m = append(m, fmt.Sprintf("/%d/%d", w, i)...)
			msgs[w] = append(msgs[w], m)
			want[string(m)] = true
		}
	}
	var wg sync.WaitGroup
	for w := range msgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, m := range msgs[w] {
				if err := c.Write(ctx, MessageText, m); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20; i++ {
			if err := c.Ping(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range writers * each {
		_, m, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !want[string(m)] {
			t.Fatalf("unexpected or repeated message of %d bytes ending %q", len(m), m[max(0, len(m)-10):])
		}
		delete(want, string(m))
	}
	// The pings' pongs are seen by the reads above; let the pinger finish.
	go c.Read(ctx)
	wg.Wait()
}

// TestCloseDuringWrites closes a connection while goroutines write to it:
// nothing panics and every writer gets an error that matches ErrClosed.
func TestCloseDuringWrites(t *testing.T) {
	srv, _ := echoServer(t, nil)
	ctx := context.Background()
	c, _, err := Dial(ctx, wsURL(srv), nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, _, err := c.Read(ctx); err != nil {
				return
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := c.Write(ctx, MessageBinary, make([]byte, 1000)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	c.Close(CloseNormalClosure, "done")
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("writer got %v, want an error matching ErrClosed", err)
		}
	}
	if err := c.Write(ctx, MessageText, nil); CloseCodeOf(err) != CloseNormalClosure {
		t.Fatalf("write after Close: %v", err)
	}
}
