//go:build unix

package realtime

import (
	"bytes"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestGatheredWriteUnderBackpressure: a batch of many frames of mixed
// sizes, written to a peer with a tiny receive buffer that reads a little
// at a time, arrives whole and in order: the gathering write resumes after
// every partial write and every full socket, and batches longer than one
// system call takes are split correctly.
func TestGatheredWriteUnderBackpressure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		d := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
			c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
			return nil
		}}
		nc, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			got <- nil
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		var all bytes.Buffer
		buf := make([]byte, 97) // small, odd reads keep the sender's socket full
		for {
			n, err := nc.Read(buf)
			all.Write(buf[:n])
			if err != nil {
				got <- all.Bytes()
				return
			}
		}
	}()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	nc.(*net.TCPConn).SetWriteBuffer(4096)
	c := newConn(nc, false, "", ConnOptions{}, nil)
	var frames [][]byte
	var want []byte
	for i := 0; i < 300; i++ {
		n := (i * 7919) % 3000
		switch {
		case i%50 == 0:
			n = 70000 // larger than the socket's buffers several times over
		case i%37 == 0:
			n = 0 // empty buffers are skipped
		}
		f := bytes.Repeat([]byte{byte(i)}, n)
		frames = append(frames, f)
		want = append(want, f...)
	}
	frames = append(frames, nil) // and an empty one last
	if err := c.writeFrames(frames); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	b := <-got
	if !bytes.Equal(b, want) {
		t.Fatalf("received %d bytes, want %d; first difference at %d", len(b), len(want), firstDiff(b, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestConnSizeClass: a Conn is allocated from the runtime's 896-byte size
// class on 64-bit Linux, and a server session from the 224-byte class. What
// counts is what the allocator takes, not the struct's size: an object of
// more than 512 bytes that holds pointers gets an 8-byte header, so an
// 896-byte Conn took 1,024 bytes, 128 more per idle connection.
func TestConnSizeClass(t *testing.T) {
	if runtime.GOOS != "linux" || unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the size is checked on 64-bit Linux, where the memory figures are measured")
	}
	for _, tc := range []struct {
		name  string
		class uint64
		alloc func()
	}{
		{"Conn", 896, func() { sizeSink = &Conn{} }},
		{"session", 224, func() { sizeSink = &session{} }},
	} {
		const n = 1000
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for i := 0; i < n; i++ {
			tc.alloc()
		}
		runtime.ReadMemStats(&after)
		if per := (after.TotalAlloc - before.TotalAlloc) / n; per > tc.class {
			t.Errorf("a %s takes %d bytes, past its %d-byte size class: idle connections grow", tc.name, per, tc.class)
		}
	}
}

// sizeSink keeps TestConnSizeClass's allocations on the heap.
var sizeSink any
