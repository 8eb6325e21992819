package realtime

import (
	"context"
	"errors"
	"log/slog"
	"sync"
)

// This file holds the fan-out. The channel registry (registry.go) carries
// share data events to every server instance; on each instance the hub
// turns one event into one encoded frame queued for every local
// subscriber, and it alone joins a new subscription to the stream
// (snapshot, replay, held frames). Every rule about a topic's lock and a
// subscription's sync state lives here.

// hub owns the topics of one server: the map from share data id to topic,
// and, under each topic's lock, its subscriptions and their sync state.
//
// Locking: hub.mu (the map) before topic.mu before session.mu. A session
// never takes a topic's lock; the hub calls down into sessions (enqueue,
// close, remember, forget, waitRoom) and never waits for a peer while it
// holds a lock.
type hub struct {
	manager Manager
	store   ReplayStore
	log     *slog.Logger
	wg      *sync.WaitGroup // the server's: replay feeders are counted in it
	// maxHeld bounds the bytes of live frames held for one joining
	// subscription (the send cap): past it the connection is closed with
	// 4001, as a queue past the cap would be.
	maxHeld int
	// stampEvents has each event's frame stamped with the time it came,
	// for the observer's write latency.
	stampEvents bool

	mu     sync.RWMutex
	topics map[string]*topic
}

// topic is the set of local subscriptions to one share data item.
type topic struct {
	id   string
	mu   sync.Mutex
	subs []*subscriber // each knows its index, for O(1) removal
	dead bool          // removed from the hub's map
	// deflating counts the subscriptions whose connections negotiated
	// permessage-deflate: while there are any, each event's frame is also
	// compressed, once, for all of them.
	deflating int
}

// subState is where a subscription is in its join.
type subState uint8

const (
	// subJoining: registered, snapshot not known yet; events are held.
	subJoining subState = iota
	// subReplaying: the state frame is queued and the replay flows to the
	// connection as its queue drains; events are still held.
	subReplaying
	// subLive: events are queued as they come.
	subLive
	// subEnded: detached, removed, or closed for falling behind; nothing
	// more is queued for it.
	subEnded
)

// subscriber is one connection's subscriber to one share data item.
type subscriber struct {
	sess  *session
	id    string
	topic *topic

	// Under topic.mu:
	index     int // in topic.subs
	state     subState
	held      []heldFrame // events that arrived before it was live
	heldBytes int
	version   uint64 // the last event version queued (or in the snapshot)

	// Under sess.mu: the subscription ended, so its feeder, waiting in
	// waitRoom for its connection's queue to drain, returns at once (a
	// peer that stops reading would otherwise hold it, and the replay it
	// holds, until the write timeout).
	feedStopped bool
}

// heldFrame is an event's frame held for a subscription that is not live.
type heldFrame struct {
	version uint64
	frame   []byte
	zframe  []byte // frame compressed, for connections with permessage-deflate (nil: none)
	at      int64  // when the hub received the event (0: not stamped)
	removed bool
}

// frameFor returns the bytes of the event for sess's connection.
func (f *heldFrame) frameFor(sess *session) []byte {
	if f.zframe != nil && sess.compresses() {
		return f.zframe
	}
	return f.frame
}

// add registers sub; the caller holds t.mu.
func (t *topic) add(sub *subscriber) {
	sub.index = len(t.subs)
	t.subs = append(t.subs, sub)
	if sub.sess.compresses() {
		t.deflating++
	}
}

// remove unregisters sub; the caller holds t.mu.
func (t *topic) remove(sub *subscriber) {
	if sub.index < 0 || sub.index >= len(t.subs) || t.subs[sub.index] != sub {
		return
	}
	last := len(t.subs) - 1
	t.subs[sub.index] = t.subs[last]
	t.subs[sub.index].index = sub.index
	t.subs[last] = nil
	t.subs = t.subs[:last]
	sub.index = -1
	if sub.sess.compresses() {
		t.deflating--
	}
}

// deliver is the registry's receiver: it encodes the event's frame once
// and fans it out to the local subscribers.
func (h *hub) deliver(ev Event) {
	if ev.Kind == EventLost {
		h.lost(ev.ShareDataID)
		return
	}
	h.mu.RLock()
	t := h.topics[ev.ShareDataID]
	h.mu.RUnlock()
	if t == nil {
		return // no local subscriber
	}
	var at int64
	if h.stampEvents {
		at = stamp()
	}
	var msg ServerMessage
	switch ev.Kind {
	case EventTransaction:
		tx := ev.Transaction
		msg = &TransactionMessage{ShareDataID: tx.ShareDataID, TransactionID: tx.ID, PreviousTransactionID: tx.PreviousID,
			FunctionID: tx.FunctionID, ProposedData: tx.ProposedData, CurrentState: tx.State, IdempotencyKey: tx.IdempotencyKey}
	case EventUpdated:
		msg = &LifecycleMessage{ShareDataID: ev.ShareDataID, Event: LifecycleUpdated, CurrentState: ev.State}
	case EventRemoved:
		msg = &LifecycleMessage{ShareDataID: ev.ShareDataID, Event: LifecycleRemoved}
	default:
		return
	}
	payload := msg.AppendJSON(make([]byte, 0, 256))
	frame := appendServerFrame(make([]byte, 0, len(payload)+maxHeaderSize), payload)
	t.fanOut(heldFrame{version: ev.Version, frame: frame, at: at, removed: ev.Kind == EventRemoved}, h.maxHeld)
	if ev.Kind == EventRemoved {
		h.dropTopicIfEmpty(t)
	}
}

// fanOut queues one event's frame, encoded once, for every subscription:
// live ones get it now (unless their snapshot already reflects it), joining
// and replaying ones hold it until they are live. A subscription that would
// see a gap in the versions, or holds more than maxHeld bytes, is closed
// with 4001, so its client resubscribes with since rather than miss a
// transaction. On removal, the subscriptions end after the frame.
func (t *topic) fanOut(ev heldFrame, maxHeld int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.deflating > 0 {
		ev.zframe = compressFrame(ev.frame) // once, for every subscriber that takes it
	}
	for i := 0; i < len(t.subs); i++ {
		sub := t.subs[i]
		switch sub.state {
		case subLive:
		case subEnded:
			continue
		default:
			sub.hold(ev, maxHeld)
			continue
		}
		if !sub.deliver(ev.version, ev.frameFor(sub.sess), ev.at) {
			continue
		}
		if ev.removed {
			sub.end()
			i-- // the last subscription moved into slot i
		}
	}
}

// hold keeps an event's frame for a subscription that is not live yet. The
// caller holds topic.mu.
func (sub *subscriber) hold(ev heldFrame, maxHeld int) {
	if len(ev.frame) > maxHeld-sub.heldBytes { // heldBytes <= maxHeld: cannot overflow
		sub.fellBehind(causeSlowConsumer, "send buffer overflow during the replay: the client fell behind")
		return
	}
	sub.heldBytes += len(ev.frame)
	sub.held = append(sub.held, ev)
}

// deliver queues frame, which the hub received at the stamp at, if version
// is the next one the subscription expects, and reports whether it did.
// The caller holds topic.mu.
func (sub *subscriber) deliver(version uint64, frame []byte, at int64) bool {
	switch {
	case version <= sub.version:
		return false // already reflected in its snapshot
	case version != sub.version+1:
		sub.fellBehind(causeEventsLost, "missed events of "+quoteForError(sub.id)+"; resubscribe")
		return false
	}
	sub.version = version
	sub.sess.enqueueAt(frame, at)
	return true
}

// stop ends queueing for sub and drops what it holds; its feeder, if any,
// sees the state and returns. The caller holds topic.mu.
func (sub *subscriber) stop() {
	sub.state = subEnded
	clear(sub.held)
	sub.held, sub.heldBytes = nil, 0
	sub.sess.stopFeed(sub)
}

// fellBehind stops sub and closes its connection with 4001, for cause, so
// its client resubscribes from its cursor. The caller holds topic.mu.
func (sub *subscriber) fellBehind(cause causeCode, reason string) {
	sub.stop()
	sub.sess.close(cause, CloseFellBehind, reason, false)
}

// end unregisters a subscription whose share data was removed. The caller
// holds topic.mu.
func (sub *subscriber) end() {
	sub.state = subEnded
	sub.topic.remove(sub)
	sub.sess.forget(sub)
}

// lost closes, with 4001, every connection subscribed to id ("" for any):
// events may have been lost, and only a resubscribe with since can tell
// their clients what they missed.
func (h *hub) lost(id string) {
	h.mu.RLock()
	var topics []*topic
	for tid, t := range h.topics {
		if id == "" || tid == id {
			topics = append(topics, t)
		}
	}
	h.mu.RUnlock()
	n := 0
	for _, t := range topics {
		t.mu.Lock()
		for _, sub := range t.subs {
			sub.sess.close(causeEventsLost, CloseFellBehind, "events may have been lost; resubscribe", false)
			n++
		}
		t.mu.Unlock()
	}
	if n > 0 {
		h.log.Warn("realtime: events may have been lost; closed the subscribed connections", "share_data_id", id, "subscriptions", n)
	}
}

// join subscribes sess to id. The subscription registers before the
// snapshot is taken, so every event from then on is either reflected in the
// snapshot or held; once the snapshot (and, with since, the replay) is
// known it queues the state frame, then the replay, then the held frames
// newer than the snapshot, and only then goes live: no transaction is
// missed or sent twice.
//
// A replay flows: it is fed to the connection as its queue drains, by a
// goroutine of the server's, so a client that keeps reading receives a
// window larger than the send cap. The live frames that arrive meanwhile
// are held (at most maxHeld bytes).
//
// It returns the outcome, which the session reported (through remember)
// when the subscription was kept. SubscribeUnknown means id does not exist,
// after which the connection is to be closed with 4003. A failure the
// server may recover from (the manager or the replay store briefly
// unreachable) is answered with an internal-error frame naming id, and the
// subscription is not kept (SubscribeFailed): the client subscribes again
// later.
func (h *hub) join(ctx context.Context, sess *session, id, since string, hasSince bool) SubscribeOutcome {
	sub := &subscriber{sess: sess, id: id, index: -1}
	h.attach(sub)
	snap, err := h.manager.Snapshot(ctx, id)
	if err != nil {
		h.detach(sub)
		if errors.Is(err, ErrUnknownShareData) {
			return SubscribeUnknown
		}
		h.log.Error("realtime: snapshot failed", "share_data_id", id, "err", err)
		sess.send(&ErrorMessage{Code: CodeInternal, Message: "could not read the share data; subscribe again", ShareDataID: id})
		return SubscribeFailed
	}
	var replay []ReplayRecord
	var replayErr error
	budgetSpent := false
	if hasSince && since != snap.LastTransactionID {
		if !sess.allowReplay() {
			budgetSpent = true
			replayErr = ErrReplayCursorNotFound
		} else {
			replay, replayErr = h.store.Replay(ctx, id, since, snap.LastTransactionID)
			if replayErr != nil && !errors.Is(replayErr, ErrReplayCursorNotFound) {
				h.detach(sub)
				h.log.Error("realtime: replay failed", "share_data_id", id, "err", replayErr)
				sess.send(&ErrorMessage{Code: CodeInternal, Message: "could not read the replay window; subscribe again", ShareDataID: id})
				return SubscribeFailed
			}
			size := 0
			for i := range replay {
				size += len(replay[i].Message)
			}
			sess.chargeReplay(size)
		}
	}

	t := sub.topic
	t.mu.Lock()
	if sub.state == subEnded {
		// Closed for falling behind while the snapshot was read.
		t.mu.Unlock()
		h.detach(sub)
		return SubscribeFailed
	}
	defer t.mu.Unlock()
	sess.send(&StateMessage{ShareDataID: id, CurrentState: snap.State, LastTransactionID: snap.LastTransactionID})
	switch {
	case budgetSpent:
		sess.send(&ErrorMessage{Code: CodeReplayCursorNotFound,
			Message: "this connection's replay budget is spent; transactions before the state were not replayed", ShareDataID: id})
	case replayErr != nil:
		sess.send(&ErrorMessage{Code: CodeReplayCursorNotFound,
			Message: "cursor " + quoteForError(since) + " is outside the replay window; transactions before the state were not replayed", ShareDataID: id})
	}
	sub.version = snap.Version
	outcome := SubscribeNew
	switch {
	case replayErr != nil:
		outcome = SubscribeCursorNotFound
	case hasSince:
		outcome = SubscribeRecovered
	}
	sess.remember(sub, outcome)
	if len(replay) > 0 {
		sub.state = subReplaying
		h.wg.Add(1)
		go h.feed(sub, replay)
		return outcome
	}
	sub.goLive()
	return outcome
}

// feed queues a replay for sub as its connection's queue drains, then the
// held frames, then makes it live. It stops when the subscription ends or
// the connection closes; the client then resubscribes from the last
// transaction it received.
func (h *hub) feed(sub *subscriber, replay []ReplayRecord) {
	defer h.wg.Done()
	sess, t := sub.sess, sub.topic
	for i := range replay {
		frame := sess.frame(replay[i].Message)
		replay[i] = ReplayRecord{} // what is queued is no longer held here
		if !sess.waitRoom(sub, len(frame)) {
			return
		}
		t.mu.Lock()
		if sub.state != subReplaying {
			t.mu.Unlock()
			return // unsubscribed, resubscribed or closed meanwhile
		}
		sess.enqueue(frame)
		t.mu.Unlock()
	}
	for {
		t.mu.Lock()
		if sub.state != subReplaying {
			t.mu.Unlock()
			return
		}
		next := sub.goLive()
		t.mu.Unlock()
		if next < 0 || !sess.waitRoom(sub, next) {
			return
		}
	}
}

// goLive queues the held frames the snapshot does not reflect and makes
// sub live. Once the subscription is replaying (the feeder calls it) it
// queues only what the connection has room for, and returns the size of
// the next held frame when some are left, for the feeder to wait for room;
// otherwise it returns -1. The caller holds topic.mu.
func (sub *subscriber) goLive() int {
	flow := sub.state == subReplaying
	for len(sub.held) > 0 {
		p := sub.held[0]
		if flow && !sub.sess.hasRoom(len(p.frame)) {
			return len(p.frame)
		}
		sub.held[0] = heldFrame{}
		sub.held = sub.held[1:]
		sub.heldBytes -= len(p.frame)
		if sub.deliver(p.version, p.frameFor(sub.sess), p.at) && p.removed {
			sub.end()
			return -1
		}
		if sub.state == subEnded {
			return -1
		}
	}
	sub.held, sub.heldBytes = nil, 0
	sub.state = subLive
	return -1
}

// attach registers sub with its share data's topic, creating the topic.
func (h *hub) attach(sub *subscriber) {
	h.mu.Lock()
	t := h.topics[sub.id]
	if t == nil {
		t = &topic{id: sub.id}
		h.topics[sub.id] = t
	}
	t.mu.Lock()
	sub.topic = t
	t.add(sub)
	t.mu.Unlock()
	h.mu.Unlock()
}

// detach unregisters sub (unsubscribe, resubscribe, or the connection
// ended), stops its feeder, and drops its topic when it was the last.
func (h *hub) detach(sub *subscriber) {
	t := sub.topic
	h.mu.Lock()
	t.mu.Lock()
	sub.stop()
	t.remove(sub)
	h.dropIfEmptyLocked(t)
	t.mu.Unlock()
	h.mu.Unlock()
}

// dropTopicIfEmpty forgets t when no subscription is left on it.
func (h *hub) dropTopicIfEmpty(t *topic) {
	h.mu.Lock()
	t.mu.Lock()
	h.dropIfEmptyLocked(t)
	t.mu.Unlock()
	h.mu.Unlock()
}

// dropIfEmptyLocked is dropTopicIfEmpty for a caller holding h.mu and t.mu.
func (h *hub) dropIfEmptyLocked(t *topic) {
	if len(t.subs) == 0 && !t.dead && h.topics[t.id] == t {
		t.dead = true
		delete(h.topics, t.id)
	}
}
