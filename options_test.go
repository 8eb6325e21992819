package realtime

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// resolveOptions applies an options struct's defaults, as the constructor
// that takes it does.
func resolveOptions(v any) any {
	switch o := v.(type) {
	case ConnOptions:
		return o.withDefaults()
	case AcceptOptions:
		return o.withDefaults()
	case DialOptions:
		return o.withDefaults()
	case ServerOptions:
		return o.withDefaults()
	case ClientOptions:
		return o.withDefaults()
	case JWTOptions:
		return o.withDefaults()
	case DiskManagerOptions:
		return o.withDefaults()
	}
	panic("no resolver for " + reflect.TypeOf(v).String())
}

// zeroMeans finds "Zero means VALUE" in a field's doc: a number with an
// optional unit, or "no limit" or "none" (resolving to zero).
var zeroMeans = regexp.MustCompile(`(?i)zero means (no limit|none|(\d[\d,]*)(?: (ms|s|KiB|MiB))?)`)

// documentedDefault reads the default a field's doc states, in the
// field's own unit.
func documentedDefault(t *testing.T, doc string) (value int64, noLimit bool) {
	m := zeroMeans.FindStringSubmatch(doc)
	if m == nil {
		return 0, false
	}
	if strings.EqualFold(m[1], "no limit") || strings.EqualFold(m[1], "none") {
		return 0, true
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(m[2], ",", ""), 10, 64)
	if err != nil {
		t.Fatalf("default %q: %v", m[1], err)
	}
	switch m[3] {
	case "ms":
		n *= int64(time.Millisecond)
	case "s":
		n *= int64(time.Second)
	case "KiB":
		n <<= 10
	case "MiB":
		n <<= 20
	}
	return n, false
}

// TestOptionDefaults holds every options struct to the rule doc.go states:
// each numeric field's doc says "Zero means" its default and "Negative
// means" its none; the zero value resolves to exactly the documented
// default, and a negative value never to the default (the old "<= 0 means
// the default" mistake).
func TestOptionDefaults(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]map[string]string{} // struct -> field -> doc
	for _, p := range pkgs {
		for _, f := range p.Files {
			ast.Inspect(f, func(n ast.Node) bool {
				ts, ok := n.(*ast.TypeSpec)
				if !ok || !strings.HasSuffix(ts.Name.Name, "Options") {
					return true
				}
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					return true
				}
				fields := map[string]string{}
				for _, fl := range st.Fields.List {
					for _, name := range fl.Names {
						fields[name.Name] = fl.Doc.Text()
					}
				}
				docs[ts.Name.Name] = fields
				return true
			})
		}
	}

	structs := []any{ConnOptions{}, AcceptOptions{}, DialOptions{}, ServerOptions{}, ClientOptions{}, JWTOptions{}, DiskManagerOptions{}}
	for _, zero := range structs {
		typ := reflect.TypeOf(zero)
		fieldDocs, ok := docs[typ.Name()]
		if !ok {
			t.Fatalf("no source found for %s", typ.Name())
		}
		resolved := reflect.ValueOf(resolveOptions(zero))
		neg := reflect.New(typ).Elem()
		for i := 0; i < typ.NumField(); i++ {
			if f := typ.Field(i); !f.Anonymous && isNumber(f.Type) {
				neg.Field(i).SetInt(-1)
			}
		}
		negResolved := reflect.ValueOf(resolveOptions(neg.Interface()))
		checked := 0
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if f.Anonymous || !isNumber(f.Type) {
				continue
			}
			checked++
			name := typ.Name() + "." + f.Name
			doc := strings.Join(strings.Fields(fieldDocs[f.Name]), " ")
			want, noLimit := documentedDefault(t, doc)
			if want == 0 && !noLimit {
				t.Errorf("%s: its doc does not say %q: %q", name, "Zero means VALUE", doc)
				continue
			}
			if !regexp.MustCompile(`(?i)negative means`).MatchString(doc) {
				t.Errorf("%s: its doc does not say what a negative value means: %q", name, doc)
			}
			got := resolved.Field(i).Int()
			if noLimit {
				if got != 0 {
					t.Errorf("%s: zero resolves to %d, documented as no limit", name, got)
				}
				continue
			}
			if got != want {
				t.Errorf("%s: zero resolves to %d, documented as %d", name, got, want)
			}
			if negResolved.Field(i).Int() == want {
				t.Errorf("%s: -1 resolves to the default %d; negative must mean none", name, want)
			}
		}
		if checked == 0 {
			t.Errorf("%s: no numeric field checked", typ.Name())
		}
	}
}

// isNumber reports whether a field is a quantity the rule covers: an int
// or a duration. A CloseCode is a code, not a quantity.
func isNumber(t reflect.Type) bool {
	if t == reflect.TypeOf(CloseCode(0)) {
		return false
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int64:
		return true
	}
	return false
}

// TestNegativeMeansNone checks, where it is observable without a network,
// what "none" resolves to: no limit is math.MaxInt or stays negative for
// the reader, no wait is zero.
func TestNegativeMeansNone(t *testing.T) {
	s := ServerOptions{MaxBufferedBytes: -1, MaxSubscriptionsPerConnection: -1, MaxConnections: -1, HeartbeatInterval: -1}.withDefaults()
	if s.MaxBufferedBytes != math.MaxInt || s.MaxSubscriptionsPerConnection != math.MaxInt || s.MaxConnections != 0 || s.HeartbeatInterval >= 0 {
		t.Errorf("server: %+v", s)
	}
	if s.Accept.IdleTimeout != defaultIdleTimeout {
		t.Errorf("with no heartbeat the idle timeout is %v, want the connection default %v", s.Accept.IdleTimeout, defaultIdleTimeout)
	}
	if s := (ServerOptions{}).withDefaults(); s.Accept.IdleTimeout != 3*defaultHeartbeatInterval {
		t.Errorf("idle timeout %v, want three heartbeats", s.Accept.IdleTimeout)
	}
	c := ClientOptions{ReconnectMin: -1, ReconnectMax: -1, MaxQueueSize: -1, MaxPending: -1, RequestTimeout: -1}.withDefaults()
	if c.ReconnectMin != 0 || c.ReconnectMax != 0 || c.MaxQueueSize != math.MaxInt || c.MaxPending != math.MaxInt || c.RequestTimeout >= 0 {
		t.Errorf("client: %+v", c)
	}
	if d := (&Client{opts: c}).backoff(10, false); d != 0 {
		t.Errorf("backoff with no wait: %v", d)
	}
	j := JWTOptions{Leeway: -1, MaxTokenSize: -1}.withDefaults()
	if j.Leeway != 0 || j.MaxTokenSize != math.MaxInt {
		t.Errorf("jwt: %+v", j)
	}
	if got := (ServerOptions{}).withDefaults().ShutdownCode; got != CloseGoingAway {
		t.Errorf("ShutdownCode resolves to %v, documented 1001", got)
	}
	if got := NewMemoryReplayStore(0).capacity; got != 100 {
		t.Errorf("NewMemoryReplayStore(0) keeps %d, documented 100", got)
	}
	none := NewMemoryReplayStore(-1)
	if err := none.Append(t.Context(), "a", ReplayRecord{TransactionID: "t1", PreviousTransactionID: "t0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := none.Replay(t.Context(), "a", "t0", "t1"); err != ErrReplayCursorNotFound {
		t.Errorf("a store that keeps none replayed: %v", err)
	}
}
