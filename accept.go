package realtime

import (
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// AcceptOptions configure Accept. The zero value is a server that checks
// the Origin header, negotiates no subprotocol and uses the ConnOptions
// defaults.
type AcceptOptions struct {
	// Subprotocols lists the subprotocols this server speaks. The first
	// one offered by the client, in the client's order of preference,
	// that is also in this list is selected. When none matches, the
	// connection is accepted with no subprotocol.
	Subprotocols []string

	// OriginPatterns lists the origins accepted besides the request's own
	// host. A browser sends Origin on every WebSocket handshake; a page
	// of another site must not be able to open a connection that carries
	// the user's cookies (cross-site WebSocket hijacking). Patterns use
	// path.Match syntax and are matched case-insensitively against the
	// origin's host ("example.com", "*.example.com", "localhost:*"), or
	// against scheme://host when the pattern contains "://". Requests
	// without an Origin header (non-browser clients) are always accepted.
	OriginPatterns []string

	// SkipOriginCheck turns the Origin check off: any site's pages may
	// connect. Use it only when the connection carries no ambient
	// credentials (cookies, client certificates, HTTP auth).
	SkipOriginCheck bool

	// EnableCompression negotiates permessage-deflate (RFC 7692) with
	// clients that offer it, as every browser does: both directions
	// without context takeover, so compressing costs no memory between
	// messages, and messages of CompressionThreshold bytes or more are
	// compressed. Off by default, as in gorilla/websocket, Centrifuge and
	// Phoenix: compression costs CPU per message and leaks through sizes
	// what a message shares with another (see the README).
	EnableCompression bool

	// HandshakeTimeout bounds the writing of the 101 response after the
	// connection is hijacked. Zero means 10 s. Negative means no timeout.
	// The
	// reading of the request is the http.Server's job: set its
	// ReadHeaderTimeout.
	HandshakeTimeout time.Duration

	// ConnOptions are the accepted connection's limits and timeouts.
	ConnOptions
}

// withDefaults resolves the zero values (see ConnOptions).
func (o AcceptOptions) withDefaults() AcceptOptions {
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = defaultHandshakeTimeout
	}
	o.ConnOptions = o.ConnOptions.withDefaults()
	return o
}

// HandshakeError reports a failed opening handshake. On the server,
// StatusCode is the HTTP status Accept answered with. On the client, it is
// the status the server answered with (0 when the failure was not an HTTP
// status), and Body holds up to 1 KiB of the response body.
type HandshakeError struct {
	StatusCode int    // the HTTP status (see above)
	Reason     string // what was wrong
	Body       []byte // client side: the start of the refusal's body
	Err        error  // the underlying cause, if any
}

func (e *HandshakeError) Error() string {
	var b strings.Builder
	b.WriteString("websocket: handshake failed")
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if e.Reason != "" {
		b.WriteString(": ")
		b.WriteString(e.Reason)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if len(e.Body) > 0 {
		fmt.Fprintf(&b, ": body %q", e.Body)
	}
	return b.String()
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// websocketGUID is the fixed GUID of RFC 6455 section 1.3.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// acceptKey computes Sec-WebSocket-Accept for a Sec-WebSocket-Key.
func acceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte(websocketGUID))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// Accept validates r as a WebSocket opening handshake (RFC 6455 section
// 4.2.1), answers it with 101 Switching Protocols and returns the
// connection. It works from any http.Handler, also behind middleware that
// wraps the http.ResponseWriter, as long as the wrapper offers Hijack or an
// Unwrap method (see http.ResponseController).
//
// When the handshake is refused, Accept has already written an HTTP error
// response and returns a *HandshakeError: 405 for a method other than GET,
// 426 for a request older than HTTP/1.1, when the Connection or Upgrade
// header does not ask for websocket, or when Sec-WebSocket-Version is not
// 13 (with a Sec-WebSocket-Version: 13 header), 400 for a bad
// Sec-WebSocket-Key, 403 for a refused Origin, and 500 when the connection
// cannot be hijacked (HTTP/2, or a wrapper without Unwrap); that last error
// matches http.ErrNotSupported.
//
// Headers set on w before Accept (cookies, for instance) are sent with the
// 101 response. Bytes the client sent right after its handshake, which
// net/http may have read already, are kept for the first Read.
func Accept(w http.ResponseWriter, r *http.Request, opts *AcceptOptions) (*Conn, error) {
	var o AcceptOptions
	if opts != nil {
		o = *opts
	}
	o = o.withDefaults()
	key, herr := checkHandshake(w, r, &o)
	if herr != nil {
		if herr.StatusCode == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodGet)
		}
		http.Error(w, herr.Error(), herr.StatusCode)
		return nil, herr
	}
	subprotocol := selectSubprotocol(r, o.Subprotocols)
	deflate := o.EnableCompression && acceptDeflate(r.Header.Values("Sec-WebSocket-Extensions"))

	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		herr := &HandshakeError{StatusCode: http.StatusInternalServerError,
			Reason: "the http.ResponseWriter cannot hijack the connection (HTTP/2, or a wrapper without Unwrap)", Err: err}
		http.Error(w, herr.Error(), herr.StatusCode)
		return nil, herr
	}
	// Bytes net/http read past the request belong to the WebSocket stream.
	var pre []byte
	if n := brw.Reader.Buffered(); n > 0 {
		pre, _ = brw.Reader.Peek(n)
	}

	var b strings.Builder
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")
	b.WriteString(acceptKey(key))
	b.WriteString("\r\n")
	if subprotocol != "" {
		b.WriteString("Sec-WebSocket-Protocol: ")
		b.WriteString(subprotocol)
		b.WriteString("\r\n")
	}
	if deflate {
		b.WriteString("Sec-WebSocket-Extensions: " + deflateAnswer + "\r\n")
	}
	for k, vs := range w.Header() {
		switch http.CanonicalHeaderKey(k) {
		case "Upgrade", "Connection", "Sec-Websocket-Accept", "Sec-Websocket-Protocol", "Sec-Websocket-Extensions", "Content-Length", "Transfer-Encoding":
			continue
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
				continue
			}
			b.WriteString(k)
			b.WriteString(": ")
			b.WriteString(v)
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\r\n")

	// net/http may have left deadlines on the connection (ReadTimeout,
	// WriteTimeout); the WebSocket connection manages its own.
	nc.SetDeadline(time.Time{})
	if o.HandshakeTimeout > 0 {
		nc.SetWriteDeadline(time.Now().Add(o.HandshakeTimeout))
	}
	if _, err := nc.Write([]byte(b.String())); err != nil {
		nc.Close()
		return nil, &HandshakeError{Reason: "writing the 101 response", Err: err}
	}
	nc.SetWriteDeadline(time.Time{})
	c := newConn(nc, false, subprotocol, o.ConnOptions, pre)
	c.deflate = deflate
	return c, nil
}

// checkHandshake validates the request and returns its Sec-WebSocket-Key.
func checkHandshake(w http.ResponseWriter, r *http.Request, o *AcceptOptions) (string, *HandshakeError) {
	if r.Method != http.MethodGet {
		return "", &HandshakeError{StatusCode: http.StatusMethodNotAllowed, Reason: "method " + r.Method + " is not GET"}
	}
	if !r.ProtoAtLeast(1, 1) {
		// RFC 6455 section 4.1: the upgrade is an HTTP/1.1 mechanism.
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return "", &HandshakeError{StatusCode: http.StatusUpgradeRequired, Reason: "the opening handshake must be HTTP/1.1 or later, not " + r.Proto}
	}
	if !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return "", &HandshakeError{StatusCode: http.StatusUpgradeRequired, Reason: `Connection header does not contain "upgrade"`}
	}
	if !httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return "", &HandshakeError{StatusCode: http.StatusUpgradeRequired, Reason: `Upgrade header does not contain "websocket"`}
	}
	if v := r.Header.Values("Sec-WebSocket-Version"); len(v) != 1 || strings.TrimSpace(v[0]) != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return "", &HandshakeError{StatusCode: http.StatusUpgradeRequired, Reason: "Sec-WebSocket-Version must be 13"}
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 {
		return "", &HandshakeError{StatusCode: http.StatusBadRequest, Reason: "Sec-WebSocket-Key must appear once"}
	}
	key := strings.TrimSpace(keys[0])
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
		return "", &HandshakeError{StatusCode: http.StatusBadRequest, Reason: "Sec-WebSocket-Key is not 16 bytes in base64"}
	}
	if !o.SkipOriginCheck {
		if err := checkOrigin(r, o.OriginPatterns); err != nil {
			return "", &HandshakeError{StatusCode: http.StatusForbidden, Reason: err.Error()}
		}
	}
	return key, nil
}

// checkOrigin accepts a request with no Origin, one whose Origin host is
// the request's Host, and one that matches a pattern.
func checkOrigin(r *http.Request, patterns []string) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return fmt.Errorf("Origin %q is not a URL with a host", origin)
	}
	if strings.EqualFold(u.Host, r.Host) {
		return nil
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		ok, err := path.Match(strings.ToLower(p), strings.ToLower(target))
		if err != nil {
			return fmt.Errorf("origin pattern %q: %w", p, err)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("Origin %q is not allowed", origin)
}

// selectSubprotocol picks the first subprotocol offered by the client that
// the server supports.
func selectSubprotocol(r *http.Request, supported []string) string {
	if len(supported) == 0 {
		return ""
	}
	for _, offered := range headerTokens(r.Header.Values("Sec-WebSocket-Protocol")) {
		for _, s := range supported {
			if offered == s {
				return s
			}
		}
	}
	return ""
}

// headerTokens splits comma-separated header values into trimmed tokens.
func headerTokens(values []string) []string {
	var out []string
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}
