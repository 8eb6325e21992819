package realtime

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testKeys are real keys of every supported type, made once.
type testKeys struct {
	hmac        []byte
	rsa         *rsa.PrivateKey
	ec          *ecdsa.PrivateKey
	ed          ed25519.PrivateKey
	hmacRotated []byte
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func getKeys(t testing.TB) testKeys {
	keysOnce.Do(func() {
		keys.hmac = []byte("a-long-enough-shared-secret-0123456789")
		keys.hmacRotated = []byte("the-next-shared-secret-after-rotation!!")
		var err error
		if keys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
		if keys.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
		_, keys.ed, _ = ed25519.GenerateKey(rand.Reader)
	})
	return keys
}

// testAuthorities trusts "hmac-issuer" (two rotating HMAC keys by kid),
// "rsa-issuer", "ec-issuer" and "ed-issuer" (one key each, no kid needed).
func testAuthorities(k testKeys) []Authority {
	return []Authority{
		{Issuer: "hmac-issuer", Keys: []VerificationKey{{ID: "k1", Key: k.hmac}, {ID: "k2", Key: k.hmacRotated, Algorithms: []string{"HS256"}}}},
		{Issuer: "rsa-issuer", Keys: []VerificationKey{{Key: &k.rsa.PublicKey}}},
		{Issuer: "ec-issuer", Keys: []VerificationKey{{Key: &k.ec.PublicKey}}},
		{Issuer: "ed-issuer", Keys: []VerificationKey{{Key: k.ed.Public()}}},
	}
}

// sign makes a token. kid "" leaves the header out.
func sign(t testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claimsFor(iss string, mods ...func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{"iss": iss, "sub": "user-1", "aud": []string{AudienceShareData}, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
	for _, m := range mods {
		m(c)
	}
	return c
}

func bearer(tok string) *http.Request {
	r := httptest.NewRequest("GET", "/realtime", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

func TestJWTAuthenticator(t *testing.T) {
	k := getKeys(t)
	authenticate, err := NewJWTAuthenticator(JWTOptions{Authorities: testAuthorities(k)})
	if err != nil {
		t.Fatal(err)
	}
	// The classic confusion: an HS256 token whose secret is the RSA
	// public key's bytes, presented as from the RSA issuer.
	rsaPubDER, _ := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	rsaPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPubDER})
	noneTok := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claimsFor("hmac-issuer"))
	_, otherEd, _ := ed25519.GenerateKey(rand.Reader)

	accepted := []struct {
		name, token, sub string
	}{
		{"HS256 with the first key", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer")), "user-1"},
		{"HS512 with the first key", sign(t, jwt.SigningMethodHS512, k.hmac, "k1", claimsFor("hmac-issuer")), "user-1"},
		{"HS256 with the rotated key", sign(t, jwt.SigningMethodHS256, k.hmacRotated, "k2", claimsFor("hmac-issuer")), "user-1"},
		{"RS256", sign(t, jwt.SigningMethodRS256, k.rsa, "", claimsFor("rsa-issuer")), "user-1"},
		{"PS256", sign(t, jwt.SigningMethodPS256, k.rsa, "", claimsFor("rsa-issuer")), "user-1"},
		{"ES256", sign(t, jwt.SigningMethodES256, k.ec, "", claimsFor("ec-issuer")), "user-1"},
		{"EdDSA", sign(t, jwt.SigningMethodEdDSA, k.ed, "", claimsFor("ed-issuer")), "user-1"},
		{"nbf just inside the leeway", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(3 * time.Second).Unix() })), "user-1"},
	}
	for _, tc := range accepted {
		t.Run("accepts "+tc.name, func(t *testing.T) {
			v, err := authenticate(bearer(tc.token))
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			c := v.(*Claims)
			if c.Subject != tc.sub || c.ExpiresAt().Before(time.Now()) || !strings.HasSuffix(c.Issuer, "-issuer") {
				t.Fatalf("claims %+v", c)
			}
		})
	}
	// Before the signature is verified every refusal reads the same (the
	// precise cause is only in the error, for the server's log); after
	// it, the failed claim is named.
	const unverified = "could not be verified"
	refused := []struct {
		name, token, reason, cause string
	}{
		{"expired", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() })), "expired", "expired"},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Minute).Unix() })), "not valid yet", "not valid yet"},
		{"issued in the future", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["iat"] = time.Now().Add(time.Minute).Unix() })), "issued in the future", "used before issued"},
		{"no exp", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { delete(c, "exp") })), "exp claim missing", "exp claim is required"},
		{"wrong issuer", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("someone-else")), unverified, "issuer is not trusted"},
		{"no issuer", sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("", func(c jwt.MapClaims) { delete(c, "iss") })), unverified, "issuer is not trusted"},
		{"unknown kid", sign(t, jwt.SigningMethodHS256, k.hmac, "k9", claimsFor("hmac-issuer")), unverified, "unknown key id"},
		{"no kid with several keys", sign(t, jwt.SigningMethodHS256, k.hmac, "", claimsFor("hmac-issuer")), unverified, "no key id"},
		{"wrong key for the kid", sign(t, jwt.SigningMethodHS256, k.hmacRotated, "k1", claimsFor("hmac-issuer")), unverified, "signature is invalid"},
		{"alg not allowed for the key", sign(t, jwt.SigningMethodHS512, k.hmacRotated, "k2", claimsFor("hmac-issuer")), unverified, `algorithm "HS512" is not accepted`},
		{"HS256 signed with the RSA public key", sign(t, jwt.SigningMethodHS256, rsaPubPEM, "", claimsFor("rsa-issuer")), unverified, `algorithm "HS256" is not accepted`},
		{"EdDSA signed by another key", sign(t, jwt.SigningMethodEdDSA, otherEd, "", claimsFor("ed-issuer")), unverified, "signature is invalid"},
		{"none", noneTok, unverified, "signing method none is invalid"},
		{"malformed", "not.a.token", unverified, "malformed"},
		{"garbage", "garbage", unverified, "malformed"},
	}
	unverifiedAnswers := map[string]bool{}
	for _, tc := range refused {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			_, err := authenticate(bearer(tc.token))
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
				t.Fatalf("got %v, want a 401 AuthError", err)
			}
			if want := "invalid token: " + tc.reason; ae.Reason != want {
				t.Fatalf("reason %q, want %q", ae.Reason, want)
			}
			if ae.Err == nil || !strings.Contains(ae.Err.Error(), tc.cause) || !strings.Contains(err.Error(), tc.cause) {
				t.Fatalf("cause %v, want it to mention %q", ae.Err, tc.cause)
			}
			www := ae.Header.Get("WWW-Authenticate")
			if want := `Bearer realm="realtime", error="invalid_token", error_description="` + tc.reason + `"`; www != want {
				t.Fatalf("WWW-Authenticate %s, want %s", www, want)
			}
			if tc.reason == unverified {
				unverifiedAnswers[ae.Reason+"|"+www] = true
			}
			if len(tc.token) > 8 && strings.Contains(err.Error()+www, tc.token[len(tc.token)-8:]) {
				t.Fatalf("the error quotes the token")
			}
		})
	}
	if len(unverifiedAnswers) != 1 {
		t.Fatalf("refusals before the signature check differ: %v", unverifiedAnswers)
	}
	t.Run("refuses a missing token", func(t *testing.T) {
		_, err := authenticate(httptest.NewRequest("GET", "/realtime", nil))
		var ae *AuthError
		if !errors.As(err, &ae) || ae.Status != 401 || !strings.Contains(ae.Reason, "no token") || ae.Header.Get("WWW-Authenticate") != `Bearer realm="realtime"` {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("refuses a non-bearer Authorization", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/realtime", nil)
		r.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
		if _, err := authenticate(r); err == nil || !strings.Contains(err.Error(), "not a bearer token") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("token sources", func(t *testing.T) {
		tok := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer"))
		q := httptest.NewRequest("GET", "/realtime?token="+tok, nil)
		if _, err := authenticate(q); err != nil {
			t.Fatalf("query token: %v", err)
		}
		sp := httptest.NewRequest("GET", "/realtime", nil)
		sp.Header.Set("Sec-WebSocket-Protocol", Subprotocol+", "+SubprotocolTokenPrefix+base64.RawURLEncoding.EncodeToString([]byte(tok)))
		if _, err := authenticate(sp); err != nil {
			t.Fatalf("subprotocol token: %v", err)
		}
		noQuery, _ := NewJWTAuthenticator(JWTOptions{Authorities: testAuthorities(k), DisableQueryToken: true})
		if _, err := noQuery(q); !errors.Is(err, ErrNoToken) && !strings.Contains(err.Error(), "no token") {
			t.Fatalf("query token with DisableQueryToken: %v", err)
		}
	})
	t.Run("bad configurations", func(t *testing.T) {
		bad := []JWTOptions{
			{},
			{Authorities: []Authority{{Issuer: "x"}}},
			{Authorities: []Authority{{Issuer: "x", Keys: []VerificationKey{{Key: "a string"}}}}},
			{Authorities: []Authority{{Issuer: "x", Keys: []VerificationKey{{Key: []byte("s"), Algorithms: []string{"RS256"}}}}}},
			{Authorities: []Authority{{Issuer: "x", Keys: []VerificationKey{{Key: []byte("s"), Algorithms: []string{"none"}}}}}},
		}
		for i, o := range bad {
			if _, err := NewJWTAuthenticator(o); err == nil {
				t.Errorf("configuration %d accepted", i)
			}
		}
	})
}

func TestShareDataAudienceAuthorizer(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		claims *Claims
		id     string
		want   string // "" when admitted
	}{
		{"audience SHAREDATA", &Claims{Audience: []string{"other", AudienceShareData}}, "doc", ""},
		{"wrong audience", &Claims{Audience: []string{"api"}}, "doc", "audience does not include SHAREDATA"},
		{"no audience", &Claims{}, "doc", "audience"},
		{"listed id", &Claims{Audience: []string{AudienceShareData}, ShareDataIDs: []string{"a", "doc"}}, "doc", ""},
		{"prefix pattern", &Claims{Audience: []string{AudienceShareData}, ShareDataIDs: []string{"board-*"}}, "board-7", ""},
		{"id not listed", &Claims{Audience: []string{AudienceShareData}, ShareDataIDs: []string{"a", "board-*"}}, "doc", `does not grant share data "doc"`},
		{"empty list grants nothing", &Claims{Audience: []string{AudienceShareData}, ShareDataIDs: []string{}}, "doc", "does not grant"},
	}
	for _, tc := range cases {
		err := ShareDataAudienceAuthorizer(ctx, tc.claims, tc.id)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := ShareDataAudienceAuthorizer(ctx, "not claims", "doc"); err == nil {
		t.Error("a non-token connection was admitted")
	}
}

// TestJWTOverConnections drives the bridge through real connections.
func TestJWTOverConnections(t *testing.T) {
	k := getKeys(t)
	authenticate, err := NewJWTAuthenticator(JWTOptions{Authorities: testAuthorities(k)})
	if err != nil {
		t.Fatal(err)
	}
	rs := newRTServer(t, &ServerOptions{Authenticate: authenticate, AuthorizeSubscribe: ShareDataAudienceAuthorizer})
	good := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer"))

	t.Run("refused upgrade", func(t *testing.T) {
		expired := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
		_, resp, err := Dial(context.Background(), rs.url, &DialOptions{Header: http.Header{"Authorization": {"Bearer " + expired}}})
		var he *HandshakeError
		if !errors.As(err, &he) || he.StatusCode != 401 || !strings.Contains(string(he.Body), "invalid token: expired") {
			t.Fatalf("got %v", err)
		}
		if got := resp.Header.Get("WWW-Authenticate"); !strings.Contains(got, `Bearer realm="realtime", error="invalid_token"`) {
			t.Fatalf("WWW-Authenticate %q", got)
		}
	})
	t.Run("admitted by header", func(t *testing.T) {
		c := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + good}})
		c.subscribe("doc")
	})
	t.Run("admitted by query token", func(t *testing.T) {
		c := dialRT(t, rs.url+"?token="+good, nil)
		c.subscribe("doc")
	})
	t.Run("admitted by subprotocol token", func(t *testing.T) {
		conn, _, err := Dial(context.Background(), rs.url, &DialOptions{Subprotocols: []string{Subprotocol, SubprotocolTokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(good))}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseNow()
		if conn.Subprotocol() != Subprotocol {
			t.Fatalf("selected %q", conn.Subprotocol())
		}
	})
	t.Run("subscribe refused by the audience authorizer", func(t *testing.T) {
		api := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["aud"] = "api" }))
		c := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + api}})
		c.send(&SubscribeMessage{ShareDataID: "doc"})
		if e := nextAs[*ErrorMessage](c); e.Code != CodeForbidden || !strings.Contains(e.Message, "SHAREDATA") {
			t.Fatalf("%s", e.AppendJSON(nil))
		}
		limited := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c[ClaimShareDataIDs] = []string{"other"} }))
		c2 := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + limited}})
		c2.send(&SubscribeMessage{ShareDataID: "doc"})
		if e := nextAs[*ErrorMessage](c2); e.Code != CodeForbidden || !strings.Contains(e.Message, `"doc"`) {
			t.Fatalf("%s", e.AppendJSON(nil))
		}
		c2.subscribe("other")
	})
	t.Run("closed with 4002 when the token expires", func(t *testing.T) {
		// exp has one-second resolution. With no leeway the connection
		// ends at exp (TestHostileJWTLeeway covers the leeway).
		strict, err := NewJWTAuthenticator(JWTOptions{Authorities: testAuthorities(k), Leeway: -1})
		if err != nil {
			t.Fatal(err)
		}
		rs := newRTServer(t, &ServerOptions{Authenticate: strict, AuthorizeSubscribe: ShareDataAudienceAuthorizer})
		short := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(1500 * time.Millisecond).Unix() }))
		c := dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + short}})
		c.subscribe("doc")
		start := time.Now()
		c.expectClosed(CloseUnauthorized, "token expired")
		if time.Since(start) > 5*time.Second {
			t.Fatalf("closed after %v", time.Since(start))
		}
	})
}

// The built-in hooks have the named hook types, so users can check their
// own the same way.
var (
	_ AuthorizeSubscribe                            = ShareDataAudienceAuthorizer
	_ AuthorizePropose                              = ShareDataAudienceProposeAuthorizer
	_ func(JWTOptions) (AuthenticateUpgrade, error) = NewJWTAuthenticator
)
