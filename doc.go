// Package realtime puts live shared state on the wire. A Go server mounts
// one http.Handler; browsers and Go services connect over WebSocket,
// subscribe to "share data" items by id, receive a snapshot and then every
// transaction applied to them, and propose changes through functions the
// server registers. When they drop off, they reconnect and the server
// replays what they missed. It is the Go counterpart of the npm package
// @degenerate/realtime and speaks its wire protocol, close codes and
// defaults.
//
// # Where to start
//
//   - Server: keep your share data in a Manager (MemoryManager in memory,
//     DiskManager in a directory, surviving restarts and crashes), make a
//     Server with NewServer and mount it: mux.Handle("/realtime", srv).
//     See the package example. realtimetest.TestManager checks a manager
//     of your own.
//   - Go client: NewClient, Subscribe, Connect, Propose. It reconnects by
//     itself and resubscribes with a cursor.
//   - Authentication: NewJWTAuthenticator with ShareDataAudienceAuthorizer
//     and ShareDataAudienceProposeAuthorizer, or your own
//     ServerOptions.Authenticate and authorizers.
//   - The WebSocket layer alone: Accept, Dial and Conn (see the examples
//     of Accept, Dial, Conn.Writer and CloseError).
//
// # The protocol in brief
//
// Every message is one JSON object in one WebSocket text message, with the
// envelope {"v":1,"type":...}. Clients send subscribe (with an optional
// since cursor), unsubscribe, propose and ping. The server answers a
// subscribe with a state frame (the snapshot and its lastTransactionId),
// then, with since, the transactions after the cursor marked replayed, then
// every later transaction live with its currentState; lifecycle frames
// report wholesale updates and removal; proposal-result and pong answer
// requests by correlationId; error frames report non-fatal errors such as
// replay-cursor-not-found. Every message has a Go type (SubscribeMessage,
// StateMessage, ...) whose documentation shows its JSON;
// DecodeClientMessage and DecodeServerMessage validate by hand and name the
// field at fault; AppendJSON encodes compactly and deterministically.
// Transaction frames also carry previousTransactionId, so a client can tell
// that it missed one.
//
// # Guarantees
//
//   - Ordering and no gaps: each subscriber receives every transaction
//     applied after its snapshot exactly once, in order, with no gap between
//     the state frame and the first live frame.
//   - Replay: a client that reconnects with since receives the retained
//     transactions it missed (100 per share data by default), or an error
//     frame saying the cursor is outside the window, never a silent gap. A
//     replay flows to the connection as its queue drains, so a window larger
//     than the send cap still arrives; a connection cut during it resumes
//     from the last transaction received (the Go client's cursor moves on
//     replayed frames too).
//   - Slow consumers: each connection has a bounded send queue (1 MiB by
//     default). A client that cannot keep up is closed with 4001 at once;
//     it never delays the broadcast to others. It reconnects with since and
//     is replayed what it missed.
//   - Bad input harms nobody else: an undecodable message closes only its
//     connection, with 4004 and a reason naming the field; limits bound
//     message size, subscriptions and connections.
//   - Liveness: the server pings every 30 s and closes connections that do
//     not answer; Shutdown drains queues and closes every client with 1001
//     (spread over ShutdownSpread if set), and Ready turns false first.
//   - Exactly-once proposals: every proposal of the Go and JavaScript
//     clients carries an idempotency key; one in flight when the connection
//     drops is sent again after the reconnect, and a manager that is a
//     KeyedApplier (MemoryManager, DiskManager, redisrt.Manager) applies a
//     key once and answers a repeat with the first outcome, so Propose
//     returns the one true outcome (ErrOutcomeUnknown only once the key
//     left the window).
//   - Efficiency: a frame is encoded once per broadcast and the same bytes
//     are queued for every subscriber; reading, writing and fanning out
//     allocate nothing per message per subscriber once warm; an idle
//     subscribed connection costs about 5.5 KiB of resident memory on
//     Linux (it holds no read buffer while it waits).
//
// # Options
//
// Every constructor takes its required arguments as parameters and its
// options as a pointer whose nil means the defaults (NewServer, NewClient,
// Accept, Dial, OpenDiskManager). Every options struct (ServerOptions,
// ClientOptions, AcceptOptions, DialOptions, ConnOptions, JWTOptions,
// DiskManagerOptions) follows one rule
// for its numbers and durations: zero means the documented default, and a
// negative value means none: no limit, no timeout, no wait, no window.
// Each field's doc says what its default and its "none" are; none of the
// defaults is off, except MaxConnections, whose default is no limit.
//
// # Errors
//
// Every error text starts with the layer it comes from: "websocket: " for
// Accept, Dial and Conn, "realtime: " for the rest, so a log line says
// where to look. Decide by value, never by text: the sentinels (ErrClosed,
// ErrInvalidMessage, ErrUnknownShareData, ErrReplayCursorNotFound, ...)
// match with errors.Is, and the typed errors with errors.As: *CloseError
// (CloseCodeOf reads its code), *HandshakeError, *AuthError,
// *DecodeError, *ErrorMessage (a Propose or Ping the server answered with
// an error frame; decide by its Code), *ProposalError and
// *SubscriptionError. Texts sent to a peer (refusal reasons, error-frame
// messages, close reasons) leave the "realtime: " prefix out.
//
// # Exposing a server
//
// Serve through an http.Server with ReadHeaderTimeout, IdleTimeout and
// MaxHeaderBytes set, as the package example does. Their zero values mean
// no timeout and 1 MiB of headers: a client that sends its handshake a byte
// at a time would hold a connection forever, and idle keep-alive
// connections would pile up until the process runs out of file
// descriptors. The WebSocket connections themselves are hijacked, so
// these settings do not touch them; their own limits apply instead, each
// on by default: 64 KiB per message (ConnOptions.ReadLimit) and 1,024
// frames per message (ConnOptions.MaxFragments), both closing with 1009;
// 60 s for a frame to arrive (IdleTimeout) and 10 s to write one
// (WriteTimeout); the Origin check; 1 MiB queued per connection
// (ServerOptions.MaxBufferedBytes, then 4001); 100 subscriptions per
// connection; and, with the JWT bridge, 8 KiB per token
// (JWTOptions.MaxTokenSize), refused before it is parsed. Every size check
// is written so that it cannot overflow, and one connection that stops
// reading delays only itself.
//
// # WebSocket
//
// The package implements WebSocket (RFC 6455) itself over net/http
// hijacking. Accept validates the handshake (and, by default, refuses
// pages of other sites through the Origin check); Dial opens a client
// connection over ws:// or wss://. A Conn reads whole messages (fragments
// reassembled, text checked as UTF-8 as it arrives, 64 KiB read limit by
// default), fails the connection with 1002, 1007 or 1009 on bad input,
// answers pings while reading, sends pongs and close frames between the
// fragments of long messages, and performs the close handshake; errors
// after the end are a *CloseError that says who closed and with what code.
// Close codes, including the application codes 4001-4004, are the
// CloseCode constants; CloseCodeOf reads one from an error.
// EnableCompression (AcceptOptions, DialOptions) negotiates
// permessage-deflate without context takeover, so a server compresses a
// broadcast once for every subscriber; it is off by default.
//
// # Operating
//
// ServerOptions.Observer reports connections, subscribes, proposals and
// writes as they happen, at no cost when unset; the module
// github.com/degenerate/realtime/promrt turns it into Prometheus metrics.
// Server.Disconnect and CountConnections act on connections by their
// authentication value.
package realtime
