package realtime

import "time"

// This file holds the per-connection budgets that bound what one client
// can make the server do, whatever it sends: the bytes replayed to it
// (a 64-byte subscribe with since can ask for a whole window) and the
// proposals it makes (each one runs a function and may be remembered in
// a key window). A connection that uses neither never allocates them.

// Defaults of the budgets in ServerOptions.
const (
	defaultReplayBytesPerMinute = 16 << 20
	defaultProposalsPerSecond   = 100
)

// connLimits is one connection's budgets, made at its first replay or
// proposal. Guarded by the session's mu.
type connLimits struct {
	replay   tokenBucket // bytes
	proposal tokenBucket // proposals
}

// tokenBucket refills continuously at a rate up to a burst. It starts
// full.
type tokenBucket struct {
	tokens float64
	last   int64 // stamp() of the last refill; 0: never used
}

// refill adds what rate (tokens per second) gave since the last call, up
// to burst.
func (b *tokenBucket) refill(now int64, rate, burst float64) {
	if b.last == 0 {
		b.tokens = burst
	} else if now > b.last {
		b.tokens = min(burst, b.tokens+float64(now-b.last)*rate/float64(time.Second))
	}
	b.last = now
}

// take takes cost tokens only when the balance covers them, and reports
// whether it did.
func (b *tokenBucket) take(now int64, rate, burst, cost float64) bool {
	b.refill(now, rate, burst)
	if b.tokens < cost {
		return false
	}
	b.tokens -= cost
	return true
}

// limitsLocked returns the session's budgets, making them; the caller
// holds s.mu.
func (s *session) limitsLocked() *connLimits {
	if s.limits == nil {
		s.limits = &connLimits{}
	}
	return s.limits
}

// allowReplay reports whether the connection may be replayed now: its
// budget of replayed bytes per minute is not spent. A replay that is
// allowed is charged with chargeReplay once its size is known.
func (s *session) allowReplay() bool {
	per := s.srv.opts.ReplayBytesPerMinute
	if per < 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &s.limitsLocked().replay
	b.refill(stamp(), float64(per)/60, float64(per))
	return b.tokens > 0
}

// chargeReplay charges n replayed bytes to the connection's budget. The
// balance may go negative: a replay is not cut in the middle, and the
// debt delays the next one.
func (s *session) chargeReplay(n int) {
	per := s.srv.opts.ReplayBytesPerMinute
	if per < 0 {
		return
	}
	s.mu.Lock()
	b := &s.limitsLocked().replay
	b.refill(stamp(), float64(per)/60, float64(per))
	b.tokens -= float64(n)
	s.mu.Unlock()
}

// allowProposal takes one proposal from the connection's budget and
// reports whether there was one.
func (s *session) allowProposal() bool {
	per := s.srv.opts.ProposalsPerSecond
	if per < 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limitsLocked().proposal.take(stamp(), float64(per), float64(per), 1)
}
