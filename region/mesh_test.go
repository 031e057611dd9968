package region_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
)

// stalePlacement is a directory copy that lags: Conv answers from its
// (old) local view, SyncConv from the current one. It stands for a region
// whose voter has not applied a move yet.
type stalePlacement struct {
	mu          sync.Mutex
	local, cur  map[string][2]any // conv -> {home, epoch}
	regions     []string
	syncs       int
	claimedUser map[string]string
}

func (p *stalePlacement) Conv(conv string) (string, uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h, ok := p.local[conv]
	if !ok {
		return "", 0, false
	}
	return h[0].(string), h[1].(uint64), true
}

func (p *stalePlacement) SyncConv(_ context.Context, conv string) (string, uint64, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.syncs++
	h, ok := p.cur[conv]
	if !ok {
		return "", 0, false, nil
	}
	p.local[conv] = h
	return h[0].(string), h[1].(uint64), true, nil
}

func (p *stalePlacement) ClaimConv(ctx context.Context, conv, home, _ string) (string, uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h, ok := p.cur[conv]; ok {
		return h[0].(string), h[1].(uint64), nil
	}
	p.cur[conv] = [2]any{home, uint64(1)}
	p.local[conv] = p.cur[conv]
	return home, 1, nil
}

func (p *stalePlacement) UserHome(user string) (string, bool) { return "", false }
func (p *stalePlacement) ClaimUser(_ context.Context, user, r string) (string, error) {
	return r, nil
}
func (p *stalePlacement) Regions() []string { return p.regions }

// linkRecords collects the LinkRecords produced to a link topic.
func linkRecords(t *testing.T, h *harness, topic string) func() []*pb.LinkRecord {
	var mu sync.Mutex
	var got []*pb.LinkRecord
	if err := h.bus.EnsureTopic(h.ctx, topic, region.LinkPartitions); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	var once sync.Once
	go h.bus.Consume(h.ctx, core.ConsumeSpec{Topic: topic, OnReady: func() { once.Do(func() { close(ready) }) }},
		func(_ context.Context, rec core.BusRecord) error {
			var lr pb.LinkRecord
			if err := proto.Unmarshal(rec.Value, &lr); err != nil {
				t.Errorf("link record: %v", err)
			}
			mu.Lock()
			got = append(got, &lr)
			mu.Unlock()
			return nil
		})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("link consumer not ready")
	}
	return func() []*pb.LinkRecord {
		mu.Lock()
		defer mu.Unlock()
		return append([]*pb.LinkRecord(nil), got...)
	}
}

// A deposed home (its directory copy still says "here, epoch 1") is fenced
// by the store, which holds the new owner's epoch 2: it re-reads the
// directory and forwards the record to the new home instead of dropping it
// or answering an error; nothing is stored by the deposed writer.
func TestDeposedHomeIsFencedAndForwards(t *testing.T) {
	p := &stalePlacement{local: map[string][2]any{}, cur: map[string][2]any{}, regions: []string{"local", "other"}}
	h := newHarness(t, func(c *region.Config) { c.Placement = p })
	links := linkRecords(t, h, region.DefaultLinkPrefix+"other")
	a := h.register("alice", 1)
	h.register("bob", 0)
	conv := core.DirectConvID("alice", "bob")
	p.local[conv] = [2]any{"local", uint64(1)}
	p.cur[conv] = [2]any{"other", uint64(2)}
	// The new home already appended at epoch 2.
	if _, err := h.store.Append(h.ctx, core.AppendRequest{Epoch: 2,
		Message: &pb.Message{ConvId: conv, MsgId: "m1", Sender: a.Addr(), ClientMsgId: "c0", Kind: pb.MessageKind_MESSAGE_KIND_USER,
			Envelope: &pb.Envelope{Ciphertext: []byte("x")}},
		Create:     &core.Conversation{ID: conv, Kind: pb.ConversationKind_CONVERSATION_KIND_DIRECT, HomeRegion: "other", Epoch: 2},
		AddMembers: []string{"alice", "bob"}}); err != nil {
		t.Fatal(err)
	}
	h.send(a, 1, 7, conv, "c1", "hello")
	deadline := time.Now().Add(30 * time.Second)
	for len(links()) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var got []*pb.LinkRecord
	for _, lr := range links() {
		if lr.GetDest() != pb.LinkRecord_DEST_PRESENCE { // alice's presence goes to every region
			got = append(got, lr)
		}
	}
	if len(got) != 1 || got[0].GetDest() != pb.LinkRecord_DEST_INGRESS {
		t.Fatalf("link records = %v, want one forwarded ingress record", got)
	}
	var in pb.IngressRecord
	if err := proto.Unmarshal(got[0].GetValue(), &in); err != nil {
		t.Fatal(err)
	}
	if in.GetHops() != 1 || in.GetSend().GetClientMsgId() != "c1" || in.GetOrigin().GetRegion() != "local" || in.GetOrigin().GetReqId() != 7 {
		t.Fatalf("forwarded record = %v", &in)
	}
	st := h.reg.Stats()
	if st.Fenced != 1 || st.Forwarded != 1 || st.Appended != 0 {
		t.Fatalf("stats = %+v, want one fenced append, one forward, nothing appended", st)
	}
	c, err := h.store.Conversation(h.ctx, conv)
	if err != nil || c.Head != 1 || c.Epoch != 2 {
		t.Fatalf("stored conversation = %+v %v", c, err)
	}
	time.Sleep(100 * time.Millisecond)
	if r := responses(h.recs, 1)[7]; r != nil {
		t.Fatalf("the client got an answer from the deposed home: %v", r)
	}
}

// A record that has bounced between regions MaxHops times is refused
// with UNAVAILABLE and retry_after_ms, not forwarded forever.
func TestForwardingIsBounded(t *testing.T) {
	p := &stalePlacement{local: map[string][2]any{}, cur: map[string][2]any{}, regions: []string{"local", "other"}}
	h := newHarness(t, func(c *region.Config) { c.Placement = p })
	a := h.register("alice", 1)
	conv := core.DirectConvID("alice", "zed")
	p.local[conv] = [2]any{"other", uint64(3)}
	p.cur[conv] = [2]any{"other", uint64(3)}
	h.ingress(a, 1, 9, &pb.IngressRecord{Hops: region.MaxHops, Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{
		ConvId: conv, ClientMsgId: "c1", Envelope: &pb.Envelope{Ciphertext: []byte("x")},
	}}}, conv)
	recs := h.waitFor("the refusal", func(r []*pb.EdgeRecord) bool { return responses(r, 1)[9] != nil })
	e := responses(recs, 1)[9].GetError()
	if e.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || e.GetRetryAfterMs() == 0 {
		t.Fatalf("answer = %v, want UNAVAILABLE with retry_after_ms", e)
	}
	if st := h.reg.Stats(); st.HopsExceeded != 1 || st.Forwarded != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// A record that reaches the home twice (a link retry, or a resend through
// another region) is stored once; both copies are answered with the same
// ack.
func TestForwardedTwiceStoredOnce(t *testing.T) {
	p := &stalePlacement{local: map[string][2]any{}, cur: map[string][2]any{}, regions: []string{"local", "other"}}
	h := newHarness(t, func(c *region.Config) { c.Placement = p })
	a := h.register("alice", 1)
	h.register("bob", 0)
	conv := core.DirectConvID("alice", "bob")
	for i, req := range []uint64{1, 2} {
		h.ingress(a, 1, req, &pb.IngressRecord{Hops: uint32(i + 1), Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{
			ConvId: conv, ClientMsgId: "same", Envelope: &pb.Envelope{Ciphertext: []byte("x")},
		}}}, conv)
	}
	recs := h.waitFor("both answers", func(r []*pb.EdgeRecord) bool { return len(responses(r, 1)) >= 2 })
	r1, r2 := responses(recs, 1)[1].GetSend(), responses(recs, 1)[2].GetSend()
	if r1.GetSeq() != 1 || r2.GetSeq() != 1 || r1.GetMsgId() != r2.GetMsgId() {
		t.Fatalf("acks = %v / %v, want the same entry twice", r1, r2)
	}
	if st := h.reg.Stats(); st.Appended != 1 || st.Duplicates != 1 || st.Claims != 1 {
		t.Fatalf("stats = %+v, want one append (after one claim) and one duplicate", st)
	}
	if home, epoch, ok := p.Conv(conv); !ok || home != "local" || epoch != 1 {
		t.Fatalf("claimed %s %d %v", home, epoch, ok)
	}
}

// lateUserStore answers the first lookup of one user NotFound (the user
// registers a moment later): placement sees no peer, the step then does.
type lateUserStore struct {
	core.Store
	user string
	mu   sync.Mutex
	seen bool
}

func (s *lateUserStore) User(ctx context.Context, id string) (core.User, error) {
	s.mu.Lock()
	first := id == s.user && !s.seen
	if id == s.user {
		s.seen = true
	}
	s.mu.Unlock()
	if first {
		return core.User{}, core.ErrNotFound
	}
	return s.Store.User(ctx, id)
}

// A step the directory did not place never appends: a 1:1 whose peer
// registered between placement and the step is answered UNAVAILABLE (with
// retry_after_ms) instead of being created outside the directory; the
// resend is placed, claimed and stored at epoch 1.
func TestUnplacedStepNeverAppends(t *testing.T) {
	p := &stalePlacement{local: map[string][2]any{}, cur: map[string][2]any{}, regions: []string{"local"}}
	late := &lateUserStore{}
	h := newHarnessWrapped(t, func(s core.Store) core.Store { late.Store = s; return late }, nil, func(c *region.Config) { c.Placement = p })
	a := h.register("alice", 1)
	h.register("bob", 0)
	late.mu.Lock()
	late.user = "bob" // from now on, the first lookup of bob misses once
	late.mu.Unlock()
	conv := core.DirectConvID("alice", "bob")
	h.send(a, 1, 1, conv, "c1", "hi")
	recs := h.waitFor("the answer", func(r []*pb.EdgeRecord) bool { return responses(r, 1)[1] != nil })
	if e := responses(recs, 1)[1].GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || e.GetRetryAfterMs() == 0 {
		t.Fatalf("answer = %v, want UNAVAILABLE with retry_after_ms", responses(recs, 1)[1])
	}
	if _, err := h.store.Conversation(h.ctx, conv); err == nil {
		t.Fatal("the unplaced step created the conversation")
	}
	h.send(a, 1, 2, conv, "c1", "hi") // the resend
	recs = h.waitFor("the ack", func(r []*pb.EdgeRecord) bool { return responses(r, 1)[2] != nil })
	if ack := responses(recs, 1)[2].GetSend(); ack.GetSeq() != 1 {
		t.Fatalf("resend answered %v", responses(recs, 1)[2])
	}
	if c, err := h.store.Conversation(h.ctx, conv); err != nil || c.Epoch != 1 {
		t.Fatalf("stored %+v %v, want epoch 1", c, err)
	}
}
