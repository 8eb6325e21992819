package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestProposalContext: over JWT-authenticated connections, a function
// reads who calls from its context (ProposalFromContext): an owner-only
// function refuses another user, accepts the owner and records the
// author in the state; the propose authorizer sees the proposed data; a
// function that waits past ProposalTimeout is answered with code timeout,
// and the connection goes on serving.
func TestProposalContext(t *testing.T) {
	k := getKeys(t)
	authenticate, err := NewJWTAuthenticator(JWTOptions{Authorities: testAuthorities(k)})
	if err != nil {
		t.Fatal(err)
	}
	subject := func(ctx context.Context) string {
		if p, ok := ProposalFromContext(ctx); ok {
			if c, ok := p.Auth.(*Claims); ok {
				return c.Subject
			}
		}
		return ""
	}
	// The item's owner is in its state; only the owner may rename it, and
	// the state records who did.
	rename := Function{ID: "rename", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		var st struct{ Owner, Title, By string }
		json.Unmarshal(cur, &st)
		who := subject(ctx)
		if who != st.Owner {
			return nil, errors.New("only the owner may rename it")
		}
		json.Unmarshal(p, &st.Title)
		st.By = who
		return json.Marshal(st)
	}}
	slow := Function{ID: "slow", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Minute):
			return p, nil
		}
	}}
	var sawData string
	rs := newRTServer(t, &ServerOptions{
		Authenticate:    authenticate,
		ProposalTimeout: 200 * time.Millisecond,
		AuthorizePropose: func(ctx context.Context, auth any, id, fn string) error {
			p, ok := ProposalFromContext(ctx)
			if !ok || p.FunctionID != fn || p.ShareDataID != id || p.Auth != auth || p.RemoteAddr == "" {
				return errors.New("no proposal in the authorizer's context")
			}
			sawData = string(p.ProposedData)
			if strings.Contains(sawData, "forbidden words") {
				return errors.New("not that title")
			}
			return nil
		},
	})
	if err := rs.mgr.Create(context.Background(), "page", json.RawMessage(`{"Owner":"alice","Title":"draft"}`), rename, slow); err != nil {
		t.Fatal(err)
	}
	dialAs := func(sub string) *testClient {
		tok := sign(t, jwt.SigningMethodHS256, k.hmac, "k1", claimsFor("hmac-issuer", func(c jwt.MapClaims) { c["sub"] = sub }))
		return dialRT(t, rs.url, http.Header{"Authorization": {"Bearer " + tok}})
	}
	alice, bob := dialAs("alice"), dialAs("bob")

	bob.propose("page", "rename", `"bob's page"`, "b1")
	if res := nextAs[*ProposalResultMessage](bob); res.Accepted || res.Error != "only the owner may rename it" {
		t.Fatalf("bob renaming alice's page: %s", res.AppendJSON(nil))
	}
	alice.propose("page", "rename", `"Alice's page"`, "a1")
	if res := nextAs[*ProposalResultMessage](alice); !res.Accepted {
		t.Fatalf("alice renaming her page: %s", res.AppendJSON(nil))
	}
	if snap, _ := rs.mgr.Snapshot(context.Background(), "page"); string(snap.State) != `{"Owner":"alice","Title":"Alice's page","By":"alice"}` {
		t.Fatalf("state %s", snap.State)
	}
	if sawData != `"Alice's page"` {
		t.Fatalf("the authorizer saw %q", sawData)
	}
	alice.propose("page", "rename", `"forbidden words"`, "a2")
	if res := nextAs[*ProposalResultMessage](alice); res.Accepted || res.Error != "not that title" {
		t.Fatalf("a title the authorizer refuses by its data: %s", res.AppendJSON(nil))
	}

	start := time.Now()
	alice.propose("page", "slow", `1`, "a3")
	res := nextAs[*ProposalResultMessage](alice)
	if res.Accepted || res.Code != CodeTimeout || !strings.Contains(res.Error, "200ms") {
		t.Fatalf("a function past the deadline: %s", res.AppendJSON(nil))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("answered after %v", d)
	}
	alice.propose("page", "rename", `"again"`, "a4")
	if res := nextAs[*ProposalResultMessage](alice); !res.Accepted {
		t.Fatalf("the connection after a timeout: %s", res.AppendJSON(nil))
	}
}

// BenchmarkPropose measures one proposal's round trip over a real
// connection (increment on a MemoryManager, the result read back), with
// the server's allocations per proposal: the proposal's context and its
// deadline included.
func BenchmarkPropose(b *testing.B) {
	rs := newRTServer(b, &ServerOptions{ProposalsPerSecond: -1})
	c, _, err := Dial(context.Background(), rs.url, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	msg := (&ProposeMessage{ShareDataID: "doc", FunctionID: "increment", ProposedData: json.RawMessage(`{"by":1}`), CorrelationID: "c"}).AppendJSON(nil)
	ctx := context.Background()
	var buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.Write(ctx, MessageText, msg); err != nil {
			b.Fatal(err)
		}
		if _, buf, err = c.ReadInto(ctx, buf); err != nil {
			b.Fatal(err)
		}
	}
}
