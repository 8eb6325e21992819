package redisrt

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/degenerate/realtime"
)

// ErrConflict is matched by the error of an Apply refused because the
// share data kept changing under it (see Options.MaxConflictRetries).
var ErrConflict = errors.New("redisrt: the share data kept changing while the proposal was computed")

// Manager keeps share data in Redis, so that every instance behind a load
// balancer serves the same state: each item's state, version and last
// transaction id in a hash, its replay window in a list, its events on one
// pub/sub channel. It implements realtime.Manager (create, update, remove,
// functions registered per process) and realtime.ReplayStore: give it to
// realtime.NewServer as the manager and as ServerOptions.ReplayStore, with
// the default (in-process) Registry, on every instance.
//
// Apply reads the item (one round trip), runs the Go function, and commits
// with one script (a second round trip) that checks the version it read,
// writes the new state, bumps the version, appends the transaction to the
// window (trimmed to its size) and publishes the event, atomically. On a
// version conflict (another instance committed first) it runs the function
// again on the new state, at most MaxConflictRetries times, then refuses
// the proposal with an error matching ErrConflict. Every instance, the one
// that applied included, hears events only from the channel, so the events
// of one item reach every instance in version order by construction.
//
// When Apply returns, the transaction is in Redis. It survives a Redis
// restart only as far as Redis persists it: with appendonly yes and
// appendfsync always, nothing acknowledged is lost; with everysec (Redis's
// default for AOF) a crash of the Redis machine can lose up to a second of
// acknowledged transactions; without persistence a Redis restart loses
// every item (the instances then answer unknown-share-data).
//
// While the pub/sub connection is down, events are missed. When it is back
// the manager compares each item it has seen with its version in Redis and
// raises realtime.EventLost for those that changed meanwhile (only those):
// the server closes their subscribers with 4001, and their clients
// resubscribe with since and are replayed. A version that skips ahead in
// the stream does the same for its item.
type Manager struct {
	rdb   redis.UniversalClient
	opts  Options
	store *ReplayStore

	idPrefix string
	seq      atomic.Uint64

	fmu sync.Mutex
	fns map[string]map[string]realtime.Function

	lmu       sync.Mutex
	listeners []*func(realtime.Event)
	dmu       sync.Mutex // held while an event is delivered, so cancel waits for it

	imu   sync.Mutex
	turns map[string]chan struct{} // per item: one Apply of this process at a time

	vmu      sync.Mutex
	versions map[string]uint64 // the last version delivered (or seen in a snapshot) per item

	conflicts atomic.Uint64

	cancel context.CancelFunc
	psMu   sync.Mutex
	ps     *redis.PubSub
	wg     sync.WaitGroup
}

// NewManager returns a manager over rdb, subscribed to its event channel:
// it waits, within ctx, until the subscription is in place, so no event
// published after it returns is missed. Close it after the servers that
// use it have shut down; rdb stays the caller's.
func NewManager(ctx context.Context, rdb redis.UniversalClient, opts Options) (*Manager, error) {
	opts = opts.withDefaults()
	useLogger(opts.Logger)
	var b [10]byte
	crand.Read(b[:])
	m := &Manager{rdb: rdb, opts: opts, store: NewReplayStore(rdb, opts),
		idPrefix: base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]) + "-",
		fns:      make(map[string]map[string]realtime.Function), versions: make(map[string]uint64),
		turns: make(map[string]chan struct{})}
	ps := rdb.Subscribe(ctx, m.channel())
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		ps.Close()
		return nil, fmt.Errorf("redisrt: subscribing to %s: %w", m.channel(), err)
	}
	m.ps = ps
	rctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.wg.Add(1)
	go m.receive(rctx, ps)
	return m, nil
}

func (m *Manager) channel() string            { return m.opts.Prefix + ":events" }
func (m *Manager) itemKey(id string) string   { return m.opts.Prefix + ":item:" + id }
func (m *Manager) replayKey(id string) string { return m.store.key(id) }

// keysKey and keyTimesKey hold one proposer's window of idempotency keys
// on an item (realtime.ProposerFromContext): their outcomes and the times
// they were recorded. The id's length keeps the names of two (id,
// proposer) pairs apart. Each expires KeyWindowAge after its proposer's
// last keyed proposal, so the windows of proposers gone quiet, or of a
// removed item, leave Redis by themselves.
func (m *Manager) keysKey(id, proposer string) string {
	return m.opts.Prefix + ":keys:" + strconv.Itoa(len(id)) + ":" + id + ":" + proposer
}
func (m *Manager) keyTimesKey(id, proposer string) string {
	return m.opts.Prefix + ":keyt:" + strconv.Itoa(len(id)) + ":" + id + ":" + proposer
}

// lostField is the field of the item's hash that keeps when a key of
// proposer last left its window before its age.
func lostField(proposer string) string { return "lost:" + proposer }

// Close stops the manager's subscription and waits for its goroutine,
// whether or not Redis answers.
func (m *Manager) Close() error {
	m.cancel()
	m.psMu.Lock()
	ps := m.ps
	m.psMu.Unlock()
	err := ps.Close() // unblocks a Receive waiting on the connection
	m.wg.Wait()
	return err
}

var createScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', 0, 'l', '')
return 1
`)

// applyScript commits a transaction computed on version ARGV[1]: state,
// version, last id, window and event, or nothing when the version moved.
// For a keyed proposal ARGV[8] is the key, ARGV[9] and ARGV[10] the key
// window's size and age (ms) and ARGV[11] the proposer's lost field;
// KEYS[3] is the proposer's hash of each remembered key's outcome ("t" and
// the transaction id, or "r" and the refusal), KEYS[4] its sorted set of
// the keys by the time (Redis's clock, ms) they were recorded. It returns 1 when committed, 0 when the version moved, -1 when
// the item is gone, and 2 when the key was recorded meanwhile (by another
// instance): the caller answers with that outcome.
var applyScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
local key = ARGV[8]
if key ~= '' and redis.call('HEXISTS', KEYS[3], key) == 1 then return 2 end
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[2], 'v', tonumber(ARGV[1]) + 1, 'l', ARGV[3])
local n = tonumber(ARGV[5])
if n > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[4])
  redis.call('LTRIM', KEYS[2], -n, -1)
end
` + rememberLua + `
if key ~= '' then
  remember(KEYS[1], KEYS[3], KEYS[4], key, 't' .. ARGV[3], tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
`)

// refuseScript remembers a function's refusal of a keyed proposal unless
// the key was recorded meanwhile; it returns the outcome recorded.
// KEYS as keyedApplyScript's 1, 3 and 4; ARGV: key, "r" and the refusal,
// size, age, lost field.
var refuseScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local got = redis.call('HGET', KEYS[2], ARGV[1])
if got then return got end
` + rememberLua + `
remember(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
return ARGV[2]
`)

// rememberLua records an outcome in the key window and trims it: keys
// older than the age leave it; past the size the oldest leave too, and
// when one of those was younger than the age, its time is kept in the
// item's hash as the proposer's lost field (a retry of an unknown key may
// be it). The window expires an age after its last key.
const rememberLua = `
local function remember(item, outcomes, times, key, outcome, size, age, lost)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', outcomes, key, outcome)
  redis.call('ZADD', times, now, key)
  local old = redis.call('ZRANGEBYSCORE', times, '-inf', now - age)
  for _, k in ipairs(old) do redis.call('HDEL', outcomes, k) end
  redis.call('ZREMRANGEBYSCORE', times, '-inf', now - age)
  local extra = redis.call('ZCARD', times) - size
  if extra > 0 then
    local popped = redis.call('ZPOPMIN', times, extra)
    for i = 1, #popped, 2 do
      redis.call('HDEL', outcomes, popped[i])
      redis.call('HSET', item, lost, popped[i + 1])
    end
  end
  redis.call('PEXPIRE', outcomes, age)
  redis.call('PEXPIRE', times, age)
end
`

// lookupScript returns a key's recorded outcome, or, when it has none,
// "unsure" when a key of the proposer younger than the age (ARGV[2], ms)
// was pushed out of its window (ARGV[3]: its lost field), or false. KEYS
// as refuseScript's.
var lookupScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local got = redis.call('HGET', KEYS[2], ARGV[1])
if got then return got end
local lost = redis.call('HGET', KEYS[1], ARGV[3])
if lost then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now - tonumber(lost) < tonumber(ARGV[2]) then return 'unsure' end
end
return false
`)

var updateScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', nv)
redis.call('PUBLISH', ARGV[2], '{"k":2,"s":' .. ARGV[3] .. ',"v":' .. nv .. ',"st":' .. ARGV[1] .. '}')
return nv
`)

var removeScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], '{"k":3,"s":' .. ARGV[2] .. ',"v":' .. (tonumber(v) + 1) .. '}')
return 1
`)

func unknown(id string) error {
	return fmt.Errorf("%w %q", realtime.ErrUnknownShareData, id)
}

// compactJSON checks that v is one JSON value and compacts it; nil is null.
func compactJSON(v json.RawMessage) (json.RawMessage, error) {
	if len(v) == 0 {
		return json.RawMessage("null"), nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Create adds a share data item with an initial state and registers its
// functions in this process. It fails with realtime.ErrShareDataExists
// when another instance (or an earlier run) created it; register the
// functions then with AddFunction.
func (m *Manager) Create(ctx context.Context, shareDataID string, state json.RawMessage, fns ...realtime.Function) error {
	st, err := compactJSON(state)
	if err != nil {
		return fmt.Errorf("redisrt: state is not valid JSON: %w", err)
	}
	for _, fn := range fns {
		if fn.ID != "" {
			m.AddFunction(shareDataID, fn)
		}
	}
	n, err := createScript.Run(ctx, m.rdb, []string{m.itemKey(shareDataID), m.replayKey(shareDataID)}, string(st)).Int()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: %q", realtime.ErrShareDataExists, shareDataID)
	}
	return nil
}

// AddFunction registers fn on the share data in this process (functions
// are code: each instance registers its own).
func (m *Manager) AddFunction(shareDataID string, fn realtime.Function) error {
	if fn.ID == "" || fn.Apply == nil {
		return errors.New("redisrt: a function needs an ID and Apply")
	}
	m.fmu.Lock()
	defer m.fmu.Unlock()
	if m.fns[shareDataID] == nil {
		m.fns[shareDataID] = make(map[string]realtime.Function)
	}
	m.fns[shareDataID][fn.ID] = fn
	return nil
}

// Function implements realtime.FunctionLookup.
func (m *Manager) Function(shareDataID, functionID string) (realtime.Function, bool) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	fn, ok := m.fns[shareDataID][functionID]
	return fn, ok
}

// Snapshot implements realtime.Manager: one HMGET.
func (m *Manager) Snapshot(ctx context.Context, shareDataID string) (realtime.Snapshot, error) {
	vals, err := m.rdb.HMGet(ctx, m.itemKey(shareDataID), "s", "v", "l").Result()
	if err != nil {
		return realtime.Snapshot{}, err
	}
	st, ok1 := vals[0].(string)
	vs, ok2 := vals[1].(string)
	last, _ := vals[2].(string)
	if !ok1 || !ok2 {
		return realtime.Snapshot{}, unknown(shareDataID)
	}
	v, err := strconv.ParseUint(vs, 10, 64)
	if err != nil {
		return realtime.Snapshot{}, fmt.Errorf("redisrt: corrupt version %q of %q", vs, shareDataID)
	}
	m.vmu.Lock()
	if _, seen := m.versions[shareDataID]; !seen {
		m.versions[shareDataID] = v // so a missed event is noticed after an outage
	}
	m.vmu.Unlock()
	return realtime.Snapshot{State: json.RawMessage(st), LastTransactionID: last, Version: v}, nil
}

// Apply implements realtime.Manager (see Manager for the rounds and the
// conflict rule). The event reaches the listeners of every instance,
// this one included, from the channel, shortly after Apply returns.
func (m *Manager) Apply(ctx context.Context, shareDataID string, fn realtime.Function, proposed json.RawMessage) (*realtime.Transaction, error) {
	return m.apply(ctx, shareDataID, fn, proposed, "", false)
}

// ApplyKeyed implements realtime.KeyedApplier: the key's outcome is
// looked up before the function runs (one round trip more than Apply),
// and recorded by the same script that commits the transaction, which
// also refuses to commit when another instance recorded the key
// meanwhile: two instances applying one key commit it once. Refusals by
// the function are recorded too (one more round trip), so a retry through
// another instance gets the same one. The window lives in Redis, with the
// item: it survives an instance's restart, and Redis's persistence decides
// the rest, as for the transactions.
func (m *Manager) ApplyKeyed(ctx context.Context, shareDataID string, fn realtime.Function, proposed json.RawMessage, key string, retry bool) (*realtime.Transaction, error) {
	return m.apply(ctx, shareDataID, fn, proposed, key, retry)
}

// apply is Apply, or ApplyKeyed when key is set.
func (m *Manager) apply(ctx context.Context, shareDataID string, fn realtime.Function, proposed json.RawMessage, key string, retry bool) (*realtime.Transaction, error) {
	if fn.Apply == nil {
		return nil, errors.New("redisrt: function has no Apply")
	}
	proposed, err := compactJSON(proposed)
	if err != nil {
		return nil, fmt.Errorf("redisrt: proposed data is not valid JSON: %w", err)
	}
	// One Apply per item at a time in this process, so its own appliers
	// never conflict with each other; only another instance's commit can.
	// Waiting for the turn gives up when ctx ends.
	turn := m.turn(shareDataID)
	select {
	case turn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-turn }()
	proposer := realtime.ProposerFromContext(ctx)
	keys := []string{m.itemKey(shareDataID), m.replayKey(shareDataID), m.keysKey(shareDataID, proposer), m.keyTimesKey(shareDataID, proposer)}
	windowKeys := []string{keys[0], keys[2], keys[3]}
	lost := lostField(proposer)
	age := strconv.FormatInt(realtime.KeyWindowAge.Milliseconds(), 10)
	// remembered answers with a recorded outcome.
	remembered := func(outcome string) (*realtime.Transaction, error) {
		if id, ok := strings.CutPrefix(outcome, "t"); ok {
			return &realtime.Transaction{ShareDataID: shareDataID, ID: id, IdempotencyKey: key}, nil
		}
		return nil, errors.New(strings.TrimPrefix(outcome, "r"))
	}
	for attempt := 0; ; attempt++ {
		if key != "" {
			got, err := lookupScript.Run(ctx, m.rdb, windowKeys, key, age, lost).Result()
			switch {
			case errors.Is(err, redis.Nil):
			case err != nil:
				return nil, err
			case got == int64(-1):
				return nil, unknown(shareDataID)
			case got == "unsure":
				if retry {
					return nil, realtime.ErrOutcomeUnknown
				}
			default:
				if s, ok := got.(string); ok {
					return remembered(s)
				}
			}
		}
		snap, err := m.Snapshot(ctx, shareDataID)
		if err != nil {
			return nil, err
		}
		next, err := fn.Call(ctx, snap.State, proposed) // a panic is returned, not raised
		if err != nil {
			if key == "" || ctx.Err() != nil || errors.Is(err, realtime.ErrFunctionPanicked) {
				return nil, err // no key, cut short, or a failure: no outcome to remember
			}
			out, rerr := refuseScript.Run(ctx, m.rdb, windowKeys, key, "r"+err.Error(), realtime.KeyWindowSize, age, lost).Text()
			if rerr != nil && !errors.Is(rerr, redis.Nil) {
				return nil, rerr
			}
			if out != "" && out != "r"+err.Error() {
				return remembered(out) // another instance decided it first
			}
			return nil, err
		}
		if next, err = compactJSON(next); err != nil {
			return nil, fmt.Errorf("redisrt: function %q returned invalid JSON: %w", fn.ID, err)
		}
		tx := &realtime.Transaction{ShareDataID: shareDataID, ID: m.idPrefix + strconv.FormatUint(m.seq.Add(1), 36),
			PreviousID: snap.LastTransactionID, FunctionID: fn.ID, ProposedData: proposed, State: next, IdempotencyKey: key}
		msg := (&realtime.TransactionMessage{ShareDataID: shareDataID, TransactionID: tx.ID, PreviousTransactionID: tx.PreviousID,
			FunctionID: tx.FunctionID, ProposedData: tx.ProposedData, Replayed: true, IdempotencyKey: key}).AppendJSON(nil)
		rec, _ := json.Marshal(record{ID: tx.ID, Prev: tx.PreviousID, Msg: string(msg)})
		ev, _ := json.Marshal(wireOf(realtime.Event{Kind: realtime.EventTransaction, ShareDataID: shareDataID, Version: snap.Version + 1, Transaction: tx}))
		n, err := applyScript.Run(ctx, m.rdb, keys, strconv.FormatUint(snap.Version, 10), string(next), tx.ID, rec,
			m.opts.ReplayBufferSize, m.channel(), ev, key, realtime.KeyWindowSize, age, lost).Int()
		if err != nil {
			return nil, err
		}
		switch n {
		case 1:
			return tx, nil
		case -1:
			return nil, unknown(shareDataID)
		case 2:
			continue // the key was recorded by another instance meanwhile: the lookup answers
		}
		m.conflicts.Add(1)
		if attempt >= m.opts.MaxConflictRetries {
			return nil, fmt.Errorf("%w: %q changed %d times; propose again", ErrConflict, shareDataID, attempt+1)
		}
	}
}

func (m *Manager) turn(id string) chan struct{} {
	m.imu.Lock()
	defer m.imu.Unlock()
	t := m.turns[id]
	if t == nil {
		t = make(chan struct{}, 1)
		m.turns[id] = t
	}
	return t
}

// Update implements what MemoryManager.Update does: one script.
func (m *Manager) Update(ctx context.Context, shareDataID string, state json.RawMessage) error {
	st, err := compactJSON(state)
	if err != nil {
		return fmt.Errorf("redisrt: state is not valid JSON: %w", err)
	}
	id, _ := json.Marshal(shareDataID)
	n, err := updateScript.Run(ctx, m.rdb, []string{m.itemKey(shareDataID)}, string(st), m.channel(), string(id)).Int()
	if err != nil {
		return err
	}
	if n < 0 {
		return unknown(shareDataID)
	}
	return nil
}

// Remove implements what MemoryManager.Remove does: one script deletes
// the item and its window and publishes the event.
func (m *Manager) Remove(ctx context.Context, shareDataID string) error {
	id, _ := json.Marshal(shareDataID)
	n, err := removeScript.Run(ctx, m.rdb, []string{m.itemKey(shareDataID), m.replayKey(shareDataID)}, m.channel(), string(id)).Int()
	if err != nil {
		return err
	}
	if n < 0 {
		return unknown(shareDataID)
	}
	return nil
}

// Listen implements realtime.Manager. Listeners are called on the
// manager's receiving goroutine, one event at a time, in channel order.
// Once cancel returns, fn is not called again; cancel must not be called
// from a listener.
func (m *Manager) Listen(fn func(realtime.Event)) (cancel func()) {
	key := &fn
	m.lmu.Lock()
	m.listeners = append(m.listeners, key)
	m.lmu.Unlock()
	return func() {
		m.lmu.Lock()
		for i, l := range m.listeners {
			if l == key {
				m.listeners = append(m.listeners[:i:i], m.listeners[i+1:]...)
				break
			}
		}
		m.lmu.Unlock()
		m.dmu.Lock() // an event being delivered with the old list ends first
		m.dmu.Unlock()
	}
}

func (m *Manager) notify(ev realtime.Event) {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	m.lmu.Lock()
	ls := m.listeners
	m.lmu.Unlock()
	for _, l := range ls {
		(*l)(ev)
	}
}

// Append implements realtime.ReplayStore. It does nothing: Apply's script
// appends each transaction to the window.
func (m *Manager) Append(ctx context.Context, shareDataID string, rec realtime.ReplayRecord) error {
	return nil
}

// Replay implements realtime.ReplayStore from the window in Redis.
func (m *Manager) Replay(ctx context.Context, shareDataID, since, until string) ([]realtime.ReplayRecord, error) {
	return m.store.Replay(ctx, shareDataID, since, until)
}

// Drop implements realtime.ReplayStore. It does nothing: Remove's script
// deletes the window.
func (m *Manager) Drop(ctx context.Context, shareDataID string) error { return nil }

// receive delivers the channel's events to the listeners until ctx ends,
// checking versions after every reconnection.
func (m *Manager) receive(ctx context.Context, ps *redis.PubSub) {
	defer m.wg.Done()
	lost := false
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !lost {
				lost = true
				m.opts.Logger.Warn("redisrt: lost the Redis subscription; checking versions once it is back", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		switch msg := msg.(type) {
		case *redis.Subscription:
			if msg.Kind == "subscribe" && lost {
				lost = false
				m.checkVersions(ctx)
			}
		case *redis.Message:
			var w wireEvent
			if err := json.Unmarshal([]byte(msg.Payload), &w); err != nil {
				m.opts.Logger.Error("redisrt: undecodable event", "err", err)
				continue
			}
			m.handle(w)
		}
	}
}

// handle delivers one event in order: a version already delivered is
// dropped, one that skips ahead raises EventLost for its item first.
func (m *Manager) handle(w wireEvent) {
	ev := w.event()
	m.vmu.Lock()
	last, seen := m.versions[w.ID]
	switch {
	case ev.Kind == realtime.EventRemoved:
		delete(m.versions, w.ID)
	case seen && ev.Version <= last:
		m.vmu.Unlock()
		return // reflected already (a snapshot read after it was published)
	default:
		m.versions[w.ID] = ev.Version
	}
	m.vmu.Unlock()
	if seen && ev.Version > last+1 && ev.Kind != realtime.EventRemoved {
		m.opts.Logger.Warn("redisrt: events of a share data were missed; its subscribers resubscribe", "share_data_id", w.ID, "after", last, "got", ev.Version)
		m.notify(realtime.Event{Kind: realtime.EventLost, ShareDataID: w.ID})
	}
	m.notify(ev)
}

// checkVersions compares every item this manager has seen with Redis, and
// raises EventLost for those that changed while the subscription was down.
func (m *Manager) checkVersions(ctx context.Context) {
	m.vmu.Lock()
	ids := make([]string, 0, len(m.versions))
	for id := range m.versions {
		ids = append(ids, id)
	}
	m.vmu.Unlock()
	changed := 0
	for _, id := range ids {
		vs, err := m.rdb.HGet(ctx, m.itemKey(id), "v").Result()
		m.vmu.Lock()
		last, seen := m.versions[id]
		var v uint64
		switch {
		case err == redis.Nil:
			delete(m.versions, id)
		case err != nil:
			m.vmu.Unlock()
			m.notify(realtime.Event{Kind: realtime.EventLost, ShareDataID: id}) // cannot tell: assume lost
			changed++
			continue
		default:
			v, _ = strconv.ParseUint(vs, 10, 64)
			m.versions[id] = v
		}
		m.vmu.Unlock()
		if seen && (err == redis.Nil || v != last) {
			m.notify(realtime.Event{Kind: realtime.EventLost, ShareDataID: id})
			changed++
		}
	}
	m.opts.Logger.Warn("redisrt: subscribed to Redis again", "share_data_checked", len(ids), "changed_meanwhile", changed)
}

// IDs implements realtime.ItemLister: the items under the manager's
// prefix in Redis, whichever instance created them (a SCAN, in batches).
func (m *Manager) IDs(ctx context.Context) ([]string, error) {
	prefix := m.itemKey("")
	var ids []string
	iter := m.rdb.Scan(ctx, 0, globEscape(prefix)+"*", 1000).Iterator()
	for iter.Next(ctx) {
		ids = append(ids, strings.TrimPrefix(iter.Val(), prefix))
	}
	if err := iter.Err(); err != nil {
		return nil, err
	}
	sort.Strings(ids)
	return ids, nil
}

// globEscape quotes the characters a SCAN pattern gives a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}
