package core

import "slices"

// MemberUsers returns every user that req's membership fields name
// (AddMembers, RemoveMembers, Invite, Promote, Demote), sorted and without
// duplicates: the member rows a store must read to apply req.
func (req *AppendRequest) MemberUsers() []string {
	out := slices.Concat(req.AddMembers, req.RemoveMembers, req.Invite, req.Promote, req.Demote)
	slices.Sort(out)
	return slices.Compact(out)
}

// MemberChanges is the one definition of how an append's membership fields
// change a conversation's members and invitations; both stores persist
// exactly what it returns, so they cannot disagree.
//
// cur holds the current rows (members and invitations) of at least the
// users req.MemberUsers names; seq is the new entry's seq. The fields apply
// in this order:
//
//  1. AddMembers: a new user becomes a member (JoinedSeq = seq); an invited
//     user becomes a member (Invited cleared, JoinedSeq = seq, not admin);
//     a member is unchanged.
//  2. Invite: a user with no row gets an invitation (Invited, JoinedSeq =
//     seq); a member or an invited user is unchanged.
//  3. RemoveMembers: the row is deleted (member or invitation). A user both
//     added (or invited) and removed by one entry ends up removed.
//  4. Promote: a member gets Admin; an invited user or a non-member is
//     unchanged (an invitation never carries rights).
//  5. Demote: a member loses Admin. A user both promoted and demoted by one
//     entry ends up not admin.
//
// put lists the rows to write (new or changed), del the users whose rows to
// delete (only users that had one); both are sorted by user id and name
// each user at most once.
func MemberChanges(cur map[string]Member, seq uint64, req *AppendRequest) (put []Member, del []string) {
	next := make(map[string]*Member, len(req.AddMembers)+len(req.Invite))
	row := func(u string) (*Member, bool) {
		if m, ok := next[u]; ok {
			return m, m != nil
		}
		m, ok := cur[u]
		if !ok {
			next[u] = nil
			return nil, false
		}
		m.User = u
		next[u] = &m
		return &m, true
	}
	for _, u := range req.AddMembers {
		switch m, ok := row(u); {
		case !ok:
			next[u] = &Member{User: u, JoinedSeq: seq}
		case m.Invited:
			*m = Member{User: u, JoinedSeq: seq}
		}
	}
	for _, u := range req.Invite {
		if _, ok := row(u); !ok {
			next[u] = &Member{User: u, JoinedSeq: seq, Invited: true}
		}
	}
	for _, u := range req.RemoveMembers {
		row(u)
		next[u] = nil
	}
	for _, u := range req.Promote {
		if m, ok := row(u); ok && !m.Invited {
			m.Admin = true
		}
	}
	for _, u := range req.Demote {
		if m, ok := row(u); ok {
			m.Admin = false
		}
	}
	users := make([]string, 0, len(next))
	for u := range next {
		users = append(users, u)
	}
	slices.Sort(users)
	for _, u := range users {
		old, had := cur[u]
		old.User = u
		switch m := next[u]; {
		case m == nil && had:
			del = append(del, u)
		case m != nil && (!had || *m != old):
			put = append(put, *m)
		}
	}
	return put, del
}
