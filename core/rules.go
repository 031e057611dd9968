package core

import (
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
	if n := len(s.GetClientMsgId()); n == 0 || n > MaxClientMsgIDLen {
		return fmt.Errorf("send: client_msg_id must be 1..%d bytes: %w", MaxClientMsgIDLen, ErrInvalidArgument)
	}
	if s.GetEnvelope() == nil {
		return fmt.Errorf("send: missing envelope: %w", ErrInvalidArgument)
	}
	if n := proto.Size(s.GetEnvelope()); n > MaxEnvelopeBytes {
		return Errorf(pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE, "envelope of %d bytes exceeds %d", n, MaxEnvelopeBytes)
	}
	return nil
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

// NewMemberSet builds a set from a member list.
func NewMemberSet(ms []Member) MemberSet {
	s := make(MemberSet, len(ms))
	for _, m := range ms {
		s[m.User] = m.JoinedSeq
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

// MembershipPlan is the effect of a validated membership request.
type MembershipPlan struct {
	Add, Remove []string
	// NoOp is true when the request changes nothing (an idempotent retry).
	NoOp bool
}

// PlanCreateGroup validates a group creation by actor with the given other members.
func PlanCreateGroup(actor string, req *pb.CreateGroupRequest) (MembershipPlan, error) {
	if !IsGroupID(req.GetConvId()) {
		return MembershipPlan{}, fmt.Errorf("create group %q: malformed group id: %w", req.GetConvId(), ErrInvalidArgument)
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
	add := make([]string, 0, len(set))
	for u := range set {
		add = append(add, u)
	}
	slices.Sort(add)
	return MembershipPlan{Add: add}, nil
}

// PlanModify validates a membership change of a group by actor against
// the current members. Any member may add or remove others; anyone may leave.
func PlanModify(actor string, cur MemberSet, req *pb.ModifyMembersRequest) (MembershipPlan, error) {
	if _, ok := cur[actor]; !ok {
		return MembershipPlan{}, fmt.Errorf("modify %s: %s: %w", req.GetConvId(), actor, ErrNotMember)
	}
	users := req.GetUsers()
	for _, u := range users {
		if !ValidUserID(u) {
			return MembershipPlan{}, fmt.Errorf("modify %s: bad user id %q: %w", req.GetConvId(), u, ErrInvalidArgument)
		}
	}
	var p MembershipPlan
	switch req.GetOp() {
	case pb.MembershipOp_MEMBERSHIP_OP_ADD:
		if len(users) == 0 {
			return p, fmt.Errorf("modify %s: add nobody: %w", req.GetConvId(), ErrInvalidArgument)
		}
		seen := map[string]bool{}
		for _, u := range users {
			if _, ok := cur[u]; !ok && !seen[u] {
				p.Add = append(p.Add, u)
				seen[u] = true
			}
		}
		if len(cur)+len(p.Add) > MaxGroupMembers {
			return MembershipPlan{}, fmt.Errorf("modify %s: %d members > %d: %w", req.GetConvId(), len(cur)+len(p.Add), MaxGroupMembers, ErrGroupFull)
		}
	case pb.MembershipOp_MEMBERSHIP_OP_REMOVE:
		if len(users) == 0 {
			return p, fmt.Errorf("modify %s: remove nobody: %w", req.GetConvId(), ErrInvalidArgument)
		}
		seen := map[string]bool{}
		for _, u := range users {
			if _, ok := cur[u]; ok && !seen[u] {
				p.Remove = append(p.Remove, u)
				seen[u] = true
			}
		}
	case pb.MembershipOp_MEMBERSHIP_OP_LEAVE:
		p.Remove = []string{actor}
	default:
		return MembershipPlan{}, fmt.Errorf("modify %s: op %v: %w", req.GetConvId(), req.GetOp(), ErrInvalidArgument)
	}
	slices.Sort(p.Add)
	slices.Sort(p.Remove)
	p.NoOp = len(p.Add) == 0 && len(p.Remove) == 0
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
		Membership: m.Membership, Epoch: m.Epoch,
		Envelope: &pb.Envelope{Ciphertext: env.Ciphertext, PerDevice: keep, ContentHint: env.ContentHint},
	}
	return out
}
