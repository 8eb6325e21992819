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
	// DefaultJWTLeeway (5 s); negative means none.
	Leeway time.Duration
	// DisableQueryToken stops the "token" query parameter from being read.
	DisableQueryToken bool
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// DefaultJWTLeeway is the clock skew tolerated by default.
const DefaultJWTLeeway = 5 * time.Second

// Claims is the per-connection value of a connection admitted by the JWT
// bridge: it reaches every authorizer. Its ExpiresAt makes the server close
// the connection with 4002 when the token expires.
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
}

// ExpiresAt returns the token's expiry.
func (c *Claims) ExpiresAt() time.Time { return c.Expiry }

// ErrNoToken is matched by the error of a request that carries no token.
var ErrNoToken = errors.New("no token")

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
// iat are honoured, all with the leeway. A refusal is an *AuthError with
// status 401 and a WWW-Authenticate: Bearer header (error="invalid_token"
// for a bad token); its reason never contains the token.
//
// It returns an error when an authority or key is unusable.
func NewJWTAuthenticator(opts JWTOptions) (func(r *http.Request) (any, error), error) {
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
	leeway := opts.Leeway
	if leeway == 0 {
		leeway = DefaultJWTLeeway
	} else if leeway < 0 {
		leeway = 0
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
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
		raw, err := tokenFromRequest(r, !opts.DisableQueryToken)
		if err != nil {
			return nil, &AuthError{Status: http.StatusUnauthorized,
				Header: http.Header{"Www-Authenticate": {`Bearer realm="realtime"`}}, Reason: err.Error()}
		}
		tok, err := parser.Parse(raw, keyfunc)
		if err != nil {
			reason := tokenErrorReason(err)
			return nil, &AuthError{Status: http.StatusUnauthorized,
				Header: http.Header{"Www-Authenticate": {`Bearer realm="realtime", error="invalid_token", error_description="` + reason + `"`}},
				Reason: "invalid token: " + reason}
		}
		return claimsOf(tok.Claims.(jwt.MapClaims))
	}, nil
}

// tokenFromRequest finds the token: Authorization header, query
// parameter, then subprotocol.
func tokenFromRequest(r *http.Request, query bool) (string, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", errors.New("Authorization header is not a bearer token")
		}
		return strings.TrimSpace(tok), nil
	}
	if query {
		if tok := r.URL.Query().Get("token"); tok != "" {
			return tok, nil
		}
	}
	for _, p := range headerTokens(r.Header.Values("Sec-WebSocket-Protocol")) {
		if enc, ok := strings.CutPrefix(p, SubprotocolTokenPrefix); ok {
			b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(enc, "="))
			if err != nil {
				return "", errors.New("token subprotocol is not base64url")
			}
			return string(b), nil
		}
	}
	return "", fmt.Errorf("%w: send Authorization: Bearer, the token query parameter or the %s subprotocol", ErrNoToken, SubprotocolTokenPrefix+"...")
}

// tokenErrorReason says briefly why jwt refused a token, without quoting
// it.
func tokenErrorReason(err error) string {
	if strings.Contains(err.Error(), "signing method") {
		return "algorithm not accepted" // none, or one no key accepts
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "issued in the future"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "exp claim missing"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// The keyfunc's own message: our text, never the token's.
		var msg string
		for e := err; e != nil; e = errors.Unwrap(e) {
			msg = e.Error()
		}
		return msg
	}
	return "refused"
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
			return nil, &AuthError{Status: http.StatusUnauthorized, Reason: "invalid token: " + ClaimShareDataIDs + " is not an array"}
		}
		c.ShareDataIDs = make([]string, 0, len(list))
		for _, x := range list {
			s, ok := x.(string)
			if !ok {
				return nil, &AuthError{Status: http.StatusUnauthorized, Reason: "invalid token: " + ClaimShareDataIDs + " holds a non-string"}
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
// Go form of shareDataAudienceAuthorizer of @degenerate/realtime.
func ShareDataAudienceAuthorizer(ctx context.Context, auth any, shareDataID string) error {
	c, ok := auth.(*Claims)
	if !ok {
		return errors.New("not authenticated with a token")
	}
	if !slices.Contains(c.Audience, AudienceShareData) {
		return errors.New("token audience does not include " + AudienceShareData)
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
	return errors.New("token does not grant share data " + quoteForError(shareDataID))
}
