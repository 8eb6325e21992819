//go:build linux

package realtime

import (
	"io"
	"net"
	"sync"
	"syscall"
	"unsafe"
)

// On Linux a TCP or Unix connection does its hot I/O through
// syscall.RawConn, so that what it holds while idle is as little as it
// can be.
//
// Writes gather their buffers with writev of our own, instead of
// net.Buffers.WriteTo. The standard library's
// path keeps an iovec array per socket, grown to the largest batch the
// socket ever wrote and held for its life (up to 16 KiB per connection
// after one backlog), and growing it allocates on the fan-out path. Here
// the iovecs live in a shared pool only for the length of each system
// call, so an idle connection holds none, whatever it wrote before.

// gatherIovecs is how many buffers one writev takes; a longer batch is
// written in several calls.
const gatherIovecs = 64

// maxIovecLen bounds one iovec's length, as the standard library does, so
// a huge buffer is written in parts.
const maxIovecLen = 1 << 30

var iovecPool = sync.Pool{New: func() any { return new([gatherIovecs]syscall.Iovec) }}

// rawIO is the part of a Conn that does its I/O through syscall.RawConn.
type rawIO struct {
	raw  syscall.RawConn
	bufs [][]byte // what is left to write, during gather
	err  error    // the system call's error, during gather
	step func(fd uintptr) bool

	readStep func(fd uintptr) bool // idleRead's, made once
}

// initRawIO prepares c for raw I/O when nc is a TCP or Unix socket.
func (c *Conn) initRawIO() {
	switch nc := c.nc.(type) {
	case *net.TCPConn:
		c.g.raw, _ = nc.SyscallConn()
	case *net.UnixConn:
		c.g.raw, _ = nc.SyscallConn()
	}
}

// canGather reports whether writeBuffers may call gather.
func (c *Conn) canGather() bool { return c.g.raw != nil }

// gather writes bufs in order with as few writev calls as it takes,
// waiting for the socket to take more (up to the write deadline) when it
// is full.
func (c *Conn) gather(bufs [][]byte) error {
	if c.g.step == nil {
		c.g.step = c.writevStep // made once, so each write allocates nothing
	}
	c.g.bufs = bufs
	err := c.g.raw.Write(c.g.step)
	if err == nil {
		err = c.g.err
	}
	c.g.bufs, c.g.err = nil, nil // do not keep the frames alive
	return err
}

// writevStep writes what is left of c.g.bufs; it returns false when the
// socket is full, so RawConn.Write waits for it to drain and calls it
// again.
func (c *Conn) writevStep(fd uintptr) bool {
	for len(c.g.bufs) > 0 {
		iov := iovecPool.Get().(*[gatherIovecs]syscall.Iovec)
		n := 0
		for _, b := range c.g.bufs {
			if len(b) == 0 {
				continue
			}
			iov[n].Base = &b[0]
			iov[n].SetLen(min(len(b), maxIovecLen))
			n++
			if n == len(iov) || len(b) > maxIovecLen {
				break
			}
		}
		if n == 0 { // only empty buffers were left
			iovecPool.Put(iov)
			c.g.bufs = nil
			return true
		}
		wrote, _, errno := syscall.Syscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		clear(iov[:n])
		iovecPool.Put(iov)
		switch errno {
		case 0:
			c.consume(int(wrote))
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.g.err = errno
			return true
		}
	}
	return true
}

// consume drops the first n written bytes from c.g.bufs.
func (c *Conn) consume(n int) {
	for len(c.g.bufs) > 0 && n >= len(c.g.bufs[0]) {
		n -= len(c.g.bufs[0])
		c.g.bufs[0] = nil
		c.g.bufs = c.g.bufs[1:]
	}
	if len(c.g.bufs) > 0 {
		c.g.bufs[0] = c.g.bufs[0][n:]
	}
}

// Reads: a connection waiting for its peer's next frame (the idle state
// of nearly every connection) lends its read buffer to a shared pool and
// takes one back when bytes arrive, so an idle connection holds no read
// buffer. Only buffers of the default size are pooled; a connection whose
// handshake left more bytes keeps its own.

var readBufPool = sync.Pool{New: func() any { return new([defaultReadBufferSize]byte) }}

// idleRead is waitReadable's network read: it waits for bytes without
// holding c.rbuf and reads them into a pooled buffer, which becomes c.rbuf.
// It reports false when c cannot read this way, and the caller reads as
// usual. On return c.rbuf is set, whatever happened. The caller holds
// readMu, and the buffer is empty.
func (c *Conn) idleRead() bool {
	if c.g.raw == nil || len(c.rbuf) != defaultReadBufferSize {
		return false
	}
	if c.g.readStep == nil {
		c.g.readStep = c.readStep // made once, so each wait allocates nothing
	}
	readBufPool.Put((*[defaultReadBufferSize]byte)(c.rbuf))
	c.rbuf = nil
	c.rend, c.waitErr = 0, nil
	if err := c.g.raw.Read(c.g.readStep); err != nil {
		c.waitErr = err // the wait ended without bytes (deadline, close)
	}
	if c.rbuf == nil {
		c.rbuf = readBufPool.Get().(*[defaultReadBufferSize]byte)[:]
	}
	return true
}

// readStep reads what the socket holds into a pooled buffer, setting
// c.rend or c.waitErr (the caller holds readMu); it returns false, with
// the buffer given back, when the socket has nothing yet, so RawConn.Read
// waits for it to become readable and calls it again. (Writing straight
// into the read state keeps Conn within its allocation size class.)
func (c *Conn) readStep(fd uintptr) bool {
	for {
		if c.rbuf == nil {
			c.rbuf = readBufPool.Get().(*[defaultReadBufferSize]byte)[:]
		}
		n, err := syscall.Read(int(fd), c.rbuf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			readBufPool.Put((*[defaultReadBufferSize]byte)(c.rbuf))
			c.rbuf = nil
			return false
		case err != nil:
			c.waitErr = err
		case n == 0:
			c.waitErr = io.EOF
		default:
			c.rend = n
		}
		return true
	}
}
