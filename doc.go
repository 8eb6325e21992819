// Package realtime puts live shared state on the wire: a Go server mounts
// one http.Handler, browsers and Go services connect over WebSocket,
// subscribe to share data items by id, receive a snapshot and then every
// transaction applied to them, and propose changes through functions the
// server registers. It is the Go counterpart of the npm package
// @degenerate/realtime and speaks its wire protocol.
//
// # WebSocket
//
// The package implements WebSocket (RFC 6455) itself, over net/http
// hijacking, with no WebSocket library underneath. Accept upgrades an HTTP
// request on the server; Dial opens a connection from a client. Both return
// a *Conn:
//
//	func handler(w http.ResponseWriter, r *http.Request) {
//		c, err := realtime.Accept(w, r, nil)
//		if err != nil {
//			return // Accept has answered the request with an HTTP error
//		}
//		defer c.CloseNow()
//		for {
//			typ, msg, err := c.Read(r.Context())
//			if err != nil {
//				return
//			}
//			if err := c.Write(r.Context(), typ, msg); err != nil {
//				return
//			}
//		}
//	}
//
// What a Conn guarantees:
//
//   - Accept validates the handshake of RFC 6455 section 4.2.1 and refuses,
//     by default, browsers on another site (the Origin check); see
//     AcceptOptions.OriginPatterns.
//   - Messages are read whole; fragments are reassembled, text is checked as
//     UTF-8 as it arrives, and a message over the read limit (64 KiB by
//     default) fails the connection with 1009.
//   - Any protocol violation by the peer fails the connection with 1002
//     (1007 for invalid UTF-8): the close frame is sent and the TCP
//     connection closed.
//   - Writes are safe from many goroutines; messages never interleave and
//     pongs and close frames go out between the fragments of a long message.
//   - Pings are answered while reading; Ping sends one and waits for its
//     pong.
//   - Close performs the close handshake; every error after the end is a
//     *CloseError (errors.As) that says who closed and with what code.
//   - Reading into a reused buffer and writing allocate nothing once the
//     connection is warm, and a Conn starts no goroutine of its own.
//
// Close codes, including the application codes 4001-4004 of the realtime
// protocol, are the StatusCode constants.
//
// # Wire protocol
//
// Every application message is one JSON object in one text message, with
// the envelope {"v":1,"type":...}. Clients send subscribe, unsubscribe,
// propose and ping; servers send state, transaction, lifecycle,
// proposal-result, pong and error. Each has a Go type (SubscribeMessage,
// StateMessage, ...) whose doc shows its JSON. DecodeClientMessage and
// DecodeServerMessage validate by hand and return a *DecodeError naming the
// field at fault; AppendJSON encodes compactly and deterministically.
package realtime
