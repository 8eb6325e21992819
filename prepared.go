package realtime

import (
	"context"
	"net"
)

// This file holds what the realtime server needs from a server-side Conn
// beyond Read and Write: frames encoded once and written to many
// connections, batches of them in one system call, and pings that never
// block the caller.

// appendServerFrame appends one unmasked final text frame carrying
// payload: the bytes every subscriber of a broadcast receives.
func appendServerFrame(dst []byte, payload []byte) []byte {
	var hdr [maxHeaderSize]byte
	n := putHeader(hdr[:], true, opText, false, 0, len(payload))
	dst = append(dst, hdr[:n]...)
	return append(dst, payload...)
}

// writeFrames writes pre-encoded server frames, in order, in one gathered
// write where the connection allows it. Control frames owed to the peer go
// out before the batch. It must be called on a server connection.
func (c *Conn) writeFrames(ctx context.Context, frames [][]byte) error {
	if err := c.acquire(ctx, c.msgSem); err != nil {
		return err
	}
	defer func() { <-c.msgSem }()
	if err := c.acquire(ctx, c.frameSem); err != nil {
		return err
	}
	if c.closeSent.Load() {
		c.releaseFrame()
		return c.endErr()
	}
	if c.pongPending.Load() {
		c.writePendingPong()
	}
	c.wdl.extend(c.opts.WriteTimeout)
	var err error
	if c.writev {
		c.wnb = frames
		_, err = c.wnb.WriteTo(c.nc)
		c.wnb = nil
	} else {
		// TLS and other wrappers: one Write of the concatenation, so the
		// batch is one record rather than one per frame.
		size := 0
		for _, f := range frames {
			size += len(f)
		}
		if size <= writeBufClasses[len(writeBufClasses)-1] {
			bp := getWriteBuf(size)
			b := (*bp)[:0]
			for _, f := range frames {
				b = append(b, f...)
			}
			_, err = c.nc.Write(b)
			putWriteBuf(bp, b)
		} else {
			nb := net.Buffers(frames)
			_, err = nb.WriteTo(c.nc)
		}
	}
	c.releaseFrame()
	if err != nil {
		return c.writeFailed(ctx, err)
	}
	return nil
}

// requestPing records that a ping with an empty payload is owed to the
// peer, without writing anything: the next goroutine to write on the
// connection sends it (see flushControl). So the caller never waits on a
// peer that stopped reading. It reports false when the connection is closed
// or closing.
func (c *Conn) requestPing() bool {
	if c.isClosed() || c.closeSent.Load() {
		return false
	}
	c.pingPending.Store(true)
	return true
}

// controlPending reports whether a ping or a pong is owed to the peer.
func (c *Conn) controlPending() bool { return c.pingPending.Load() || c.pongPending.Load() }

// flushControl sends the ping and pong owed to the peer: it waits for the
// frame semaphore (whoever holds it sends them on release, or this call
// does). It may block for up to the write timeout, so only a goroutine of
// this connection's own calls it. It returns at once when the connection
// is closed.
func (c *Conn) flushControl() {
	if c.acquire(context.Background(), c.frameSem) == nil {
		c.releaseFrame()
	}
}

// pongCount returns the number of pongs received so far.
func (c *Conn) pongCount() uint64 { return c.pongs.Load() }
