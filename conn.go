package realtime

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of ConnOptions, AcceptOptions and DialOptions. Each applies
// when its field is zero.
const (
	// defaultReadLimit is the largest message, in bytes, that a Conn
	// accepts: 64 KiB. It is below the realtime server's default
	// send-buffer cap of 1 MiB, so one maximal message can never by itself
	// trip a slow-consumer close.
	defaultReadLimit = 64 << 10
	// defaultInflateRatio bounds the bytes compressed messages inflate to
	// per compressed byte received (ConnOptions.InflateRatio).
	defaultInflateRatio = 32
	// defaultIdleTimeout is how long a Conn waits for the next frame to
	// arrive completely before it gives up on the peer.
	defaultIdleTimeout = 60 * time.Second
	// defaultWriteTimeout bounds the writing of one frame.
	defaultWriteTimeout = 10 * time.Second
	// defaultCloseTimeout bounds the close handshake: how long Close waits
	// for the peer's close frame, and how long this side waits to send its
	// own close frame when another write holds the connection.
	defaultCloseTimeout = 5 * time.Second
	// defaultMaxFragments is the most frames one message may arrive in:
	// 1,024. Browsers send a message in one frame and Go libraries in
	// frames of 4 KiB (gorilla/websocket) to 64 KiB (this package), so a
	// 64 KiB message takes at most 16; the bound stops a peer from making
	// one message cost unbounded work with empty continuation frames.
	defaultMaxFragments = 1024
	// defaultHandshakeTimeout bounds the opening handshake: writing the 101
	// response on the server, and dialing, TLS and the HTTP exchange on
	// the client.
	defaultHandshakeTimeout = 10 * time.Second

	// defaultReadBufferSize is the size of a connection's own read
	// buffer. Payloads larger than it are read directly into the message
	// buffer, so it only needs to hold headers and small frames.
	defaultReadBufferSize = 512
	// writeFragmentSize is the largest frame Write sends; longer messages
	// are fragmented so that control frames (a pong, a close) can go out
	// between their fragments.
	writeFragmentSize = 64 << 10
)

// ConnOptions are the limits and timeouts of a connection, shared by
// AcceptOptions and DialOptions. Like every options struct of this package,
// a zero field means its documented default and a negative one means none
// (no limit, no timeout).
type ConnOptions struct {
	// ReadLimit is the largest message in bytes that Read accepts; a
	// longer one fails the connection with close code 1009 (message too
	// big). Zero means 64 KiB. Negative means no limit, which lets any
	// peer make this side allocate without bound.
	ReadLimit int64

	// MaxFragments is the most frames (the first and its continuations)
	// one data message may arrive in; one more fails the connection with
	// close code 1009. Control frames between fragments do not count.
	// Zero means 1,024. Negative means no limit. Raise it with ReadLimit
	// when peers fragment finely: a 16 MiB message written through
	// gorilla/websocket's NextWriter with its default 4 KiB buffer is
	// 4,096 frames.
	MaxFragments int

	// IdleTimeout is how long a read waits for the next frame to arrive
	// completely. When it passes, the connection is closed (the peer is
	// sent 1001, best effort) and Read returns an error. It protects a
	// reading goroutine against peers that vanish or trickle bytes.
	// Zero means 60 s. Negative means no timeout.
	IdleTimeout time.Duration

	// WriteTimeout bounds the writing of each frame: a write blocked for
	// that long (or up to an eighth longer: frames written in quick
	// succession share one deadline) closes the connection. Zero means
	// 10 s. Negative means no timeout.
	WriteTimeout time.Duration

	// InflateRatio bounds what a peer's compressed messages
	// (permessage-deflate) may inflate to: at most this many bytes per
	// compressed byte received, on average over the connection, with a
	// reserve of four read limits that also refills by one read limit per
	// second. Past it the connection fails with 1008 (policy violation).
	// A message whose compressed bytes outnumber what they inflate to by
	// more than a sender's framing needs fails it too. Inflating costs
	// per byte it produces, so without a bound a few bytes received could
	// cost the CPU of a read limit each (a 79-byte message that inflates
	// to 64 KiB). JSON compresses 3 to 20 times. Zero means 32. Negative
	// means no limit.
	InflateRatio int

	// CloseTimeout bounds the close handshake: how long Close waits for
	// the peer's close frame, and how long a close frame waits for
	// another write that holds the connection. Zero means 5 s. Negative
	// means no timeout: Close waits as long as the peer takes.
	CloseTimeout time.Duration
}

// withDefaults resolves the zero values; negative values stay negative
// and mean "none" where they are used.
func (o ConnOptions) withDefaults() ConnOptions {
	if o.ReadLimit == 0 {
		o.ReadLimit = defaultReadLimit
	}
	if o.MaxFragments == 0 {
		o.MaxFragments = defaultMaxFragments
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = defaultIdleTimeout
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = defaultWriteTimeout
	}
	if o.CloseTimeout == 0 {
		o.CloseTimeout = defaultCloseTimeout
	}
	if o.InflateRatio == 0 {
		o.InflateRatio = defaultInflateRatio
	}
	return o
}

// closeDeadline is the end of a close-handshake wait starting now; the
// zero time (no deadline) when CloseTimeout is negative.
func (o *ConnOptions) closeDeadline() time.Time {
	if o.CloseTimeout < 0 {
		return time.Time{}
	}
	return time.Now().Add(o.CloseTimeout)
}

// ErrClosed is returned by the methods of a Conn used after it was closed
// without a close handshake, and matched by errors.Is on any error a Conn
// returns once it is closed.
var ErrClosed = errors.New("websocket: connection closed")

// Conn is a WebSocket connection, either side. Get one from Accept (server)
// or Dial (client).
//
// Concurrency: one goroutine at a time may read (Read and ReadInto
// serialize); any number of goroutines may write, ping and close
// concurrently. Frames of different messages never interleave on the wire,
// and control frames (pong, close, ping) may go out between the fragments of
// a long message. A Conn starts no goroutines of its own: the connection
// makes progress only while some goroutine reads or writes.
//
// Pings from the peer are answered with pongs by whichever goroutine is
// reading, so a connection must be read for pings to be answered and for
// close frames to be seen.
type Conn struct {
	nc      net.Conn
	client  bool  // this side is the client: it masks, the peer must not
	deflate bool  // permessage-deflate was negotiated (deflate.go)
	pongLen uint8 // of pongBuf (under pongMu): at most 125
	// idleRearm asks the next network read to restart the idle timeout
	// (read side). With the small fields above it keeps Conn at 888
	// bytes: with the 8-byte header the allocator adds to an object of
	// more than 512 bytes that holds pointers, that is the 896-byte size
	// class; 8 bytes more cost 128 per connection.
	idleRearm   bool
	subprotocol string
	opts        ConnOptions

	// Read side, owned by the goroutine holding readMu.
	readMu   sync.Mutex
	rbuf     []byte
	rpos     int
	rend     int
	ctrl     [maxControlPayload]byte
	utf8     utf8Validator
	readErr  error // sticky: once set, every read returns it
	waitErr  error // met by waitReadable, reported by the next read
	rdl      ioDeadline
	inflated *inflateBudget // made at the first compressed message

	// Write side. msgLock is held for a whole data message, frameLock
	// for each frame.
	msgLock   writeLock
	frameLock writeLock
	whdr      [maxHeaderSize]byte
	wbufs     [2][]byte
	g         rawIO         // gathered writes and idle reads on TCP and Unix sockets
	rng       *rand.ChaCha8 // masking keys, client side only, made on first use
	wdl       ioDeadline

	// A pong owed to the peer and a ping to send, written by whoever next
	// holds frameLock.
	pongMu      sync.Mutex
	pongPending atomic.Bool
	pingPending atomic.Bool
	pongs       atomic.Uint64 // pongs received
	pongBuf     [maxControlPayload]byte

	// Close state.
	closeMu   sync.Mutex
	closeSent atomic.Bool   // a close frame was written (or is being written)
	closeRecv chan struct{} // closed when the peer's close frame is read
	recvOnce  sync.Once
	closeErr  *CloseError // how the connection ended, once it has
	closed    chan struct{}
	tcpClosed atomic.Bool
	closeOnce sync.Once

	// Pings sent by Ping, waiting for their pong.
	pingMu  sync.Mutex
	pingSeq uint64
	pings   map[uint64]chan struct{}
}

// newConn wraps nc, whose opening handshake is complete. pre holds bytes
// already read from nc past the handshake.
func newConn(nc net.Conn, client bool, subprotocol string, opts ConnOptions, pre []byte) *Conn {
	c := &Conn{
		nc:          nc,
		client:      client,
		subprotocol: subprotocol,
		opts:        opts.withDefaults(),
		closeRecv:   make(chan struct{}),
		closed:      make(chan struct{}),
	}
	size := defaultReadBufferSize
	if len(pre) > size {
		size = len(pre)
	}
	c.rbuf = make([]byte, size)
	c.rend = copy(c.rbuf, pre)
	c.initRawIO()
	c.rdl.set = nc.SetReadDeadline
	c.wdl.set = nc.SetWriteDeadline
	return c
}

// Subprotocol returns the subprotocol negotiated in the opening handshake,
// or "" when none was.
func (c *Conn) Subprotocol() string { return c.subprotocol }

// LocalAddr returns the local network address.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// RemoteAddr returns the remote network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Done returns a channel that is closed once the underlying network
// connection is closed, whatever closed it.
func (c *Conn) Done() <-chan struct{} { return c.closed }

// CloseNow closes the network connection at once, without a close
// handshake. Blocked reads and writes return. It is what a server does to
// a peer that stopped answering. It returns ErrClosed if the connection was
// already closed.
func (c *Conn) CloseNow() error {
	if !c.closeTCP(&CloseError{Code: CloseAbnormalClosure, Reason: "connection closed without a close handshake"}) {
		return ErrClosed
	}
	return nil
}

// closeTCP closes the network connection and records why, the first time.
// It reports whether this call closed it.
func (c *Conn) closeTCP(why *CloseError) bool {
	did := false
	c.closeOnce.Do(func() {
		did = true
		c.closeMu.Lock()
		if c.closeErr == nil {
			c.closeErr = why
		}
		c.closeMu.Unlock()
		c.tcpClosed.Store(true) // before Close wakes blocked I/O
		c.nc.Close()
		close(c.closed)
	})
	return did
}

// setCloseErr records how the connection ends unless that is known already.
func (c *Conn) setCloseErr(ce *CloseError) {
	c.closeMu.Lock()
	if c.closeErr == nil {
		c.closeErr = ce
	}
	c.closeMu.Unlock()
}

// closeStatus returns the code of the close that ended the connection and
// whether the peer sent it: CloseAbnormalClosure and false when none is
// recorded.
func (c *Conn) closeStatus() (CloseCode, bool) {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closeErr == nil {
		return CloseAbnormalClosure, false
	}
	return c.closeErr.Code, c.closeErr.Remote
}

// endErr is the error that operations return once the connection has
// ended: the recorded CloseError, which also matches ErrClosed.
func (c *Conn) endErr() error {
	c.closeMu.Lock()
	ce := c.closeErr
	c.closeMu.Unlock()
	if ce == nil {
		return ErrClosed
	}
	return &closedError{ce}
}

// closedError is a CloseError seen by an operation that came after the
// close: errors.As finds the CloseError and errors.Is matches ErrClosed.
type closedError struct{ ce *CloseError }

func (e *closedError) Error() string   { return e.ce.Error() }
func (e *closedError) Unwrap() []error { return []error{e.ce, ErrClosed} }

// isClosed reports whether the network connection was closed.
func (c *Conn) isClosed() bool { return c.tcpClosed.Load() }

// ioDeadline arranges read or write deadlines so that a context's
// cancellation cannot be overwritten by a later timeout refresh.
type ioDeadline struct {
	mu       sync.Mutex
	gen      uint64
	canceled bool
	watching bool // touched only by the goroutine doing the I/O
	set      func(time.Time) error
	// armed is the deadline last set by extend outside a watch (zero:
	// none or unknown). Setting a deadline costs a timer update in the
	// runtime; a writer that writes many batches a second sets it again
	// only when less than the timeout is left.
	armed time.Time
}

// aLongTimeAgo is a deadline in the past, which makes blocked I/O return.
var aLongTimeAgo = time.Unix(1, 0)

// watch makes ctx's cancellation interrupt the I/O until unwatch.
func (d *ioDeadline) watch(ctx context.Context) func() bool {
	if ctx.Done() == nil {
		return nil
	}
	d.mu.Lock()
	d.gen++
	gen := d.gen
	d.canceled = false
	d.watching = true
	d.mu.Unlock()
	return context.AfterFunc(ctx, func() {
		d.mu.Lock()
		if d.gen == gen {
			d.canceled = true
			d.armed = time.Time{}
			d.set(aLongTimeAgo)
		}
		d.mu.Unlock()
	})
}

func (d *ioDeadline) unwatch(stop func() bool) {
	if stop == nil {
		return
	}
	stop()
	d.mu.Lock()
	d.gen++
	d.watching = false
	d.mu.Unlock()
}

// extend makes the I/O that follows end after at least timeout (and at
// most 9/8 of it) of blocking, or never when timeout is negative, unless a
// watched context was canceled. Outside a watch the deadline is moved only
// when less than timeout is left, to now + 9/8 timeout: batches written
// in quick succession share one timer update.
func (d *ioDeadline) extend(timeout time.Duration) {
	if !d.watching {
		if timeout <= 0 {
			d.set(time.Time{})
			d.armed = time.Time{}
			return
		}
		now := time.Now()
		if !d.armed.IsZero() && d.armed.Sub(now) >= timeout {
			return // still at least timeout away
		}
		d.armed = now.Add(timeout + timeout/8)
		d.set(d.armed)
		return
	}
	var t time.Time
	if timeout > 0 {
		t = time.Now().Add(timeout)
	}
	d.mu.Lock()
	if !d.canceled {
		d.set(t)
	}
	d.armed = time.Time{} // set under a watch: unknown once it ends
	d.mu.Unlock()
}

// ctxErr returns ctx's error when the I/O error err was caused by its
// cancellation, and err otherwise.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	// The network deadline, set from ctx's, may fire a moment before ctx
	// itself reports it.
	if d, ok := ctx.Deadline(); ok && isTimeout(err) && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return err
}

// isTimeout reports whether err is a deadline expiry.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isEOF reports whether err means the peer closed the TCP connection.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// writeLock is a one-slot lock whose waits give up when a context ends,
// the connection closes or a timeout fires. It replaces a channel used as a
// semaphore: uncontended, taking and giving it is a mutex round trip, with
// no select and no channel kept per connection (a waiter makes one, and
// only writes racing each other wait). Waiters get the lock in the order
// they came.
type writeLock struct {
	mu      sync.Mutex
	held    bool
	waiters []chan struct{} // each closed when the lock is handed to it
}

// tryLock takes l if it is free.
func (l *writeLock) tryLock() bool {
	l.mu.Lock()
	ok := !l.held
	l.held = true
	l.mu.Unlock()
	return ok
}

// Why a wait for a writeLock gave up.
const (
	lockTaken = iota
	lockCanceled
	lockClosed
	lockTimedOut
)

// lock takes l, waiting until it is free unless ctx ends, closed is closed
// or timeout fires first (a nil channel never does). It returns lockTaken
// or why it gave up.
func (l *writeLock) lock(ctx context.Context, closed <-chan struct{}, timeout <-chan time.Time) int {
	l.mu.Lock()
	if !l.held {
		l.held = true
		l.mu.Unlock()
		return lockTaken
	}
	ch := make(chan struct{})
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	why := lockTaken
	select {
	case <-ch:
		return lockTaken
	case <-ctx.Done():
		why = lockCanceled
	case <-closed:
		why = lockClosed
	case <-timeout:
		why = lockTimedOut
	}
	l.mu.Lock()
	for i, w := range l.waiters {
		if w == ch {
			l.waiters = slices.Delete(l.waiters, i, i+1)
			l.mu.Unlock()
			return why
		}
	}
	l.mu.Unlock()
	// The lock was handed over while this wait gave up: pass it on.
	l.unlock()
	return why
}

// unlock gives l to the longest waiter, or frees it.
func (l *writeLock) unlock() {
	l.mu.Lock()
	if len(l.waiters) == 0 {
		l.held = false
		l.mu.Unlock()
		return
	}
	ch := l.waiters[0]
	l.waiters = slices.Delete(l.waiters, 0, 1)
	if len(l.waiters) == 0 {
		l.waiters = nil // contention is rare: keep no slice while idle
	}
	l.mu.Unlock()
	close(ch)
}
