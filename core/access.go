package core

import "github.com/chatmesh/chatmesh/core/pb"

// OutsiderError is the single answer a user who is not a member of a
// conversation gets for every read or write of it — history, read marker,
// delivery ack, typing, send to a group, membership changes — whether the
// conversation exists or not: NOT_FOUND, with a detail that names only the
// operation ("history: no such conversation"), not even the conversation
// id. Answers to outsiders therefore never reveal whether a conversation
// exists (or whether two users ever talked), and are byte-identical for
// every conversation an outsider asks about. A user who was removed from a
// group gets this answer too.
func OutsiderError(op string) error {
	return Errorf(pb.ErrorCode_ERROR_CODE_NOT_FOUND, "%s: no such conversation", op)
}

// CheckMember decides whether user may read or write a conversation, given
// its member set: nil (or empty) when the conversation does not exist. A
// member gets the seq they joined at; anyone else gets OutsiderError(op).
// A pending invitation is not a member (MemberSet does not hold
// invitations).
//
// Every read or write of a conversation must decide membership here — the
// region's history, and the sequencer's send, read, ack, typing and
// modify_members — so the answer for a missing conversation and for an
// existing one the caller is not part of cannot drift apart.
func CheckMember(op string, set MemberSet, user string) (joined uint64, err error) {
	joined, ok := set[user]
	if !ok {
		return 0, OutsiderError(op)
	}
	return joined, nil
}
