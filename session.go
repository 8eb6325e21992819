package realtime

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// This file holds one server connection: its bounded send queue and the
// writer that drains it, and the read loop that dispatches the client's
// messages.

// maxWriteBatch bounds the bytes written by one system call, so pongs and
// close frames queued meanwhile wait for at most that much.
const maxWriteBatch = 64 << 10

type session struct {
	srv     *Server
	conn    *Conn
	auth    any
	ctx     context.Context // the server's: ends when it shuts down
	writeFn func()          // s.writeLoop, made once
	readFn  func()          // s.readLoop, made once
	expiry  *time.Timer

	mu      sync.Mutex
	queue   [][]byte  // frames accepted, not yet taken by the writer
	spare   [][]byte  // the writer's previous batch, reused
	queued  int       // bytes accepted and not yet written
	writing bool      // a writer goroutine is running
	closing bool      // no more frames are accepted
	cause   causeCode // why the server closed it, the first reason
	// pinged is heartbeat state, touched only by the heartbeat goroutine
	// (here, beside the other small fields, to keep the struct small).
	pinged bool
	// roomWaiters counts the producers waiting in waitRoom; room wakes
	// them (made at the first wait, so a connection that never replays
	// does not pay for it).
	roomWaiters int32
	room        *sync.Cond
	// closeCode is sent by the writer once the queue is drained (0: none).
	closeCode   CloseCode
	closeReason string
	subs        subList
	// oldestAt stamps the oldest event frame queued (0: none), when the
	// server reports its writes (Observer.Wrote).
	oldestAt int64

	// limits are the replay and proposal budgets (limits.go), made at
	// the first replay or proposal.
	limits *connLimits

	// Heartbeat state, touched only by the heartbeat goroutine.
	pongsSeen uint64
}

// enqueue accepts a frame for sending. It never blocks: when the queued
// bytes would pass the cap, the connection is closed with 4001 instead.
func (s *session) enqueue(frame []byte) { s.enqueueAt(frame, 0) }

// enqueueAt is enqueue for an event's frame that the hub received at the
// stamp at (0: not stamped).
func (s *session) enqueueAt(frame []byte, at int64) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	if len(frame) > s.srv.opts.MaxBufferedBytes-s.queued { // queued <= the cap: cannot overflow
		queued := s.queued
		s.mu.Unlock()
		s.srv.stats.slowConsumerCloses.Add(1)
		s.srv.log.Warn("realtime: closing a slow consumer", "remote", s.conn.RemoteAddr().String(), "queued_bytes", queued)
		s.close(causeSlowConsumer, CloseFellBehind, "send buffer overflow: the client fell behind", false)
		return
	}
	s.queue = append(s.queue, frame)
	s.queued += len(frame)
	if s.oldestAt == 0 {
		s.oldestAt = at
	}
	s.startWriterLocked()
	s.mu.Unlock()
}

// startWriterLocked starts the writer unless it runs; the caller holds mu.
// A connection with nothing to send has no writer goroutine.
func (s *session) startWriterLocked() {
	if !s.writing {
		s.writing = true
		s.srv.wg.Add(1)
		go s.writeFn() // a stored func value: starting it allocates nothing
	}
}

// hasRoom reports whether a frame of n bytes fed by a flow (a replay) may
// be queued now: the queue is empty, or holds at most half the cap with the
// frame. The other half is left for live frames, replies and other
// subscriptions' frames, so a flow never closes its connection with 4001.
func (s *session) hasRoom(n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hasRoomLocked(n)
}

func (s *session) hasRoomLocked(n int) bool {
	mark := s.srv.opts.MaxBufferedBytes / 2
	return s.queued == 0 || (s.queued <= mark && n <= mark-s.queued) // cannot overflow
}

// waitRoom blocks until hasRoom(n) holds, as the writer drains the queue,
// and reports true; it reports false once the connection is closing or
// sub's feed was stopped (stopFeed).
func (s *session) waitRoom(sub *subscriber, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closing && !sub.feedStopped && !s.hasRoomLocked(n) {
		if s.room == nil {
			s.room = sync.NewCond(&s.mu)
		}
		s.roomWaiters++
		s.room.Wait()
		s.roomWaiters--
	}
	return !s.closing && !sub.feedStopped
}

// stopFeed ends sub's feed: its feeder, if it waits in waitRoom, returns
// now rather than when the queue drains. The hub calls it as the
// subscription ends.
func (s *session) stopFeed(sub *subscriber) {
	s.mu.Lock()
	sub.feedStopped = true
	s.wakeLocked()
	s.mu.Unlock()
}

// wakeLocked wakes the producers in waitRoom; the caller holds mu and has
// released queued bytes or marked the connection closing.
func (s *session) wakeLocked() {
	if s.roomWaiters > 0 {
		s.room.Broadcast()
	}
}

// send encodes a direct reply and queues it.
func (s *session) send(m ServerMessage) {
	s.enqueue(s.frame(m.AppendJSON(nil)))
}

// frame encodes payload as a frame for this connection alone: compressed
// when it negotiated permessage-deflate and payload is long enough.
func (s *session) frame(payload []byte) []byte {
	if s.conn.deflate {
		f, _ := appendServerFrameCompressed(nil, payload)
		return f
	}
	return appendServerFrame(nil, payload)
}

// compresses reports whether the connection negotiated permessage-deflate.
func (s *session) compresses() bool { return s.conn.deflate }

// close stops the connection with code, for cause. With drain, frames
// already queued are sent first (graceful shutdown); without, they are
// dropped and the close frame goes out as soon as the connection can take
// it. It never blocks.
func (s *session) close(cause causeCode, code CloseCode, reason string, drain bool) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing = true
	s.setCauseLocked(cause)
	s.wakeLocked()
	s.closeCode, s.closeReason = code, reason
	if !drain {
		clear(s.queue)
		s.queue = s.queue[:0]
		s.oldestAt = 0
		if s.writing {
			// The writer is busy (maybe blocked on a slow peer): close
			// from here, so the close frame follows the current write.
			s.closeCode = 0
			s.mu.Unlock()
			s.srv.goClose(s.conn, code, reason)
			return
		}
	}
	s.startWriterLocked()
	s.mu.Unlock()
}

// writeLoop sends queued frames in batches until the queue is empty, then
// ends; a later enqueue starts a new one.
//
// A writer starts on the smallest goroutine stack, and at saturation one
// starts per connection per burst, so growing that stack (a copy of it)
// would cost more than the write. Its chain of calls down to the writev
// system call therefore keeps small frames: the rare paths (a ping, the
// close, an error) are calls of their own.
func (s *session) writeLoop() {
	for {
		batch, at := s.nextBatch()
		if batch == nil {
			break
		}
		size, err := s.writeBatch(batch)
		if err == nil && s.srv.opts.Observer.Wrote != nil {
			s.reportWrite(len(batch), size, at)
		}
		if !s.batchDone(batch, err) {
			break
		}
	}
	s.srv.wg.Done()
}

// reportWrite tells the observer of a batch of frames and size bytes
// written, whose oldest event frame the hub received at the stamp at (0:
// none).
func (s *session) reportWrite(frames, size int, at int64) {
	r := WriteReport{Frames: frames, Bytes: size}
	if at != 0 {
		r.Latency = time.Duration(stamp() - at)
	}
	s.srv.opts.Observer.Wrote(r)
}

// nextBatch takes what is queued, and the stamp of its oldest event frame,
// first sending a ping or pong owed to the peer; with nothing queued it
// ends the writer (sending the close asked for, if any) and returns nil.
func (s *session) nextBatch() ([][]byte, int64) {
	for {
		s.mu.Lock()
		if len(s.queue) == 0 && s.conn.controlPending() && !s.conn.isClosed() {
			// A ping the heartbeat asked for. It is checked under mu, as
			// ping sets it, so a ping asked for while this writer ends is
			// either sent here or finds the writer gone and starts one.
			s.mu.Unlock()
			s.conn.flushControl()
			continue
		}
		if len(s.queue) == 0 {
			s.writing = false
			code, reason := s.closeCode, s.closeReason
			s.closeCode = 0
			s.mu.Unlock()
			if code != 0 {
				s.conn.Close(code, reason)
			}
			return nil, 0
		}
		batch, at := s.queue, s.oldestAt
		s.queue, s.spare, s.oldestAt = s.spare[:0], nil, 0
		s.mu.Unlock()
		return batch, at
	}
}

// batchDone keeps batch's slice for reuse and reports whether the writer
// goes on: after an error the connection is closing and the queue is
// dropped.
func (s *session) batchDone(batch [][]byte, err error) bool {
	clear(batch) // let the frames be collected
	s.mu.Lock()
	s.spare = batch[:0]
	if err != nil {
		s.closing = true
		if isTimeout(err) {
			s.setCauseLocked(causeWriteTimeout)
		}
		s.wakeLocked()
		s.writing = false
		clear(s.queue)
		s.queue = s.queue[:0]
		s.oldestAt = 0
	}
	s.mu.Unlock()
	return err == nil
}

// writeBatch writes frames in system calls of at most maxWriteBatch bytes.
// The bytes of each call are released from the queue's count as soon as it
// completes, so the cap measures what is really unsent and a fast reader
// behind a large batch is not taken for a slow one. The write timeout
// bounds each call, and Shutdown's forced close ends a blocked one, so no
// context is watched (watching one would allocate on every wake-up). It
// returns the bytes written.
func (s *session) writeBatch(frames [][]byte) (int, error) {
	total := 0
	for len(frames) > 0 {
		n, size := 0, 0
		for n < len(frames) && (n == 0 || size+len(frames[n]) <= maxWriteBatch) {
			size += len(frames[n])
			n++
		}
		if err := s.conn.writeFrames(frames[:n]); err != nil {
			return total, err
		}
		s.sent(n, size)
		total += size
		frames = frames[n:]
	}
	return total, nil
}

// sent accounts for n frames of size bytes written.
func (s *session) sent(n, size int) {
	s.srv.stats.framesSent.Add(uint64(n))
	s.srv.stats.bytesSent.Add(uint64(size))
	s.mu.Lock()
	s.queued -= size
	s.wakeLocked()
	s.mu.Unlock()
}

// ping has the connection's writer send a ping, starting it if needed. It
// never blocks: a peer whose socket is full delays only its own writer. It
// reports false when the connection is closing.
func (s *session) ping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || !s.conn.requestPing() {
		return false
	}
	s.startWriterLocked()
	return true
}

// forget drops a subscription that ended (its share data was removed).
func (s *session) forget(sub *subscriber) {
	s.mu.Lock()
	s.subs.remove(sub)
	s.mu.Unlock()
	s.srv.subscriptionEnded()
}

// readLoop serves the client's messages until the connection ends. It
// first waits for bytes with as shallow a stack as it can: an idle
// connection's only goroutine is this wait, so its stack is what an idle
// connection costs.
func (s *session) readLoop() {
	defer s.srv.wg.Done()
	s.conn.waitReadable()
	s.serve()
}

// serve reads and dispatches messages. Handling a message grows the
// goroutine's stack, and a grown stack stays with the goroutine while it
// waits for the next message; so when nothing more is buffered, serve hands
// the wait over to a fresh goroutine and returns. When the connection ends
// it releases everything the session holds.
func (s *session) serve() {
	var buf []byte
	for {
		typ, msg, err := s.conn.ReadInto(context.Background(), buf)
		if err != nil {
			s.srv.log.Debug("realtime: connection ended", "remote", s.conn.RemoteAddr().String(), "err", err)
			s.cleanup(err)
			return
		}
		buf = msg
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if closing {
			continue // keep reading until the close handshake is done
		}
		if typ != MessageText {
			s.close(causeProtocol, CloseUnsupportedData, "binary messages are not part of the protocol", true)
			continue
		}
		m, err := DecodeClientMessage(msg)
		if err != nil {
			s.close(causeProtocol, CloseInvalidMessage, closeReasonOf(err), true)
			continue
		}
		s.dispatch(m)
		if s.conn.buffered() == 0 {
			s.srv.wg.Add(1)
			go s.readFn()
			return
		}
	}
}

func (s *session) dispatch(m ClientMessage) {
	switch m := m.(type) {
	case *SubscribeMessage:
		s.subscribe(m)
	case *UnsubscribeMessage:
		s.unsubscribe(m.ShareDataID)
	case *ProposeMessage:
		s.propose(m)
	case *PingMessage:
		s.send(&PongMessage{CorrelationID: m.CorrelationID})
	}
}

// subscribe checks a subscribe against the authorizer and the connection's
// limit, then has the hub join it (snapshot, replay, held frames).
func (s *session) subscribe(m *SubscribeMessage) {
	srv := s.srv
	id := m.ShareDataID
	if az := srv.opts.AuthorizeSubscribe; az != nil {
		if err := az(s.ctx, s.auth, id); err != nil {
			s.send(&ErrorMessage{Code: CodeForbidden, Message: peerText(err), ShareDataID: id})
			srv.subscribed(SubscribeForbidden)
			return
		}
	}
	s.mu.Lock()
	old := s.subs.find(id)
	if old == nil && len(s.subs) >= srv.opts.MaxSubscriptionsPerConnection {
		s.mu.Unlock()
		s.send(&ErrorMessage{Code: CodeTooManySubscriptions,
			Message: "at most " + strconv.Itoa(srv.opts.MaxSubscriptionsPerConnection) + " subscriptions per connection", ShareDataID: id})
		srv.subscribed(SubscribeLimit)
		return
	}
	s.mu.Unlock()
	if old != nil {
		// Subscribing again restarts the subscription: a new state frame
		// (and replay), then live frames once.
		s.unsubscribe(id)
	}
	switch srv.hub.join(s.ctx, s, id, m.Since, m.HasSince) {
	case SubscribeUnknown:
		// The error frame names the id whole; the close reason is for
		// people and may be cut.
		s.send(&ErrorMessage{Code: CodeUnknownShareData, Message: "the share data does not exist", ShareDataID: id})
		s.close(causeProtocol, CloseUnknownShareData, "unknown share data "+quoteForError(id), true)
		srv.subscribed(SubscribeUnknown)
	case SubscribeFailed:
		srv.subscribed(SubscribeFailed)
	}
	// The other outcomes were reported by remember.
}

// remember records a subscription the hub joined, with its outcome, so
// that unsubscribe and the end of the connection find it. It reports the
// subscription before the hub can end it, so the observer never sees a
// subscription end before it began.
func (s *session) remember(sub *subscriber, outcome SubscribeOutcome) {
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	s.srv.stats.subscriptions.Add(1)
	s.srv.subscribed(outcome)
}

// unsubscribe stops the frames of one share data item. Unknown ids are
// ignored.
func (s *session) unsubscribe(id string) {
	s.mu.Lock()
	sub := s.subs.find(id)
	s.subs.remove(sub)
	s.mu.Unlock()
	if sub != nil {
		s.srv.hub.detach(sub)
		s.srv.subscriptionEnded()
	}
}

func (s *session) propose(m *ProposeMessage) {
	srv := s.srv
	var start time.Time
	if srv.opts.Observer.Proposed != nil {
		start = time.Now()
	}
	reject := func(outcome ProposalOutcome, reason string) {
		srv.stats.proposalsRejected.Add(1)
		res := &ProposalResultMessage{CorrelationID: m.CorrelationID, Error: reason}
		switch outcome {
		case ProposalOutcomeUnknown:
			res.Code = CodeOutcomeUnknown
		case ProposalRateLimited:
			res.Code = CodeRateLimited
		case ProposalFailed:
			res.Code = CodeInternal
		case ProposalTimedOut:
			res.Code = CodeTimeout
		}
		s.send(res)
		srv.proposed(m.FunctionID, outcome, start)
	}
	if !s.allowProposal() {
		reject(ProposalRateLimited, "too many proposals: at most "+strconv.Itoa(srv.opts.ProposalsPerSecond)+" per second on one connection")
		return
	}
	ctx, cancel := s.proposalContext(m)
	defer cancel()
	if az := srv.opts.AuthorizePropose; az != nil {
		if err := az(ctx, s.auth, m.ShareDataID, m.FunctionID); err != nil {
			reject(ProposalForbidden, peerText(err))
			return
		}
	}
	if srv.opts.ResolveFunction == nil {
		reject(ProposalDisabled, "propose is not enabled on this server")
		return
	}
	fn, err := srv.opts.ResolveFunction(ctx, m.ShareDataID, m.FunctionID)
	if err != nil {
		reject(ProposalUnresolved, peerText(err))
		return
	}
	tx, err := srv.safeApply(ctx, m, fn, s.auth)
	switch {
	case errors.Is(err, ErrFunctionPanicked):
		// A bug on the server: its text and stack are for the log, not
		// for the proposer.
		var stack []byte
		var pe *PanicError
		if errors.As(err, &pe) {
			stack = pe.Stack
		}
		srv.log.Error("realtime: a function panicked; the proposal is refused", "share_data_id", m.ShareDataID,
			"function_id", m.FunctionID, "correlation_id", m.CorrelationID, "err", err, "stack", string(stack))
		reject(ProposalFailed, "internal error")
		return
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(s.ctx.Err(), context.Canceled):
		// Past ProposalTimeout: a function that heeds its context
		// returns; nothing was applied, unless the manager was already
		// committing (a shared store), whose keyed retry tells.
		reject(ProposalTimedOut, "the proposal took longer than "+srv.opts.ProposalTimeout.String()+"; it was not applied, or its outcome is unknown")
		return
	case errors.Is(err, ErrOutcomeUnknown):
		reject(ProposalOutcomeUnknown, peerText(err))
		return
	case err != nil:
		reject(ProposalRejected, peerText(err))
		return
	}
	s.send(&ProposalResultMessage{CorrelationID: m.CorrelationID, Accepted: true, TransactionID: tx.ID})
	srv.proposed(m.FunctionID, ProposalAccepted, start)
	srv.stats.proposalsAccepted.Add(1) // after the reply is queued: a count a test can wait on
}

// cleanup releases the session once its connection ended; readErr is
// what ended the read loop.
func (s *session) cleanup(readErr error) {
	s.conn.CloseNow()
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.mu.Lock()
	s.closing = true
	s.wakeLocked()
	subs := s.subs
	s.subs = nil
	clear(s.queue)
	s.queue = nil
	cause := s.cause
	s.mu.Unlock()
	for _, sub := range subs {
		s.srv.hub.detach(sub)
		s.srv.subscriptionEnded()
	}
	s.srv.removeSession(s)
	if f := s.srv.opts.Observer.ConnectionClosed; f != nil {
		f(endReport(s.conn, cause, readErr))
	}
}

// setCauseLocked records why the server closes the connection unless a
// reason is known already; the caller holds mu.
func (s *session) setCauseLocked(c causeCode) {
	if s.cause == causeNone {
		s.cause = c
	}
}

// markCause is setCauseLocked for a caller that does not hold mu.
func (s *session) markCause(c causeCode) {
	s.mu.Lock()
	s.setCauseLocked(c)
	s.mu.Unlock()
}

// logAttrs describes the session in log lines.
func (s *session) logAttrs() slog.Attr {
	return slog.String("remote", s.conn.RemoteAddr().String())
}

// subList is a connection's subscriptions, searched linearly: for the few
// a connection usually holds (at most MaxSubscriptionsPerConnection), a
// slice costs less memory than a map.
type subList []*subscriber

func (l subList) find(id string) *subscriber {
	for _, sub := range l {
		if sub.id == id {
			return sub
		}
	}
	return nil
}

func (l *subList) remove(sub *subscriber) {
	for i, x := range *l {
		if x == sub {
			last := len(*l) - 1
			(*l)[i] = (*l)[last]
			(*l)[last] = nil
			*l = (*l)[:last]
			return
		}
	}
}
