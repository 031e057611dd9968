package core

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// ValidateSend checks a send request's shape (not membership).
func ValidateSend(s *pb.SendRequest) error {
	if s == nil {
		return fmt.Errorf("send: empty: %w", ErrInvalidArgument)
	}
	if KindOf(s.GetConvId()) == pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED {
		return fmt.Errorf("send: malformed conversation id: %w", ErrInvalidArgument)
	}
	if !ValidClientMsgID(s.GetClientMsgId()) {
		return fmt.Errorf("send: client_msg_id must be 1..%d bytes without control characters: %w", MaxClientMsgIDLen, ErrInvalidArgument)
	}
	if a := s.GetAfterClientMsgId(); a != "" && !ValidClientMsgID(a) {
		return fmt.Errorf("send: after_client_msg_id must be empty or 1..%d bytes without control characters: %w", MaxClientMsgIDLen, ErrInvalidArgument)
	}
	if s.GetEnvelope() == nil {
		return fmt.Errorf("send: missing envelope: %w", ErrInvalidArgument)
	}
	if n := proto.Size(s.GetEnvelope()); n > MaxEnvelopeBytes {
		return Errorf(pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE, "envelope of %d bytes exceeds %d", n, MaxEnvelopeBytes)
	}
	return nil
}

// ValidClientMsgID reports whether id can be an idempotency key: 1 to
// MaxClientMsgIDLen bytes (valid UTF-8, as every protobuf string is) with
// no control character (U+0000–U+001F, U+007F). PostgreSQL's TEXT refuses
// NUL, so one accepted here could never be stored.
func ValidClientMsgID(id string) bool {
	if n := len(id); n == 0 || n > MaxClientMsgIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// CheckStorable refuses an entry that could not be delivered in one frame
// (see MaxMessageBytes). Both stores call it in Append, so no store ever
// holds an undeliverable entry whatever its writer checked.
func CheckStorable(m *pb.Message) error {
	if n := proto.Size(m); n > MaxMessageBytes {
		return Errorf(pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE, "entry of %d bytes exceeds %d", n, MaxMessageBytes)
	}
	return nil
}

// MemberSet is a conversation's member list as a set.
type MemberSet map[string]uint64 // user -> joined seq

// NewMemberSet builds a set from a member list; pending invitations are
// not members and are left out.
func NewMemberSet(ms []Member) MemberSet {
	s := make(MemberSet, len(ms))
	for _, m := range ms {
		if !m.Invited {
			s[m.User] = m.JoinedSeq
		}
	}
	return s
}

// Users returns the members sorted.
func (s MemberSet) Users() []string {
	out := make([]string, 0, len(s))
	for u := range s {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// UserFacts is what the sequencer looked up about a user a group change
// names, so that the rules stay pure.
type UserFacts struct {
	Exists bool
	Policy pb.AddPolicy
	// Contact: the user shares a 1:1 conversation with the actor.
	Contact bool
}

// canAddDirectly reports whether the actor may add the user as a member
// (rather than invite them).
func (f UserFacts) canAddDirectly() bool {
	return f.Policy != pb.AddPolicy_ADD_POLICY_CONTACTS || f.Contact
}

// MembershipPlan is the effect of a validated membership request: the
// store writes (exactly the AppendRequest membership fields) and the
// entry that records them.
type MembershipPlan struct {
	Add, Remove, Invite, Promote, Demote []string
	Title                                *string
	// Change is the entry's MembershipChange (Users: the users the op
	// names as done; Invited; Promoted).
	Change *pb.MembershipChange
	// NoOp is true when the request changes nothing (answered with the
	// conversation's info, nothing stored).
	NoOp bool
}

// Apply copies the plan's membership effects into req.
func (p MembershipPlan) Apply(req *AppendRequest) {
	req.AddMembers, req.RemoveMembers, req.Invite = p.Add, p.Remove, p.Invite
	req.Promote, req.Demote, req.Title = p.Promote, p.Demote, p.Title
}

// groupTagLen is the length of the creator tag that ends a group id.
const groupTagLen = 10

// GroupID returns the id of a group created by creator with a client
// chosen nonce (e.g. a ULID): "g:" + nonce + a tag that binds the id to
// its creator (the first 10 base32 characters of SHA-256("chatmesh-
// group-v1" || creator || 0 || nonce)). Only the creator can create it,
// so a create never has to tell anyone else that an id is taken.
func GroupID(creator, nonce string) string {
	return "g:" + nonce + groupTag(creator, nonce)
}

func groupTag(creator, nonce string) string {
	h := sha256.Sum256([]byte("chatmesh-group-v1" + creator + "\x00" + nonce))
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h[:])[:groupTagLen]
}

// GroupCreatedBy reports whether the group id is bound to creator.
func GroupCreatedBy(conv, creator string) bool {
	if !IsGroupID(conv) {
		return false
	}
	tok := conv[len("g:"):]
	if len(tok) <= groupTagLen {
		return false
	}
	nonce := tok[:len(tok)-groupTagLen]
	return subtle.ConstantTimeCompare([]byte(tok[len(nonce):]), []byte(groupTag(creator, nonce))) == 1
}

// PlanCreateGroup validates a group creation by actor. The id must be
// bound to the actor (GroupID); users whose add policy refuses the actor
// are invited rather than added. facts must hold every named user.
func PlanCreateGroup(actor string, req *pb.CreateGroupRequest, facts map[string]UserFacts) (MembershipPlan, error) {
	conv := req.GetConvId()
	if !IsGroupID(conv) {
		return MembershipPlan{}, fmt.Errorf("create group %q: malformed group id: %w", conv, ErrInvalidArgument)
	}
	if !GroupCreatedBy(conv, actor) {
		return MembershipPlan{}, fmt.Errorf("create group %s: the id is not bound to its creator (see GroupID): %w", conv, ErrInvalidArgument)
	}
	if len(req.GetTitle()) > MaxTitleLen {
		return MembershipPlan{}, fmt.Errorf("create group: title longer than %d: %w", MaxTitleLen, ErrInvalidArgument)
	}
	set := map[string]bool{actor: true}
	for _, u := range req.GetMembers() {
		if !ValidUserID(u) {
			return MembershipPlan{}, fmt.Errorf("create group: bad user id %q: %w", u, ErrInvalidArgument)
		}
		set[u] = true
	}
	if len(set) > MaxGroupMembers {
		return MembershipPlan{}, fmt.Errorf("create group: %d members > %d: %w", len(set), MaxGroupMembers, ErrGroupFull)
	}
	p := MembershipPlan{Add: []string{actor}}
	for u := range set {
		if u == actor {
			continue
		}
		f := facts[u]
		if !f.Exists {
			return MembershipPlan{}, fmt.Errorf("create group: user %s: %w", u, ErrNotFound)
		}
		if f.canAddDirectly() {
			p.Add = append(p.Add, u)
		} else {
			p.Invite = append(p.Invite, u)
		}
	}
	slices.Sort(p.Add)
	slices.Sort(p.Invite)
	p.Promote = []string{actor}
	p.Change = &pb.MembershipChange{
		Op: pb.MembershipOp_MEMBERSHIP_OP_CREATE, Actor: actor, Users: p.Add, Title: req.GetTitle(),
		Invited: p.Invite, Promoted: p.Promote,
	}
	return p, nil
}

// PlanGroupChange validates a change of a group by actor against its
// state: admins add, remove, promote, demote and set the title; any member
// leaves; an invited user accepts or declines. When the last admin goes,
// the longest-standing remaining member is promoted. facts must hold
// every user an ADD names. An outsider gets the same NOT_FOUND as for a
// group that does not exist.
func PlanGroupChange(st *ConvState, actor string, req *pb.ModifyMembersRequest, facts map[string]UserFacts) (MembershipPlan, error) {
	conv := req.GetConvId()
	if st.Conv.Kind != pb.ConversationKind_CONVERSATION_KIND_GROUP {
		return MembershipPlan{}, fmt.Errorf("modify %s: not a group: %w", conv, ErrInvalidArgument)
	}
	users := req.GetUsers()
	for _, u := range users {
		if !ValidUserID(u) {
			return MembershipPlan{}, fmt.Errorf("modify %s: bad user id %q: %w", conv, u, ErrInvalidArgument)
		}
	}
	me, known := st.Members[actor]
	op := req.GetOp()
	switch {
	case !known:
		return MembershipPlan{}, OutsiderError("modify_members")
	case me.Invited && op != pb.MembershipOp_MEMBERSHIP_OP_ACCEPT && op != pb.MembershipOp_MEMBERSHIP_OP_DECLINE:
		return MembershipPlan{}, fmt.Errorf("modify %s: %s is invited; accept first: %w", conv, actor, ErrNotMember)
	}
	adminOnly := func() error {
		if !me.Admin {
			return fmt.Errorf("modify %s: %s is not an admin: %w", conv, actor, ErrForbidden)
		}
		if len(users) == 0 && op != pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE {
			return fmt.Errorf("modify %s: %v names nobody: %w", conv, op, ErrInvalidArgument)
		}
		return nil
	}
	p := MembershipPlan{Change: &pb.MembershipChange{Op: op, Actor: actor}}
	seen := map[string]bool{}
	distinct := func(u string) bool {
		if seen[u] {
			return false
		}
		seen[u] = true
		return true
	}
	switch op {
	case pb.MembershipOp_MEMBERSHIP_OP_ADD:
		if err := adminOnly(); err != nil {
			return MembershipPlan{}, err
		}
		for _, u := range users {
			m, ok := st.Members[u]
			if !distinct(u) || (ok && !m.Invited) {
				continue
			}
			f := facts[u]
			if !f.Exists {
				return MembershipPlan{}, fmt.Errorf("modify %s: user %s: %w", conv, u, ErrNotFound)
			}
			switch {
			case f.canAddDirectly():
				p.Add = append(p.Add, u)
			case !ok:
				p.Invite = append(p.Invite, u)
			}
		}
		if n := len(st.Members) + len(p.Invite) + len(p.Add); n > MaxGroupMembers {
			// Invitations count: accepting must never overflow the group.
			for _, u := range p.Add {
				if m, ok := st.Members[u]; ok && m.Invited {
					n--
				}
			}
			if n > MaxGroupMembers {
				return MembershipPlan{}, fmt.Errorf("modify %s: %d members > %d: %w", conv, n, MaxGroupMembers, ErrGroupFull)
			}
		}
		p.Change.Users, p.Change.Invited = p.Add, p.Invite
	case pb.MembershipOp_MEMBERSHIP_OP_REMOVE:
		if err := adminOnly(); err != nil {
			return MembershipPlan{}, err
		}
		for _, u := range users {
			if _, ok := st.Members[u]; ok && distinct(u) {
				p.Remove = append(p.Remove, u)
			}
		}
		p.Change.Users = p.Remove
	case pb.MembershipOp_MEMBERSHIP_OP_LEAVE:
		p.Remove = []string{actor}
		p.Change.Users = p.Remove
	case pb.MembershipOp_MEMBERSHIP_OP_PROMOTE:
		if err := adminOnly(); err != nil {
			return MembershipPlan{}, err
		}
		for _, u := range users {
			m, ok := st.Members[u]
			if !ok || m.Invited {
				return MembershipPlan{}, fmt.Errorf("modify %s: promote %s: not a member: %w", conv, u, ErrInvalidArgument)
			}
			if !m.Admin && distinct(u) {
				p.Promote = append(p.Promote, u)
			}
		}
		p.Change.Users = p.Promote
	case pb.MembershipOp_MEMBERSHIP_OP_DEMOTE:
		if err := adminOnly(); err != nil {
			return MembershipPlan{}, err
		}
		for _, u := range users {
			if m, ok := st.Members[u]; ok && m.Admin && !m.Invited && distinct(u) {
				p.Demote = append(p.Demote, u)
			}
		}
		if len(p.Demote) > 0 && len(p.Demote) >= len(st.admins()) {
			return MembershipPlan{}, fmt.Errorf("modify %s: a group keeps at least one admin: %w", conv, ErrForbidden)
		}
		p.Change.Users = p.Demote
	case pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE:
		if err := adminOnly(); err != nil {
			return MembershipPlan{}, err
		}
		t := req.GetTitle()
		if len(t) > MaxTitleLen {
			return MembershipPlan{}, fmt.Errorf("modify %s: title longer than %d: %w", conv, MaxTitleLen, ErrInvalidArgument)
		}
		if t != st.Conv.Title {
			p.Title = &t
		}
		p.Change.Title = t
	case pb.MembershipOp_MEMBERSHIP_OP_ACCEPT:
		if !me.Invited {
			p.NoOp = true // already a member: accepting again changes nothing
			return p, nil
		}
		p.Add = []string{actor}
		p.Change.Users = p.Add
		if len(st.admins()) == 0 {
			// The last admin left while only invitations remained: the
			// first to accept keeps the group administrable.
			p.Promote = []string{actor}
			p.Change.Promoted = p.Promote
		}
	case pb.MembershipOp_MEMBERSHIP_OP_DECLINE:
		if !me.Invited {
			return MembershipPlan{}, fmt.Errorf("modify %s: %s has no invitation: %w", conv, actor, ErrInvalidArgument)
		}
		p.Remove = []string{actor}
		p.Change.Users = p.Remove
	default:
		return MembershipPlan{}, fmt.Errorf("modify %s: op %v: %w", conv, op, ErrInvalidArgument)
	}
	slices.Sort(p.Add)
	slices.Sort(p.Remove)
	slices.Sort(p.Invite)
	slices.Sort(p.Promote)
	slices.Sort(p.Demote)
	p.NoOp = len(p.Add) == 0 && len(p.Remove) == 0 && len(p.Invite) == 0 &&
		len(p.Promote) == 0 && len(p.Demote) == 0 && p.Title == nil
	if p.NoOp {
		return p, nil
	}
	// The last admin goes: promote the longest-standing remaining member.
	if len(p.Remove) > 0 {
		adminLeft := false
		var heir *Member
		for u, m := range st.Members {
			if m.Invited || slices.Contains(p.Remove, u) {
				continue
			}
			if m.Admin || slices.Contains(p.Promote, u) {
				adminLeft = true
				break
			}
			if heir == nil || m.JoinedSeq < heir.JoinedSeq || (m.JoinedSeq == heir.JoinedSeq && u < heir.User) {
				mm := m
				heir = &mm
			}
		}
		if !adminLeft && heir != nil {
			p.Promote = append(p.Promote, heir.User)
			p.Change.Promoted = []string{heir.User}
		}
	}
	return p, nil
}

// SendersToNotify returns the distinct senders of user messages in msgs,
// other than reader, sorted: the users whose devices get a receipt when
// reader's cursor passes these messages.
func SendersToNotify(reader string, msgs []*pb.Message) []string {
	set := map[string]bool{}
	for _, m := range msgs {
		if m.GetKind() != pb.MessageKind_MESSAGE_KIND_USER {
			continue
		}
		if u := m.GetSender().GetUserId(); u != "" && u != reader {
			set[u] = true
		}
	}
	out := make([]string, 0, len(set))
	for u := range set {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// ForDevice returns a copy of m as device dev may see it: per-device
// ciphertexts addressed to other devices are removed.
func ForDevice(m *pb.Message, dev DeviceKey) *pb.Message {
	env := m.GetEnvelope()
	if env == nil || len(env.GetPerDevice()) == 0 {
		return m
	}
	var keep []*pb.DeviceCiphertext
	for _, dc := range env.GetPerDevice() {
		if KeyOf(dc.GetDevice()) == dev {
			keep = append(keep, dc)
		}
	}
	out := &pb.Message{
		ConvId: m.ConvId, Seq: m.Seq, MsgId: m.MsgId, Sender: m.Sender,
		ClientMsgId: m.ClientMsgId, SentAtMs: m.SentAtMs, Kind: m.Kind,
		Membership: m.Membership, Epoch: m.Epoch, Region: m.Region,
		Envelope: &pb.Envelope{Ciphertext: env.Ciphertext, PerDevice: keep, ContentHint: env.ContentHint},
	}
	return out
}
