package region_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/kafkabus"
	"github.com/chatmesh/chatmesh/region/pebblestore"
)

// harness runs a region on an embedded broker and a Pebble store, and plays
// an edge: it produces ingress records and collects its edge topic.
type harness struct {
	t     *testing.T
	ctx   context.Context
	bus   core.Bus
	store core.Store
	reg   *region.Region
	api   *region.API
	edge  string

	mu   sync.Mutex
	recs []*pb.EdgeRecord
	cond chan struct{}
}

func newHarness(t *testing.T, adjust ...func(*region.Config)) *harness {
	t.Helper()
	return newHarnessWrapped(t, nil, nil, adjust...)
}

// newHarnessWrapped is newHarness with the region's store and bus wrapped
// (fault injection, call counting); nil wrappers leave them alone.
func newHarnessWrapped(t *testing.T, wrapStore func(core.Store) core.Store, wrapBus func(*kafkabus.Bus) core.Bus, adjust ...func(*region.Config)) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	emb, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	bus, err := kafkabus.New(kafkabus.Config{Brokers: emb.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rcfg := region.Config{IngressPartitions: 4}
	for _, f := range adjust {
		f(&rcfg)
	}
	var rst core.Store = st
	if wrapStore != nil {
		rst = wrapStore(st)
	}
	var rbus core.Bus = bus
	if wrapBus != nil {
		rbus = wrapBus(bus)
	}
	reg, err := region.New(rcfg, rst, rbus)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Shutdown(context.Background()) })
	h := &harness{t: t, ctx: ctx, bus: bus, store: st, reg: reg, api: reg.API(), edge: "e1", cond: make(chan struct{}, 1)}
	if err := bus.EnsureTopic(ctx, region.EdgeTopic(h.edge), 1); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	var once sync.Once
	go bus.Consume(ctx, core.ConsumeSpec{Topic: region.EdgeTopic(h.edge), OnReady: func() { once.Do(func() { close(ready) }) }},
		func(_ context.Context, rec core.BusRecord) error {
			var er pb.EdgeRecord
			if err := proto.Unmarshal(rec.Value, &er); err != nil {
				t.Errorf("edge record: %v", err)
				return nil
			}
			h.mu.Lock()
			h.recs = append(h.recs, region.Unbundle(&er)...)
			h.mu.Unlock()
			select {
			case h.cond <- struct{}{}:
			default:
			}
			return nil
		})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("edge consumer not ready")
	}
	return h
}

// proven sets req's identity_proof, signed by priv (req.IdentityKey's key).
func proven(priv ed25519.PrivateKey, static []byte, req *pb.RegisterRequest) *pb.RegisterRequest {
	req.IdentityProof = ed25519.Sign(priv, core.RegisterProofMessage(req.GetUserId(), static))
	return req
}

// register makes a user with one device online at the harness edge.
func (h *harness) register(user string, session uint64) core.DeviceKey {
	h.t.Helper()
	static := make([]byte, 32)
	rand.Read(static)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	resp, err := h.api.Register(h.ctx, static, proven(priv, static, &pb.RegisterRequest{UserId: user, IdentityKey: pub}))
	if err != nil {
		h.t.Fatalf("register %s: %v", user, err)
	}
	dev := core.KeyOf(resp.GetDevice())
	if session != 0 {
		if err := h.api.SessionOpened(h.ctx, core.Route{Device: dev, Edge: h.edge, Session: session, SinceMs: 1}); err != nil {
			h.t.Fatal(err)
		}
	}
	return dev
}

func (h *harness) ingress(dev core.DeviceKey, session, reqID uint64, rec *pb.IngressRecord, key string) {
	h.t.Helper()
	rec.Origin = &pb.Origin{EdgeId: h.edge, SessionId: session, ReqId: reqID, Device: dev.Addr()}
	b, _ := proto.Marshal(rec)
	if err := h.bus.Produce(h.ctx, core.BusRecord{Topic: region.DefaultIngressTopic, Key: []byte(key), Value: b}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) send(dev core.DeviceKey, session, reqID uint64, conv, cmid, body string) {
	h.ingress(dev, session, reqID, &pb.IngressRecord{Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{
		ConvId: conv, ClientMsgId: cmid, Envelope: &pb.Envelope{Ciphertext: []byte(body)},
	}}}, conv)
}

// waitFor waits until pred holds over the collected records.
func (h *harness) waitFor(what string, pred func([]*pb.EdgeRecord) bool) []*pb.EdgeRecord {
	h.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		h.mu.Lock()
		recs := append([]*pb.EdgeRecord(nil), h.recs...)
		h.mu.Unlock()
		if pred(recs) {
			return recs
		}
		select {
		case <-h.cond:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s; have %d records", what, len(recs))
		}
	}
}

func responses(recs []*pb.EdgeRecord, session uint64) map[uint64]*pb.Response {
	out := map[uint64]*pb.Response{}
	for _, r := range recs {
		if resp := r.GetFrame().GetResponse(); resp != nil && r.GetSessionId() == session {
			out[resp.GetReqId()] = resp
		}
	}
	return out
}

// deliveries returns, per target device, the seqs of conv delivered to it in order.
func deliveries(recs []*pb.EdgeRecord, conv string) map[core.DeviceKey][]uint64 {
	out := map[core.DeviceKey][]uint64{}
	for _, r := range recs {
		m := r.GetFrame().GetDelivery()
		if m == nil || m.GetConvId() != conv {
			continue
		}
		for _, t := range r.GetTargets() {
			out[core.KeyOf(t)] = append(out[core.KeyOf(t)], m.GetSeq())
		}
	}
	return out
}

func TestDirectSendAckDeliverDedupe(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	const n = 20
	for i := 1; i <= n; i++ {
		h.send(alice, 1, uint64(i), conv, fmt.Sprintf("m%d", i), fmt.Sprintf("body %d", i))
	}
	// Resend the first five with the same client ids: they must dedupe.
	for i := 1; i <= 5; i++ {
		h.send(alice, 1, uint64(100+i), conv, fmt.Sprintf("m%d", i), "ignored")
	}
	recs := h.waitFor("all acks", func(recs []*pb.EdgeRecord) bool { return len(responses(recs, 1)) >= n+5 })
	resp := responses(recs, 1)
	for i := 1; i <= n; i++ {
		ack := resp[uint64(i)].GetSend()
		if ack == nil || ack.GetSeq() != uint64(i) || ack.GetClientMsgId() != fmt.Sprintf("m%d", i) {
			t.Fatalf("ack %d = %v (err %v)", i, ack, resp[uint64(i)].GetError())
		}
	}
	for i := 1; i <= 5; i++ {
		if got := resp[uint64(100+i)].GetSend().GetSeq(); got != uint64(i) {
			t.Fatalf("resend of m%d acked with seq %d, want %d", i, got, i)
		}
	}
	d := deliveries(recs, conv)
	if got := d[bob]; len(got) < n {
		t.Fatalf("bob got %d deliveries, want >= %d", len(got), n)
	}
	c, err := h.store.Conversation(h.ctx, conv)
	if err != nil || c.Head != n {
		t.Fatalf("head = %d, %v; want %d", c.Head, err, n)
	}
	msgs, err := h.store.Messages(h.ctx, conv, 0, 100, 0)
	if err != nil || len(msgs) != n {
		t.Fatalf("stored %d, %v", len(msgs), err)
	}
	if string(msgs[0].GetEnvelope().GetCiphertext()) != "body 1" {
		t.Fatalf("first message body replaced by a resend: %q", msgs[0].GetEnvelope().GetCiphertext())
	}
	_ = alice
}

func TestReceiptsAndSync(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 0) // offline
	conv := core.DirectConvID("alice", "bob")
	for i := 1; i <= 3; i++ {
		h.send(alice, 1, uint64(i), conv, fmt.Sprintf("m%d", i), "x")
	}
	h.waitFor("acks", func(recs []*pb.EdgeRecord) bool { return len(responses(recs, 1)) >= 3 })
	// Bob syncs from nothing.
	resp, err := h.api.Query(h.ctx, bob, &pb.ClientFrame{ReqId: 9, Body: &pb.ClientFrame_Sync{Sync: &pb.SyncRequest{Limit: 2}}})
	if err != nil || resp.GetError() != nil {
		t.Fatal(err, resp.GetError())
	}
	s := resp.GetSync()
	if len(s.GetMessages()) != 2 || !s.GetMore() || s.GetMessages()[0].GetSeq() != 1 {
		t.Fatalf("page 1: %d messages more=%v", len(s.GetMessages()), s.GetMore())
	}
	resp, _ = h.api.Query(h.ctx, bob, &pb.ClientFrame{Body: &pb.ClientFrame_Sync{Sync: &pb.SyncRequest{
		Limit: 2, Cursors: []*pb.ConvCursor{{ConvId: conv, AfterSeq: 2}},
	}}})
	s = resp.GetSync()
	if len(s.GetMessages()) != 1 || s.GetMore() || s.GetMessages()[0].GetSeq() != 3 {
		t.Fatalf("page 2: %v more=%v", s.GetMessages(), s.GetMore())
	}
	// Bob acks and reads: alice's device gets delivered then read receipts.
	h.ingress(bob, 2, 0, &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: 3}}}, conv)
	h.ingress(bob, 2, 0, &pb.IngressRecord{Op: &pb.IngressRecord_Read{Read: &pb.ReadMarker{ConvId: conv, Seq: 2}}}, conv)
	h.waitFor("receipts", func(recs []*pb.EdgeRecord) bool {
		var del, read bool
		for _, r := range recs {
			if len(r.GetTargets()) == 0 || core.KeyOf(r.GetTargets()[0]) != alice {
				continue
			}
			// The ack and the read marker may share a batch: then one
			// Receipts frame carries both.
			for _, rc := range receiptsIn(r) {
				del = del || (rc.GetKind() == pb.ReceiptKind_RECEIPT_KIND_DELIVERED && rc.GetSeq() == 3)
				read = read || (rc.GetKind() == pb.ReceiptKind_RECEIPT_KIND_READ && rc.GetSeq() == 2)
			}
		}
		return del && read
	})
}

// receiptsIn returns the receipts an edge record carries: a lone Receipt
// frame's, or every one of a coalesced Receipts frame.
func receiptsIn(r *pb.EdgeRecord) []*pb.Receipt {
	if rc := r.GetFrame().GetReceipt(); rc != nil {
		return []*pb.Receipt{rc}
	}
	return r.GetFrame().GetReceipts().GetReceipts()
}

func TestGroupMembershipAndErrors(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	carol := h.register("carol", 3)
	mallory := h.register("mallory", 4)
	conv := core.GroupID("alice", "01HZZZZZZZZZZZZZZZZZZZZZZZ")
	h.ingress(alice, 1, 1, &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{
		ConvId: conv, Title: "three", Members: []string{"bob", "carol"},
	}}}, conv)
	recs := h.waitFor("create", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil })
	if info := responses(recs, 1)[1].GetConversation(); len(info.GetMembers()) != 3 {
		t.Fatalf("create: %v %v", info, responses(recs, 1)[1].GetError())
	}
	// A non-member cannot send, and learns nothing: the answer is the one
	// for a group that does not exist.
	h.send(mallory, 4, 1, conv, "x1", "spam")
	h.send(mallory, 4, 2, core.GroupID("alice", "nosuchgroup"), "x2", "spam")
	// Two conversations, maybe two partitions: the answers come in either order.
	recs = h.waitFor("not member", func(recs []*pb.EdgeRecord) bool {
		r := responses(recs, 4)
		return r[1] != nil && r[2] != nil
	})
	if e1, e2 := responses(recs, 4)[1].GetError(), responses(recs, 4)[2].GetError(); e1.GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND || e1.GetDetail() != e2.GetDetail() || e1.GetCode() != e2.GetCode() {
		t.Fatalf("non-member send: %v vs missing group: %v", e1, e2)
	}
	if c := responses(recs, 4)[1].GetError().GetCode(); c != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("non-member send: code %v", c)
	}
	h.send(bob, 2, 1, conv, "b1", "hi all")
	h.ingress(alice, 1, 2, &pb.IngressRecord{Op: &pb.IngressRecord_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{
		ConvId: conv, Op: pb.MembershipOp_MEMBERSHIP_OP_REMOVE, Users: []string{"carol"}, ClientMsgId: "rm-carol",
	}}}, conv)
	h.send(bob, 2, 2, conv, "b2", "carol is gone")
	recs = h.waitFor("b2 ack", func(recs []*pb.EdgeRecord) bool { return responses(recs, 2)[2] != nil })
	d := deliveries(recs, conv)
	if got := d[carol]; len(got) != 3 || got[2] != 3 { // create, b1, her removal
		t.Fatalf("carol deliveries %v, want [1 2 3]", got)
	}
	if got := d[bob]; len(got) != 4 {
		t.Fatalf("bob deliveries %v, want 4", got)
	}
	// Carol can no longer send; a group over the limit is refused.
	h.send(carol, 3, 5, conv, "c1", "still here?")
	big := make([]string, core.MaxGroupMembers)
	for i := range big {
		big[i] = fmt.Sprintf("u%d", i)
	}
	bigID := core.GroupID("alice", "big")
	h.ingress(alice, 1, 3, &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{
		ConvId: bigID, Members: big,
	}}}, bigID)
	recs = h.waitFor("errors", func(recs []*pb.EdgeRecord) bool {
		return responses(recs, 3)[5] != nil && responses(recs, 1)[3] != nil
	})
	if c := responses(recs, 3)[5].GetError().GetCode(); c != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("removed member send: %v", c)
	}
	if c := responses(recs, 1)[3].GetError().GetCode(); c != pb.ErrorCode_ERROR_CODE_GROUP_FULL {
		t.Fatalf("oversized group: %v", c)
	}
	// History for the removed member is refused; for bob it has 4 entries.
	resp, _ := h.api.Query(h.ctx, carol, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv}}})
	if resp.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("history for removed member: %v", resp)
	}
	resp, _ = h.api.Query(h.ctx, bob, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv, Limit: 10}}})
	if n := len(resp.GetHistory().GetMessages()); n != 4 {
		t.Fatalf("bob history %d entries", n)
	}
}

func TestRegisterLinkedDevice(t *testing.T) {
	h := newHarness(t)
	static1 := make([]byte, 32)
	rand.Read(static1)
	pub1, priv1, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := h.api.Register(h.ctx, static1, proven(priv1, static1, &pb.RegisterRequest{UserId: "dana", IdentityKey: pub1})); err != nil {
		t.Fatal(err)
	}
	static2 := make([]byte, 32)
	rand.Read(static2)
	pub2, priv2, _ := ed25519.GenerateKey(rand.Reader)
	// Without a link: refused.
	if _, err := h.api.Register(h.ctx, static2, proven(priv2, static2, &pb.RegisterRequest{UserId: "dana", IdentityKey: pub2})); core.Code(err) != pb.ErrorCode_ERROR_CODE_ALREADY_EXISTS {
		t.Fatalf("unlinked second device: %v", err)
	}
	// With a bad signature: forbidden.
	bad := ed25519.Sign(priv1, []byte("something else"))
	if _, err := h.api.Register(h.ctx, static2, proven(priv2, static2, &pb.RegisterRequest{UserId: "dana", IdentityKey: pub2, LinkedByDevice: 1, LinkSignature: bad})); core.Code(err) != pb.ErrorCode_ERROR_CODE_FORBIDDEN {
		t.Fatalf("bad link: %v", err)
	}
	sig := ed25519.Sign(priv1, region.LinkMessage("dana", static2, pub2))
	resp, err := h.api.Register(h.ctx, static2, proven(priv2, static2, &pb.RegisterRequest{UserId: "dana", IdentityKey: pub2, LinkedByDevice: 1, LinkSignature: sig}))
	if err != nil || resp.GetDevice().GetDeviceId() != 2 {
		t.Fatalf("linked device: %v %v", resp, err)
	}
	if k, err := h.api.Authenticate(h.ctx, static2); err != nil || k.Device != 2 {
		t.Fatalf("authenticate: %v %v", k, err)
	}
}

// TestRegisterRequiresIdentityProof: a registration without a proof of
// possession of its identity key, or with a proof by another key or for
// another user or Noise key, is refused with a typed error and stores
// nothing; someone else's identity key cannot be registered.
func TestRegisterRequiresIdentityProof(t *testing.T) {
	h := newHarness(t)
	static := make([]byte, 32)
	rand.Read(static)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name  string
		proof []byte
		code  pb.ErrorCode
	}{
		{"missing", nil, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"truncated", ed25519.Sign(priv, core.RegisterProofMessage("frank", static))[:10], pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"someone else's key", ed25519.Sign(otherPriv, core.RegisterProofMessage("frank", static)), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"another user", ed25519.Sign(priv, core.RegisterProofMessage("frankie", static)), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"another noise key", ed25519.Sign(priv, core.RegisterProofMessage("frank", make([]byte, 32))), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
	}
	for _, c := range cases {
		_, err := h.api.Register(h.ctx, static, &pb.RegisterRequest{UserId: "frank", IdentityKey: pub, IdentityProof: c.proof})
		if got := core.Code(err); got != c.code {
			t.Fatalf("%s: %v (%v), want %v", c.name, got, err, c.code)
		}
		if _, err := h.api.Authenticate(h.ctx, static); !errors.Is(err, core.ErrNotFound) {
			t.Fatalf("%s: device stored: %v", c.name, err)
		}
		if _, err := h.store.User(h.ctx, "frank"); !errors.Is(err, core.ErrNotFound) {
			t.Fatalf("%s: user stored: %v", c.name, err)
		}
	}
	resp, err := h.api.Register(h.ctx, static, proven(priv, static, &pb.RegisterRequest{UserId: "frank", IdentityKey: pub}))
	if err != nil || resp.GetDevice().GetDeviceId() != 1 {
		t.Fatalf("proven registration: %v %v", resp, err)
	}
}

// TestRegisterDeviceLimit: a user has at most core.MaxDevicesPerUser
// devices; the next link is refused with LIMIT_EXCEEDED and stores nothing.
func TestRegisterDeviceLimit(t *testing.T) {
	h := newHarness(t)
	static1 := make([]byte, 32)
	rand.Read(static1)
	pub1, priv1, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := h.api.Register(h.ctx, static1, proven(priv1, static1, &pb.RegisterRequest{UserId: "gina", IdentityKey: pub1})); err != nil {
		t.Fatal(err)
	}
	link := func() error {
		static := make([]byte, 32)
		rand.Read(static)
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		sig := ed25519.Sign(priv1, region.LinkMessage("gina", static, pub))
		_, err := h.api.Register(h.ctx, static, proven(priv, static, &pb.RegisterRequest{UserId: "gina", IdentityKey: pub, LinkedByDevice: 1, LinkSignature: sig}))
		return err
	}
	for i := 2; i <= core.MaxDevicesPerUser; i++ {
		if err := link(); err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
	}
	if err := link(); !errors.Is(err, core.ErrLimitExceeded) || core.Code(err) != pb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED {
		t.Fatalf("device %d: %v, want LIMIT_EXCEEDED", core.MaxDevicesPerUser+1, err)
	}
	if devs, err := h.store.Devices(h.ctx, "gina"); err != nil || len(devs) != core.MaxDevicesPerUser {
		t.Fatalf("%d devices stored (%v), want %d", len(devs), err, core.MaxDevicesPerUser)
	}
}
