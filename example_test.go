package realtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/degenerate/realtime"
)

// increment adds proposedData's "by" to the state's "count".
var increment = realtime.Function{
	ID: "increment",
	Apply: func(ctx context.Context, cur, proposed json.RawMessage) (json.RawMessage, error) {
		var st struct{ Count int }
		var p struct{ By int }
		if err := json.Unmarshal(cur, &st); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(proposed, &p); err != nil {
			return nil, errors.New(`proposedData must be {"by": n}`)
		}
		return json.Marshal(map[string]int{"count": st.Count + p.By})
	},
}

// readMessage reads and decodes the next server message.
func readMessage(c *realtime.Conn) realtime.ServerMessage {
	_, b, err := c.Read(context.Background())
	if err != nil {
		panic(err)
	}
	m, err := realtime.DecodeServerMessage(b)
	if err != nil {
		panic(err)
	}
	return m
}

// Mount a server that admits only tokens signed by a trusted issuer and
// lets them subscribe only with the SHAREDATA audience.
func ExampleNewJWTAuthenticator() {
	secret := []byte("a-shared-secret-of-the-auth-service")
	authenticate, err := realtime.NewJWTAuthenticator(realtime.JWTOptions{
		Authorities: []realtime.Authority{{
			Issuer: "https://auth.example",
			Keys:   []realtime.VerificationKey{{ID: "2026-11", Key: secret, Algorithms: []string{"HS256"}}},
		}},
	})
	if err != nil {
		panic(err)
	}
	mgr := realtime.NewMemoryManager()
	mgr.Create("counter", json.RawMessage(`{"count":0}`), increment)
	srv := realtime.NewServer(mgr, &realtime.ServerOptions{
		Authenticate:       authenticate,
		AuthorizeSubscribe: realtime.ShareDataAudienceAuthorizer,
	})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Shutdown(context.Background())
	url := "ws" + strings.TrimPrefix(hs.URL, "http")

	// Without a token, the upgrade is refused before any WebSocket byte.
	_, _, err = realtime.Dial(context.Background(), url, nil)
	var he *realtime.HandshakeError
	if errors.As(err, &he) {
		fmt.Println("no token:", he.StatusCode)
	}

	// With one, from a Go service: Authorization: Bearer.
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": "https://auth.example", "sub": "ann", "aud": realtime.AudienceShareData,
		"exp": time.Now().Add(time.Hour).Unix(),
	})
	tok.Header["kid"] = "2026-11"
	signed, _ := tok.SignedString(secret)
	c, _, err := realtime.Dial(context.Background(), url, &realtime.DialOptions{
		Header: http.Header{"Authorization": {"Bearer " + signed}},
	})
	if err != nil {
		panic(err)
	}
	defer c.CloseNow()
	sub := &realtime.SubscribeMessage{ShareDataID: "counter"}
	c.Write(context.Background(), realtime.MessageText, sub.AppendJSON(nil))
	st := readMessage(c).(*realtime.StateMessage)
	fmt.Println("subscribed:", string(st.CurrentState))
	// Output:
	// no token: 401
	// subscribed: {"count":0}
}
