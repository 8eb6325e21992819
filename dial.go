package realtime

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// DialOptions configure Dial. The zero value dials with no extra headers,
// no subprotocol, the default TLS configuration and the ConnOptions
// defaults.
type DialOptions struct {
	// Header holds extra request headers, such as Authorization. The
	// handshake's own headers (Upgrade, Connection, Sec-WebSocket-*) are
	// set by Dial and may not be given here.
	Header http.Header

	// Subprotocols lists the subprotocols to offer, in order of
	// preference.
	Subprotocols []string

	// TLSConfig is used for wss:// URLs. When nil, the zero tls.Config is
	// used. ServerName defaults to the URL's host name.
	TLSConfig *tls.Config

	// NetDialContext dials the TCP connection. When nil, a net.Dialer is
	// used.
	NetDialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// EnableCompression offers permessage-deflate (RFC 7692) without
	// context takeover either way; when the server accepts, messages of
	// CompressionThreshold bytes or more are compressed. Off by default
	// (see AcceptOptions.EnableCompression).
	EnableCompression bool

	// HandshakeTimeout bounds dialing, the TLS handshake and the HTTP
	// exchange together (ctx can shorten it). Zero means 10 s. Negative
	// means no timeout: ctx alone bounds the handshake.
	HandshakeTimeout time.Duration

	// ConnOptions are the connection's limits and timeouts.
	ConnOptions
}

// withDefaults resolves the zero values (see ConnOptions).
func (o DialOptions) withDefaults() DialOptions {
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = defaultHandshakeTimeout
	}
	o.ConnOptions = o.ConnOptions.withDefaults()
	return o
}

// maxErrorBody is how much of a refused handshake's body Dial keeps.
const maxErrorBody = 1 << 10

// Dial opens a WebSocket connection to a ws:// or wss:// URL (http:// and
// https:// are accepted as synonyms). It returns the connection and the
// server's 101 response, whose Body is empty.
//
// The response is checked: status 101, Upgrade: websocket, Connection:
// upgrade, the Sec-WebSocket-Accept that matches the key sent, a
// subprotocol only if one was offered, no extension but permessage-deflate
// when it was offered (EnableCompression). A refusal returns a
// *HandshakeError with the HTTP status and up to 1 KiB of the body; the
// *http.Response is then returned too, with its headers, when one was read.
func Dial(ctx context.Context, rawURL string, opts *DialOptions) (*Conn, *http.Response, error) {
	var o DialOptions
	if opts != nil {
		o = *opts
	}
	o = o.withDefaults()
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("websocket: dial: %w", err)
	}
	secure := false
	switch u.Scheme {
	case "ws", "http":
		u.Scheme = "http"
	case "wss", "https":
		u.Scheme, secure = "https", true
	default:
		return nil, nil, fmt.Errorf("websocket: dial: URL scheme %q is not ws or wss", u.Scheme)
	}
	if u.Host == "" {
		return nil, nil, fmt.Errorf("websocket: dial: URL %q has no host", rawURL)
	}
	addr := u.Host
	if u.Port() == "" {
		if secure {
			addr = net.JoinHostPort(u.Hostname(), "443")
		} else {
			addr = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	for k := range o.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions", "Sec-Websocket-Protocol":
			return nil, nil, fmt.Errorf("websocket: dial: header %s is set by Dial and may not be given", k)
		}
	}

	if o.HandshakeTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.HandshakeTimeout)
		defer cancel()
	}

	dial := o.NetDialContext
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("websocket: dial: %w", err)
	}
	// Until the handshake is done, ctx's end interrupts it.
	if d, ok := ctx.Deadline(); ok {
		nc.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(aLongTimeAgo) })
	conn, resp, err := handshake(ctx, nc, u, secure, &o)
	if !stop() || err != nil {
		nc.Close()
		if err == nil {
			err = fmt.Errorf("websocket: dial: %w", ctx.Err())
		}
		return nil, resp, err
	}
	nc.SetDeadline(time.Time{})
	return conn, resp, nil
}

// handshake runs TLS (for wss) and the HTTP upgrade on nc.
func handshake(ctx context.Context, nc net.Conn, u *url.URL, secure bool, o *DialOptions) (*Conn, *http.Response, error) {
	if secure {
		cfg := &tls.Config{}
		if o.TLSConfig != nil {
			cfg = o.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		// HTTP/1.1 only: a WebSocket upgrade does not exist in HTTP/2
		// without RFC 8441.
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, nil, &HandshakeError{Reason: "TLS handshake", Err: ctxErr(ctx, err)}
		}
		nc = tc
	}

	var raw [16]byte
	crand.Read(raw[:])
	key := base64.StdEncoding.EncodeToString(raw[:])
	req := &http.Request{
		Method:     http.MethodGet,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header),
		Host:       u.Host,
	}
	for k, vs := range o.Header {
		req.Header[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	if len(o.Subprotocols) > 0 {
		req.Header.Set("Sec-WebSocket-Protocol", strings.Join(o.Subprotocols, ", "))
	}
	if o.EnableCompression {
		req.Header.Set("Sec-WebSocket-Extensions", deflateOffer)
	}
	if err := req.Write(nc); err != nil {
		return nil, nil, &HandshakeError{Reason: "writing the request", Err: ctxErr(ctx, err)}
	}
	br := bufio.NewReaderSize(nc, 4096)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, nil, &HandshakeError{Reason: "reading the response", Err: ctxErr(ctx, err)}
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		resp.Body = http.NoBody
		return nil, resp, &HandshakeError{StatusCode: resp.StatusCode, Reason: "expected 101 Switching Protocols", Body: body}
	}
	resp.Body = http.NoBody
	deflate, herr := checkResponse(resp, key, o.Subprotocols, o.EnableCompression)
	if herr != nil {
		return nil, resp, herr
	}
	var pre []byte
	if n := br.Buffered(); n > 0 {
		pre, _ = br.Peek(n)
	}
	c := newConn(nc, true, resp.Header.Get("Sec-WebSocket-Protocol"), o.ConnOptions, pre)
	c.deflate = deflate
	return c, resp, nil
}

// checkResponse validates a 101 response (RFC 6455 section 4.1) and
// reports whether permessage-deflate, offered when deflate is true, was
// accepted.
func checkResponse(resp *http.Response, key string, offered []string, deflate bool) (bool, *HandshakeError) {
	fail := func(reason string) *HandshakeError {
		return &HandshakeError{StatusCode: resp.StatusCode, Reason: reason}
	}
	if !httpguts.HeaderValuesContainsToken(resp.Header["Upgrade"], "websocket") {
		return false, fail(`response Upgrade header does not contain "websocket"`)
	}
	if !httpguts.HeaderValuesContainsToken(resp.Header["Connection"], "upgrade") {
		return false, fail(`response Connection header does not contain "upgrade"`)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != acceptKey(key) {
		return false, fail(fmt.Sprintf("Sec-WebSocket-Accept %q does not match the key sent", got))
	}
	accepted := false
	if ext := resp.Header.Values("Sec-WebSocket-Extensions"); len(ext) > 0 {
		if !deflate {
			return false, fail(fmt.Sprintf("server selected extension %q, none was offered", strings.Join(ext, ", ")))
		}
		var err error
		if accepted, err = checkDeflateAnswer(ext); err != nil {
			return false, fail(err.Error())
		}
	}
	if p := resp.Header.Get("Sec-WebSocket-Protocol"); p != "" {
		ok := false
		for _, s := range offered {
			ok = ok || s == p
		}
		if !ok {
			return false, fail(fmt.Sprintf("server selected subprotocol %q, which was not offered", p))
		}
	}
	return accepted, nil
}
