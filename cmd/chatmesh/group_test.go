package main

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

func TestParseGroupArgs(t *testing.T) {
	const g = "g:01J8ZC0000000000000000000A"
	cases := []struct {
		args []string
		want groupCmd
		err  string // substring of the error; "" = ok
	}{
		{[]string{"create", "friends", "bob", "@carol"}, groupCmd{op: "create", title: "friends", users: []string{"bob", "carol"}}, ""},
		{[]string{"create", "solo"}, groupCmd{op: "create", title: "solo", users: []string{}}, ""},
		{[]string{"add", g, "bob", "carol"}, groupCmd{op: "add", conv: g, users: []string{"bob", "carol"}}, ""},
		{[]string{"remove", g, "@bob"}, groupCmd{op: "remove", conv: g, users: []string{"bob"}}, ""},
		{[]string{"promote", g, "bob"}, groupCmd{op: "promote", conv: g, users: []string{"bob"}}, ""},
		{[]string{"demote", g, "bob", "alice"}, groupCmd{op: "demote", conv: g, users: []string{"bob", "alice"}}, ""},
		{[]string{"title", g, "new", "title"}, groupCmd{op: "title", conv: g, title: "new title"}, ""},
		{[]string{"leave", g}, groupCmd{op: "leave", conv: g}, ""},
		{[]string{"accept", g}, groupCmd{op: "accept", conv: g}, ""},
		{[]string{"decline", g}, groupCmd{op: "decline", conv: g}, ""},
		{[]string{"info", g}, groupCmd{op: "info", conv: g}, ""},

		{[]string{"promote"}, groupCmd{}, "usage"},
		{[]string{"promote", g}, groupCmd{}, "usage: group promote CONV USER"},
		{[]string{"demote", g}, groupCmd{}, "usage: group demote CONV USER"},
		{[]string{"title", g}, groupCmd{}, "usage: group title CONV TITLE"},
		{[]string{"title", g, strings.Repeat("x", core.MaxTitleLen+1)}, groupCmd{}, "title longer"},
		{[]string{"accept", g, "bob"}, groupCmd{}, "usage: group accept CONV"},
		{[]string{"info", g, "extra"}, groupCmd{}, "usage: group info CONV"},
		{[]string{"promote", "d:alice:bob", "bob"}, groupCmd{}, "not a group id"},
		{[]string{"accept", "@bob"}, groupCmd{}, "not a group id"},
		{[]string{"promote", g, "Bad User"}, groupCmd{}, "bad user id"},
		{[]string{"create", "t", "NO"}, groupCmd{}, "bad user id"},
		{[]string{"kick", g, "bob"}, groupCmd{}, "unknown group command"},
	}
	for _, tc := range cases {
		got, err := parseGroupArgs(tc.args)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseGroupArgs(%q) = %+v, %v; want error containing %q", tc.args, got, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseGroupArgs(%q) = %+v, %v; want %+v", tc.args, got, err, tc.want)
		}
	}
}

func TestFormatGroupInfo(t *testing.T) {
	info := &pb.ConversationInfo{ConvId: "g:x", Title: "friends", Members: []string{"alice", "bob", "dave"},
		AdminIndexes: []uint32{0, 2}, Invited: []string{"carol"}, HeadSeq: 7}
	if got, want := formatGroupInfo(info), "g:x\t\"friends\"\tmembers alice*,bob,dave*\tinvited carol\thead 7"; got != want {
		t.Fatalf("formatGroupInfo = %q, want %q", got, want)
	}
	info.Invited, info.AdminIndexes = nil, []uint32{1}
	if got, want := formatGroupInfo(info), "g:x\t\"friends\"\tmembers alice,bob*,dave\thead 7"; got != want {
		t.Fatalf("formatGroupInfo = %q, want %q", got, want)
	}
}

func TestDescribeMembershipRoles(t *testing.T) {
	mc := func(op pb.MembershipOp, users ...string) *pb.MembershipChange {
		return &pb.MembershipChange{Op: op, Actor: "alice", Users: users}
	}
	withInvite := mc(pb.MembershipOp_MEMBERSHIP_OP_ADD, "bob")
	withInvite.Invited = []string{"carol", "dave"}
	leave := mc(pb.MembershipOp_MEMBERSHIP_OP_LEAVE, "alice")
	leave.Promoted = []string{"bob"}
	create := &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_CREATE, Actor: "alice", Users: []string{"bob"}, Title: "t", Promoted: []string{"alice"}, Invited: []string{"carol"}}
	cases := []struct {
		in   *pb.MembershipChange
		want string
	}{
		{create, `alice created "t" with bob; invited carol`},
		{withInvite, "alice added bob; invited carol, dave"},
		{mc(pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "bob", "carol"), "alice made bob, carol admin"},
		{mc(pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, "bob"), "alice took admin rights from bob"},
		{&pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE, Actor: "alice", Title: "new"}, `alice changed the title to "new"`},
		{mc(pb.MembershipOp_MEMBERSHIP_OP_ACCEPT, "alice"), "alice accepted the invitation"},
		{mc(pb.MembershipOp_MEMBERSHIP_OP_DECLINE, "alice"), "alice declined the invitation"},
		{leave, "alice left; bob now admin"},
	}
	for _, tc := range cases {
		if got := describeMembership(tc.in); got != tc.want {
			t.Errorf("describeMembership(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestInteractiveGroupCommandsParse: the interactive group commands check
// their arguments before they touch the network (a nil client here).
func TestInteractiveGroupCommandsParse(t *testing.T) {
	me := core.DeviceKey{User: "alice", Device: 1}
	for _, tc := range []struct {
		conv, line, err string
	}{
		{"", "/promote bob", "no group chosen"},
		{"d:alice:bob", "/accept", "no group chosen"},
		{"g:01J8ZC0000000000000000000A", "/promote", "usage: group promote"},
		{"g:01J8ZC0000000000000000000A", "/title", "usage: group title"},
		{"g:01J8ZC0000000000000000000A", "/decline now", "usage: group decline"},
		{"g:01J8ZC0000000000000000000A", "/demote Bad!", "bad user id"},
	} {
		conv := tc.conv
		var out bytes.Buffer
		_, err := interactiveLine(context.Background(), nil, me, &out, tc.line, &conv, map[string]string{})
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q in %q: %v, want %q", tc.line, tc.conv, err, tc.err)
		}
	}
}
