package redisrt

import (
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/degenerate/realtime/realtimetest"
)

var prefixSeq atomic.Uint64

// newTestManager returns a Manager over the test Redis with a prefix of
// its own, so tests do not see each other's keys.
func newTestManager(t *testing.T, prefix string) *Manager {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	m, err := NewManager(t.Context(), rdb, Options{Prefix: prefix, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		rdb.Close()
	})
	return m
}

func uniquePrefix(t testing.TB) string {
	return "m-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + strconv.FormatUint(prefixSeq.Add(1), 10)
}

// TestManagerContract runs the contract kit against the Redis manager;
// reopening is a new Manager (a new process) over the same keys.
func TestManagerContract(t *testing.T) {
	prefixes := map[realtimetest.Manager]string{}
	realtimetest.TestManager(t,
		func(t *testing.T) realtimetest.Manager {
			p := uniquePrefix(t)
			m := newTestManager(t, p)
			prefixes[m] = p
			return m
		},
		func(t *testing.T, old realtimetest.Manager) realtimetest.Manager {
			old.(*Manager).Close()
			return newTestManager(t, prefixes[old])
		})
}
