package realtime

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
)

// Write sends p as one message of type typ. Messages longer than 64 KiB go
// out in fragments of 64 KiB so that control frames (pongs, a close) are
// never stuck behind one long write. Write returns when the last byte was
// handed to the network connection.
//
// Concurrent calls are safe: each message goes out whole, never interleaved
// with another. If ctx ends or the write timeout passes in the middle of a
// message, the connection is closed, since a frame may have been cut short.
// Writing a message allocates nothing on a warm connection. Text messages
// are sent as given; sending invalid UTF-8 makes the peer close the
// connection with 1007.
//
// With permessage-deflate negotiated, a message of CompressionThreshold
// bytes or more is compressed (on its own: no context is kept between
// messages) unless that would not make it shorter.
func (c *Conn) Write(ctx context.Context, typ MessageType, p []byte) error {
	if typ != MessageText && typ != MessageBinary {
		return fmt.Errorf("websocket: write: invalid message type %d", int(typ))
	}
	if err := c.acquire(ctx, &c.msgLock); err != nil {
		return err
	}
	defer c.msgLock.unlock()
	op := opcode(typ)
	if c.deflate && len(p) >= CompressionThreshold {
		zp := getWriteBuf(min(len(p), writeFragmentSize))
		z := compress((*zp)[:0], p)
		defer putWriteBuf(zp, z)
		if len(z) < len(p) {
			p, op = z, op|rsv1Op
		}
	}
	for {
		n, fin := len(p), true
		if n > writeFragmentSize {
			n, fin = writeFragmentSize, false
		}
		if err := c.writeFrame(ctx, fin, op, p[:n]); err != nil {
			return err
		}
		if fin {
			return nil
		}
		p, op = p[n:], opContinuation
	}
}

// Writer returns a writer for one message of type typ sent in fragments:
// each call to its Write sends one frame, and Close sends the final frame.
// No other message is sent until Close is called. Most callers want Write;
// Writer is for streaming a message whose length is not known in advance.
// Its messages are never compressed, even with permessage-deflate
// negotiated: each frame goes out as it is written.
func (c *Conn) Writer(ctx context.Context, typ MessageType) (io.WriteCloser, error) {
	if typ != MessageText && typ != MessageBinary {
		return nil, fmt.Errorf("websocket: writer: invalid message type %d", int(typ))
	}
	if err := c.acquire(ctx, &c.msgLock); err != nil {
		return nil, err
	}
	return &fragmentWriter{c: c, ctx: ctx, op: opcode(typ)}, nil
}

type fragmentWriter struct {
	c      *Conn
	ctx    context.Context
	op     opcode
	closed bool
}

// Write sends p as one non-final frame. An empty p sends nothing.
func (w *fragmentWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("websocket: write to a closed message writer")
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := w.c.writeFrame(w.ctx, false, w.op, p); err != nil {
		return 0, err
	}
	w.op = opContinuation
	return len(p), nil
}

// Close sends the final, empty frame of the message and lets other
// messages go out.
func (w *fragmentWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	defer w.c.msgLock.unlock()
	return w.c.writeFrame(w.ctx, true, w.op, nil)
}

// Ping sends a ping and waits for the peer's pong to it. Some goroutine must
// be reading the connection for the pong to be seen. It returns ctx's error
// if ctx ends first.
func (c *Conn) Ping(ctx context.Context) error {
	c.pingMu.Lock()
	c.pingSeq++
	seq := c.pingSeq
	if c.pings == nil {
		c.pings = make(map[uint64]chan struct{})
	}
	done := make(chan struct{})
	c.pings[seq] = done
	c.pingMu.Unlock()
	defer func() {
		c.pingMu.Lock()
		delete(c.pings, seq)
		c.pingMu.Unlock()
	}()

	var p [8]byte
	binary.BigEndian.PutUint64(p[:], seq)
	if err := c.writeFrame(ctx, true, opPing, p[:]); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("websocket: ping: %w", ctx.Err())
	case <-c.closed:
		return c.endErr()
	}
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
// frame lock (whoever holds it sends them on release, or this call
// does). It may block for up to the write timeout, so only a goroutine of
// this connection's own calls it. It returns at once when the connection
// is closed.
func (c *Conn) flushControl() {
	if c.acquire(context.Background(), &c.frameLock) == nil {
		c.releaseFrame()
	}
}

// pongCount returns the number of pongs received so far.
func (c *Conn) pongCount() uint64 { return c.pongs.Load() }

// acquire takes one of the write locks, giving up when ctx ends or the
// connection closes.
func (c *Conn) acquire(ctx context.Context, l *writeLock) error {
	switch l.lock(ctx, c.closed, nil) {
	case lockTaken:
		return nil
	case lockCanceled:
		return fmt.Errorf("websocket: write: %w", ctx.Err())
	default:
		return c.endErr()
	}
}

// writeFrame sends one frame. Once a close frame was sent, no other frame
// may follow it and writeFrame fails.
func (c *Conn) writeFrame(ctx context.Context, fin bool, op opcode, p []byte) error {
	if err := c.acquire(ctx, &c.frameLock); err != nil {
		return err
	}
	if c.closeSent.Load() {
		c.releaseFrame()
		return c.endErr()
	}
	stop := c.wdl.watch(ctx)
	err := c.writeFrameLocked(fin, op, p)
	c.wdl.unwatch(stop)
	c.releaseFrame()
	if err != nil {
		return c.writeFailed(ctx, err)
	}
	return nil
}

// writeFrameLocked writes one frame; the caller holds frameLock.
func (c *Conn) writeFrameLocked(fin bool, op opcode, p []byte) error {
	c.wdl.extend(c.opts.WriteTimeout)
	if c.client {
		return c.writeMasked(fin, op, p)
	}
	n := putHeader(c.whdr[:], fin, op, false, 0, len(p))
	if len(p) == 0 {
		_, err := c.nc.Write(c.whdr[:n])
		return err
	}
	c.wbufs[0], c.wbufs[1] = c.whdr[:n], p
	err := c.writeBuffers(c.wbufs[:])
	c.wbufs[0], c.wbufs[1] = nil, nil // do not keep the caller's buffer alive
	return err
}

// writeBuffers is where every unmasked frame leaves: one frame as header
// and payload, or a batch of pre-encoded frames. On TCP it is one writev
// system call with no copy. On TLS and other wrappers it is one Write of
// the concatenation (from a pooled buffer when it fits one), so a batch is
// one record rather than one per buffer. The caller holds frameLock and has
// extended the write deadline.
func (c *Conn) writeBuffers(bufs [][]byte) error {
	if c.canGather() {
		return c.gather(bufs)
	}
	return c.writeCopied(bufs)
}

// writeCopied writes bufs in one Write, copied into a pooled buffer, for a
// connection that cannot gather them. It is apart from writeBuffers so the
// gathering path's stack frame stays small: a writer goroutine starts with
// the smallest stack, and growing it costs more than the write.
func (c *Conn) writeCopied(bufs [][]byte) error {
	size := 0
	for _, b := range bufs {
		size += len(b)
	}
	if size > writeBufClasses[len(writeBufClasses)-1] {
		nb := net.Buffers(bufs)
		_, err := nb.WriteTo(c.nc)
		return err
	}
	bp := getWriteBuf(size)
	b := (*bp)[:0]
	for _, f := range bufs {
		b = append(b, f...)
	}
	_, err := c.nc.Write(b)
	putWriteBuf(bp, b)
	return err
}

// appendServerFrame appends one unmasked final text frame carrying
// payload: the bytes every subscriber of a broadcast receives, encoded
// once.
func appendServerFrame(dst []byte, payload []byte) []byte {
	var hdr [maxHeaderSize]byte
	n := putHeader(hdr[:], true, opText, false, 0, len(payload))
	dst = append(dst, hdr[:n]...)
	return append(dst, payload...)
}

// writeFrames writes pre-encoded server frames (appendServerFrame), in
// order, through writeBuffers. Control frames owed to the peer go out
// before the batch. It must be called on a server connection; it waits for
// the write locks until the connection closes, since a server's frames are
// written by one writer per connection, and is bounded by the write
// timeout.
func (c *Conn) writeFrames(frames [][]byte) error {
	if err := c.acquire(context.Background(), &c.msgLock); err != nil {
		return err
	}
	if err := c.acquire(context.Background(), &c.frameLock); err != nil {
		c.msgLock.unlock()
		return err
	}
	if c.closeSent.Load() {
		c.releaseFrame()
		c.msgLock.unlock()
		return c.endErr()
	}
	if c.pongPending.Load() {
		c.writePendingPong()
	}
	c.wdl.extend(c.opts.WriteTimeout)
	err := c.writeBuffers(frames)
	c.releaseFrame()
	c.msgLock.unlock()
	if err != nil {
		return c.writeFailed(context.Background(), err)
	}
	return nil
}

// writeMasked writes a client frame: the payload is copied and masked with a
// fresh key (RFC 6455 section 5.3), leaving the caller's bytes untouched.
func (c *Conn) writeMasked(fin bool, op opcode, p []byte) error {
	key := c.maskKey()
	bp := getWriteBuf(maxHeaderSize + len(p))
	b := (*bp)[:maxHeaderSize]
	n := putHeader(b, fin, op, true, key, len(p))
	b = append(b[:n], p...)
	maskBytes(key, 0, b[n:])
	_, err := c.nc.Write(b)
	putWriteBuf(bp, b)
	return err
}

// maskKey returns a fresh masking key from a ChaCha8 generator seeded from
// crypto/rand, so keys cannot be predicted by the application or a proxy.
// The caller holds frameLock.
func (c *Conn) maskKey() uint32 {
	if c.rng == nil {
		var seed [32]byte
		crand.Read(seed[:])
		c.rng = rand.NewChaCha8(seed)
	}
	return uint32(c.rng.Uint64())
}

// releaseFrame gives up frameLock, first writing any pong owed to the peer.
// A reader that queued a pong while another goroutine held frameLock relies
// on the holder to send it here.
func (c *Conn) releaseFrame() {
	for {
		if c.pongPending.Load() {
			c.writePendingPong()
		}
		if c.pingPending.Swap(false) && !c.closeSent.Load() {
			if err := c.writeFrameLocked(true, opPing, nil); err != nil {
				c.closeTCP(&CloseError{Code: CloseAbnormalClosure, Reason: "writing a ping: " + err.Error()})
			}
		}
		c.frameLock.unlock()
		if !c.pongPending.Load() && !c.pingPending.Load() {
			return
		}
		// A pong was queued after the check above; send it unless another
		// goroutine took the lock (it will send it then).
		if !c.frameLock.tryLock() {
			return
		}
	}
}

// queuePong records that a pong with payload p is owed and sends it now if
// no other frame is being written. Only the latest ping is answered when
// several arrive while a write is in progress, which RFC 6455 section 5.5.3
// allows.
func (c *Conn) queuePong(p []byte) {
	c.pongMu.Lock()
	c.pongLen = uint8(copy(c.pongBuf[:], p)) // a control payload: at most 125 bytes
	c.pongPending.Store(true)
	c.pongMu.Unlock()
	if c.frameLock.tryLock() {
		c.releaseFrame()
	}
}

// writePendingPong sends the owed pong; the caller holds frameLock.
func (c *Conn) writePendingPong() {
	var buf [maxControlPayload]byte
	c.pongMu.Lock()
	n := copy(buf[:], c.pongBuf[:c.pongLen])
	c.pongPending.Store(false)
	c.pongMu.Unlock()
	if c.closeSent.Load() {
		return
	}
	if err := c.writeFrameLocked(true, opPong, buf[:n]); err != nil {
		c.closeTCP(&CloseError{Code: CloseAbnormalClosure, Reason: "writing a pong: " + err.Error()})
	}
}

// writeFailed closes the connection after a failed write: part of a frame
// may have been written, so nothing more can be sent on it.
func (c *Conn) writeFailed(ctx context.Context, err error) error {
	if c.isClosed() {
		return c.endErr()
	}
	if cerr := ctx.Err(); cerr != nil {
		err = cerr
	}
	c.closeTCP(&CloseError{Code: CloseAbnormalClosure, Reason: "write failed: " + err.Error()})
	return fmt.Errorf("websocket: write: %w", err)
}

// Write buffers for client frames (which must be copied to be masked) and
// for connections that cannot gather buffers, pooled by size class so an
// idle connection holds none and a warm one allocates none.
var writeBufClasses = [...]int{4 << 10, 16 << 10, maxHeaderSize + writeFragmentSize}

var writeBufPools [len(writeBufClasses)]sync.Pool

// getWriteBuf returns a buffer with capacity for n bytes (n is at most a
// full fragment and its header).
func getWriteBuf(n int) *[]byte {
	for i, size := range writeBufClasses {
		if n <= size {
			if bp, ok := writeBufPools[i].Get().(*[]byte); ok {
				return bp
			}
			b := make([]byte, 0, size)
			return &b
		}
	}
	b := make([]byte, 0, n)
	return &b
}

// putWriteBuf returns a buffer to its class's pool.
func putWriteBuf(bp *[]byte, used []byte) {
	for i, size := range writeBufClasses {
		if cap(used) >= size && (i+1 == len(writeBufClasses) || cap(used) < writeBufClasses[i+1]) {
			if cap(used) > size+size/4 {
				return // not one of ours
			}
			*bp = used[:0]
			writeBufPools[i].Put(bp)
			return
		}
	}
}
