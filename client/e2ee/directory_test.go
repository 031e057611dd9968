package e2ee

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// pagedLister answers list_conversations from fixed pages keyed by
// after_conv_id and records the cursors asked for.
type pagedLister struct {
	pages map[string]*pb.ListConversationsResponse
	asked []string
}

func (p *pagedLister) Request(_ context.Context, f *pb.ClientFrame) (*pb.Response, error) {
	after := f.GetListConversations().GetAfterConvId()
	p.asked = append(p.asked, after)
	return &pb.Response{Body: &pb.Response_Conversations{Conversations: p.pages[after]}}, nil
}

// TestGroupMembersExcludesInvitedAndPages: the sealer encrypts group
// messages to what GroupMembers returns, so pending invitations must never
// be in it — not even when a server lists an invitee among the members —
// and a group on a later page of the conversation list must be found.
func TestGroupMembersExcludesInvitedAndPages(t *testing.T) {
	l := &pagedLister{pages: map[string]*pb.ListConversationsResponse{
		"": {More: true, Conversations: []*pb.ConversationInfo{
			{ConvId: "d:a:b", Members: []string{"a", "b"}},
			{ConvId: "g:1", Members: []string{"a", "x"}},
		}},
		"g:1": {Conversations: []*pb.ConversationInfo{
			{ConvId: "g:2", Members: []string{"a", "b", "c"}, Invited: []string{"c", "d"}, AdminIndexes: []uint32{0}},
		}},
	}}
	d := RequestDirectory{R: l}
	got, err := d.GroupMembers(t.Context(), "g:2")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("GroupMembers = %v, want %v", got, want)
	}
	if !slices.Equal(l.asked, []string{"", "g:1"}) {
		t.Fatalf("pages asked %q", l.asked)
	}
	l.asked = nil
	if _, err := d.GroupMembers(t.Context(), "g:3"); !errors.Is(err, ErrNotMember) {
		t.Fatalf("missing group: %v", err)
	}
	if len(l.asked) != 2 {
		t.Fatalf("missing group: asked %q, want both pages and no more", l.asked)
	}
}
