//go:build unix

package realtime

import (
	"bufio"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// dialSlowRaw connects a raw client with a 4 KiB receive buffer, subscribes
// it to "doc" and returns it without reading, so the server's writes to it
// soon block on TCP flow control.
func dialSlowRaw(t *testing.T, rs *rtServer) *rawClient {
	t.Helper()
	d := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return serr
	}}
	nc, err := d.Dial("tcp", rs.hs.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write([]byte(handshakeRequest(rs.hs.Listener.Addr().String()))); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake: %v", err)
	}
	rc := &rawClient{t: t, nc: nc, br: br}
	rc.send(fText, (&SubscribeMessage{ShareDataID: "doc"}).AppendJSON(nil))
	if f := rc.mustRead(); f.op() != opText {
		t.Fatalf("got %s", f.op())
	}
	return rc
}
