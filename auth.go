package realtime

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// This file is the JWT bridge: an Authenticate hook that admits
// connections carrying a token signed by a trusted authority, and the
// audience authorizer for subscriptions.

// AudienceShareData is the audience a token must name to subscribe to
// share data through ShareDataAudienceAuthorizer.
const AudienceShareData = "SHAREDATA"

// ClaimShareDataIDs is the claim that, when a token carries it, restricts
// the share data ids the token may subscribe to: a JSON array of ids, each
// matched exactly or, ending in "*", as a prefix ("board-*").
const ClaimShareDataIDs = "shareDataIds"

// SubprotocolTokenPrefix starts the subprotocol that carries a token for
// browsers, which cannot set an Authorization header on a WebSocket: the
// client offers, besides "realtime.v1", the subprotocol
// SubprotocolTokenPrefix + base64url(token), as Phoenix does since 1.8. The
// token then stays out of URLs, and so out of proxy and access logs. The
// server never selects that subprotocol; it selects "realtime.v1".
const SubprotocolTokenPrefix = "base64url.bearer.realtime."

// Authority is an issuer whose tokens are trusted, with its verification
// keys.
type Authority struct {
	// Issuer is the token's "iss" claim.
	Issuer string
	// Keys verify the issuer's tokens. A token with a "kid" header is
	// verified with the key of that ID only; a token without one only
	// when the authority has a single key.
	Keys []VerificationKey
}

// VerificationKey is one key of an authority.
type VerificationKey struct {
	// ID is the key id, matched against the token's "kid" header.
	ID string
	// Key is a []byte HMAC secret, an *rsa.PublicKey, an
	// *ecdsa.PublicKey or an ed25519.PublicKey.
	Key any
	// Algorithms are the "alg" values this key accepts. Empty means every
	// algorithm of the key's type: HS256/384/512 for a secret,
	// RS256/384/512 and PS256/384/512 for RSA, the ES algorithm of the
	// curve for ECDSA, EdDSA for Ed25519. "none" is never accepted, and an
	// algorithm of another key type is refused (no algorithm confusion).
	Algorithms []string
}

// JWTOptions configure NewJWTAuthenticator.
type JWTOptions struct {
	// Authorities are the trusted issuers. A token from any other issuer
	// is refused.
	Authorities []Authority
	// Leeway is the clock skew tolerated on exp, nbf and iat. Zero means
	// 5 s. Negative means none.
	Leeway time.Duration
	// DisableQueryToken stops the "token" query parameter from being read.
	DisableQueryToken bool
	// MaxTokenSize is the longest token, in bytes, that is looked at: a
	// longer one is refused before any decoding or parsing, so an
	// oversized token costs no more than a normal one. A subprotocol
	// token is measured decoded, and its base64url form may be a third
	// longer. Zero means 8 KiB. Negative means no limit.
	MaxTokenSize int
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// withDefaults resolves the zero values; a negative leeway becomes zero
// and a negative size limit math.MaxInt.
func (o JWTOptions) withDefaults() JWTOptions {
	switch {
	case o.Leeway == 0:
		o.Leeway = defaultJWTLeeway
	case o.Leeway < 0:
		o.Leeway = 0
	}
	switch {
	case o.MaxTokenSize == 0:
		o.MaxTokenSize = defaultMaxTokenSize
	case o.MaxTokenSize < 0:
		o.MaxTokenSize = math.MaxInt
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// defaultJWTLeeway is the clock skew tolerated by default.
const defaultJWTLeeway = 5 * time.Second

// defaultMaxTokenSize is the longest token accepted by default: 8 KiB,
// several times a token with a few dozen claims and an RSA signature.
const defaultMaxTokenSize = 8 << 10

// Claims is the per-connection value of a connection admitted by the JWT
// bridge: it reaches every authorizer. Its ExpiresAt makes the server close
// the connection with 4002 when the token expires, leeway included.
type Claims struct {
	Subject  string    // sub
	Issuer   string    // iss, one of the authorities
	Audience []string  // aud
	Expiry   time.Time // exp
	// ShareDataIDs is the token's shareDataIds claim; nil when absent
	// (no restriction).
	ShareDataIDs []string
	// Raw holds every claim of the token.
	Raw jwt.MapClaims

	leeway time.Duration // the leeway the token was admitted with
}

// ExpiresAt returns when the connection's authentication ends: the token's
// exp plus the leeway it was checked with at the upgrade. A token admitted
// inside the leeway (expired a moment ago by the server's clock) therefore
// keeps its connection for the rest of the leeway, rather than being
// admitted and closed at once.
func (c *Claims) ExpiresAt() time.Time { return c.Expiry.Add(c.leeway) }

// ErrNoToken is matched by the error of a request that carries no token.
var ErrNoToken = errors.New("realtime: no token")

// algorithmsFor returns the algorithms a key accepts.
func algorithmsFor(k VerificationKey) ([]string, error) {
	var all []string
	switch key := k.Key.(type) {
	case []byte:
		if len(key) == 0 {
			return nil, errors.New("empty HMAC secret")
		}
		all = []string{"HS256", "HS384", "HS512"}
	case *rsa.PublicKey:
		all = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	case *ecdsa.PublicKey:
		switch key.Curve {
		case elliptic.P256():
			all = []string{"ES256"}
		case elliptic.P384():
			all = []string{"ES384"}
		case elliptic.P521():
			all = []string{"ES512"}
		default:
			return nil, errors.New("unsupported ECDSA curve")
		}
	case ed25519.PublicKey:
		all = []string{"EdDSA"}
	default:
		return nil, fmt.Errorf("unsupported key type %T", k.Key)
	}
	if len(k.Algorithms) == 0 {
		return all, nil
	}
	for _, a := range k.Algorithms {
		if !slices.Contains(all, a) {
			return nil, fmt.Errorf("algorithm %q does not fit a key of type %T", a, k.Key)
		}
	}
	return k.Algorithms, nil
}

type jwtKey struct {
	key  any
	algs []string
}

type jwtAuthority struct {
	keys   map[string]jwtKey // by kid
	single *jwtKey           // the only key, for tokens without kid
}

// NewJWTAuthenticator returns an Authenticate hook for ServerOptions that
// admits a request carrying a valid token from one of the authorities, and
// returns its *Claims. It is the Go form of createShareDataAuthenticate of
// @degenerate/realtime.
//
// The token is read from the Authorization: Bearer header first, then from
// the "token" query parameter (unless disabled), then from a subprotocol
// starting with SubprotocolTokenPrefix. It must be signed with an algorithm
// its key accepts ("none" never is), carry exp (checked), and its nbf and
// iat are honoured, all with the leeway. A token longer than MaxTokenSize
// is refused before it is decoded.
//
// A refusal is an *AuthError with status 401 and a WWW-Authenticate: Bearer
// header (error="invalid_token" for a bad token). Until the signature is
// verified, every refusal reads the same ("invalid token: could not be
// verified": malformed, an
// issuer or key id that is not trusted, an algorithm not accepted, a bad
// signature), so a caller without a key learns nothing of which issuers and
// key ids are trusted; the precise cause is the AuthError's Err, which the
// server logs at Debug. Once the signature holds, the reason says which
// claim failed (expired, not valid yet, issued in the future, exp missing),
// so an honest client knows to refresh its token. No reason and no cause
// contains the token.
//
// It returns an error when an authority or key is unusable.
func NewJWTAuthenticator(opts JWTOptions) (AuthenticateUpgrade, error) {
	if len(opts.Authorities) == 0 {
		return nil, errors.New("realtime: JWT authenticator needs at least one authority")
	}
	auths := make(map[string]*jwtAuthority)
	var methods []string
	for _, a := range opts.Authorities {
		if a.Issuer == "" || len(a.Keys) == 0 {
			return nil, errors.New("realtime: an authority needs an issuer and keys")
		}
		if _, dup := auths[a.Issuer]; dup {
			return nil, fmt.Errorf("realtime: issuer %q listed twice", a.Issuer)
		}
		ja := &jwtAuthority{keys: make(map[string]jwtKey)}
		for _, k := range a.Keys {
			algs, err := algorithmsFor(k)
			if err != nil {
				return nil, fmt.Errorf("realtime: issuer %q key %q: %w", a.Issuer, k.ID, err)
			}
			jk := jwtKey{key: k.Key, algs: algs}
			if _, dup := ja.keys[k.ID]; dup {
				return nil, fmt.Errorf("realtime: issuer %q has two keys with ID %q", a.Issuer, k.ID)
			}
			ja.keys[k.ID] = jk
			for _, m := range algs {
				if !slices.Contains(methods, m) {
					methods = append(methods, m)
				}
			}
		}
		if len(a.Keys) == 1 {
			k := ja.keys[a.Keys[0].ID]
			ja.single = &k
		}
		auths[a.Issuer] = ja
	}
	opts = opts.withDefaults()
	leeway, now, maxSize := opts.Leeway, opts.Now, opts.MaxTokenSize
	parser := jwt.NewParser(
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(now),
	)
	keyfunc := func(t *jwt.Token) (any, error) {
		claims, _ := t.Claims.(jwt.MapClaims)
		iss, _ := claims["iss"].(string)
		a := auths[iss]
		if a == nil {
			return nil, errors.New("issuer is not trusted")
		}
		var k jwtKey
		switch kid, hasKid := t.Header["kid"]; {
		case hasKid:
			s, isString := kid.(string)
			found := false
			if isString {
				k, found = a.keys[s]
			}
			if !found {
				return nil, errors.New("unknown key id")
			}
		case a.single != nil:
			k = *a.single
		default:
			return nil, errors.New("token has no key id and the issuer has several keys")
		}
		if !slices.Contains(k.algs, t.Method.Alg()) {
			return nil, fmt.Errorf("algorithm %s is not accepted for this key", quoteForError(t.Method.Alg()))
		}
		return k.key, nil
	}
	return func(r *http.Request) (any, error) {
		raw, err := tokenFromRequest(r, !opts.DisableQueryToken, maxSize)
		if errors.Is(err, ErrNoToken) {
			// RFC 6750 section 3.1: no error code for a request without
			// credentials.
			return nil, &AuthError{Status: http.StatusUnauthorized,
				Header: http.Header{"Www-Authenticate": {`Bearer realm="realtime"`}}, Reason: peerText(err)}
		}
		if err != nil {
			return nil, invalidToken(err.Error(), nil)
		}
		tok, err := parser.Parse(raw, keyfunc)
		if err != nil {
			return nil, invalidToken(tokenErrorReason(err), err)
		}
		c, err := claimsOf(tok.Claims.(jwt.MapClaims))
		if err != nil {
			return nil, invalidToken(err.Error(), nil)
		}
		c.leeway = leeway
		return c, nil
	}, nil
}

// reasonUnverified is the one reason given for every refusal before the
// signature is verified.
const reasonUnverified = "could not be verified"

// invalidToken is the refusal of a bad token: 401 with an RFC 6750
// invalid_token challenge whose description is reason, and cause kept for
// the server's log.
func invalidToken(reason string, cause error) *AuthError {
	return &AuthError{Status: http.StatusUnauthorized,
		Header: http.Header{"Www-Authenticate": {`Bearer realm="realtime", error="invalid_token", error_description=` + quoteDescription(reason)}},
		Reason: "invalid token: " + reason, Err: cause}
}

// quoteDescription makes s an RFC 7235 quoted-string that is also a valid
// RFC 6750 error_description, whose characters must be printable ASCII
// other than '"' and '\' even when escaped: quotes become apostrophes, a
// backslash a slash, and anything else outside the set a question mark.
func quoteDescription(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			b = append(b, '\'')
		case c == '\\':
			b = append(b, '/')
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return string(append(b, '"'))
}

// tokenFromRequest finds the token: Authorization header, query
// parameter, then subprotocol. A token longer than max is refused before it
// is decoded.
func tokenFromRequest(r *http.Request, query bool, max int) (string, error) {
	tooLong := fmt.Errorf("token longer than %d bytes", max)
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", errors.New("Authorization header is not a bearer token")
		}
		if tok = strings.TrimSpace(tok); len(tok) > max {
			return "", tooLong
		}
		return tok, nil
	}
	if query {
		if tok := r.URL.Query().Get("token"); tok != "" {
			if len(tok) > max {
				return "", tooLong
			}
			return tok, nil
		}
	}
	for _, p := range headerTokens(r.Header.Values("Sec-WebSocket-Protocol")) {
		if enc, ok := strings.CutPrefix(p, SubprotocolTokenPrefix); ok {
			enc = strings.TrimRight(enc, "=")
			if base64.RawURLEncoding.DecodedLen(len(enc)) > max {
				return "", tooLong
			}
			b, err := base64.RawURLEncoding.DecodeString(enc)
			if err != nil {
				return "", errors.New("token subprotocol is not base64url")
			}
			return string(b), nil
		}
	}
	return "", fmt.Errorf("%w: send Authorization: Bearer, the token query parameter or the %s subprotocol", ErrNoToken, SubprotocolTokenPrefix+"...")
}

// tokenErrorReason says why jwt refused a token. Before the signature is
// verified it says only reasonUnverified; the claims are checked only
// after it (jwt/v5 verifies first), and their failures are named.
func tokenErrorReason(err error) string {
	if !errors.Is(err, jwt.ErrTokenInvalidClaims) {
		return reasonUnverified
	}
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "issued in the future"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "exp claim missing"
	}
	return "claims refused"
}

// claimsOf turns verified claims into the per-connection value.
func claimsOf(m jwt.MapClaims) (*Claims, error) {
	c := &Claims{Raw: m}
	c.Subject, _ = m.GetSubject()
	c.Issuer, _ = m.GetIssuer()
	aud, _ := m.GetAudience()
	c.Audience = []string(aud)
	if exp, _ := m.GetExpirationTime(); exp != nil {
		c.Expiry = exp.Time
	}
	if v, ok := m[ClaimShareDataIDs]; ok {
		list, ok := v.([]any)
		if !ok {
			return nil, errors.New(ClaimShareDataIDs + " is not an array")
		}
		c.ShareDataIDs = make([]string, 0, len(list))
		for _, x := range list {
			s, ok := x.(string)
			if !ok {
				return nil, errors.New(ClaimShareDataIDs + " holds a non-string")
			}
			c.ShareDataIDs = append(c.ShareDataIDs, s)
		}
	}
	return c, nil
}

// ShareDataAudienceAuthorizer is an AuthorizeSubscribe hook for
// connections admitted by NewJWTAuthenticator: it admits a subscribe only
// when the token's audience includes AudienceShareData and, if the token
// has a shareDataIds claim, the id matches one of its entries. It is the
// Go form of shareDataAudienceAuthorizer of @degenerate/realtime. Install
// ShareDataAudienceProposeAuthorizer with it: without a propose
// authorizer, a token that may not read a share data may still change it.
func ShareDataAudienceAuthorizer(ctx context.Context, auth any, shareDataID string) error {
	return shareDataGranted(auth, shareDataID)
}

// ShareDataAudienceProposeAuthorizer is the AuthorizePropose hook that
// goes with ShareDataAudienceAuthorizer: a proposal is admitted by the same
// rule (audience AudienceShareData, and the share data id granted by the
// shareDataIds claim when the token has one), whatever the function.
func ShareDataAudienceProposeAuthorizer(ctx context.Context, auth any, shareDataID, functionID string) error {
	return shareDataGranted(auth, shareDataID)
}

// shareDataGranted is the rule of both audience authorizers.
func shareDataGranted(auth any, shareDataID string) error {
	c, ok := auth.(*Claims)
	if !ok {
		return errors.New("realtime: not authenticated with a token")
	}
	if !slices.Contains(c.Audience, AudienceShareData) {
		return errors.New("realtime: token audience does not include " + AudienceShareData)
	}
	if c.ShareDataIDs == nil {
		return nil
	}
	for _, p := range c.ShareDataIDs {
		if p == shareDataID {
			return nil
		}
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(shareDataID, prefix) {
			return nil
		}
	}
	return errors.New("realtime: token does not grant share data " + quoteForError(shareDataID))
}
