package realtime

import (
	"context"
	crand "crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file is the reconnecting client: RealtimeClient and Subscription of
// @degenerate/realtime, for Go services, tools and tests.

// Defaults of ClientOptions.
const (
	DefaultDialTimeout      = 10 * time.Second
	DefaultReconnectMin     = 250 * time.Millisecond
	DefaultReconnectMax     = 30 * time.Second
	DefaultMaxQueueSize     = 100
	DefaultRequestTimeout   = 10 * time.Second
	DefaultHeartbeatTimeout = 75 * time.Second
	DefaultMaxPending       = 1000
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
	Reason string // the server's error text
}

func (e *ProposalError) Error() string { return "realtime: proposal refused: " + e.Reason }

// SubscriptionError ends a subscription the server refused (an error
// frame such as "forbidden", or close 4003 for an unknown id).
type SubscriptionError struct {
	ShareDataID string // the refused subscription's id
	Code        string // the error frame's code, or "unknown-share-data"
	Message     string // the server's explanation
}

func (e *SubscriptionError) Error() string {
	return fmt.Sprintf("realtime: subscription to %s refused: %s: %s", quoteForError(e.ShareDataID), e.Code, e.Message)
}

// ConnState is the state of a client's connection.
type ConnState int

const (
	StateConnecting ConnState = iota + 1 // dialing, or waiting to redial
	StateOpen                            // connected and subscribed
	StateClosed                          // the connection ended (Code and Reason say how)
	StateStopped                         // the client stopped for good (Close, or 4002 without a new token)
)

func (s ConnState) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateOpen:
		return "open"
	case StateClosed:
		return "closed"
	case StateStopped:
		return "stopped"
	}
	return "ConnState(" + strconv.Itoa(int(s)) + ")"
}

// StateChange reports a change of the client's connection.
type StateChange struct {
	State ConnState // the new state
	// Code and Reason are the close frame's, for StateClosed (1006 when
	// the connection ended without one).
	Code   StatusCode
	Reason string // see Code
	// Err is the error that caused the change, if any.
	Err error
	// Delay is how long the client waits before redialing, for
	// StateConnecting after a failure.
	Delay time.Duration
}

// ClientOptions configure a Client. URL is required; every zero field
// means its default.
type ClientOptions struct {
	// URL is the server's ws:// or wss:// endpoint.
	URL string
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
	// DialTimeout bounds each dial. Default 10 s.
	DialTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the backoff between failed
	// dials: the n-th wait is drawn uniformly from [0, min(ReconnectMax,
	// ReconnectMin*2^n)] ("full jitter"). Defaults 250 ms and 30 s. After
	// a close with 1001, 1012 or 4001 the first redial waits at most
	// ReconnectMin.
	ReconnectMin, ReconnectMax time.Duration
	// MaxQueueSize bounds the Propose and Ping calls waiting for a
	// connection; one more fails at once with ErrQueueFull. Default 100.
	MaxQueueSize int
	// RequestTimeout bounds Propose and Ping, counted from the call (ctx
	// may shorten it). Default 10 s.
	RequestTimeout time.Duration
	// HeartbeatTimeout is how long the connection may stay silent (the
	// server pings every 30 s by default) before the client gives up on
	// it and reconnects. Default 75 s.
	HeartbeatTimeout time.Duration
	// MaxPending bounds the messages a subscription holds for a slow
	// reader of Messages. Past it the held messages are dropped and the
	// subscription is resubscribed with since = the last message
	// delivered, so the server replays them: nothing is lost silently.
	// Default 1000.
	MaxPending int
	// OnStateChange is called, from the client's goroutine, at every
	// change of the connection. It must not block.
	OnStateChange func(StateChange)
	// Logger receives the client's logs (slog.Default() when nil).
	Logger *slog.Logger
}

// Client is a reconnecting realtime client. It keeps one WebSocket
// connection open, redialing with backoff when it drops, resubscribes
// every subscription with since = its cursor so the server replays what was
// missed, and queues requests made while disconnected. It is safe for
// concurrent use.
type Client struct {
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

	idPrefix string
	seq      uint64
}

type request struct {
	cid    string
	msg    []byte
	result chan ServerMessage // proposal-result or pong; buffered 1
	failed chan error         // buffered 1
}

// NewClient returns a client; Connect opens it.
func NewClient(opts ClientOptions) (*Client, error) {
	if err := checkWSURL(opts.URL); err != nil {
		return nil, err
	}
	o := &opts
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = DefaultReconnectMin
	}
	if o.ReconnectMax <= 0 {
		o.ReconnectMax = DefaultReconnectMax
	}
	if o.MaxQueueSize <= 0 {
		o.MaxQueueSize = DefaultMaxQueueSize
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	c := &Client{opts: opts, log: opts.Logger, pending: make(map[string]*request), subs: make(map[string]*Subscription),
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
// (subscriptions made before are sent then). If ctx ends first, Connect
// returns ctx's error and the client keeps trying in the background until
// Close. It returns the reason when the client stopped for good (a refused
// upgrade with no Token to refresh).
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
	c.notify(StateChange{State: StateStopped, Err: err})
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
		c.notify(StateChange{State: StateConnecting})
		conn, err := c.dial()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			var he *HandshakeError
			if errors.As(err, &he) && (he.StatusCode == 401 || he.StatusCode == 403) && c.opts.Token == nil {
				c.stop(fmt.Errorf("realtime: upgrade refused and no Token to refresh: %w", err))
				return
			}
			delay := c.backoff(attempt, false)
			attempt++
			c.notify(StateChange{State: StateConnecting, Err: err, Delay: delay})
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
		c.notify(StateChange{State: StateClosed, Code: ce.Code, Reason: ce.Reason, Err: ce})
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
			c.endUnknown(ce.Reason)
			prompt = true
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
		o.ReadLimit = DefaultMaxBufferedBytes // a frame may be as large as the server's send cap
	}
	conn, _, err := Dial(c.ctx, c.opts.URL, &o)
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
	c.notify(StateChange{State: StateOpen})

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
			conn.Close(CloseInvalidMessage, derr.Error())
			continue
		}
		c.dispatch(m)
	}

	c.mu.Lock()
	c.conn, c.ready = nil, false
	lost := c.pending
	c.pending = make(map[string]*request)
	c.mu.Unlock()
	for _, r := range lost {
		r.failed <- ErrConnectionLost
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
		for _, r := range q {
			c.pending[r.cid] = r
		}
		c.mu.Unlock()
		for _, r := range q {
			c.write(conn, r.msg)
		}
	}
}

func (c *Client) write(conn *Conn, msg []byte) {
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.RequestTimeout)
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

// endUnknown ends the subscription named by a 4003 close reason.
func (c *Client) endUnknown(reason string) {
	q := strings.TrimPrefix(reason, "unknown share data ")
	id, err := strconv.Unquote(q)
	if err != nil {
		return
	}
	c.mu.Lock()
	s := c.subs[id]
	delete(c.subs, id)
	c.mu.Unlock()
	if s != nil {
		s.end(&SubscriptionError{ShareDataID: id, Code: "unknown-share-data", Message: "the share data does not exist"})
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
		c.mu.Unlock()
		c.write(conn, r.msg)
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
	return &request{cid: cid, msg: build(cid).AppendJSON(nil), result: make(chan ServerMessage, 1), failed: make(chan error, 1)}
}

// roundTrip sends r and waits for its answer, RequestTimeout from now at
// most.
func (c *Client) roundTrip(ctx context.Context, r *request) (ServerMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	if err := c.send(r); err != nil {
		return nil, err
	}
	select {
	case m := <-r.result:
		if e, ok := m.(*ErrorMessage); ok {
			return nil, fmt.Errorf("realtime: %s: %s", e.Code, e.Message)
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
func (c *Client) Propose(ctx context.Context, shareDataID, functionID string, proposedData json.RawMessage) (string, error) {
	if !json.Valid(proposedData) {
		return "", errors.New("realtime: proposedData is not valid JSON")
	}
	data := compactJSON(proposedData)
	r := c.newRequest(func(cid string) ClientMessage {
		return &ProposeMessage{ShareDataID: shareDataID, FunctionID: functionID, ProposedData: data, CorrelationID: cid}
	})
	m, err := c.roundTrip(ctx, r)
	if err != nil {
		return "", err
	}
	res, ok := m.(*ProposalResultMessage)
	if !ok {
		return "", fmt.Errorf("realtime: unexpected %s answer to a proposal", m.MessageType())
	}
	if !res.Accepted {
		return "", &ProposalError{Reason: res.Error}
	}
	return res.TransactionID, nil
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
// messages (*StateMessage, *TransactionMessage, *LifecycleMessage and
// non-fatal *ErrorMessage such as replay-cursor-not-found) arrive in order
// on Messages; the channel is closed when the subscription ends, and Err
// then says why.
type Subscription struct {
	c  *Client
	id string
	ch chan ServerMessage

	mu        sync.Mutex
	queue     []ServerMessage
	wake      chan struct{}
	cursor    string // from the state frame and live transactions received
	hasCursor bool
	// delivered is the cursor after the last message taken for Messages.
	delivered    string
	hasDelivered bool
	awaiting     bool // a subscribe was sent; frames before its state are stale
	ended        bool
	err          error
}

// Subscribe subscribes to shareDataID. When connected, the subscribe is
// sent at once; otherwise at the next connect. Subscribing to an id the
// client already holds returns the same Subscription.
func (c *Client) Subscribe(shareDataID string) (*Subscription, error) {
	if shareDataID == "" || len(shareDataID) > MaxIDLength {
		return nil, errors.New("realtime: share data id must be 1 to 256 bytes")
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
	s := &Subscription{c: c, id: shareDataID, ch: make(chan ServerMessage), wake: make(chan struct{}, 1)}
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

// Cursor returns the id of the last transaction the subscription has
// received live (or its state frame's), which is sent as since on the next
// resubscribe; "" before the first state frame.
func (s *Subscription) Cursor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursor
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
	s.awaiting = true
	return (&SubscribeMessage{ShareDataID: s.id, Since: s.cursor, HasSince: s.hasCursor}).AppendJSON(nil)
}

// receive applies a server message to the subscription: cursor, gap
// detection, and queueing for Messages.
func (s *Subscription) receive(m ServerMessage) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	resubscribe := false
	var endErr error
	switch m := m.(type) {
	case *StateMessage:
		s.awaiting = false
		s.cursor, s.hasCursor = m.LastTransactionID, true
	case *TransactionMessage:
		if s.awaiting {
			s.mu.Unlock()
			return // from before our resubscribe: the state or replay covers it
		}
		if !m.Replayed {
			if m.PreviousTransactionID != s.cursor {
				// A gap: do not apply it blindly; ask for a replay.
				resubscribe = true
				break
			}
			s.cursor = m.TransactionID
		}
	case *LifecycleMessage:
		if s.awaiting {
			s.mu.Unlock()
			return
		}
		if m.Event == LifecycleRemoved {
			endErr = ErrShareDataRemoved
		}
	case *ErrorMessage:
		if m.Code != ErrCodeReplayCursorNotFound {
			endErr = &SubscriptionError{ShareDataID: s.id, Code: m.Code, Message: m.Message}
		}
	}
	if !resubscribe {
		if len(s.queue) >= s.c.opts.MaxPending {
			// The reader is too slow: drop what it has not taken and
			// have the server replay from what it has.
			clear(s.queue)
			s.queue = s.queue[:0]
			s.cursor, s.hasCursor = s.delivered, s.hasDelivered
			resubscribe = true
		} else {
			s.queue = append(s.queue, m)
		}
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	if endErr != nil {
		c := s.c
		c.mu.Lock()
		if c.subs[s.id] == s {
			delete(c.subs, s.id)
		}
		c.mu.Unlock()
		s.end(endErr)
		return
	}
	if resubscribe {
		c := s.c
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if conn != nil {
			c.write(conn, s.subscribeMessage())
		}
	}
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
		m := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		switch m := m.(type) {
		case *StateMessage:
			s.delivered, s.hasDelivered = m.LastTransactionID, true
		case *TransactionMessage:
			if !m.Replayed {
				s.delivered = m.TransactionID
			}
		}
		s.mu.Unlock()
		select {
		case s.ch <- m:
		case <-s.c.ctx.Done():
			return
		}
	}
}
