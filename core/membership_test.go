package core

import (
	"reflect"
	"testing"
)

func TestMemberChanges(t *testing.T) {
	cur := map[string]Member{
		"admin":   {JoinedSeq: 1, Admin: true},
		"member":  {JoinedSeq: 2},
		"invited": {JoinedSeq: 3, Invited: true},
	}
	mem := func(u string, seq uint64) Member { return Member{User: u, JoinedSeq: seq} }
	cases := []struct {
		name string
		req  AppendRequest
		put  []Member
		del  []string
	}{
		{"nothing", AppendRequest{}, nil, nil},
		{"add new and existing", AppendRequest{AddMembers: []string{"new", "member", "admin"}},
			[]Member{mem("new", 9)}, nil},
		{"add of an invited user makes a member at the new seq", AppendRequest{AddMembers: []string{"invited"}},
			[]Member{mem("invited", 9)}, nil},
		{"invite new, member and invited", AppendRequest{Invite: []string{"new", "member", "invited"}},
			[]Member{{User: "new", JoinedSeq: 9, Invited: true}}, nil},
		{"add wins over invite in one entry", AppendRequest{AddMembers: []string{"new"}, Invite: []string{"new"}},
			[]Member{mem("new", 9)}, nil},
		{"remove member, invitation and non-member", AppendRequest{RemoveMembers: []string{"member", "invited", "nobody"}},
			nil, []string{"invited", "member"}},
		{"remove wins over add and invite", AppendRequest{AddMembers: []string{"a", "invited"}, Invite: []string{"b"}, RemoveMembers: []string{"a", "b", "invited"}},
			nil, []string{"invited"}},
		{"promote member, admin, invited, non-member", AppendRequest{Promote: []string{"member", "admin", "invited", "nobody"}},
			[]Member{{User: "member", JoinedSeq: 2, Admin: true}}, nil},
		{"demote admin and member", AppendRequest{Demote: []string{"admin", "member"}},
			[]Member{mem("admin", 1)}, nil},
		{"demote wins over promote", AppendRequest{Promote: []string{"member", "admin"}, Demote: []string{"member", "admin"}},
			[]Member{mem("admin", 1)}, nil},
		{"create: creator added and promoted", AppendRequest{AddMembers: []string{"c", "d"}, Invite: []string{"e"}, Promote: []string{"c"}},
			[]Member{{User: "c", JoinedSeq: 9, Admin: true}, mem("d", 9), {User: "e", JoinedSeq: 9, Invited: true}}, nil},
		{"last admin leaves, another promoted", AppendRequest{RemoveMembers: []string{"admin"}, Promote: []string{"member"}},
			[]Member{{User: "member", JoinedSeq: 2, Admin: true}}, []string{"admin"}},
		{"promote of a removed user does nothing", AppendRequest{RemoveMembers: []string{"member"}, Promote: []string{"member"}},
			nil, []string{"member"}},
		{"accept then promote in one entry", AppendRequest{AddMembers: []string{"invited"}, Promote: []string{"invited"}},
			[]Member{{User: "invited", JoinedSeq: 9, Admin: true}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			put, del := MemberChanges(cur, 9, &tc.req)
			if !reflect.DeepEqual(put, tc.put) || !reflect.DeepEqual(del, tc.del) {
				t.Fatalf("got put %+v del %v\nwant put %+v del %v", put, del, tc.put, tc.del)
			}
		})
	}
	if len(cur) != 3 || cur["admin"] != (Member{JoinedSeq: 1, Admin: true}) {
		t.Fatalf("MemberChanges modified its input: %+v", cur)
	}
}

func TestAppendRequestMemberUsers(t *testing.T) {
	req := AppendRequest{AddMembers: []string{"b", "a"}, RemoveMembers: []string{"a"}, Invite: []string{"c"}, Promote: []string{"d"}, Demote: []string{"b", "e"}}
	if got, want := req.MemberUsers(), []string{"a", "b", "c", "d", "e"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("MemberUsers = %v, want %v", got, want)
	}
}
