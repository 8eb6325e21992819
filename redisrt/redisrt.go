// Package redisrt runs several realtime servers as one, over Redis. It is
// built on github.com/redis/go-redis/v9, the Redis project's own Go client.
//
// # The model
//
// Manager keeps the share data themselves in Redis: each item's state,
// version and last transaction id in a hash, its replay window in a list,
// its events on one pub/sub channel. Give it to every instance as the
// realtime.Manager and the realtime.ReplayStore, with the server's default
// in-process registry; every instance then hears every event from Redis,
// in version order per item, and a client may reconnect to any instance
// with since and be replayed. The Manager doc states the rounds per
// transaction, the conflict rule and what survives a Redis restart.
//
// ReplayStore and Registry are the parts for a manager of your own over
// another shared database: the store keeps the window in a Redis list, and
// the registry carries the events that your manager reports on one
// instance to the others (give all but one instance SkipManagerEvents when
// they share one in-process manager value, as in tests).
//
// # Guarantees and failures of ReplayStore and Registry
//
//   - Cost per transaction: two Redis commands, each one round trip on the
//     path of the transaction (not of any subscriber): an EVALSHA that
//     appends to the window and trims it (one atomic script), and a PUBLISH.
//     Delivery to N subscribers on M instances costs M-1 pub/sub messages,
//     not N.
//   - The window is a Redis list per share data, trimmed to the capacity on
//     every append, kept one chain (an append out of order restarts it),
//     deleted when the share data is removed.
//   - The publishing instance delivers to its own subscribers directly, so
//     they keep being served when Redis is down.
//   - When the connection to Redis drops, events published meanwhile are
//     lost for the other instances. The registry then raises
//     realtime.EventLost for every share data it has received events of
//     from other instances: the instance closes the connections subscribed
//     to them with 4001, and their clients resubscribe with since.
//   - Events of one share data published by two instances at nearly the
//     same moment may arrive out of order; the server closes the affected
//     subscriptions with 4001 and their clients resubscribe. Manager does
//     not have this problem: its events are ordered by Redis.
package redisrt

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/degenerate/realtime"
)

// Options configure the store and the registry. The zero value means the
// defaults.
type Options struct {
	// Prefix starts every key and channel name. Default "realtime".
	Prefix string
	// ReplayBufferSize is the window per share data. Zero means 100,
	// the root package's default; negative keeps no window.
	ReplayBufferSize int
	// MaxConflictRetries bounds how many times Manager.Apply computes a
	// proposal again after another instance committed to the item first.
	// Zero means 10. Negative means none: the first conflict refuses.
	MaxConflictRetries int
	// Logger receives the module's logs, and go-redis's own (which it
	// would write to the standard logger): go-redis has one logger per
	// process, so the Logger of the latest constructor of this package
	// receives those. Nil means slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = "realtime"
	}
	switch {
	case o.ReplayBufferSize == 0:
		o.ReplayBufferSize = 100
	case o.ReplayBufferSize < 0:
		o.ReplayBufferSize = 0
	}
	switch {
	case o.MaxConflictRetries == 0:
		o.MaxConflictRetries = 10
	case o.MaxConflictRetries < 0:
		o.MaxConflictRetries = 0
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// ReplayStore keeps the replay window of each share data in a Redis list.
type ReplayStore struct {
	rdb  redis.UniversalClient
	opts Options
}

// NewReplayStore returns a store over rdb.
func NewReplayStore(rdb redis.UniversalClient, opts Options) *ReplayStore {
	useLogger(opts.withDefaults().Logger)
	return &ReplayStore{rdb: rdb, opts: opts.withDefaults()}
}

func (s *ReplayStore) key(shareDataID string) string {
	return s.opts.Prefix + ":replay:" + shareDataID
}

// appendScript appends a record and trims the list to the capacity,
// atomically, keeping the list one chain: a record already in it (an event
// published twice) is skipped, and a record whose predecessor is not the
// list's last (two instances appending at nearly the same moment, in the
// wrong order) starts the list anew from it, so a replay across the break
// is refused (replay-cursor-not-found) rather than served out of order.
var appendScript = redis.NewScript(`
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local rec = cjson.decode(last)
  if rec.id == ARGV[1] then return 0 end
  if rec.id ~= ARGV[4] then
    local all = redis.call('LRANGE', KEYS[1], 0, -1)
    for _, r in ipairs(all) do
      if cjson.decode(r).id == ARGV[1] then return 0 end
    end
    redis.call('DEL', KEYS[1])
  end
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
return 1
`)

type record struct {
	ID   string `json:"id"`
	Prev string `json:"prev"`
	Msg  string `json:"msg"`
}

// Append implements realtime.ReplayStore: one EVALSHA.
func (s *ReplayStore) Append(ctx context.Context, shareDataID string, rec realtime.ReplayRecord) error {
	if s.opts.ReplayBufferSize == 0 {
		return nil
	}
	b, err := json.Marshal(record{ID: rec.TransactionID, Prev: rec.PreviousTransactionID, Msg: string(rec.Message)})
	if err != nil {
		return err
	}
	return appendScript.Run(ctx, s.rdb, []string{s.key(shareDataID)}, rec.TransactionID, b, s.opts.ReplayBufferSize, rec.PreviousTransactionID).Err()
}

// Replay implements realtime.ReplayStore: one LRANGE of at most the
// capacity.
func (s *ReplayStore) Replay(ctx context.Context, shareDataID, since, until string) ([]realtime.ReplayRecord, error) {
	if since == until {
		return nil, nil
	}
	raw, err := s.rdb.LRange(ctx, s.key(shareDataID), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	recs := make([]record, 0, len(raw))
	for _, r := range raw {
		var rec record
		if err := json.Unmarshal([]byte(r), &rec); err != nil {
			return nil, fmt.Errorf("redisrt: corrupt replay record: %w", err)
		}
		recs = append(recs, rec)
	}
	start := -1
	switch {
	case len(recs) == 0:
	case recs[0].Prev == since:
		start = 0
	default:
		for i, r := range recs {
			if r.ID == since {
				start = i + 1
				break
			}
		}
	}
	if start < 0 {
		return nil, realtime.ErrReplayCursorNotFound
	}
	var out []realtime.ReplayRecord
	prev := since
	for _, r := range recs[start:] {
		if r.Prev != prev {
			return nil, realtime.ErrReplayCursorNotFound // a hole: the replay could not be whole
		}
		out = append(out, realtime.ReplayRecord{TransactionID: r.ID, PreviousTransactionID: r.Prev, Message: []byte(r.Msg)})
		if r.ID == until {
			return out, nil
		}
		prev = r.ID
	}
	if until != "" {
		return nil, realtime.ErrReplayCursorNotFound // the window does not reach until
	}
	return out, nil
}

// Drop implements realtime.ReplayStore: one DEL.
func (s *ReplayStore) Drop(ctx context.Context, shareDataID string) error {
	return s.rdb.Del(ctx, s.key(shareDataID)).Err()
}

// Registry carries events between instances over one Redis pub/sub
// channel. Close it after the servers that use it have shut down.
type Registry struct {
	rdb    redis.UniversalClient
	opts   Options
	origin string // this instance, so it skips its own messages

	mu        sync.RWMutex
	receivers map[*func(realtime.Event)]struct{}
	remote    map[string]bool // share data with events from other instances
	started   bool
	ready     chan struct{} // closed once subscribed the first time
	cancel    context.CancelFunc
	ps        *redis.PubSub
	wg        sync.WaitGroup
}

// NewRegistry returns a registry over rdb. It subscribes to Redis when the
// first receiver attaches.
func NewRegistry(rdb redis.UniversalClient, opts Options) *Registry {
	opts = opts.withDefaults()
	useLogger(opts.Logger)
	var b [8]byte
	crand.Read(b[:])
	return &Registry{rdb: rdb, opts: opts.withDefaults(), origin: hex.EncodeToString(b[:]),
		receivers: make(map[*func(realtime.Event)]struct{}), remote: make(map[string]bool), ready: make(chan struct{})}
}

func (r *Registry) channel() string { return r.opts.Prefix + ":events" }

// wireEvent is an event on the Redis channel.
type wireEvent struct {
	Origin  string          `json:"o"`
	Kind    int             `json:"k"`
	ID      string          `json:"s"`
	Version uint64          `json:"v"`
	Tx      *wireTx         `json:"t,omitempty"`
	State   json.RawMessage `json:"st,omitempty"`
}

// wireOf is ev as the channel carries it.
func wireOf(ev realtime.Event) wireEvent {
	w := wireEvent{Kind: int(ev.Kind), ID: ev.ShareDataID, Version: ev.Version, State: ev.State}
	if tx := ev.Transaction; tx != nil {
		w.Tx = &wireTx{ID: tx.ID, Prev: tx.PreviousID, Fn: tx.FunctionID, Data: tx.ProposedData, State: tx.State, Key: tx.IdempotencyKey}
	}
	return w
}

// event is the realtime.Event that w carries.
func (w wireEvent) event() realtime.Event {
	ev := realtime.Event{Kind: realtime.EventKind(w.Kind), ShareDataID: w.ID, Version: w.Version, State: w.State}
	if w.Tx != nil {
		ev.Transaction = &realtime.Transaction{ShareDataID: w.ID, ID: w.Tx.ID, PreviousID: w.Tx.Prev,
			FunctionID: w.Tx.Fn, ProposedData: w.Tx.Data, State: w.Tx.State, IdempotencyKey: w.Tx.Key}
	}
	return ev
}

type wireTx struct {
	ID    string          `json:"id"`
	Prev  string          `json:"p"`
	Fn    string          `json:"f"`
	Data  json.RawMessage `json:"d"`
	State json.RawMessage `json:"st"`
	Key   string          `json:"k,omitempty"` // the proposal's idempotency key
}

// Publish implements realtime.ChannelRegistry: the local receivers get ev
// at once, the other instances through one PUBLISH.
func (r *Registry) Publish(ctx context.Context, ev realtime.Event) error {
	r.deliver(ev)
	w := wireOf(ev)
	w.Origin = r.origin
	b, err := json.Marshal(w)
	if err != nil {
		return err
	}
	return r.rdb.Publish(ctx, r.channel(), b).Err()
}

func (r *Registry) deliver(ev realtime.Event) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for fn := range r.receivers {
		(*fn)(ev)
	}
}

// Attach implements realtime.ChannelRegistry. The first receiver starts
// the subscription to Redis; Attach waits (up to 5 s) for it to be in
// place, so events published after Attach returns are not missed.
func (r *Registry) Attach(receive func(realtime.Event)) (detach func()) {
	key := &receive
	r.mu.Lock()
	r.receivers[key] = struct{}{}
	start := !r.started
	r.started = true
	r.mu.Unlock()
	if start {
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		r.wg.Add(1)
		go r.subscribe(ctx)
	}
	select {
	case <-r.ready:
	case <-time.After(5 * time.Second):
		r.opts.Logger.Warn("redisrt: not subscribed to Redis yet; events from other instances are missed until it is")
	}
	return func() {
		r.mu.Lock()
		delete(r.receivers, key)
		r.mu.Unlock()
	}
}

// Close stops the subscription to Redis and waits for its goroutine,
// whether or not the Redis client is still open.
func (r *Registry) Close() error {
	r.mu.Lock()
	cancel, ps := r.cancel, r.ps
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if ps != nil {
		ps.Close() // Receive waits on the connection and would not see ctx end
	}
	r.wg.Wait()
	return nil
}

// subscribe receives the other instances' events until ctx ends. Each time
// the connection to Redis is lost, and again once it is subscribed anew,
// it raises EventLost for every share data.
func (r *Registry) subscribe(ctx context.Context) {
	defer r.wg.Done()
	ps := r.rdb.Subscribe(ctx, r.channel())
	defer ps.Close()
	r.mu.Lock()
	r.ps = ps
	r.mu.Unlock()
	subscribed, lost := false, false
	var readyOnce sync.Once
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if subscribed && !lost {
				lost = true
				r.opts.Logger.Warn("redisrt: lost the Redis subscription; events from other instances may be lost", "err", err)
				r.raiseLost()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			readyOnce.Do(func() { close(r.ready) })
			if subscribed && lost {
				r.opts.Logger.Warn("redisrt: subscribed to Redis again; closing subscribers that may have missed events")
				r.raiseLost()
			}
			subscribed, lost = true, false
		case *redis.Message:
			var w wireEvent
			if err := json.Unmarshal([]byte(m.Payload), &w); err != nil {
				r.opts.Logger.Error("redisrt: undecodable event", "err", err)
				continue
			}
			if w.Origin == r.origin {
				continue // delivered locally when published
			}
			r.mu.Lock()
			r.remote[w.ID] = true
			r.mu.Unlock()
			r.deliver(w.event())
		}
	}
}

// raiseLost tells the receivers that the events of every share data that
// other instances publish may have been lost. Share data whose events all
// come from this instance were delivered locally and lost nothing; should
// another instance start publishing them during the outage, the server's
// version check closes their subscribers at the next event.
func (r *Registry) raiseLost() {
	r.mu.RLock()
	ids := make([]string, 0, len(r.remote))
	for id := range r.remote {
		ids = append(ids, id)
	}
	r.mu.RUnlock()
	for _, id := range ids {
		r.deliver(realtime.Event{Kind: realtime.EventLost, ShareDataID: id})
	}
}

// redisLogger receives go-redis's log lines, which go-redis would write to
// the standard logger: the Logger of the latest constructor of this
// package, since go-redis has one logger per process.
var redisLogger atomic.Pointer[slog.Logger]

var loggerOnce sync.Once

// slogForRedis writes go-redis's lines to redisLogger, at Warn (go-redis
// logs what went wrong: a dropped connection, a truncated duration).
type slogForRedis struct{}

func (slogForRedis) Printf(ctx context.Context, format string, v ...any) {
	redisLogger.Load().WarnContext(ctx, "redisrt: go-redis: "+fmt.Sprintf(format, v...))
}

// useLogger makes l receive go-redis's logs. go-redis keeps its logger in a
// package variable that it reads without a lock, so it is set once, to a
// forwarder, and l is swapped atomically behind it.
func useLogger(l *slog.Logger) {
	redisLogger.Store(l)
	loggerOnce.Do(func() { redis.SetLogger(slogForRedis{}) })
}
