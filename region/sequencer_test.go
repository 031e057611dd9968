package region_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// seqStore counts Members reads and can fail appends to one
// conversation (a record that can never be stored while the store is fine).
type seqStore struct {
	core.Store
	members  atomic.Int64
	poisoned atomic.Pointer[string] // appends to this conversation fail
	down     atomic.Bool            // every call fails: the store is unreachable
}

func (s *seqStore) User(ctx context.Context, id string) (core.User, error) {
	if s.down.Load() {
		return core.User{}, errors.New("injected: store unreachable")
	}
	return s.Store.User(ctx, id)
}

func (s *seqStore) Members(ctx context.Context, conv string) ([]core.Member, error) {
	s.members.Add(1)
	return s.Store.Members(ctx, conv)
}

func (s *seqStore) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	if p := s.poisoned.Load(); s.down.Load() || (p != nil && req.Message.GetConvId() == *p) {
		return core.AppendResult{}, errors.New("injected: this entry can never be written")
	}
	return s.Store.Append(ctx, req)
}

// Begin wraps the store's write batch, so the faults above hit the
// sequencer's group-commit path too.
func (s *seqStore) Begin(ctx context.Context) (core.WriteBatch, error) {
	wb, err := s.Store.(core.Batcher).Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &seqBatch{WriteBatch: wb, s: s}, nil
}

type seqBatch struct {
	core.WriteBatch
	s *seqStore
}

func (b *seqBatch) User(ctx context.Context, id string) (core.User, error) {
	if b.s.down.Load() {
		return core.User{}, errors.New("injected: store unreachable")
	}
	return b.WriteBatch.User(ctx, id)
}

func (b *seqBatch) Members(ctx context.Context, conv string) ([]core.Member, error) {
	b.s.members.Add(1)
	return b.WriteBatch.Members(ctx, conv)
}

func (b *seqBatch) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	if p := b.s.poisoned.Load(); b.s.down.Load() || (p != nil && req.Message.GetConvId() == *p) {
		return core.AppendResult{}, errors.New("injected: this entry can never be written")
	}
	return b.WriteBatch.Append(ctx, req)
}

func createGroup(h *harness, actor core.DeviceKey, session, reqID uint64, conv string, members ...string) {
	h.t.Helper()
	h.ingress(actor, session, reqID, &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{
		ConvId: conv, Members: members,
	}}}, conv)
	recs := h.waitFor("create", func(recs []*pb.EdgeRecord) bool { return responses(recs, session)[reqID] != nil })
	if e := responses(recs, session)[reqID].GetError(); e != nil {
		h.t.Fatalf("create %s: %v", conv, e)
	}
}

func modify(h *harness, actor core.DeviceKey, session, reqID uint64, conv, key string, op pb.MembershipOp, users ...string) {
	h.ingress(actor, session, reqID, &pb.IngressRecord{Op: &pb.IngressRecord_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{
		ConvId: conv, Op: op, Users: users, ClientMsgId: key,
	}}}, conv)
}

// Defect 4: back-to-back sends must not re-read the member list.
func TestSequencerKeepsMemberStateAcrossSends(t *testing.T) {
	var cs *seqStore
	h := newHarnessWrapped(t, func(s core.Store) core.Store { cs = &seqStore{Store: s}; return cs }, nil)
	alice := h.register("alice", 1)
	h.register("bob", 2)
	h.register("carol", 3)
	conv := core.GroupID("alice", "cache")
	createGroup(h, alice, 1, 1, conv, "bob", "carol")
	before := cs.members.Load()
	loads := h.reg.Stats().StateLoads
	const n = 30
	for i := 0; i < n; i++ {
		h.send(alice, 1, uint64(10+i), conv, fmt.Sprintf("m%d", i), "x")
	}
	h.waitFor("acks", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[10+n-1] != nil })
	if got := cs.members.Load() - before; got > 2 {
		t.Fatalf("%d sends re-read the member list %d times", n, got)
	}
	if got := h.reg.Stats().StateLoads - loads; got > 2 {
		t.Fatalf("%d sends loaded the conversation state %d times", n, got)
	}
}

// Defect 5: a record that can never be processed goes to the dead-letter
// topic after bounded attempts, and the partition moves on.
func TestSequencerDeadLettersPoisonRecord(t *testing.T) {
	poison := core.GroupID("alice", "poison")
	var cs *seqStore
	h := newHarnessWrapped(t, func(s core.Store) core.Store { cs = &seqStore{Store: s}; return cs }, nil,
		func(c *region.Config) {
			c.MaxAttempts = 3
			c.DeadLetterAfter = 200 * time.Millisecond
			c.IngressPartitions = 1
		})
	alice := h.register("alice", 1)
	h.register("bob", 2)
	createGroup(h, alice, 1, 1, poison, "bob")
	cs.poisoned.Store(&poison)
	// Read the dead-letter topic from its start.
	var dlMu sync.Mutex
	var dls []*pb.DeadLetter
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	go h.bus.Consume(ctx, core.ConsumeSpec{Topic: region.DefaultDeadLetterTopic, Group: "dl-reader"}, func(_ context.Context, rec core.BusRecord) error {
		var dl pb.DeadLetter
		if err := proto.Unmarshal(rec.Value, &dl); err != nil {
			t.Errorf("dead letter: %v", err)
		}
		dlMu.Lock()
		dls = append(dls, &dl)
		dlMu.Unlock()
		return nil
	})
	h.send(alice, 1, 2, poison, "p1", "never stored")
	direct := core.DirectConvID("alice", "bob")
	h.send(alice, 1, 3, direct, "d1", "after the poison")
	recs := h.waitFor("ack after the poison", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[3] != nil })
	if ack := responses(recs, 1)[3].GetSend(); ack.GetSeq() != 1 {
		t.Fatalf("the partition did not move on: %v", responses(recs, 1)[3])
	}
	if responses(recs, 1)[2] != nil {
		t.Fatalf("the poison record was answered: %v", responses(recs, 1)[2])
	}
	if st := h.reg.Stats(); st.DeadLettered != 1 {
		t.Fatalf("dead-lettered %d, want 1", st.DeadLettered)
	}
	if got := h.reg.DeadLetters()["store"]; got != 1 {
		t.Fatalf("dead letters by reason: %v", h.reg.DeadLetters())
	}
	waitUntil(t, func() bool { dlMu.Lock(); defer dlMu.Unlock(); return len(dls) == 1 })
	dlMu.Lock()
	dl := dls[0]
	dlMu.Unlock()
	var in pb.IngressRecord
	if err := proto.Unmarshal(dl.GetValue(), &in); err != nil || in.GetSend().GetClientMsgId() != "p1" || dl.GetAttempts() < 3 || !strings.Contains(dl.GetError(), "injected") {
		t.Fatalf("dead letter %+v (record %v, %v)", dl, &in, err)
	}
}

// flakyConsumeBus makes the sequencer's first consumer die after it
// started, the way a fatal consume error would.
type flakyConsumeBus struct {
	*kafkabus.Bus
	calls atomic.Int32
}

func (b *flakyConsumeBus) ConsumeBatch(ctx context.Context, spec core.ConsumeSpec, maxBatch int, h core.BatchHandler) error {
	if b.calls.Add(1) > 1 {
		return b.Bus.ConsumeBatch(ctx, spec, maxBatch, h)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := spec.OnReady
	spec.OnReady = func() {
		ready()
		time.AfterFunc(100*time.Millisecond, cancel)
	}
	_ = b.Bus.ConsumeBatch(cctx, spec, maxBatch, h)
	return errors.New("injected: the consumer lost its group for good")
}

// ConsumePipelined is ConsumeBatch's fault for the pipelined consumer
// (the region prefers it when the bus has it).
func (b *flakyConsumeBus) ConsumePipelined(ctx context.Context, spec core.ConsumeSpec, maxBatch int, h core.PipelinedBatchHandler) error {
	if b.calls.Add(1) > 1 {
		return b.Bus.ConsumePipelined(ctx, spec, maxBatch, h)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := spec.OnReady
	spec.OnReady = func() {
		ready()
		time.AfterFunc(100*time.Millisecond, cancel)
	}
	_ = b.Bus.ConsumePipelined(cctx, spec, maxBatch, h)
	return errors.New("injected: the consumer lost its group for good")
}

// Defect 5: a sequencer whose consumer stops is restarted, counted and
// reported by Health; messages sent meanwhile are sequenced.
func TestSequencerConsumerRestarted(t *testing.T) {
	var fb *flakyConsumeBus
	h := newHarnessWrapped(t, nil, func(b *kafkabus.Bus) core.Bus { fb = &flakyConsumeBus{Bus: b}; return fb })
	waitUntil(t, func() bool { return h.reg.Stats().Restarts == 1 })
	alice := h.register("alice", 1)
	h.register("bob", 2)
	h.send(alice, 1, 1, core.DirectConvID("alice", "bob"), "m1", "after the restart")
	recs := h.waitFor("ack", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil })
	if responses(recs, 1)[1].GetSend().GetSeq() != 1 {
		t.Fatalf("ack %v", responses(recs, 1)[1])
	}
	if err := h.reg.Health(); err != nil {
		t.Fatalf("health after restart: %v", err)
	}
	if fb.calls.Load() != 2 {
		t.Fatalf("consumer started %d times", fb.calls.Load())
	}
}

// Defect 6: a resend whose sender was removed meanwhile gets its original
// ack, not NOT_MEMBER.
func TestResendAfterRemovalGetsOriginalAck(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	conv := core.GroupID("alice", "resend")
	createGroup(h, alice, 1, 1, conv, "bob")
	h.send(bob, 2, 1, conv, "b1", "hello")
	recs := h.waitFor("b1", func(recs []*pb.EdgeRecord) bool { return responses(recs, 2)[1] != nil })
	first := responses(recs, 2)[1].GetSend()
	modify(h, alice, 1, 2, conv, "rm-bob", pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "bob")
	h.waitFor("removed", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[2] != nil })
	h.send(bob, 2, 2, conv, "b1", "hello")   // the outbox resends
	h.send(bob, 2, 3, conv, "b2", "new one") // a new message is refused
	recs = h.waitFor("resend", func(recs []*pb.EdgeRecord) bool { return responses(recs, 2)[3] != nil })
	again := responses(recs, 2)[2]
	if again.GetError() != nil || again.GetSend().GetSeq() != first.GetSeq() || again.GetSend().GetMsgId() != first.GetMsgId() {
		t.Fatalf("resend answered %v, want the original ack %v", again, first)
	}
	if c := responses(recs, 2)[3].GetError().GetCode(); c != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("new message from a removed member: %v", c)
	}
}

// failReceiptsBus fails the first produces that carry a receipt, after the
// cursor's entry has been handled: the receipt must still arrive.
type failReceiptsBus struct {
	*kafkabus.Bus
	left atomic.Int32
}

func (b *failReceiptsBus) Produce(ctx context.Context, recs ...core.BusRecord) error {
	for _, r := range recs {
		var er pb.EdgeRecord
		if proto.Unmarshal(r.Value, &er) != nil {
			continue
		}
		for _, in := range region.Unbundle(&er) {
			if len(receiptsIn(in)) > 0 && b.left.Add(-1) >= 0 {
				return errors.New("injected: broker refused the batch")
			}
		}
	}
	return b.Bus.Produce(ctx, recs...)
}

// Defect 6: a receipt whose produce failed is sent on the retry.
func TestReceiptSurvivesFailedProduce(t *testing.T) {
	h := newHarnessWrapped(t, nil, func(b *kafkabus.Bus) core.Bus {
		fb := &failReceiptsBus{Bus: b}
		fb.left.Store(2)
		return fb
	}, func(c *region.Config) { c.MaxAttempts = 100 })
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	h.send(alice, 1, 1, conv, "m1", "x")
	h.waitFor("ack", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil })
	h.ingress(bob, 2, 0, &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: 1}}}, conv)
	h.waitFor("receipt", func(recs []*pb.EdgeRecord) bool {
		for _, r := range recs {
			for _, rc := range receiptsIn(r) {
				if rc.GetSeq() == 1 && rc.GetKind() == pb.ReceiptKind_RECEIPT_KIND_DELIVERED {
					return true
				}
			}
		}
		return false
	})
}

// Defect 11: a replayed membership change (same client key) applies once,
// even after later changes moved the head.
func TestMembershipReplayAppliesOnce(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	h.register("bob", 2)
	h.register("dave", 4)
	conv := core.GroupID("alice", "replay")
	createGroup(h, alice, 1, 1, conv, "bob")
	modify(h, alice, 1, 2, conv, "add-dave", pb.MembershipOp_MEMBERSHIP_OP_ADD, "dave")
	modify(h, alice, 1, 3, conv, "rm-dave", pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "dave")
	h.waitFor("changes", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[3] != nil })
	c, _ := h.store.Conversation(h.ctx, conv)
	head := c.Head
	// A crash makes the sequencer see both records again.
	modify(h, alice, 1, 4, conv, "add-dave", pb.MembershipOp_MEMBERSHIP_OP_ADD, "dave")
	modify(h, alice, 1, 5, conv, "rm-dave", pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "dave")
	recs := h.waitFor("replays", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[5] != nil })
	for _, id := range []uint64{4, 5} {
		if e := responses(recs, 1)[id].GetError(); e != nil {
			t.Fatalf("replay %d: %v", id, e)
		}
	}
	c, _ = h.store.Conversation(h.ctx, conv)
	if c.Head != head {
		t.Fatalf("replays appended: head %d -> %d", head, c.Head)
	}
	ms, _ := h.store.Members(h.ctx, conv)
	for _, m := range ms {
		if m.User == "dave" {
			t.Fatal("dave is a member again after the replay")
		}
	}
	// Without a key the change is refused.
	modify(h, alice, 1, 6, conv, "", pb.MembershipOp_MEMBERSHIP_OP_ADD, "dave")
	recs = h.waitFor("no key", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[6] != nil })
	if c := responses(recs, 1)[6].GetError().GetCode(); c != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT {
		t.Fatalf("change without client_msg_id: %v", c)
	}
}

// Defect 9: a newly added member's ack does not receipt messages sent
// before they joined.
func TestReceiptsRespectJoinPoint(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	carol := h.register("carol", 3)
	conv := core.GroupID("alice", "join")
	createGroup(h, alice, 1, 1, conv, "bob")
	for i := 0; i < 3; i++ {
		h.send(alice, 1, uint64(10+i), conv, fmt.Sprintf("m%d", i), "before carol")
	}
	modify(h, alice, 1, 20, conv, "add-carol", pb.MembershipOp_MEMBERSHIP_OP_ADD, "carol")
	h.waitFor("added", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[20] != nil })
	c, _ := h.store.Conversation(h.ctx, conv)
	h.ingress(carol, 3, 0, &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: c.Head}}}, conv)
	// Bob's ack comes after carol's on the same partition: once its
	// receipt is out, carol's record was handled too.
	h.ingress(bob, 2, 0, &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: c.Head}}}, conv)
	recs := h.waitFor("bob's receipt", func(recs []*pb.EdgeRecord) bool {
		for _, r := range recs {
			for _, rc := range receiptsIn(r) {
				if core.KeyOf(rc.GetFrom()) == bob {
					return true
				}
			}
		}
		return false
	})
	for _, r := range recs {
		for _, rc := range receiptsIn(r) {
			if core.KeyOf(rc.GetFrom()) == carol {
				t.Fatalf("carol's ack receipted messages from before she joined: %v", rc)
			}
		}
	}
}

// A device that connects on another edge ends its session on the first
// edge: the region tells that edge (Disconnect REPLACED to the session).
func TestSessionOnAnotherEdgeReplaced(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 7) // session 7 on the harness edge
	if err := h.bus.EnsureTopic(h.ctx, region.EdgeTopic("e2"), 1); err != nil {
		t.Fatal(err)
	}
	if err := h.api.SessionOpened(h.ctx, core.Route{Device: alice, Edge: "e2", Session: 9, SinceMs: 2}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("replace", func(recs []*pb.EdgeRecord) bool {
		for _, r := range recs {
			if d := r.GetFrame().GetDisconnect(); d != nil && r.GetSessionId() == 7 && d.GetCode() == pb.ErrorCode_ERROR_CODE_REPLACED {
				return true
			}
		}
		return false
	})
	// A reconnect on the same edge is the edge's business: no record.
	if err := h.api.SessionOpened(h.ctx, core.Route{Device: alice, Edge: "e2", Session: 10, SinceMs: 3}); err != nil {
		t.Fatal(err)
	}
}

// Failures while the store is unreachable are not the record's fault, and
// a brief failure of writes (reads still answering) is not long enough: a
// record retried through either is never dead-lettered, and goes through
// when the store is back.
func TestStoreOutageDoesNotDeadLetter(t *testing.T) {
	direct := core.DirectConvID("alice", "bob")
	var ss *seqStore
	h := newHarnessWrapped(t, func(s core.Store) core.Store { ss = &seqStore{Store: s}; return ss }, nil,
		func(c *region.Config) {
			c.MaxAttempts = 2
			c.DeadLetterAfter = 20 * time.Second
			c.IngressPartitions = 1
		})
	alice := h.register("alice", 1)
	h.register("bob", 2)
	ss.down.Store(true)
	h.send(alice, 1, 1, direct, "m1", "through the outage")
	time.Sleep(1500 * time.Millisecond) // many attempts fail meanwhile (the bus backs off)
	ss.down.Store(false)
	recs := h.waitFor("ack after the outage", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil })
	if ack := responses(recs, 1)[1].GetSend(); ack.GetSeq() != 1 {
		t.Fatalf("after the outage: %v", responses(recs, 1)[1])
	}
	// Writes to the conversation fail while reads answer: a hiccup, not
	// a poison record, as long as it is shorter than DeadLetterAfter.
	ss.poisoned.Store(&direct)
	h.send(alice, 1, 2, direct, "m2", "through the hiccup")
	time.Sleep(1500 * time.Millisecond)
	ss.poisoned.Store(nil)
	recs = h.waitFor("ack after the hiccup", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[2] != nil })
	if ack := responses(recs, 1)[2].GetSend(); ack.GetSeq() != 2 {
		t.Fatalf("after the hiccup: %v", responses(recs, 1)[2])
	}
	if n := h.reg.Stats().DeadLettered; n != 0 {
		t.Fatalf("%d records dead-lettered during an outage", n)
	}
}

// A client_msg_id names one entry: a send reusing a group change's key is
// refused, never acked as that change (nor the change as a send).
func TestKeyReusedAcrossKindsRefused(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	h.register("bob", 2)
	conv := core.GroupID("alice", "kinds")
	createGroup(h, alice, 1, 1, conv, "bob")
	h.send(alice, 1, 2, conv, "create", "a send with the creation's key")
	modify(h, alice, 1, 3, conv, "k1", pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "bob")
	h.send(alice, 1, 4, conv, "k1", "a send with the change's key")
	h.send(alice, 1, 5, conv, "m1", "a real message")
	modify(h, alice, 1, 6, conv, "m1", pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, "bob")
	recs := h.waitFor("answers", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[6] != nil })
	for _, id := range []uint64{2, 4, 6} {
		if c := responses(recs, 1)[id].GetError().GetCode(); c != pb.ErrorCode_ERROR_CODE_ALREADY_EXISTS {
			t.Fatalf("request %d reusing another entry's key: %v", id, responses(recs, 1)[id])
		}
	}
	if ack := responses(recs, 1)[5].GetSend(); ack == nil {
		t.Fatalf("real message: %v", responses(recs, 1)[5])
	}
}

// failEdgeProducesBus fails chosen produce calls to the edge topic (1 is
// the first), after letting the calls before them through.
type failEdgeProducesBus struct {
	*kafkabus.Bus
	n    atomic.Int32
	fail map[int32]bool
}

func (b *failEdgeProducesBus) Produce(ctx context.Context, recs ...core.BusRecord) error {
	if len(recs) > 0 && strings.HasPrefix(recs[0].Topic, region.EdgeTopicPrefix) && b.fail[b.n.Add(1)] {
		return errors.New("injected: broker refused the batch")
	}
	return b.Bus.Produce(ctx, recs...)
}

// Pipelining: while batches' produces fail and are redone, the next
// batches keep being sequenced, and still every message is acked once
// stored, delivered in seq order (a redone batch may deliver again: never
// out of order, never a gap), and every delivery ack gets its receipt.
func TestPipelinedProduceFailuresKeepOrder(t *testing.T) {
	fb := &failEdgeProducesBus{fail: map[int32]bool{3: true, 4: true, 7: true}}
	h := newHarnessWrapped(t, nil, func(b *kafkabus.Bus) core.Bus { fb.Bus = b; return fb }, func(c *region.Config) {
		c.IngressPartitions = 1
		c.MaxAttempts = 100
	})
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	const n = 120
	for i := 1; i <= n; i++ {
		h.send(alice, 1, uint64(i), conv, fmt.Sprintf("m%d", i), "x")
		if i%10 == 0 {
			// Bob acks what he has so far, in the same partition; a pause
			// lets the sequencer take the burst as a batch of its own.
			h.ingress(bob, 2, 0, &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: uint64(i - 5)}}}, conv)
			time.Sleep(5 * time.Millisecond)
		}
	}
	recs := h.waitFor("every ack", func(recs []*pb.EdgeRecord) bool { return len(responses(recs, 1)) == n })
	for i := 1; i <= n; i++ {
		r := responses(recs, 1)[uint64(i)]
		if r.GetError() != nil || r.GetSend().GetSeq() != uint64(i) {
			t.Fatalf("message %d answered %v", i, r)
		}
	}
	recs = h.waitFor("every delivery", func(recs []*pb.EdgeRecord) bool {
		ds := deliveries(recs, conv)[bob]
		return len(ds) > 0 && ds[len(ds)-1] == n
	})
	var next uint64 = 1 // the lowest seq not delivered yet
	for _, s := range deliveries(recs, conv)[bob] {
		if s > next {
			t.Fatalf("seq %d delivered before %d", s, next)
		}
		if s == next {
			next++
		}
	}
	if next != n+1 {
		t.Fatalf("delivered up to %d of %d", next-1, n)
	}
	h.waitFor("the last receipt", func(recs []*pb.EdgeRecord) bool {
		for _, r := range recs {
			for _, rc := range receiptsIn(r) {
				if rc.GetSeq() == n-5 {
					return true
				}
			}
		}
		return false
	})
	if fb.n.Load() < 8 {
		t.Fatalf("only %d edge produces: the injected failures did not all happen", fb.n.Load())
	}
}
