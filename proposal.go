package realtime

import (
	"context"
	"encoding/json"
	"time"
)

// This file is the context a proposal is served with: who proposes what,
// for the authorizer, the resolver, the manager and the function, and the
// deadline that bounds them.

// defaultProposalTimeout bounds serving one proposal (ServerOptions.ProposalTimeout).
const defaultProposalTimeout = 10 * time.Second

// Proposal is a proposal as the server serves it: what the client sent and
// who sent it. ProposalFromContext returns it to the propose authorizer,
// the function resolver, the manager and the function, which get the
// proposal's context (as Centrifuge's publish and RPC handlers get the
// client and the data). It must not be modified.
type Proposal struct {
	ShareDataID   string          // the share data item
	FunctionID    string          // the function the client asked for
	ProposedData  json.RawMessage // the proposed data, as sent
	CorrelationID string          // the client's id for the request
	// Auth is the connection's authentication value, what
	// ServerOptions.Authenticate returned for it (a *Claims with the JWT
	// bridge); nil without authentication.
	Auth any
	// RemoteAddr is the network address of the connection's peer (a
	// proxy's, behind one).
	RemoteAddr string
}

type proposalKey struct{}

// ProposalFromContext returns the proposal ctx serves, when it is a
// proposal's context (the server's hooks and functions get one), so that a
// function can decide by who calls ("only the owner may delete it") and
// record the author, and an authorizer can look at the data.
func ProposalFromContext(ctx context.Context) (*Proposal, bool) {
	p, ok := ctx.Value(proposalKey{}).(*Proposal)
	return p, ok
}

// proposalContext returns the context m is served with: the server's (it
// ends at Shutdown) with the proposal and the ProposalTimeout deadline.
func (s *session) proposalContext(m *ProposeMessage) (context.Context, context.CancelFunc) {
	p := &Proposal{ShareDataID: m.ShareDataID, FunctionID: m.FunctionID, ProposedData: m.ProposedData,
		CorrelationID: m.CorrelationID, Auth: s.auth, RemoteAddr: s.conn.RemoteAddr().String()}
	ctx := context.WithValue(s.ctx, proposalKey{}, p)
	if d := s.srv.opts.ProposalTimeout; d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}
