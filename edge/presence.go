package edge

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Presence subscriptions (PROTOCOL.md §7.6). The region decides who may
// see whose presence: its snapshot answer to presence_subscribe holds only
// the permitted users. The edge keeps each session subscribed to exactly
// those users, and never forwards an event about anyone else.
//
// To lose no event between the snapshot read and the subscription, the
// requested users are registered in e.subs *before* the query, as pending:
// an event for a pending user is held (the latest one per user, so at most
// MaxPresenceSubscriptions are held), never forwarded. When the snapshot
// answer arrives the session is answered, the pending set is narrowed to
// the users the snapshot returned (the others are unsubscribed and their
// held events dropped), and the held events of the permitted users are
// pushed after the snapshot, under e.mu, so no later event overtakes them.
// A failed query leaves the session subscribed to nobody.

// presenceSubscribe handles a presence_subscribe frame in the session
// goroutine.
func (s *session) presenceSubscribe(f *pb.ClientFrame) {
	e := s.e
	users := f.GetPresenceSubscribe().GetUsers() // at most MaxPresenceSubscriptions (shapeError)
	e.beginSubscriptions(s, users)
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.BackendTimeout)
	resp, err := e.be.Query(ctx, s.dev, f)
	cancel()
	if err != nil {
		resp = &pb.Response{Error: core.ToWire(err)}
	}
	if resp == nil {
		resp = &pb.Response{Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_INTERNAL, Detail: "no presence snapshot"}}
	}
	resp.ReqId = f.GetReqId()
	var permitted []string
	if resp.GetError() == nil {
		for _, ev := range resp.GetPresence().GetUsers() {
			permitted = append(permitted, ev.GetUserId())
		}
	}
	s.respond(resp)
	e.confirmSubscriptions(s, permitted)
}

// beginSubscriptions replaces s's presence subscriptions by users, all
// pending: their events are held, not forwarded, until confirmSubscriptions.
func (e *Edge) beginSubscriptions(s *session, users []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clearSubscriptionsLocked(s)
	if e.sessions[s.id] != s { // already unregistered
		return
	}
	s.pending = make(map[string][]byte, len(users))
	for _, u := range users {
		s.pending[u] = nil
		e.subscribeLocked(s, u)
	}
}

// confirmSubscriptions narrows s's pending subscriptions to permitted,
// makes them live, and pushes the events held for them meanwhile.
func (e *Edge) confirmSubscriptions(s *session, permitted []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	held := s.pending
	s.pending = nil
	if held == nil { // unregistered, or replaced by a newer subscribe
		return
	}
	ok := make(map[string]bool, len(permitted))
	for _, u := range permitted {
		if _, requested := held[u]; requested {
			ok[u] = true
		}
	}
	for u := range held {
		if !ok[u] {
			e.unsubscribeLocked(s, u)
		}
	}
	s.subs = make(map[string]struct{}, len(ok))
	for u := range ok {
		s.subs[u] = struct{}{}
	}
	for _, u := range permitted {
		if b := held[u]; b != nil && ok[u] {
			held[u] = nil // once, even if permitted names u twice
			s.pushBytes(b)
		}
	}
}

func (e *Edge) subscribeLocked(s *session, user string) {
	m := e.subs[user]
	if m == nil {
		m = map[*session]struct{}{}
		e.subs[user] = m
	}
	m[s] = struct{}{}
}

// clearSubscriptionsLocked removes every subscription of s, live or pending.
func (e *Edge) clearSubscriptionsLocked(s *session) {
	for u := range s.subs {
		e.unsubscribeLocked(s, u)
	}
	for u := range s.pending {
		e.unsubscribeLocked(s, u)
	}
	s.subs, s.pending = nil, nil
}

// handlePresence pushes a presence event to the sessions subscribed to its
// user (and holds it for sessions whose subscription is pending).
func (e *Edge) handlePresence(_ context.Context, rec core.BusRecord) error {
	var r pb.PresenceRecord
	if err := proto.Unmarshal(rec.Value, &r); err != nil || r.GetEvent() == nil {
		e.log.Warn("bad presence record skipped", "offset", rec.Offset, "err", err)
		return nil
	}
	e.n.presence.Add(1)
	user := r.GetEvent().GetUserId()
	b, err := marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Presence{Presence: r.GetEvent()}})
	if err != nil {
		return nil
	}
	e.mu.Lock()
	var to []*session
	for s := range e.subs[user] {
		if _, live := s.subs[user]; live {
			to = append(to, s)
		} else if _, pending := s.pending[user]; pending {
			s.pending[user] = b // the latest event is the user's current state
		}
	}
	e.mu.Unlock()
	for _, s := range to {
		s.pushBytes(b)
	}
	return nil
}
