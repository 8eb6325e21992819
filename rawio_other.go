//go:build !linux

package realtime

import "net"

// Off Linux a connection gathers its buffers with net.Buffers, the
// standard library's writev where the system has one, and keeps its read
// buffer while idle.
type rawIO struct {
	nb net.Buffers
}

func (c *Conn) initRawIO() {}

func (c *Conn) idleRead() bool { return false }

func (c *Conn) canGather() bool {
	switch c.nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

func (c *Conn) gather(bufs [][]byte) error {
	c.g.nb = bufs // a field, so WriteTo's pointer receiver allocates nothing
	_, err := c.g.nb.WriteTo(c.nc)
	c.g.nb = nil
	return err
}
