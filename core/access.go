package core

import "github.com/chatmesh/chatmesh/core/pb"

// OutsiderError is the single answer a user who is not a member of conv
// gets for every read or write of conv — history, read marker, delivery
// ack, typing, send to a group, membership changes — whether conv exists
// or not: NOT_FOUND, with a detail built only from the operation name and
// the id the caller sent. Answers to outsiders therefore never reveal
// whether a conversation exists (or whether two users ever talked). A
// user who was removed from a group gets this answer too.
func OutsiderError(op, conv string) error {
	return Errorf(pb.ErrorCode_ERROR_CODE_NOT_FOUND, "%s %s: no such conversation", op, conv)
}

// CheckMember decides whether user may read or write conv, given conv's
// member set: nil (or empty) when conv does not exist. A member gets the
// seq they joined at; anyone else gets OutsiderError(op, conv). A pending
// invitation is not a member (MemberSet does not hold invitations).
//
// Every read or write of a conversation must decide membership here — the
// region's history, and the sequencer's send, read, ack, typing and
// modify_members — so the answer for a missing conversation and for an
// existing one the caller is not part of cannot drift apart.
func CheckMember(op, conv string, set MemberSet, user string) (joined uint64, err error) {
	joined, ok := set[user]
	if !ok {
		return 0, OutsiderError(op, conv)
	}
	return joined, nil
}
