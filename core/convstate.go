package core

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/chatmesh/chatmesh/core/pb"
)

// ConvState is the sequencer's view of one conversation: the stored
// conversation, its members and pending invitations, and every device's
// cursors. The partition worker that owns the conversation loads it once,
// keeps it, and moves it forward with Apply and MoveCursor after each store
// write, so the hot path re-reads nothing. Everything here is pure: the
// sequencer's decisions are functions of (ConvState, request, facts). A
// ConvState belongs to that one worker: not safe for concurrent use (even
// MembersAt fills a cache).
type ConvState struct {
	Conv    Conversation
	Members map[string]Member // members and invitations, by user
	Cursors map[DeviceKey]Cursor
	// recent holds the sender user of the newest user entries of a group
	// (seq ascending), so a cursor move can name the senders to receipt
	// without reading messages back. Direct conversations keep none: their
	// only possible sender is the peer.
	recent []recentEntry
	// trackedAfter: every user entry with a greater seq is in recent.
	trackedAfter uint64
	// lastSent is the client_msg_id of each device's newest user entry
	// applied to this state (not every device: only those that sent
	// since the state was loaded), so a pipelined send naming its
	// predecessor (SendRequest.after_client_msg_id) is checked without a
	// store read.
	lastSent map[DeviceKey]string
	// members is MembersAt's sorted member list (invitations excluded),
	// built on first use after a change of Members; shared, never
	// modified.
	members []string
	// lastJoin is the greatest JoinedSeq in members: MembersAt hands out
	// the whole list for a seq at or past it.
	lastJoin uint64
}

type recentEntry struct {
	seq    uint64
	sender string
}

// recentMax is the least number of entries ConvState.recent covers once
// that many were applied: it grows to twice that, then drops its older
// half (one copy per recentMax entries, not one per entry). A cursor move
// over more entries than the window falls back to a bounded store scan.
// 256 covers a member's ack pause (250 ms on average) at 1,000 group
// messages per second; at 64, in a 500-member group at 200 msg/s with
// acks, about a quarter of the acks fell back to a scan (5,484 of about
// 20,700 in 10 s), which read whole messages: 0.31 s of a 6.7 s server
// profile (4.6%).
const recentMax = 256

// NewConvState builds the state of a stored conversation.
func NewConvState(c Conversation, members []Member, cursors []Cursor) *ConvState {
	s := &ConvState{Conv: c, Members: make(map[string]Member, len(members)), Cursors: make(map[DeviceKey]Cursor, len(cursors)), trackedAfter: c.Head}
	for _, m := range members {
		s.Members[m.User] = m
	}
	for _, cu := range cursors {
		s.Cursors[cu.Device] = cu
	}
	return s
}

// SizeEstimate is a rough byte count of the state, for cache bounds.
func (s *ConvState) SizeEstimate() int {
	return 256 + 96*len(s.Members) + 16*len(s.members) + 80*len(s.Cursors) + 40*len(s.recent) + 96*len(s.lastSent)
}

// SentLast reports whether clientMsgID is dev's newest user entry applied
// to the state. False means only "not known here": the caller looks the
// key up in the store.
func (s *ConvState) SentLast(dev DeviceKey, clientMsgID string) bool {
	last, ok := s.lastSent[dev]
	return ok && last == clientMsgID
}

// IsMember reports whether u is a member (not merely invited).
func (s *ConvState) IsMember(u string) bool {
	m, ok := s.Members[u]
	return ok && !m.Invited
}

// Member returns u's membership (members only).
func (s *ConvState) Member(u string) (Member, bool) {
	m, ok := s.Members[u]
	if !ok || m.Invited {
		return Member{}, false
	}
	return m, true
}

// MemberSet returns the members (invitations excluded).
func (s *ConvState) MemberSet() MemberSet {
	set := make(MemberSet, len(s.Members))
	for u, m := range s.Members {
		if !m.Invited {
			set[u] = m.JoinedSeq
		}
	}
	return set
}

// MembersAt returns the members (invitations excluded) who had joined by
// seq, sorted: the recipients of entry seq. The list is shared with the
// state and later calls (a group's every message asks for it): the caller
// must not modify it. Apply makes a new one when membership changes.
func (s *ConvState) MembersAt(seq uint64) []string {
	if s.members == nil {
		s.members, s.lastJoin = make([]string, 0, len(s.Members)), 0
		for u, m := range s.Members {
			if !m.Invited {
				s.members = append(s.members, u)
				s.lastJoin = max(s.lastJoin, m.JoinedSeq)
			}
		}
		slices.Sort(s.members)
	}
	if seq >= s.lastJoin {
		return s.members
	}
	out := make([]string, 0, len(s.members))
	for _, u := range s.members {
		if s.Members[u].JoinedSeq <= seq {
			out = append(out, u)
		}
	}
	return out
}

// MemberList returns the members and invitations, ordered by user.
func (s *ConvState) MemberList() []Member {
	out := make([]Member, 0, len(s.Members))
	for _, m := range s.Members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.User, b.User) })
	return out
}

// Invited returns the pending invitations, sorted.
func (s *ConvState) Invited() []string {
	var out []string
	for u, m := range s.Members {
		if m.Invited {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// admins returns the members with admin rights, sorted.
func (s *ConvState) admins() []string {
	var out []string
	for u, m := range s.Members {
		if !m.Invited && m.Admin {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// Info renders the conversation as the wire's ConversationInfo.
func (s *ConvState) Info() *pb.ConversationInfo {
	return ConvInfo(s.Conv, s.MemberList())
}

// ConvInfo renders a conversation and its member list (members and
// invitations) as the wire's ConversationInfo.
func ConvInfo(c Conversation, members []Member) *pb.ConversationInfo {
	ms := slices.Clone(members)
	slices.SortFunc(ms, func(a, b Member) int { return cmp.Compare(a.User, b.User) })
	info := &pb.ConversationInfo{
		ConvId: c.ID, Kind: c.Kind, Title: c.Title,
		HeadSeq: c.Head, HomeRegion: c.HomeRegion, Epoch: c.Epoch,
	}
	for _, m := range ms {
		if m.Invited {
			info.Invited = append(info.Invited, m.User)
			continue
		}
		if m.Admin {
			info.AdminIndexes = append(info.AdminIndexes, uint32(len(info.Members)))
		}
		info.Members = append(info.Members, m.User)
	}
	return info
}

// Apply moves the state past a newly stored entry: the head, the epoch,
// the membership effects of req (MemberChanges, exactly as the stores
// apply them), the title, and the recent-senders window. It reports
// whether the members or invitations changed.
func (s *ConvState) Apply(req AppendRequest, stored *pb.Message) (membersChanged bool) {
	seq := stored.GetSeq()
	if req.Create != nil && s.Conv.Head == 0 {
		s.Conv = *req.Create
	}
	s.Conv.Head, s.Conv.Epoch = seq, stored.GetEpoch()
	if req.Title != nil {
		s.Conv.Title = *req.Title
	}
	// The stores persist exactly MemberChanges; the state applies the same.
	put, del := MemberChanges(s.Members, seq, &req)
	for _, m := range put {
		s.Members[m.User] = m
	}
	for _, u := range del {
		delete(s.Members, u)
	}
	if membersChanged = len(put) > 0 || len(del) > 0; membersChanged {
		s.members = nil
	}
	if stored.GetKind() == pb.MessageKind_MESSAGE_KIND_USER {
		if s.lastSent == nil {
			s.lastSent = map[DeviceKey]string{}
		}
		s.lastSent[KeyOf(stored.GetSender())] = stored.GetClientMsgId()
		if s.Conv.Kind != pb.ConversationKind_CONVERSATION_KIND_DIRECT {
			if len(s.recent) == 2*recentMax {
				s.trackedAfter = s.recent[recentMax-1].seq
				s.recent = append(s.recent[:0], s.recent[recentMax:]...)
			}
			s.recent = append(s.recent, recentEntry{seq: seq, sender: stored.GetSender().GetUserId()})
		}
	}
	return membersChanged
}

// CursorMove is a planned cursor advance.
type CursorMove struct {
	Conv string
	Dev  DeviceKey
	Kind CursorKind
	Seq  uint64
	// From is the cursor's previous value, or the reader's join point when
	// that is later: the receipt covers the entries in (From, Seq].
	From uint64
}

// PlanCursor decides what a delivery ack or read marker of dev up to seq
// does: it is clamped to the head, and moves only forward. ok is false
// when nothing moves (a stale or repeated marker). An outsider gets the
// same NOT_FOUND as for a conversation that does not exist.
func (s *ConvState) PlanCursor(dev DeviceKey, kind CursorKind, seq uint64) (mv CursorMove, ok bool, err error) {
	m, member := s.Member(dev.User)
	if !member {
		if _, invited := s.Members[dev.User]; invited {
			return CursorMove{}, false, fmt.Errorf("cursor %s: %s: invited, not a member: %w", s.Conv.ID, dev.User, ErrNotMember)
		}
		return CursorMove{}, false, OutsiderError(kind.op())
	}
	if seq > s.Conv.Head {
		seq = s.Conv.Head
	}
	cur := s.Cursors[dev]
	prev := cur.Delivered
	if kind == CursorRead {
		prev = cur.Read
	}
	if seq <= prev {
		return CursorMove{}, false, nil
	}
	from := prev
	if m.JoinedSeq > 0 && from < m.JoinedSeq-1 {
		from = m.JoinedSeq - 1 // never receipt what was sent before the reader joined
	}
	return CursorMove{Conv: s.Conv.ID, Dev: dev, Kind: kind, Seq: seq, From: from}, true, nil
}

// MoveCursor applies a planned move to the state.
func (s *ConvState) MoveCursor(mv CursorMove) {
	cur := s.Cursors[mv.Dev]
	cur.Conv, cur.Device = mv.Conv, mv.Dev
	if mv.Kind == CursorRead {
		cur.Read = max(cur.Read, mv.Seq)
	} else {
		cur.Delivered = max(cur.Delivered, mv.Seq)
	}
	s.Cursors[mv.Dev] = cur
}

// ReceiptSenders returns the users (other than the reader) whose user
// entries lie in (mv.From, mv.Seq], sorted, and whether the state knew
// every entry of that range. When it did not, the caller scans the store
// (see SendersToNotify). In a 1:1 conversation the only possible sender
// is the peer, so the answer is always complete.
func (s *ConvState) ReceiptSenders(mv CursorMove) (senders []string, complete bool) {
	if s.Conv.Kind == pb.ConversationKind_CONVERSATION_KIND_DIRECT {
		for u := range s.MemberSet() {
			if u != mv.Dev.User {
				senders = append(senders, u)
			}
		}
		slices.Sort(senders)
		return senders, true
	}
	if mv.Seq <= mv.From {
		return nil, true
	}
	if mv.From < s.trackedAfter {
		return nil, false // entries before the window: the caller scans
	}
	// Sorted and compacted, not a set: every ack of a busy group's members
	// runs this (with a map per ack it allocated 21 MB of the server's 741
	// MB in 6 s of a 500-member group at 100 msg/s with acks).
	for i := len(s.recent) - 1; i >= 0 && s.recent[i].seq > mv.From; i-- {
		if e := s.recent[i]; e.seq <= mv.Seq && e.sender != mv.Dev.User {
			senders = append(senders, e.sender)
		}
	}
	slices.Sort(senders)
	return slices.Compact(senders), true
}

func (k CursorKind) op() string {
	if k == CursorRead {
		return "read"
	}
	return "ack"
}
