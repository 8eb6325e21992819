package realtime

import (
	"context"
	crand "crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file is the reconnecting client: RealtimeClient and Subscription of
// @degenerate/realtime, for Go services, tools and tests.

// Defaults of ClientOptions.
const (
	defaultDialTimeout      = 10 * time.Second
	defaultReconnectMin     = 250 * time.Millisecond
	defaultReconnectMax     = 30 * time.Second
	defaultMaxQueueSize     = 100
	defaultRequestTimeout   = 10 * time.Second
	defaultHeartbeatTimeout = 75 * time.Second
	defaultMaxPending       = 1000
)

// Client errors.
var (
	// ErrQueueFull: a Propose or Ping issued while disconnected found the
	// outbound queue full (ClientOptions.MaxQueueSize).
	ErrQueueFull = errors.New("realtime: outbound queue is full")
	// ErrClientClosed: the client was closed.
	ErrClientClosed = errors.New("realtime: client closed")
	// ErrConnectionLost: the connection dropped after the request was
	// sent and before its answer came; a proposal may or may not have been
	// applied.
	ErrConnectionLost = errors.New("realtime: connection lost before the answer")
	// ErrShareDataRemoved ends a subscription whose share data was removed.
	ErrShareDataRemoved = errors.New("realtime: share data removed")
	// ErrUnsubscribed ends a subscription closed by Unsubscribe.
	ErrUnsubscribed = errors.New("realtime: unsubscribed")
)

// ProposalError is a proposal the server refused (accepted: false).
type ProposalError struct {
	Reason string    // the server's error text
	Code   ErrorCode // the result's code, when it has one (CodeRateLimited); "" for a refusal by the function or an authorizer
}

func (e *ProposalError) Error() string { return "realtime: proposal refused: " + e.Reason }

// SubscriptionError ends a subscription the server refused (an error
// frame such as "forbidden", or close 4003 for an unknown id).
type SubscriptionError struct {
	ShareDataID string    // the refused subscription's id
	Code        ErrorCode // the error frame's code
	Message     string    // the server's explanation
}

func (e *SubscriptionError) Error() string {
	return fmt.Sprintf("realtime: subscription to %s refused: %s: %s", quoteForError(e.ShareDataID), e.Code, e.Message)
}

// ClientState is the state of a client's connection.
type ClientState int

const (
	ClientConnecting ClientState = iota + 1 // dialing, or waiting to redial
	ClientOpen                              // connected and subscribed
	ClientClosed                            // the connection ended (Code and Reason say how)
	ClientStopped                           // the client stopped for good (Close, or 4002 without a new token)
)

func (s ClientState) String() string {
	switch s {
	case ClientConnecting:
		return "connecting"
	case ClientOpen:
		return "open"
	case ClientClosed:
		return "closed"
	case ClientStopped:
		return "stopped"
	}
	return "ClientState(" + strconv.Itoa(int(s)) + ")"
}

// StateChange reports a change of the client's connection.
type StateChange struct {
	State ClientState // the new state
	// Code and Reason are the close frame's, for ClientClosed (1006 when
	// the connection ended without one).
	Code   CloseCode
	Reason string // see Code
	// Err is the error that caused the change, if any.
	Err error
	// Delay is how long the client waits before redialing, for
	// ClientConnecting after a failure.
	Delay time.Duration
}

// ClientOptions configure a Client. A zero field means its documented
// default, a negative one none (no limit, no timeout, no wait).
type ClientOptions struct {
	// Header is sent with every handshake.
	Header http.Header
	// Token, when set, is called before every connect and reconnect; a
	// non-empty result is sent as Authorization: Bearer, so a token can be
	// refreshed. After a close with 4002 the client reconnects only if
	// Token yields a token.
	Token func(ctx context.Context) (string, error)
	// Dial holds further dial settings (TLS, subprotocols, read limit).
	// Its HandshakeTimeout is replaced by DialTimeout.
	Dial DialOptions
	// DialTimeout bounds each dial. Zero means 10 s. Negative means no
	// timeout: a dial waits as long as the network takes.
	DialTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the backoff between failed
	// dials: the n-th wait is drawn uniformly from [0, min(ReconnectMax,
	// ReconnectMin*2^n)] ("full jitter"). After a close with 1001, 1012
	// or 4001 the first redial waits at most ReconnectMin.
	//
	// ReconnectMin: zero means 250 ms. Negative means no wait.
	ReconnectMin time.Duration
	// ReconnectMax: zero means 30 s. Negative means no wait: every redial
	// follows the last failure at once, which only tests should want.
	ReconnectMax time.Duration
	// MaxQueueSize bounds the Propose and Ping calls waiting for a
	// connection; one more fails at once with ErrQueueFull. Zero means
	// 100. Negative means no limit.
	MaxQueueSize int
	// RequestTimeout bounds Propose and Ping, counted from the call (ctx
	// may shorten it). Zero means 10 s. Negative means no timeout: ctx
	// alone bounds the call.
	RequestTimeout time.Duration
	// HeartbeatTimeout is how long the connection may stay silent (the
	// server pings every 30 s by default) before the client gives up on
	// it and reconnects. Zero means 75 s. Negative means no timeout.
	HeartbeatTimeout time.Duration
	// MaxPending bounds the messages a subscription holds for a slow
	// reader of Messages. Past it the held messages are dropped and the
	// subscription is resubscribed with since = the last message
	// delivered, so the server replays them: nothing is lost silently,
	// and a *ResyncMessage in the stream marks the place. A bound much
	// smaller than a replay (the server's window, 100 by default) makes a
	// slow reader's stream restart many times before it catches up.
	// Zero means 1000. Negative means no limit.
	MaxPending int
	// OnStateChange is called, from the client's goroutine, at every
	// change of the connection. It must not block.
	OnStateChange func(StateChange)
	// Logger receives the client's logs (slog.Default() when nil).
	Logger *slog.Logger
}

// withDefaults resolves the zero values. Negative limits become
// math.MaxInt and negative waits zero, so the code that uses them needs no
// special case; negative timeouts stay negative and mean "none" where
// they are used.
func (o ClientOptions) withDefaults() ClientOptions {
	if o.DialTimeout == 0 {
		o.DialTimeout = defaultDialTimeout
	}
	switch {
	case o.ReconnectMin == 0:
		o.ReconnectMin = defaultReconnectMin
	case o.ReconnectMin < 0:
		o.ReconnectMin = 0
	}
	switch {
	case o.ReconnectMax == 0:
		o.ReconnectMax = defaultReconnectMax
	case o.ReconnectMax < 0:
		o.ReconnectMax = 0
	}
	switch {
	case o.MaxQueueSize == 0:
		o.MaxQueueSize = defaultMaxQueueSize
	case o.MaxQueueSize < 0:
		o.MaxQueueSize = math.MaxInt
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = defaultRequestTimeout
	}
	if o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = defaultHeartbeatTimeout
	}
	switch {
	case o.MaxPending == 0:
		o.MaxPending = defaultMaxPending
	case o.MaxPending < 0:
		o.MaxPending = math.MaxInt
	}
	return o
}

// Client is a reconnecting realtime client. It keeps one WebSocket
// connection open, redialing with backoff when it drops, resubscribes
// every subscription with since = its cursor so the server replays what was
// missed, and queues requests made while disconnected. It is safe for
// concurrent use.
type Client struct {
	url  string // the server's endpoint, checked by NewClient
	opts ClientOptions
	log  *slog.Logger

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	conn      *Conn // nil while disconnected
	ready     bool  // conn is open and the queue was flushed
	queue     []*request
	pending   map[string]*request // sent, awaiting an answer
	subs      map[string]*Subscription
	started   bool
	stopped   bool
	stopErr   error
	opened    chan struct{} // closed at the first open
	openOnce  sync.Once
	stoppedCh chan struct{}
	lastErr   error // the last dial or handshake failure, for Connect
	// unknownEnded: a subscription was ended by an unknown-share-data
	// frame on the current connection, which explains its 4003 close.
	unknownEnded bool

	idPrefix string
	seq      uint64
}

type request struct {
	cid    string
	msg    []byte             // what is sent; under the client's mu once queued or sent
	result chan ServerMessage // proposal-result or pong; buffered 1
	failed chan error         // buffered 1
	// propose is a keyed proposal's message: once a connection was lost
	// with it in flight, msg becomes it marked as a retry.
	propose *ProposeMessage
	born    time.Time // when the request was made
}

// requestContext bounds ctx by RequestTimeout, unless it is negative (no
// timeout).
func (c *Client) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.opts.RequestTimeout < 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.opts.RequestTimeout)
}

// NewClient returns a client of the server at url (ws:// or wss://);
// Connect opens it. A nil opts means the defaults. The client keeps a copy
// of *opts: changing it afterwards changes nothing.
func NewClient(url string, opts *ClientOptions) (*Client, error) {
	if err := checkWSURL(url); err != nil {
		return nil, err
	}
	var o ClientOptions
	if opts != nil {
		o = *opts
	}
	o = o.withDefaults()
	c := &Client{url: url, opts: o, log: o.Logger, pending: make(map[string]*request), subs: make(map[string]*Subscription),
		opened: make(chan struct{}), stoppedCh: make(chan struct{})}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var b [5]byte
	crand.Read(b[:])
	c.idPrefix = base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]) + "-"
	return c, nil
}

func checkWSURL(u string) error {
	if !strings.HasPrefix(u, "ws://") && !strings.HasPrefix(u, "wss://") {
		return fmt.Errorf("realtime: client URL %q is not ws:// or wss://", u)
	}
	return nil
}

// Connect starts the client and waits until its first connection is open
// (subscriptions made before are sent then). Each failed attempt is logged
// at Warn and retried with backoff. If ctx ends first, Connect returns an
// error that wraps both ctx's error and the last attempt's failure (a
// *HandshakeError, or the dial error), and the client keeps trying in the
// background until Close. It returns at once, with the reason, when the
// client stopped for good: a handshake refused with a 4xx status that
// redialing cannot change (any but 408 and 429; 401 and 403 only when there
// is no Token to refresh).
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped {
		err := c.stopErr
		c.mu.Unlock()
		return err
	}
	if !c.started {
		c.started = true
		c.wg.Add(1)
		go c.run()
	}
	c.mu.Unlock()
	select {
	case <-c.opened:
		return nil
	case <-c.stoppedCh:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.stopErr
	case <-ctx.Done():
		c.mu.Lock()
		last := c.lastErr
		c.mu.Unlock()
		if last != nil {
			return fmt.Errorf("realtime: connect: %w; last attempt: %w", ctx.Err(), last)
		}
		return ctx.Err()
	}
}

// Close stops the client: no more reconnects, the connection is closed
// with 1000, pending requests fail with ErrClientClosed, every
// subscription's Messages channel is closed, and every goroutine of the
// client has ended when Close returns.
func (c *Client) Close() error {
	c.stop(ErrClientClosed)
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		// The read loop is still reading: it sees the server's answer, so
		// the close handshake completes at once.
		conn.Close(CloseNormalClosure, "client closed")
	}
	c.cancel()
	c.wg.Wait()
	return nil
}

func (c *Client) isStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// stop marks the client stopped, fails every request and ends every
// subscription.
func (c *Client) stop(err error) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped, c.stopErr = true, err
	queue, pending, subs := c.queue, c.pending, c.subs
	c.queue, c.pending, c.subs = nil, map[string]*request{}, map[string]*Subscription{}
	c.mu.Unlock()
	close(c.stoppedCh)
	for _, r := range queue {
		r.failed <- err
	}
	for _, r := range pending {
		r.failed <- err
	}
	for _, s := range subs {
		s.end(err)
	}
	c.notify(StateChange{State: ClientStopped, Err: err})
}

func (c *Client) notify(sc StateChange) {
	if c.opts.OnStateChange != nil {
		c.opts.OnStateChange(sc)
	}
}

// run is the client's connection loop.
func (c *Client) run() {
	defer c.wg.Done()
	attempt := 0
	prompt := false
	for {
		if c.ctx.Err() != nil || c.isStopped() {
			return
		}
		c.notify(StateChange{State: ClientConnecting})
		conn, err := c.dial()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			var he *HandshakeError
			if errors.As(err, &he) && final4xx(he.StatusCode, c.opts.Token != nil) {
				c.log.Warn("realtime: upgrade refused; not retrying", "status", he.StatusCode, "err", err)
				c.stop(fmt.Errorf("realtime: upgrade refused, and retrying cannot fix it: %w", err))
				return
			}
			delay := c.backoff(attempt, false)
			attempt++
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
			c.log.Warn("realtime: connect failed; retrying", "attempt", attempt, "retry_in", delay, "err", err)
			c.notify(StateChange{State: ClientConnecting, Err: err, Delay: delay})
			if !c.sleep(delay) {
				return
			}
			continue
		}
		attempt = 0
		ce := c.serve(conn)
		if c.ctx.Err() != nil || c.isStopped() {
			return
		}
		c.notify(StateChange{State: ClientClosed, Code: ce.Code, Reason: ce.Reason, Err: ce})
		switch ce.Code {
		case CloseUnauthorized:
			if !c.haveToken() {
				c.stop(fmt.Errorf("realtime: closed with 4002 and no new token: %w", ce))
				return
			}
			prompt = true
		case CloseGoingAway, CloseServiceRestart, CloseFellBehind:
			prompt = true
		case CloseUnknownShareData:
			// The unknown-share-data frame before it named the
			// subscription and ended it; without one (a server that
			// does not send it) nothing says which, so back off.
			c.mu.Lock()
			prompt, c.unknownEnded = c.unknownEnded, false
			c.mu.Unlock()
			if !prompt {
				c.log.Warn("realtime: connection closed", "code", int(ce.Code), "reason", ce.Reason)
			}
		default:
			// 4004, 1002, 1007 and the rest: something is wrong; back
			// off before trying again.
			prompt = false
			c.log.Warn("realtime: connection closed", "code", int(ce.Code), "reason", ce.Reason)
		}
		delay := c.backoff(attempt, prompt)
		attempt++
		if !c.sleep(delay) {
			return
		}
	}
}

// final4xx reports whether a refused handshake's status is one that
// redialing cannot change: every 4xx but 408 and 429 (and 401 and 403 when
// a Token can bring new credentials).
func final4xx(status int, canRefresh bool) bool {
	switch {
	case status < 400 || status > 499:
		return false
	case status == 408 || status == 429:
		return false
	case status == 401 || status == 403:
		return !canRefresh
	}
	return true
}

// backoff draws the wait before the next dial: full jitter over an
// exponentially growing bound.
func (c *Client) backoff(attempt int, prompt bool) time.Duration {
	bound := c.opts.ReconnectMin
	if !prompt {
		for i := 0; i < attempt && bound < c.opts.ReconnectMax; i++ {
			bound *= 2
		}
		bound = min(bound, c.opts.ReconnectMax)
	}
	return time.Duration(rand.Int64N(int64(bound) + 1))
}

func (c *Client) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

func (c *Client) haveToken() bool {
	if c.opts.Token == nil {
		return false
	}
	tok, err := c.opts.Token(c.ctx)
	return err == nil && tok != ""
}

// dial opens a connection with a fresh token.
func (c *Client) dial() (*Conn, error) {
	o := c.opts.Dial
	o.Header = c.opts.Header.Clone()
	if o.Header == nil {
		o.Header = http.Header{}
	}
	if c.opts.Token != nil {
		tok, err := c.opts.Token(c.ctx)
		if err != nil {
			return nil, fmt.Errorf("realtime: token: %w", err)
		}
		if tok != "" {
			o.Header.Set("Authorization", "Bearer "+tok)
		}
	}
	o.HandshakeTimeout = c.opts.DialTimeout
	o.IdleTimeout = c.opts.HeartbeatTimeout
	if o.ReadLimit == 0 {
		o.ReadLimit = defaultMaxBufferedBytes // a frame may be as large as the server's send cap
	}
	conn, _, err := Dial(c.ctx, c.url, &o)
	return conn, err
}

// serve runs one connection: it resubscribes, flushes the queue, reads
// until the connection ends and returns how it ended.
func (c *Client) serve(conn *Conn) *CloseError {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		conn.Close(CloseNormalClosure, "client closed")
		return &CloseError{Code: CloseNormalClosure}
	}
	c.conn = conn
	c.lastErr, c.unknownEnded = nil, false
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	for _, s := range subs {
		c.write(conn, s.subscribeMessage())
	}
	c.flush(conn)
	c.openOnce.Do(func() { close(c.opened) })
	c.notify(StateChange{State: ClientOpen})

	var err error
	for {
		var b []byte
		_, b, err = conn.Read(c.ctx)
		if err != nil {
			break
		}
		m, derr := DecodeServerMessage(b)
		if derr != nil {
			c.log.Warn("realtime: invalid message from the server", "err", derr)
			conn.Close(CloseInvalidMessage, closeReasonOf(derr))
			continue
		}
		c.dispatch(m)
	}

	c.mu.Lock()
	c.conn, c.ready = nil, false
	lost := c.pending
	c.pending = make(map[string]*request)
	// Keyed proposals in flight go out again, first, with their keys: the
	// server applies each once and answers a repeat with the first
	// outcome. Past half the server's key window a resend could find its
	// key forgotten: the outcome is unknown.
	var again []*request
	for cid, r := range lost {
		if r.propose != nil && time.Since(r.born) < KeyWindowAge/2 {
			r.propose.Retry = true
			r.msg = r.propose.AppendJSON(nil)
			again = append(again, r)
			delete(lost, cid)
		}
	}
	slices.SortFunc(again, func(a, b *request) int { return a.born.Compare(b.born) })
	c.queue = append(again, c.queue...)
	c.mu.Unlock()
	for _, r := range lost {
		if r.propose != nil {
			r.failed <- ErrOutcomeUnknown
		} else {
			r.failed <- ErrConnectionLost
		}
	}
	conn.CloseNow()
	var ce *CloseError
	if !errors.As(err, &ce) {
		ce = &CloseError{Code: CloseAbnormalClosure, Reason: err.Error()}
	}
	return ce
}

// flush sends the requests queued while disconnected, in order, then
// lets new requests go out directly.
func (c *Client) flush(conn *Conn) {
	for {
		c.mu.Lock()
		q := c.queue
		c.queue = nil
		if len(q) == 0 {
			c.ready = true
			c.mu.Unlock()
			return
		}
		msgs := make([][]byte, len(q))
		for i, r := range q {
			c.pending[r.cid] = r
			msgs[i] = r.msg
		}
		c.mu.Unlock()
		for _, msg := range msgs {
			c.write(conn, msg)
		}
	}
}

func (c *Client) write(conn *Conn, msg []byte) {
	ctx, cancel := c.requestContext(c.ctx)
	defer cancel()
	if err := conn.Write(ctx, MessageText, msg); err != nil {
		c.log.Debug("realtime: write failed", "err", err)
	}
}

// dispatch routes a server message.
func (c *Client) dispatch(m ServerMessage) {
	switch m := m.(type) {
	case *ProposalResultMessage:
		c.answer(m.CorrelationID, m)
	case *PongMessage:
		c.answer(m.CorrelationID, m)
	case *StateMessage:
		c.toSub(m.ShareDataID, m)
	case *TransactionMessage:
		c.toSub(m.ShareDataID, m)
	case *LifecycleMessage:
		c.toSub(m.ShareDataID, m)
	case *ErrorMessage:
		switch {
		case m.CorrelationID != "":
			c.answer(m.CorrelationID, m)
		case m.ShareDataID != "":
			c.toSub(m.ShareDataID, m)
		default:
			c.log.Warn("realtime: error from the server", "code", m.Code, "message", m.Message)
		}
	}
}

func (c *Client) answer(cid string, m ServerMessage) {
	c.mu.Lock()
	r := c.pending[cid]
	delete(c.pending, cid)
	c.mu.Unlock()
	if r != nil {
		r.result <- m
	}
}

func (c *Client) toSub(id string, m ServerMessage) {
	c.mu.Lock()
	s := c.subs[id]
	c.mu.Unlock()
	if s != nil {
		s.receive(m)
	}
}

// send sends a request now when connected, or queues it.
func (c *Client) send(r *request) error {
	c.mu.Lock()
	if c.stopped {
		err := c.stopErr
		c.mu.Unlock()
		return err
	}
	if c.ready && c.conn != nil {
		conn := c.conn
		c.pending[r.cid] = r
		msg := r.msg
		c.mu.Unlock()
		c.write(conn, msg)
		return nil
	}
	if len(c.queue) >= c.opts.MaxQueueSize {
		c.mu.Unlock()
		return ErrQueueFull
	}
	c.queue = append(c.queue, r)
	c.mu.Unlock()
	return nil
}

// forget drops a request that timed out.
func (c *Client) forget(r *request) {
	c.mu.Lock()
	delete(c.pending, r.cid)
	for i, x := range c.queue {
		if x == r {
			c.queue = append(c.queue[:i], c.queue[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
}

func (c *Client) newRequest(build func(cid string) ClientMessage) *request {
	c.mu.Lock()
	c.seq++
	cid := c.idPrefix + strconv.FormatUint(c.seq, 36)
	c.mu.Unlock()
	return &request{cid: cid, msg: build(cid).AppendJSON(nil), result: make(chan ServerMessage, 1), failed: make(chan error, 1), born: time.Now()}
}

// roundTrip sends r and waits for its answer, RequestTimeout from now at
// most.
func (c *Client) roundTrip(ctx context.Context, r *request) (ServerMessage, error) {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	if err := c.send(r); err != nil {
		return nil, err
	}
	select {
	case m := <-r.result:
		if e, ok := m.(*ErrorMessage); ok {
			return nil, e // errors.As(err, &errorMessage) gives the code
		}
		return m, nil
	case err := <-r.failed:
		return nil, err
	case <-ctx.Done():
		c.forget(r)
		return nil, fmt.Errorf("realtime: request %s: %w", r.cid, ctx.Err())
	}
}

// Propose asks the server to apply functionID to shareDataID with
// proposedData (valid JSON), and returns the transaction id. A refusal is a
// *ProposalError. Issued while disconnected, it waits in the outbound queue
// and is sent after the reconnect; it times out RequestTimeout after the
// call (ctx may shorten that), whether it was sent or not.
//
// Every proposal carries an idempotency key. When the connection drops
// while one is in flight, it is sent again with its key after the
// reconnect, and the server, which applies a key once, answers with the
// outcome it recorded: so Propose returns the one true outcome, applied
// once or refused, across any number of reconnects. Only when the server
// no longer remembers the key does it return an error matching
// ErrOutcomeUnknown; and a timeout (ctx, RequestTimeout) leaves the outcome
// unknown too: the proposal may still be applied, once.
func (c *Client) Propose(ctx context.Context, shareDataID, functionID string, proposedData json.RawMessage) (string, error) {
	if !json.Valid(proposedData) {
		return "", errors.New("realtime: proposedData is not valid JSON")
	}
	data := compactJSON(proposedData)
	key := newIdempotencyKey()
	var pm *ProposeMessage
	r := c.newRequest(func(cid string) ClientMessage {
		pm = &ProposeMessage{ShareDataID: shareDataID, FunctionID: functionID, ProposedData: data, CorrelationID: cid, IdempotencyKey: key}
		return pm
	})
	r.propose = pm
	m, err := c.roundTrip(ctx, r)
	if err != nil {
		return "", err
	}
	res, ok := m.(*ProposalResultMessage)
	if !ok {
		return "", fmt.Errorf("realtime: unexpected %s answer to a proposal", m.typeName())
	}
	if !res.Accepted {
		if res.Code == CodeOutcomeUnknown {
			return "", fmt.Errorf("%w (the server: %s)", ErrOutcomeUnknown, res.Error)
		}
		return "", &ProposalError{Reason: res.Error, Code: res.Code}
	}
	return res.TransactionID, nil
}

// newIdempotencyKey returns a key no other proposal will have: 128 random
// bits.
func newIdempotencyKey() string {
	var b [16]byte
	crand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Ping sends a protocol ping and returns the round-trip time. Like
// Propose, it waits in the queue while disconnected.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	r := c.newRequest(func(cid string) ClientMessage { return &PingMessage{CorrelationID: cid} })
	if _, err := c.roundTrip(ctx, r); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// Subscription is a client's subscription to one share data item. Its
// messages arrive in order on Messages: from the server *StateMessage,
// *TransactionMessage, *LifecycleMessage and non-fatal *ErrorMessage (such
// as replay-cursor-not-found, or internal-error after which the client
// subscribes again); from the client itself *ReplayEndMessage and
// *ResyncMessage. The channel is closed when the subscription ends, and Err
// then says why.
type Subscription struct {
	c  *Client
	id string
	ch chan ServerMessage

	mu    sync.Mutex
	queue []queuedMessage
	wake  chan struct{}
	// cursor is the resume point after the last message received: the
	// last transaction received (replayed or live), or the state frame's
	// lastTransactionId when no replay was due. It is sent as since.
	cursor    string
	hasCursor bool
	// delivered is the resume point after the last message taken from
	// Messages (set once the hand-over completed).
	delivered    string
	hasDelivered bool
	// popped is the resume point after the last message taken off the
	// queue for Messages: it is handed over next (or was), so a
	// slow-reader resync resumes after it.
	popped    string
	hasPopped bool
	// handed are the last messages offered on Messages with the resume
	// point after each, newest at handed[(handedNext-1)%len]: CursorAfter
	// reads them. Made at the first message.
	handed       *[handedKept]queuedMessage
	handedNext   int
	awaiting     bool   // a subscribe was sent; frames before its state are stale
	sentSince    string // the since of that subscribe
	sentHasSince bool
	replaying    bool   // the state came; replayed frames up to replayUntil are due
	replayUntil  string // the state frame's lastTransactionId
	replayed     int    // replayed frames received in this replay
	retries      int    // subscribes refused with a transient error in a row
	ended        bool
	err          error
}

// handedKept is how many of the last messages handed over CursorAfter
// knows.
const handedKept = 16

// queuedMessage is a message held for Messages with the resume point
// after it.
type queuedMessage struct {
	m         ServerMessage
	cursor    string
	hasCursor bool
}

// SubscribeOptions configure a subscription. The zero value (or nil)
// starts from the current state with no replay.
type SubscribeOptions struct {
	// Since, when HasSince is set, is the cursor to resume from (a
	// transaction id the application saved from Cursor, "" meaning before
	// the first transaction): the server sends the current state and then
	// replays the transactions after Since.
	Since    string
	HasSince bool // Since is given
}

// Subscribe subscribes to shareDataID. When connected, the subscribe is
// sent at once; otherwise at the next connect. opts may give a cursor to
// resume from (nil: none). Subscribing to an id the client already holds
// returns the same Subscription and ignores opts.
func (c *Client) Subscribe(shareDataID string, opts *SubscribeOptions) (*Subscription, error) {
	if shareDataID == "" || len(shareDataID) > MaxIDLength {
		return nil, errors.New("realtime: share data id must be 1 to 256 bytes")
	}
	var o SubscribeOptions
	if opts != nil {
		o = *opts
	}
	if o.HasSince && len(o.Since) > MaxIDLength {
		return nil, errors.New("realtime: since must be at most 256 bytes")
	}
	c.mu.Lock()
	if c.stopped {
		err := c.stopErr
		c.mu.Unlock()
		return nil, err
	}
	if s := c.subs[shareDataID]; s != nil {
		c.mu.Unlock()
		return s, nil
	}
	s := &Subscription{c: c, id: shareDataID, ch: make(chan ServerMessage), wake: make(chan struct{}, 1),
		cursor: o.Since, hasCursor: o.HasSince, delivered: o.Since, hasDelivered: o.HasSince, popped: o.Since, hasPopped: o.HasSince}
	c.subs[shareDataID] = s
	conn := c.conn
	c.wg.Add(1)
	c.mu.Unlock()
	go s.deliver()
	if conn != nil {
		c.write(conn, s.subscribeMessage())
	}
	return s, nil
}

// ShareDataID returns the subscribed id.
func (s *Subscription) ShareDataID() string { return s.id }

// Messages returns the channel of the subscription's messages, in order.
// A slow reader loses nothing: see ClientOptions.MaxPending.
func (s *Subscription) Messages() <-chan ServerMessage { return s.ch }

// Err returns why the subscription ended, or nil while it lasts.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// CursorAfter returns the resume point after m, a message this
// subscription handed over on Messages: the id of the last transaction
// handed over up to m (replayed or live), or a state frame's
// lastTransactionId when no replay was due. Saved after the application
// handled m and given back as SubscribeOptions.Since, it resumes exactly
// after m: nothing m's handling saw is sent again, nothing after it is
// skipped. It knows the last 16 messages handed over; for an older one,
// or a message that did not come from this subscription, ok is false. It
// is "" with ok true after a state frame of an item with no transaction
// yet, and "" with ok false after none (a subscription that started
// with no cursor, before its first state).
//
// Save CursorAfter(m), not Cursor: the resume point travels with the
// message, so it cannot name a message the application has not taken.
func (s *Subscription) CursorAfter(m ServerMessage) (cursor string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handed == nil || m == nil {
		return "", false
	}
	for i := 1; i <= handedKept; i++ {
		q := &s.handed[(s.handedNext-i+2*handedKept)%handedKept]
		if q.m == m {
			return q.cursor, q.hasCursor
		}
	}
	return "", false
}

// Cursor returns the resume point after the last message whose hand-over
// on Messages completed. It never names a message the application has not
// taken; right after the application received a message it may still
// name the point before it (resuming from it sends that message again).
// For the exact point after a message, use CursorAfter. It is "" (with ok
// false) before the first state frame of a subscription that started with
// no cursor.
func (s *Subscription) Cursor() (cursor string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delivered, s.hasDelivered
}

// Unsubscribe ends the subscription and tells the server.
func (s *Subscription) Unsubscribe() {
	c := s.c
	c.mu.Lock()
	if c.subs[s.id] == s {
		delete(c.subs, s.id)
	}
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		c.write(conn, (&UnsubscribeMessage{ShareDataID: s.id}).AppendJSON(nil))
	}
	s.end(ErrUnsubscribed)
}

// subscribeMessage builds the (re)subscribe, with since = the cursor, and
// marks the subscription as awaiting its state frame.
func (s *Subscription) subscribeMessage() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.awaiting, s.replaying = true, false
	s.sentSince, s.sentHasSince = s.cursor, s.hasCursor
	return (&SubscribeMessage{ShareDataID: s.id, Since: s.cursor, HasSince: s.hasCursor}).AppendJSON(nil)
}

// finalCode reports whether an error frame's code ends a subscription:
// retrying the subscribe cannot change the answer.
func finalCode(code ErrorCode) bool {
	switch code {
	case CodeForbidden, CodeTooManySubscriptions, CodeUnknownShareData:
		return true
	}
	return false
}

// receive applies a server message to the subscription: the cursor rule,
// gap detection, and queueing for Messages.
//
// The cursor a subscription resumes from is the last transaction received,
// replayed or live. The state frame's lastTransactionId becomes it only
// when no replay is due (no since, since equal to it, or
// replay-cursor-not-found): were it taken at once, a connection cut during
// the replay would resume after transactions that were never received.
func (s *Subscription) receive(m ServerMessage) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	var resync string // why the stream is restarted, "" when it is not
	var endErr error
	var after ServerMessage // a client message queued after m
	retry, stale, unknown := false, false, false
	switch m := m.(type) {
	case *StateMessage:
		s.awaiting, s.retries = false, 0
		if s.sentHasSince && s.sentSince != m.LastTransactionID {
			s.replaying, s.replayUntil, s.replayed = true, m.LastTransactionID, 0
		} else {
			s.replaying = false
			s.cursor, s.hasCursor = m.LastTransactionID, true
		}
	case *TransactionMessage:
		switch {
		case s.awaiting:
			stale = true // from before our resubscribe: the state or replay covers it
		case m.Replayed && !s.replaying:
			stale = true
		case m.Replayed != s.replaying || m.PreviousTransactionID != s.cursor:
			// A gap, or a live frame before the replay ended: do not
			// apply it blindly; ask for a replay from the cursor.
			resync = ResyncGap
		default:
			s.cursor, s.hasCursor = m.TransactionID, true
			if m.Replayed {
				s.replayed++
				if m.TransactionID == s.replayUntil {
					s.replaying = false
					after = &ReplayEndMessage{ShareDataID: s.id, LastTransactionID: m.TransactionID, Transactions: s.replayed}
				}
			}
		}
	case *LifecycleMessage:
		if s.awaiting {
			stale = true
			break
		}
		if s.replaying {
			resync = ResyncGap // the server holds these until the replay ends
			break
		}
		if m.Event == LifecycleRemoved {
			endErr = ErrShareDataRemoved
		}
	case *ErrorMessage:
		switch {
		case m.Code == CodeReplayCursorNotFound:
			if s.replaying {
				// No replay is coming: the state frame is the resume point.
				s.replaying = false
				s.cursor, s.hasCursor = s.replayUntil, true
			}
		case finalCode(m.Code):
			endErr = &SubscriptionError{ShareDataID: s.id, Code: m.Code, Message: m.Message}
			unknown = m.Code == CodeUnknownShareData
		default:
			// The server did not keep the subscription but may serve it
			// later: subscribe again after a pause.
			s.awaiting, s.replaying = true, false
			s.retries++
			retry = true
		}
	}
	if stale {
		s.mu.Unlock()
		return
	}
	held := len(s.queue)
	if held > 0 {
		if _, ok := s.queue[0].m.(*ResyncMessage); ok {
			held-- // an untaken resync does not count, or a reader slower than one message would resync forever
		}
	}
	if resync == "" && held >= s.c.opts.MaxPending {
		// The reader is too slow: drop what it has not taken and have the
		// server replay from what it has.
		clear(s.queue)
		s.queue = s.queue[:0]
		s.cursor, s.hasCursor = s.popped, s.hasPopped
		resync = ResyncSlowReader
	}
	if resync != "" {
		s.queue = append(s.queue, queuedMessage{m: &ResyncMessage{ShareDataID: s.id, Reason: resync, Since: s.cursor},
			cursor: s.cursor, hasCursor: s.hasCursor})
	} else {
		s.queue = append(s.queue, queuedMessage{m: m, cursor: s.cursor, hasCursor: s.hasCursor})
		if after != nil {
			s.queue = append(s.queue, queuedMessage{m: after, cursor: s.cursor, hasCursor: s.hasCursor})
		}
	}
	retries := s.retries
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	c := s.c
	switch {
	case endErr != nil:
		c.mu.Lock()
		if c.subs[s.id] == s {
			delete(c.subs, s.id)
		}
		if unknown {
			c.unknownEnded = true // explains the 4003 that follows
		}
		c.mu.Unlock()
		s.end(endErr)
	case resync != "":
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if conn != nil {
			c.write(conn, s.subscribeMessage())
		}
	case retry:
		s.retryLater(retries)
	}
}

// retryLater subscribes again after a backoff, when the subscription is
// still held and the client connected (a reconnect resubscribes anyway).
// It runs on the read loop, so the client's WaitGroup cannot be waited on
// yet.
func (s *Subscription) retryLater(attempt int) {
	c := s.c
	delay := c.backoff(attempt, false)
	c.log.Warn("realtime: subscribe failed on the server; subscribing again", "share_data_id", s.id, "retry_in", delay)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if !c.sleep(delay) {
			return
		}
		c.mu.Lock()
		held := c.subs[s.id] == s
		conn := c.conn
		c.mu.Unlock()
		s.mu.Lock()
		due := s.awaiting && s.retries == attempt // no state since, and no newer retry
		s.mu.Unlock()
		if held && due && conn != nil {
			c.write(conn, s.subscribeMessage())
		}
	}()
}

// end ends the subscription after the messages already queued.
func (s *Subscription) end(err error) {
	s.mu.Lock()
	if !s.ended {
		s.ended, s.err = true, err
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// deliver hands queued messages to Messages in order; it ends, closing the
// channel, once the subscription ended and the queue is empty, or at once
// when the client closes.
func (s *Subscription) deliver() {
	defer s.c.wg.Done()
	defer close(s.ch)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			ended := s.ended
			s.mu.Unlock()
			if ended {
				return
			}
			select {
			case <-s.wake:
			case <-s.c.ctx.Done():
				return
			}
			continue
		}
		q := s.queue[0]
		s.queue[0] = queuedMessage{}
		s.queue = s.queue[1:]
		// Recorded before the hand-over: CursorAfter(q.m) can only be
		// asked by a reader that received q.m.
		if s.handed == nil {
			s.handed = new([handedKept]queuedMessage)
		}
		s.handed[s.handedNext] = q
		s.handedNext = (s.handedNext + 1) % handedKept
		s.popped, s.hasPopped = q.cursor, q.hasCursor
		s.mu.Unlock()
		select {
		case s.ch <- q.m:
		case <-s.c.ctx.Done():
			return
		}
		// Only now has the reader taken it (setting this before the send
		// made Cursor name a message the reader had not taken yet).
		s.mu.Lock()
		s.delivered, s.hasDelivered = q.cursor, q.hasCursor
		s.mu.Unlock()
	}
}

// Reasons of a ResyncMessage.
const (
	// ResyncGap: a transaction arrived whose previousTransactionId was not
	// the cursor; it was not delivered, and the subscription was restarted
	// from the cursor.
	ResyncGap = "gap"
	// ResyncSlowReader: more than ClientOptions.MaxPending messages waited
	// for the reader; those it had not taken were dropped, and the
	// subscription was restarted from the last message it took.
	ResyncSlowReader = "slow-reader"
)

// ResyncMessage is put in a subscription's stream by the client (it never
// comes from the server) where the client restarted the subscription: the
// messages after it begin with a new state frame, then the replay from
// Since. Nothing is lost: what the stream skipped is replayed, or a
// replay-cursor-not-found error frame says it could not be.
type ResyncMessage struct {
	ShareDataID string // the subscription's
	Reason      string // ResyncGap or ResyncSlowReader
	Since       string // the cursor the subscription resumes from
}

// ReplayEndMessage is put in a subscription's stream by the client (it
// never comes from the server) after the last replayed transaction of a
// subscribe with since: the subscription has caught up with the state frame
// before the replay, and every later transaction is live.
type ReplayEndMessage struct {
	ShareDataID       string // the subscription's
	LastTransactionID string // the state frame's, now reached
	Transactions      int    // the replayed transactions received
}

// typeName returns "resync".
func (m *ResyncMessage) typeName() string { return "resync" }

// AppendJSON appends a description of m, for logs; it is not a wire message.
func (m *ResyncMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, m.typeName())
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	dst = appendStringField(dst, "reason", m.Reason)
	dst = appendStringField(dst, "since", m.Since)
	return append(dst, '}')
}

// typeName returns "replay-end".
func (m *ReplayEndMessage) typeName() string { return "replay-end" }

// AppendJSON appends a description of m, for logs; it is not a wire message.
func (m *ReplayEndMessage) AppendJSON(dst []byte) []byte {
	dst = appendEnvelope(dst, m.typeName())
	dst = appendStringField(dst, "shareDataId", m.ShareDataID)
	dst = appendStringField(dst, "lastTransactionId", m.LastTransactionID)
	dst = strconv.AppendInt(append(dst, `,"transactions":`...), int64(m.Transactions), 10)
	return append(dst, '}')
}

func (*ResyncMessage) serverMessage()    {}
func (*ReplayEndMessage) serverMessage() {}
