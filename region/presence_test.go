package region_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
)

// presenceTap collects the live presence records the region publishes.
type presenceTap struct {
	mu  sync.Mutex
	evs []*pb.PresenceEvent
}

func (h *harness) tapPresence() *presenceTap {
	h.t.Helper()
	tap := &presenceTap{}
	ready := make(chan struct{})
	var once sync.Once
	go h.bus.Consume(h.ctx, core.ConsumeSpec{Topic: region.DefaultPresenceTopic, OnReady: func() { once.Do(func() { close(ready) }) }},
		func(_ context.Context, rec core.BusRecord) error {
			var r pb.PresenceRecord
			if err := proto.Unmarshal(rec.Value, &r); err == nil {
				tap.mu.Lock()
				tap.evs = append(tap.evs, r.GetEvent())
				tap.mu.Unlock()
			}
			return nil
		})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		h.t.Fatal("presence consumer not ready")
	}
	return tap
}

// wait returns the first event of user matching pred, failing after 30 s.
func (tap *presenceTap) wait(t *testing.T, user string, pred func(*pb.PresenceEvent) bool) *pb.PresenceEvent {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		tap.mu.Lock()
		for _, ev := range tap.evs {
			if ev.GetUserId() == user && pred(ev) {
				tap.mu.Unlock()
				return ev
			}
		}
		tap.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no presence event for %s", user)
	return nil
}

func (h *harness) snapshot(dev core.DeviceKey, users ...string) map[string]*pb.PresenceEvent {
	h.t.Helper()
	resp, err := h.api.Query(h.ctx, dev, &pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: users}}})
	if err != nil || resp.GetError() != nil {
		h.t.Fatalf("presence snapshot for %s: %v %v", dev, err, resp.GetError())
	}
	out := map[string]*pb.PresenceEvent{}
	for _, ev := range resp.GetPresence().GetUsers() {
		if out[ev.GetUserId()] != nil {
			h.t.Fatalf("snapshot names %s twice", ev.GetUserId())
		}
		out[ev.GetUserId()] = ev
	}
	return out
}

func keys(m map[string]*pb.PresenceEvent) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestPresenceOnlyForPeers: a snapshot holds only the requester and their
// conversation peers (1:1 and group); a stranger learns nothing, not even
// that a user is offline.
func TestPresenceOnlyForPeers(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	carol := h.register("carol", 3)
	mallory := h.register("mallory", 4)
	h.register("dave", 5) // online, talks to nobody
	h.send(alice, 1, 1, core.DirectConvID("alice", "bob"), "m1", "hi")
	group := core.GroupID("carol", "peers")
	h.ingress(carol, 3, 1, &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{
		ConvId: group, Members: []string{"alice"},
	}}}, group)
	h.waitFor("send and create", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil && responses(recs, 3)[1] != nil })
	// bob goes offline: he has a last seen from now on.
	if err := h.api.SessionClosed(h.ctx, bob, 2); err != nil {
		t.Fatal(err)
	}

	everyone := []string{"alice", "bob", "carol", "dave", "mallory"}
	got := h.snapshot(alice, everyone...)
	if k := keys(got); !slices.Equal(k, []string{"alice", "bob", "carol"}) {
		t.Fatalf("alice sees %v, want [alice bob carol]", k)
	}
	if got["bob"].GetOnline() || got["bob"].GetLastSeenMs() == 0 || !got["carol"].GetOnline() {
		t.Fatalf("alice's view: bob %v carol %v", got["bob"], got["carol"])
	}
	if k := keys(h.snapshot(bob, everyone...)); !slices.Equal(k, []string{"alice", "bob"}) {
		t.Fatalf("bob sees %v, want [alice bob]", k)
	}
	if k := keys(h.snapshot(carol, everyone...)); !slices.Equal(k, []string{"alice", "carol"}) {
		t.Fatalf("carol sees %v, want [alice carol]", k)
	}
	if k := keys(h.snapshot(mallory, "alice", "bob", "carol", "dave")); len(k) != 0 {
		t.Fatalf("a stranger sees %v, want nothing", k)
	}
	// Once mallory writes to dave they are peers, at once (no stale cache).
	h.send(mallory, 4, 1, core.DirectConvID("dave", "mallory"), "x1", "hello")
	h.waitFor("mallory's send", func(recs []*pb.EdgeRecord) bool { return responses(recs, 4)[1] != nil })
	if k := keys(h.snapshot(mallory, "alice", "dave")); !slices.Equal(k, []string{"dave"}) {
		t.Fatalf("mallory sees %v after writing to dave, want [dave]", k)
	}
	// Joining a group makes its members peers at once too.
	h.ingress(carol, 3, 2, &pb.IngressRecord{Op: &pb.IngressRecord_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{
		ConvId: group, Op: pb.MembershipOp_MEMBERSHIP_OP_ADD, Users: []string{"mallory"}, ClientMsgId: "add-mallory",
	}}}, group)
	h.waitFor("add mallory", func(recs []*pb.EdgeRecord) bool { return responses(recs, 3)[2] != nil })
	if k := keys(h.snapshot(mallory, "alice", "carol", "bob")); !slices.Equal(k, []string{"alice", "carol"}) {
		t.Fatalf("mallory sees %v after joining the group, want [alice carol]", k)
	}
}

// TestHideLastSeen: set_privacy{hide_last_seen} clears last_seen_ms for
// peers, in snapshots and in live events; online state still shows; the
// user still sees their own.
func TestHideLastSeen(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	h.send(alice, 1, 1, core.DirectConvID("alice", "bob"), "m1", "hi")
	h.waitFor("send", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil })
	tap := h.tapPresence()

	setPrivacy := func(dev core.DeviceKey, req *pb.SetPrivacyRequest) *pb.Response {
		t.Helper()
		resp, err := h.api.Query(h.ctx, dev, &pb.ClientFrame{ReqId: 5, Body: &pb.ClientFrame_SetPrivacy{SetPrivacy: req}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := setPrivacy(bob, &pb.SetPrivacyRequest{HideLastSeen: true}); r.GetEmpty() == nil || r.GetReqId() != 5 {
		t.Fatalf("set_privacy: %v", r)
	}
	if p, err := h.store.Privacy(h.ctx, "bob"); err != nil || !p.HideLastSeen {
		t.Fatalf("stored privacy %+v, %v", p, err)
	}
	// Live: bob's offline event carries no last seen; alice's does.
	if err := h.api.SessionClosed(h.ctx, bob, 2); err != nil {
		t.Fatal(err)
	}
	if err := h.api.SessionClosed(h.ctx, alice, 1); err != nil {
		t.Fatal(err)
	}
	if ev := tap.wait(t, "bob", func(ev *pb.PresenceEvent) bool { return !ev.GetOnline() }); ev.GetLastSeenMs() != 0 {
		t.Fatalf("bob's live offline event shows last seen: %v", ev)
	}
	if ev := tap.wait(t, "alice", func(ev *pb.PresenceEvent) bool { return !ev.GetOnline() }); ev.GetLastSeenMs() == 0 {
		t.Fatalf("alice's live offline event lost its last seen: %v", ev)
	}
	// Snapshot: alice (a peer) sees bob offline with no last seen; bob sees his own.
	if ev := h.snapshot(alice, "bob")["bob"]; ev == nil || ev.GetOnline() || ev.GetLastSeenMs() != 0 {
		t.Fatalf("alice's snapshot of bob: %v", ev)
	}
	if ev := h.snapshot(bob, "bob")["bob"]; ev.GetLastSeenMs() == 0 {
		t.Fatalf("bob's own snapshot lost his last seen: %v", ev)
	}
	// Showing it again publishes bob's presence with his last seen at once.
	setPrivacy(bob, &pb.SetPrivacyRequest{HideLastSeen: false})
	tap.wait(t, "bob", func(ev *pb.PresenceEvent) bool { return !ev.GetOnline() && ev.GetLastSeenMs() != 0 })
	if ev := h.snapshot(alice, "bob")["bob"]; ev.GetLastSeenMs() == 0 {
		t.Fatalf("alice's snapshot after bob shows last seen again: %v", ev)
	}
	// A bad add policy is refused and changes nothing.
	if r := setPrivacy(bob, &pb.SetPrivacyRequest{HideLastSeen: true, AddPolicy: 9}); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT {
		t.Fatalf("bad policy: %v", r)
	}
	if p, _ := h.store.Privacy(h.ctx, "bob"); p.HideLastSeen {
		t.Fatalf("a refused set_privacy changed the settings: %+v", p)
	}
}

// TestHistoryOutsiderAnswer: an outsider's history request gets a
// byte-identical answer before and after the conversation exists, for a
// 1:1 and a group alike, and the same for an existing 1:1 as for one that
// never existed.
func TestHistoryOutsiderAnswer(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	h.register("bob", 2)
	mallory := h.register("mallory", 3)
	group := core.GroupID("alice", "secret")
	direct := core.DirectConvID("alice", "bob")
	ask := func(conv string) []byte {
		t.Helper()
		resp, err := h.api.Query(h.ctx, mallory, &pb.ClientFrame{ReqId: 7, Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv}}})
		if err != nil || resp.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
			t.Fatalf("outsider history of %s: %v %v, want NOT_FOUND", conv, resp, err)
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	before := map[string][]byte{direct: ask(direct), group: ask(group)}
	never := core.DirectConvID("alice", "mallory2") // never exists
	h.send(alice, 1, 1, direct, "m1", "hi")
	h.ingress(alice, 1, 2, &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{
		ConvId: group, Members: []string{"bob"},
	}}}, group)
	h.waitFor("send and create", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil && responses(recs, 1)[2] != nil })
	for conv, b := range before {
		if after := ask(conv); string(after) != string(b) {
			t.Fatalf("outsider answers for %s differ once it exists:\n before %x\n after  %x", conv, b, after)
		}
	}
	// An existing 1:1 and one that never existed: the same bytes too.
	if a, b := ask(direct), ask(never); string(a) != string(b) {
		t.Fatalf("outsider answers differ between an existing and a missing 1:1:\n existing %x\n missing  %x", a, b)
	}
	// Members still read it.
	resp, _ := h.api.Query(h.ctx, alice, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: direct}}})
	if len(resp.GetHistory().GetMessages()) != 1 {
		t.Fatalf("member history: %v", resp)
	}
}
