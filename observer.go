package realtime

import "time"

// This file is the server's observation hook: what it reports about its
// connections, subscriptions, proposals and writes, for metrics. The
// Prometheus collector (module github.com/degenerate/realtime/promrt) is
// built on it; so can anything else be, without this package depending on
// it.

// Observer receives what a Server does, as it happens. Set it in
// ServerOptions; every field may be nil, and a nil field costs the server
// one comparison where its event happens. The funcs are called on the
// server's goroutines, concurrently, and must return quickly without
// blocking: a slow Wrote delays that connection's next write, a slow
// Subscribed or Proposed that connection's next message. The reports are
// passed by value and hold nothing that is reused, so reporting allocates
// nothing.
//
// Each value that may become a metric label is bounded by the package (the
// outcomes, the causes) or by the server's code (function ids come from the
// client, so a collector should bound them itself); share data ids are
// never reported.
type Observer struct {
	// ConnectionOpened is called once for each connection the server
	// accepted, after the upgrade.
	ConnectionOpened func()
	// ConnectionClosed is called once for each connection that
	// ConnectionOpened reported, after it ended, with how.
	ConnectionClosed func(ConnectionEnd)
	// Subscribed is called for each subscribe message with its outcome.
	Subscribed func(SubscribeOutcome)
	// Unsubscribed is called when a subscription that Subscribed reported
	// as SubscribeNew or SubscribeRecovered or SubscribeCursorNotFound
	// ends: an unsubscribe, a resubscribe, its share data removed, or its
	// connection ended. The difference of the two is the subscriptions
	// active now.
	Unsubscribed func()
	// Proposed is called for each propose message once it is answered.
	Proposed func(ProposalReport)
	// Wrote is called after each write of queued frames to a connection
	// (one or more system calls), before the next.
	Wrote func(WriteReport)
}

// ConnectionEnd is how a connection ended, for Observer.ConnectionClosed.
type ConnectionEnd struct {
	// Code is the close code of the connection: the one in the close
	// frame that ended it (sent by either side), CloseNoStatusReceived
	// when the peer's had none, CloseAbnormalClosure when the connection
	// ended with no close frame. A peer chooses its own code: any of
	// 1000-1003, 1007-1014 or 3000-4999.
	Code CloseCode
	// Remote is true when the peer sent the close frame first.
	Remote bool
	// Cause says which side or which rule of the server ended it.
	Cause CloseCause
}

// CloseCause is why a connection ended. The values are stable and fit a
// metric label.
type CloseCause string

// The causes of a connection's end. A connection the server closed for one
// reason keeps it even when the network then fails the close handshake.
const (
	// CausePeer: the client closed the connection (with a close frame or
	// by dropping it), or the network did.
	CausePeer CloseCause = "peer"
	// CauseProtocol: the client broke the WebSocket or realtime protocol
	// (1002, 1003, 1007, 1009, 4004), subscribed to an unknown share data
	// item (4003), or its messages failed the connection otherwise.
	CauseProtocol CloseCause = "protocol"
	// CauseSlowConsumer: it fell behind and was closed with 4001.
	CauseSlowConsumer CloseCause = "slow_consumer"
	// CauseHeartbeat: it did not answer a ping by the next one.
	CauseHeartbeat CloseCause = "heartbeat"
	// CauseExpired: its authentication expired (4002).
	CauseExpired CloseCause = "expired"
	// CauseDisconnect: Server.Disconnect closed it.
	CauseDisconnect CloseCause = "disconnect"
	// CauseShutdown: Server.Shutdown closed it (or it was upgraded while
	// the server shut down).
	CauseShutdown CloseCause = "shutdown"
	// CauseIdleTimeout: no frame arrived within the idle timeout
	// (AcceptOptions.IdleTimeout; the heartbeat usually acts first).
	CauseIdleTimeout CloseCause = "idle_timeout"
	// CauseWriteTimeout: a write to it did not complete within the write
	// timeout (AcceptOptions.WriteTimeout).
	CauseWriteTimeout CloseCause = "write_timeout"
	// CauseEventsLost: the registry may have lost events of a share data
	// item it subscribed to, or it would have seen a gap in them; it was
	// closed with 4001 so that its client resubscribes with since.
	CauseEventsLost CloseCause = "events_lost"
)

// causeCode is a CloseCause in the session's one byte.
type causeCode uint8

const (
	causeNone causeCode = iota
	causeProtocol
	causeSlowConsumer
	causeHeartbeat
	causeExpired
	causeDisconnect
	causeShutdown
	causeIdleTimeout
	causeWriteTimeout
	causeEventsLost
)

var causeNames = [...]CloseCause{
	causeNone:         CausePeer,
	causeProtocol:     CauseProtocol,
	causeSlowConsumer: CauseSlowConsumer,
	causeHeartbeat:    CauseHeartbeat,
	causeExpired:      CauseExpired,
	causeDisconnect:   CauseDisconnect,
	causeShutdown:     CauseShutdown,
	causeIdleTimeout:  CauseIdleTimeout,
	causeWriteTimeout: CauseWriteTimeout,
	causeEventsLost:   CauseEventsLost,
}

// endReport describes how c ended, for a connection the server closed for
// cause (causeNone: it did not) whose read loop ended with readErr.
func endReport(c *Conn, cause causeCode, readErr error) ConnectionEnd {
	code, remote := c.closeStatus()
	switch {
	case cause != causeNone:
	case remote || code == CloseAbnormalClosure:
		// The peer closed it, or the network ended it.
	case isTimeout(readErr):
		cause = causeIdleTimeout
	default:
		// This side failed the connection for what the peer sent.
		cause = causeProtocol
	}
	return ConnectionEnd{Code: code, Remote: remote, Cause: causeNames[cause]}
}

// SubscribeOutcome is what became of a subscribe message. The values are
// stable and fit a metric label.
type SubscribeOutcome string

// The outcomes of a subscribe.
const (
	// SubscribeNew: subscribed without since; the state frame was sent.
	SubscribeNew SubscribeOutcome = "new"
	// SubscribeRecovered: subscribed with since inside the replay window;
	// the missed transactions were (or are being) replayed, or none was
	// missed.
	SubscribeRecovered SubscribeOutcome = "recovered"
	// SubscribeCursorNotFound: since was outside the replay window; the
	// state frame and replay-cursor-not-found were sent.
	SubscribeCursorNotFound SubscribeOutcome = "cursor_not_found"
	// SubscribeForbidden: AuthorizeSubscribe refused it.
	SubscribeForbidden SubscribeOutcome = "forbidden"
	// SubscribeLimit: the connection had MaxSubscriptionsPerConnection
	// already.
	SubscribeLimit SubscribeOutcome = "limit"
	// SubscribeUnknown: the share data item does not exist (the
	// connection is closed with 4003).
	SubscribeUnknown SubscribeOutcome = "unknown"
	// SubscribeFailed: the manager or the replay store failed, or the
	// connection closed while it joined; the client subscribes again.
	SubscribeFailed SubscribeOutcome = "failed"
)

// ProposalOutcome is how a propose message was answered. The values are
// stable and fit a metric label.
type ProposalOutcome string

// The outcomes of a propose.
const (
	// ProposalAccepted: applied; the reply carries its transaction id.
	ProposalAccepted ProposalOutcome = "accepted"
	// ProposalForbidden: AuthorizePropose refused it.
	ProposalForbidden ProposalOutcome = "forbidden"
	// ProposalDisabled: the server has no ResolveFunction.
	ProposalDisabled ProposalOutcome = "disabled"
	// ProposalUnresolved: ResolveFunction knew no such function.
	ProposalUnresolved ProposalOutcome = "unresolved"
	// ProposalRejected: the manager's Apply returned an error (the
	// function refused the proposed data, the share data is gone, ...).
	ProposalRejected ProposalOutcome = "rejected"
	// ProposalOutcomeUnknown: a retried proposal whose key is no longer
	// remembered (ErrOutcomeUnknown); nothing was applied.
	ProposalOutcomeUnknown ProposalOutcome = "outcome_unknown"
	// ProposalRateLimited: past the connection's ProposalsPerSecond;
	// nothing ran.
	ProposalRateLimited ProposalOutcome = "rate_limited"
	// ProposalFailed: the function panicked (ErrFunctionPanicked); the
	// proposer was told "internal error".
	ProposalFailed ProposalOutcome = "failed"
	// ProposalTimedOut: serving it took longer than ProposalTimeout.
	ProposalTimedOut ProposalOutcome = "timeout"
)

// ProposalReport is one answered proposal, for Observer.Proposed.
type ProposalReport struct {
	// FunctionID is the function id the client sent, unchecked: bound it
	// before using it as a label.
	FunctionID string
	// Outcome is how it was answered.
	Outcome ProposalOutcome
	// Duration is from the message's decoding to its reply being queued:
	// authorization, resolving and applying.
	Duration time.Duration
}

// WriteReport is one write of queued frames to a connection, for
// Observer.Wrote.
type WriteReport struct {
	// Frames is the number of frames written: all those queued for the
	// connection when its writer took them, which is its queue depth.
	Frames int
	// Bytes is their size on the wire.
	Bytes int
	// Latency is, when the write carried a transaction or lifecycle
	// frame, the time from the moment this server received the oldest of
	// them from its registry (right after the manager applied it, for a
	// transaction applied through this instance) to the end of the write.
	// Zero when it carried none (replies, a replay, state frames).
	Latency time.Duration
}

// epoch is the origin of the monotonic stamps a frame's latency is
// measured from; a stamp is never zero.
var epoch = time.Now()

// stamp returns a nonzero monotonic time in nanoseconds.
func stamp() int64 { return int64(time.Since(epoch)) + 1 }
