package realtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of ServerOptions. Each applies when its field is zero.
const (
	// defaultMaxBufferedBytes caps the bytes queued for one connection
	// (1 MiB); past it the connection is closed with 4001.
	defaultMaxBufferedBytes = 1 << 20
	// defaultHeartbeatInterval is how often the server pings each
	// connection; one that has not answered by the next ping is closed.
	defaultHeartbeatInterval = 30 * time.Second
	// defaultMaxSubscriptionsPerConnection bounds the share data items one
	// connection may subscribe to at once.
	defaultMaxSubscriptionsPerConnection = 100
)

// AuthenticateUpgrade is the hook that runs before each upgrade. It returns
// a per-connection value that reaches the authorizers, or an error that
// refuses the upgrade with an HTTP response before any WebSocket byte: the
// status and headers of an *AuthError, or 401. When the value has a method
// ExpiresAt() time.Time, the connection is closed with 4002 (unauthorized)
// at that time. NewJWTAuthenticator makes one.
type AuthenticateUpgrade func(r *http.Request) (any, error)

// AuthorizeSubscribe decides one subscribe for the value that
// AuthenticateUpgrade returned; an error is sent to the client as an error
// frame with code "forbidden" and the error's text, which ends that
// subscription. ShareDataAudienceAuthorizer is one.
type AuthorizeSubscribe func(ctx context.Context, auth any, shareDataID string) error

// AuthorizePropose decides one propose; an error is answered as a
// proposal-result with accepted false and the error's text, and nothing is
// applied. ShareDataAudienceProposeAuthorizer is one.
type AuthorizePropose func(ctx context.Context, auth any, shareDataID, functionID string) error

// ServerOptions configure a Server. The zero value gives the defaults of
// @degenerate/realtime: a replay window of 100 transactions per share data,
// a 1 MiB send-buffer cap, a 30 s heartbeat, and no authentication, no
// authorization and no propose.
type ServerOptions struct {
	// Authenticate runs before each upgrade (see AuthenticateUpgrade).
	// Nil admits everyone with a nil value.
	Authenticate AuthenticateUpgrade

	// AuthorizeSubscribe decides each subscribe. Nil allows all.
	AuthorizeSubscribe AuthorizeSubscribe

	// AuthorizePropose decides each propose. Nil allows all.
	AuthorizePropose AuthorizePropose

	// ResolveFunction maps a propose's function id to a function.
	// IDFunctionResolver is the conventional one. Nil disables propose:
	// every proposal is answered accepted false, "propose is not enabled
	// on this server".
	ResolveFunction FunctionResolver

	// ReplayBufferSize is the number of transactions retained per share
	// data for replay on reconnect, used when ReplayStore is nil. Zero
	// means 100. Negative means no window: a client that reconnects with
	// since gets the state and replay-cursor-not-found.
	ReplayBufferSize int
	// ReplayStore keeps the replay window. Nil means the manager itself
	// when it is one (DiskManager and redisrt.Manager keep their window
	// with their items, so a replay outlives a restart or reaches another
	// instance), else a MemoryReplayStore of ReplayBufferSize. To keep a
	// window in memory over such a manager, pass
	// NewMemoryReplayStore(n).
	ReplayStore ReplayStore
	// Registry carries events between instances. Nil means a
	// MemoryChannelRegistry of this server alone.
	Registry ChannelRegistry
	// SkipManagerEvents stops the server from listening to the manager's
	// events. Set it on every instance but one when several instances share
	// one manager value and one Registry, so each event is published once
	// (the listening instance also records the replay window). With a
	// manager per instance over a shared database, leave it false: each
	// manager reports the transactions applied through its instance.
	SkipManagerEvents bool

	// MaxBufferedBytes caps the bytes queued for one connection; when a
	// frame would pass it, the connection is closed with 4001 (fell
	// behind) at once, so a slow consumer never stalls a broadcast. It
	// also bounds the live frames held for a subscription while its replay
	// flows (a replay itself is fed as the queue drains, at most half the
	// cap at a time, so a window larger than the cap still arrives). Zero
	// means 1 MiB. Negative means no limit: a client that stops reading
	// makes the server hold everything sent to it.
	MaxBufferedBytes int
	// HeartbeatInterval is how often every connection is pinged; a
	// connection that has not answered a ping by the next one is closed.
	// Zero means 30 s. Negative means no heartbeat.
	HeartbeatInterval time.Duration
	// MaxSubscriptionsPerConnection bounds one connection's subscriptions;
	// a subscribe past it gets an error frame "too-many-subscriptions".
	// Zero means 100. Negative means no limit.
	MaxSubscriptionsPerConnection int
	// ReplayBytesPerMinute bounds the bytes of replayed transactions one
	// connection is sent, per minute on average, with a burst of as much:
	// a subscribe with since is a few bytes and can ask for a whole
	// window. A subscribe whose replay finds the budget spent gets the
	// state frame and an error frame "replay-cursor-not-found" (the client
	// has the current state, as when its cursor left the window), with no
	// replay, as Centrifuge answers a recovery past its publication limit.
	// A replay that starts is sent whole; its bytes delay the next. Zero
	// means 16 MiB. Negative means no limit.
	ReplayBytesPerMinute int
	// ProposalTimeout bounds serving one proposal: the authorizer, the
	// resolver, the manager and the function get a context that ends then
	// (with the proposal in it: ProposalFromContext). A proposal past it
	// is answered accepted: false with code "timeout". A function or
	// manager that does not heed its context holds the connection's reads
	// until it returns. Zero means 10 s. Negative means none.
	ProposalTimeout time.Duration
	// ProposerID names the proposer of a connection's proposals, from its
	// authentication value (what Authenticate returned): keyed proposals'
	// outcomes are remembered per share data item and per proposer, so a
	// proposer that floods an item pushes out only its own keys, never
	// another's, and two proposers never share a key (see WithProposer).
	// Return the same id for every connection of one user, so a retry
	// from a new connection finds its key. Nil means the JWT bridge's
	// issuer and subject for a *Claims, else "" for every connection: all
	// anonymous proposers share one window.
	ProposerID func(auth any) string
	// ProposalsPerSecond bounds the proposals of one connection, per
	// second on average, with a burst of as many. A proposal past it is
	// answered accepted: false with code "rate-limited", before any
	// authorizer or function runs and without remembering its key, so the
	// client may send it again later. Zero means 100. Negative means no
	// limit.
	ProposalsPerSecond int
	// MaxConnections bounds the open connections; upgrades past it get
	// 503 (or, when several race for the last place, the losers are closed
	// with 1013 right after the upgrade). Zero means no limit. Negative
	// means no limit too. Size it to the process's file descriptor limit.
	MaxConnections int
	// ShutdownCode is the close code Shutdown sends: CloseGoingAway or
	// CloseServiceRestart (1012). Zero means 1001 (CloseGoingAway).
	ShutdownCode CloseCode
	// ShutdownSpread spreads Shutdown's closes over this period, in 10
	// batches one tenth of it apart, so that thousands of clients do not
	// reconnect to the remaining instances in the same second (as Phoenix's
	// drainer does). When Shutdown's context ends first, the connections
	// not yet closed are closed at once, without a close handshake, as
	// Shutdown always does when its context ends. Zero means none: every
	// connection is closed at once. Negative means none too.
	ShutdownSpread time.Duration

	// Accept configures the WebSocket handshake and connection: origin
	// patterns, subprotocols ("realtime.v1" when empty), the read limit
	// (64 KiB by default) and
	// timeouts. Its IdleTimeout defaults to three heartbeat intervals, so
	// the heartbeat, which closes a silent peer within two, acts first.
	Accept AcceptOptions

	// Logger receives the server's logs: connection events at Debug,
	// slow-consumer and heartbeat closes at Warn, failures at Error;
	// nothing per message above Debug. Nil means slog.Default().
	Logger *slog.Logger

	// Observer receives the server's events for metrics (see Observer;
	// the module github.com/degenerate/realtime/promrt turns them into
	// Prometheus metrics). The zero value reports nothing and costs
	// nothing.
	Observer Observer
}

// withDefaults resolves the zero values. Negative limits become
// math.MaxInt, so the checks where they are used need no special case;
// negative durations stay negative and mean "none" where they are used.
func (o ServerOptions) withDefaults() ServerOptions {
	switch {
	case o.MaxBufferedBytes == 0:
		o.MaxBufferedBytes = defaultMaxBufferedBytes
	case o.MaxBufferedBytes < 0:
		o.MaxBufferedBytes = math.MaxInt
	}
	switch {
	case o.MaxSubscriptionsPerConnection == 0:
		o.MaxSubscriptionsPerConnection = defaultMaxSubscriptionsPerConnection
	case o.MaxSubscriptionsPerConnection < 0:
		o.MaxSubscriptionsPerConnection = math.MaxInt
	}
	if o.ReplayBytesPerMinute == 0 {
		o.ReplayBytesPerMinute = defaultReplayBytesPerMinute
	}
	if o.ProposalsPerSecond == 0 {
		o.ProposalsPerSecond = defaultProposalsPerSecond
	}
	if o.ProposalTimeout == 0 {
		o.ProposalTimeout = defaultProposalTimeout
	}
	if o.ReplayBufferSize == 0 {
		o.ReplayBufferSize = defaultReplayBufferSize // negative: NewMemoryReplayStore keeps none
	}
	if o.MaxConnections < 0 {
		o.MaxConnections = 0 // no limit, like zero
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = defaultHeartbeatInterval
	}
	if o.ShutdownSpread < 0 {
		o.ShutdownSpread = 0
	}
	if o.ShutdownCode == 0 {
		o.ShutdownCode = CloseGoingAway
	}
	if len(o.Accept.Subprotocols) == 0 {
		o.Accept.Subprotocols = []string{Subprotocol}
	}
	if o.Accept.IdleTimeout == 0 && o.HeartbeatInterval > 0 {
		o.Accept.IdleTimeout = 3 * o.HeartbeatInterval // the heartbeat acts first
	}
	o.Accept = o.Accept.withDefaults()
	return o
}

// AuthError is returned by an Authenticate hook to refuse an upgrade with
// a given HTTP status (401 when zero), extra response headers (such as
// WWW-Authenticate) and a short reason for the response body. The reason
// must not contain the credentials.
type AuthError struct {
	Status int         // HTTP status; 401 when zero
	Header http.Header // extra response headers
	Reason string      // short, for the response body; never the credentials
	// Err is the precise cause, for the server's log (at Debug) and for
	// errors.Is and errors.As; it is never sent to the client, so it may
	// say more than Reason (which issuer or key id was not trusted), but
	// it must not contain the credentials either.
	Err error
}

func (e *AuthError) Error() string {
	if e.Err != nil {
		return "realtime: authentication failed: " + e.Reason + ": " + e.Err.Error()
	}
	return "realtime: authentication failed: " + e.Reason
}

// Unwrap returns the cause.
func (e *AuthError) Unwrap() error { return e.Err }

// ErrServerClosed is returned by Shutdown when called again, and answered
// (as 503) to upgrades that come after Shutdown.
var ErrServerClosed = errors.New("realtime: server closed")

// Server is the realtime endpoint: an http.Handler that turns WebSocket
// connections into subscriptions to the share data of a Manager. Mount it
// on any mux: mux.Handle("/realtime", srv).
//
// Guarantees: each subscriber receives every transaction applied after its
// snapshot exactly once and in order, with no gap between the state frame
// and the first live frame; a subscribe with since gets the replay whole
// (or replay-cursor-not-found), however large, before any live frame; a
// frame is encoded once however many subscribers get it; one slow,
// malformed or flooding client never delays another (its queue is bounded
// and it is closed instead).
type Server struct {
	manager Manager
	opts    ServerOptions
	store   ReplayStore
	reg     ChannelRegistry
	log     *slog.Logger

	unlisten func()
	detachFn func()
	ctx      context.Context // handed to hooks; canceled when Shutdown ends
	cancel   context.CancelFunc

	hub *hub

	mu       sync.RWMutex
	sessions map[*session]struct{}
	closed   bool

	wg        sync.WaitGroup // every goroutine the server starts
	hbStarted bool           // under mu
	hbStop    chan struct{}
	closeOnce sync.Once

	stats serverStats
}

type serverStats struct {
	connections        atomic.Int64
	subscriptions      atomic.Int64
	framesSent         atomic.Uint64
	bytesSent          atomic.Uint64
	slowConsumerCloses atomic.Uint64
	heartbeatCloses    atomic.Uint64
	proposalsAccepted  atomic.Uint64
	proposalsRejected  atomic.Uint64
}

// Stats is a snapshot of a server's counters.
type Stats struct {
	Connections        int64  // open now
	Subscriptions      int64  // active now
	FramesSent         uint64 // WebSocket data frames written
	BytesSent          uint64 // bytes of those frames
	SlowConsumerCloses uint64 // connections closed with 4001
	HeartbeatCloses    uint64 // connections closed for not answering a ping
	ProposalsAccepted  uint64 // proposals applied
	ProposalsRejected  uint64 // proposals answered accepted: false
}

// NewServer returns a server for the share data of m. It listens to m's
// events until Shutdown.
func NewServer(m Manager, opts *ServerOptions) *Server {
	s := &Server{manager: m, sessions: make(map[*session]struct{}), hbStop: make(chan struct{})}
	if opts != nil {
		s.opts = *opts
	}
	s.opts = s.opts.withDefaults()
	o := &s.opts
	s.log = o.Logger
	if s.log == nil {
		s.log = slog.Default()
	}
	s.store = o.ReplayStore
	if s.store == nil {
		// A manager that keeps its own window: forgetting to pass it
		// again as the store would quietly turn a window that survives
		// restarts into one that does not.
		if rs, ok := m.(ReplayStore); ok {
			s.store = rs
		} else {
			s.store = NewMemoryReplayStore(o.ReplayBufferSize)
		}
	}
	s.reg = o.Registry
	if s.reg == nil {
		s.reg = NewMemoryChannelRegistry()
	}
	s.hub = &hub{manager: m, store: s.store, log: s.log, wg: &s.wg,
		maxHeld: o.MaxBufferedBytes, stampEvents: o.Observer.Wrote != nil, topics: make(map[string]*topic)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.detachFn = s.reg.Attach(s.hub.deliver)
	s.unlisten = func() {}
	if !o.SkipManagerEvents {
		s.unlisten = m.Listen(s.publish)
	}
	return s
}

// closeSpread closes sessions for Shutdown, after the frames queued for
// them: at once, or in batches over ShutdownSpread until ctx ends.
func (s *Server) closeSpread(ctx context.Context, sessions []*session) {
	const batches = 10
	spread := s.opts.ShutdownSpread
	start := time.Now()
	for i := 0; len(sessions) > 0; i++ {
		n := len(sessions)
		if spread > 0 { // i < batches: the last batch's share is all that is left
			n = (len(sessions) + batches - 1 - i) / (batches - i) // an even share of what is left
			wait := time.NewTimer(time.Until(start.Add(time.Duration(i) * spread / batches)))
			select {
			case <-wait.C:
			case <-ctx.Done():
				n = len(sessions)
			}
			wait.Stop()
		}
		for _, sess := range sessions[:n] {
			sess.close(causeShutdown, s.opts.ShutdownCode, "server shutting down", true)
		}
		sessions = sessions[n:]
	}
}

// Ready reports whether the server takes new connections: true from
// NewServer until Shutdown begins, and false from Shutdown's first moment,
// before it closes any connection. A readiness probe that serves it lets a
// load balancer stop sending clients to an instance that is going away
// before they would be refused.
func (s *Server) Ready() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.closed
}

// Disconnect closes every connection whose authentication value (what
// Authenticate returned for it; nil without one) match accepts, with code
// and reason, and returns how many it closed. Frames still queued for them
// are dropped: a revoked user gets nothing more. It is safe to call while
// traffic flows; connections opened while it runs may be missed. code must
// be one that may be sent (1000-1003, 1007-1014, 3000-4999), or
// Disconnect closes nothing and returns an error.
func (s *Server) Disconnect(match func(auth any) bool, code CloseCode, reason string) (int, error) {
	if !validWireCode(code) {
		return 0, fmt.Errorf("realtime: disconnect: code %d may not be sent", int(code))
	}
	sessions := s.matching(match)
	for _, sess := range sessions {
		sess.close(causeDisconnect, code, reason, false)
	}
	return len(sessions), nil
}

// CountConnections returns how many open connections' authentication
// values match accepts. It is safe to call while traffic flows.
func (s *Server) CountConnections(match func(auth any) bool) int {
	return len(s.matching(match))
}

// matching returns the sessions whose auth match accepts.
func (s *Server) matching(match func(auth any) bool) []*session {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*session
	for sess := range s.sessions {
		if match(sess.auth) {
			out = append(out, sess)
		}
	}
	return out
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:        s.stats.connections.Load(),
		Subscriptions:      s.stats.subscriptions.Load(),
		FramesSent:         s.stats.framesSent.Load(),
		BytesSent:          s.stats.bytesSent.Load(),
		SlowConsumerCloses: s.stats.slowConsumerCloses.Load(),
		HeartbeatCloses:    s.stats.heartbeatCloses.Load(),
		ProposalsAccepted:  s.stats.proposalsAccepted.Load(),
		ProposalsRejected:  s.stats.proposalsRejected.Load(),
	}
}

// ServeHTTP authenticates the request, upgrades it and serves the
// connection until it ends. It returns as soon as the connection is
// established; the server's own goroutines carry it on.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "realtime: server is shutting down", http.StatusServiceUnavailable)
		return
	}
	// Shutdown waits for this upgrade too, whatever becomes of it.
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	if max := s.opts.MaxConnections; max > 0 && s.stats.connections.Load() >= int64(max) {
		http.Error(w, "realtime: too many connections", http.StatusServiceUnavailable)
		return
	}
	var auth any
	if fn := s.opts.Authenticate; fn != nil {
		var err error
		if auth, err = fn(r); err != nil {
			refuseAuth(w, err)
			s.log.Debug("realtime: upgrade refused", "remote", r.RemoteAddr, "err", err)
			return
		}
	}
	conn, err := Accept(w, r, &s.opts.Accept)
	if err != nil {
		s.log.Debug("realtime: handshake failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	sess := &session{srv: s, conn: conn, auth: auth, ctx: s.ctx}
	sess.writeFn = sess.writeLoop
	sess.readFn = sess.readLoop
	s.mu.Lock()
	if max := s.opts.MaxConnections; max > 0 && len(s.sessions) >= max {
		// Others were upgraded since the check above.
		s.mu.Unlock()
		conn.Close(CloseTryAgainLater, "too many connections")
		return
	}
	// A connection upgraded while Shutdown began is registered all the
	// same, so Shutdown's forced close reaches it, and closed at once.
	closed := s.closed
	s.sessions[sess] = struct{}{}
	s.stats.connections.Add(1)
	s.wg.Add(1) // the read loop
	if s.opts.HeartbeatInterval > 0 && !s.hbStarted && !closed {
		s.hbStarted = true
		s.wg.Add(1)
		go s.heartbeat()
	}
	s.mu.Unlock()
	if f := s.opts.Observer.ConnectionOpened; f != nil {
		f() // before the read loop, which reports the end
	}
	if closed {
		sess.close(causeShutdown, s.opts.ShutdownCode, "server shutting down", true)
	}
	if exp, ok := auth.(interface{ ExpiresAt() time.Time }); ok {
		sess.expiry = time.AfterFunc(time.Until(exp.ExpiresAt()), func() {
			sess.close(causeExpired, CloseUnauthorized, "token expired", false)
		})
	}
	s.log.Debug("realtime: connection open", sess.logAttrs())
	go sess.readLoop()
}

// refuseAuth answers a refused upgrade.
func refuseAuth(w http.ResponseWriter, err error) {
	status, reason := http.StatusUnauthorized, "unauthorized"
	var ae *AuthError
	if errors.As(err, &ae) {
		if ae.Status != 0 {
			status = ae.Status
		}
		for k, vs := range ae.Header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		if ae.Reason != "" {
			reason = ae.Reason
		}
	}
	http.Error(w, reason, status)
}

// publish is the manager's listener: it records transactions in the replay
// window and hands every event to the registry.
func (s *Server) publish(ev Event) {
	ctx := context.Background()
	switch ev.Kind {
	case EventTransaction:
		tx := ev.Transaction
		msg := (&TransactionMessage{ShareDataID: tx.ShareDataID, TransactionID: tx.ID, PreviousTransactionID: tx.PreviousID,
			FunctionID: tx.FunctionID, ProposedData: tx.ProposedData, Replayed: true, IdempotencyKey: tx.IdempotencyKey}).AppendJSON(nil)
		if err := s.store.Append(ctx, ev.ShareDataID, ReplayRecord{TransactionID: tx.ID, PreviousTransactionID: tx.PreviousID, Message: msg}); err != nil {
			s.log.Error("realtime: replay store append failed", "share_data_id", ev.ShareDataID, "err", err)
		}
	case EventRemoved:
		if err := s.store.Drop(ctx, ev.ShareDataID); err != nil {
			s.log.Error("realtime: replay store drop failed", "share_data_id", ev.ShareDataID, "err", err)
		}
	}
	if err := s.reg.Publish(ctx, ev); err != nil {
		s.log.Error("realtime: publish failed", "share_data_id", ev.ShareDataID, "err", err)
	}
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	if _, ok := s.sessions[sess]; ok {
		delete(s.sessions, sess)
		s.stats.connections.Add(-1)
	}
	s.mu.Unlock()
}

// apply applies a proposal through the manager: at most once when it has
// a key and the manager is a KeyedApplier. A retried keyed proposal on a
// manager that is not is answered ErrOutcomeUnknown rather than risk a
// second application.
func (s *Server) apply(ctx context.Context, m *ProposeMessage, fn Function, auth any) (*Transaction, error) {
	if m.IdempotencyKey == "" {
		return s.manager.Apply(ctx, m.ShareDataID, fn, m.ProposedData)
	}
	if ka, ok := s.manager.(KeyedApplier); ok {
		ctx = WithProposer(ctx, s.proposerOf(auth))
		return ka.ApplyKeyed(ctx, m.ShareDataID, fn, m.ProposedData, m.IdempotencyKey, m.Retry)
	}
	if m.Retry {
		return nil, ErrOutcomeUnknown
	}
	return s.manager.Apply(ctx, m.ShareDataID, fn, m.ProposedData)
}

// safeApply is apply, with a panic in a manager that does not recover its
// functions' panics (Function.Call) returned as a *PanicError: one bad
// proposal must not end the process. The panic may leave that manager's
// item locked; the log says where.
func (s *Server) safeApply(ctx context.Context, m *ProposeMessage, fn Function, auth any) (tx *Transaction, err error) {
	defer func() {
		if r := recover(); r != nil {
			tx, err = nil, &PanicError{FunctionID: fn.ID, Value: r, Stack: debug.Stack()}
		}
	}()
	return s.apply(ctx, m, fn, auth)
}

// proposerOf names the proposer whose keys a connection with auth uses
// (ServerOptions.ProposerID).
func (s *Server) proposerOf(auth any) string {
	if f := s.opts.ProposerID; f != nil {
		return f(auth)
	}
	if c, ok := auth.(*Claims); ok && c != nil && c.Subject != "" {
		return c.Issuer + "\x00" + c.Subject
	}
	return ""
}

// subscribed counts a subscribe's outcome for the observer.
func (s *Server) subscribed(o SubscribeOutcome) {
	if f := s.opts.Observer.Subscribed; f != nil {
		f(o)
	}
}

// subscriptionEnded counts the end of a subscription that was kept.
func (s *Server) subscriptionEnded() {
	s.stats.subscriptions.Add(-1)
	if f := s.opts.Observer.Unsubscribed; f != nil {
		f()
	}
}

// proposed reports an answered proposal, begun at start, to the observer.
func (s *Server) proposed(functionID string, o ProposalOutcome, start time.Time) {
	if f := s.opts.Observer.Proposed; f != nil {
		f(ProposalReport{FunctionID: functionID, Outcome: o, Duration: time.Since(start)})
	}
}

// goClose closes conn with a close handshake on a goroutine of the
// server's, so the caller never waits for a slow peer.
func (s *Server) goClose(conn *Conn, code CloseCode, reason string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		conn.Close(code, reason)
	}()
}

// heartbeat pings every connection each interval and closes those that did
// not answer the previous ping (half-open connections, vanished peers). It
// writes nothing itself: each ping is sent by its connection's writer, so a
// peer that stopped reading never delays the sweep over the others.
func (s *Server) heartbeat() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.HeartbeatInterval)
	defer t.Stop()
	var sessions []*session
	for {
		select {
		case <-s.hbStop:
			return
		case <-t.C:
		}
		sessions = sessions[:0]
		s.mu.RLock()
		for sess := range s.sessions {
			sessions = append(sessions, sess)
		}
		s.mu.RUnlock()
		for _, sess := range sessions {
			pongs := sess.conn.pongCount()
			if sess.pinged && pongs == sess.pongsSeen {
				s.stats.heartbeatCloses.Add(1)
				s.log.Warn("realtime: closing a connection that did not answer a ping", sess.logAttrs())
				sess.markCause(causeHeartbeat)
				sess.conn.CloseNow()
				continue
			}
			sess.pongsSeen = pongs
			sess.pinged = sess.ping()
		}
		clear(sessions)
	}
}

// Shutdown stops accepting connections, sends every client a close frame
// with ShutdownCode after the frames already queued for it, and waits for
// the connections and every goroutine of the server to end. When ctx ends
// first, the remaining connections are closed at once and ctx's error is
// returned after they are gone. The server stops listening to its manager.
func (s *Server) Shutdown(ctx context.Context) error {
	first := false
	s.closeOnce.Do(func() { first = true })
	if !first {
		return ErrServerClosed
	}
	s.mu.Lock()
	s.closed = true
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	close(s.hbStop)
	s.closeSpread(ctx, sessions)
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		// Every connection now registered, late upgrades included.
		s.mu.RLock()
		sessions = sessions[:0]
		for sess := range s.sessions {
			sessions = append(sessions, sess)
		}
		s.mu.RUnlock()
		for _, sess := range sessions {
			sess.markCause(causeShutdown)
			sess.conn.CloseNow()
		}
		<-done
	}
	s.unlisten()
	s.detachFn()
	s.cancel()
	return err
}
