package realtime

import (
	"context"
	"io"
	"runtime"
	"sync"
	"testing"
)

// TestInvalidUTF8FailsAsItArrives: invalid UTF-8 in a text frame fails
// the connection with 1007 as soon as the bytes that show it arrive, not
// when the frame completes (Autobahn 6.4.3 and 6.4.4): here the frame
// never completes, and only the first bytes of a 1,000-byte payload are
// sent, split across writes the way TCP may deliver them.
func TestInvalidUTF8FailsAsItArrives(t *testing.T) {
	payload := []byte("héllo, \xce")
	payload = append(payload, make([]byte, 1000-len(payload))...)
	payload[len("héllo, \xce")] = 'A' // 0xCE then 'A': invalid
	for _, tc := range []struct {
		name  string
		parts []int // bytes of the payload sent by each write
	}{
		{"in one read", []int{12}},
		{"split inside the sequence", []int{9, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := echoServer(t, nil)
			rc := connectRaw(t, srv)
			f := frame(fText, true, payload)
			hdr := headerLen(f[0], f[1])
			rc.sendRaw(f[:hdr])
			off := hdr
			for _, n := range tc.parts {
				rc.sendRaw(f[off : off+n])
				off += n
			}
			rc.expectClose(CloseInvalidPayload)
		})
	}
}

// stallReader serves data, then blocks until released, having said
// that the reader waits for more.
type stallReader struct {
	data    []byte
	once    sync.Once
	stalled chan struct{}
	release chan struct{}
}

func (s *stallReader) Read(p []byte) (int, error) {
	if len(s.data) > 0 {
		n := copy(p, s.data)
		s.data = s.data[n:]
		return n, nil
	}
	s.once.Do(func() { close(s.stalled) })
	<-s.release
	return 0, io.EOF
}

// TestStalledCompressedFrameHoldsNoBuffer: the header of a compressed
// frame announcing 64 KiB takes no buffer until its payload arrives (it
// took a 64 KiB one at once: 2,000 stalled connections held 167 MB, 12.5
// MB uncompressed). It costs what a plain frame's header costs.
func TestStalledCompressedFrameHoldsNoBuffer(t *testing.T) {
	plain := stalledAllocs(fText)
	compressed := stalledAllocs(fText | rsv1Bit)
	t.Logf("allocated per stalled connection: %d bytes plain, %d compressed", plain, compressed)
	if compressed > plain+1024 {
		t.Fatalf("a stalled compressed frame's header costs %d bytes per connection, a plain one %d", compressed, plain)
	}
}

// stalledAllocs returns the bytes allocated per connection by 64 server
// connections that read a frame header (first byte b0) announcing 64 KiB
// and then wait for its payload.
func stalledAllocs(b0 byte) uint64 {
	const conns = 64
	f := frame(b0, true, make([]byte, 64<<10))
	hdr := f[:headerLen(f[0], f[1])]
	release := make(chan struct{})
	var cs []*Conn
	var rs []*stallReader
	for i := 0; i < conns; i++ {
		r := &stallReader{data: hdr, stalled: make(chan struct{}), release: release}
		c := newConn(&memConn{r: r, w: io.Discard}, false, "", ConnOptions{ReadLimit: 1 << 20}, nil)
		c.deflate = true
		cs, rs = append(cs, c), append(rs, r)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Read(context.Background())
		}()
	}
	for _, r := range rs {
		<-r.stalled
	}
	runtime.ReadMemStats(&after)
	close(release)
	wg.Wait()
	return (after.TotalAlloc - before.TotalAlloc) / conns
}
