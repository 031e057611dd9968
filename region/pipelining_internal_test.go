package region

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// captureRegion is a region, not started, whose outputs are kept in bus:
// the test hands it batches itself.
func captureRegion(t testing.TB, st core.Store, adjust ...func(*Config)) (*Region, *countingBus) {
	t.Helper()
	bus := &countingBus{}
	return unstartedRegion(t, st, bus, adjust...), bus
}

// ingressRecord encodes op from dev as an ingress record at offset.
func ingressRecord(t testing.TB, dev core.DeviceKey, reqID uint64, conv string, offset int64, in *pb.IngressRecord) core.BusRecord {
	t.Helper()
	in.Origin = &pb.Origin{EdgeId: "e1", SessionId: 1, ReqId: reqID, Device: dev.Addr()}
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return core.BusRecord{Topic: DefaultIngressTopic, Key: []byte(conv), Value: b, Offset: offset}
}

func sendAfter(t testing.TB, dev core.DeviceKey, reqID uint64, conv, cmid, after string, offset int64) core.BusRecord {
	return ingressRecord(t, dev, reqID, conv, offset, &pb.IngressRecord{Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{
		ConvId: conv, ClientMsgId: cmid, AfterClientMsgId: after, Envelope: &pb.Envelope{Ciphertext: []byte("opaque " + cmid)},
	}}})
}

// produced decodes the edge records the region produced since the last
// call.
func (b *countingBus) produced(t testing.TB) []*pb.EdgeRecord {
	t.Helper()
	b.mu.Lock()
	recs := b.recs
	b.recs = nil
	b.mu.Unlock()
	var out []*pb.EdgeRecord
	for _, rec := range recs {
		var er pb.EdgeRecord
		if err := proto.Unmarshal(rec.Value, &er); err != nil {
			t.Fatalf("produced record does not decode: %v", err)
		}
		out = append(out, Unbundle(&er)...)
	}
	return out
}

// answers maps request ids to their responses.
func answers(recs []*pb.EdgeRecord) map[uint64]*pb.Response {
	m := map[uint64]*pb.Response{}
	for _, r := range recs {
		if resp := r.GetFrame().GetResponse(); resp != nil {
			m[resp.GetReqId()] = resp
		}
	}
	return m
}

// TestSendAfterPredecessor: a send naming its predecessor
// (after_client_msg_id) is sequenced only once the predecessor is stored,
// whether that happened in the same batch, an earlier one, or before the
// region restarted (no cached state: the store is asked); otherwise it is
// refused OUT_OF_ORDER and nothing is stored. A resend of a stored entry
// is acked whatever it names; a send that would create a conversation
// cannot have a stored predecessor. On Pebble and PostgreSQL, with and
// without group commit.
func TestSendAfterPredecessor(t *testing.T) {
	for name, open := range groupCommitStores(t) {
		for _, noGC := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/nogroupcommit=%v", name, noGC), func(t *testing.T) {
				st := open(t)
				alice, _ := registerUser(t, st, "alice"), registerUser(t, st, "bob")
				registerUser(t, st, "carol")
				conv := core.DirectConvID("alice", "bob")
				noGroupCommit := func(c *Config) { c.NoGroupCommit = noGC }
				r, bus := captureRegion(t, st, noGroupCommit)
				code := func(resps map[uint64]*pb.Response, id uint64) pb.ErrorCode {
					t.Helper()
					resp := resps[id]
					if resp == nil {
						t.Fatalf("request %d: no answer", id)
					}
					return resp.GetError().GetCode()
				}
				// One batch: m1; m3 naming m2, which is not stored yet; m2
				// naming m1 (stored earlier in the same batch).
				if err := r.handleBatch(t.Context(), []core.BusRecord{
					sendAfter(t, alice, 1, conv, "m1", "", 0),
					sendAfter(t, alice, 3, conv, "m3", "m2", 1),
					sendAfter(t, alice, 2, conv, "m2", "m1", 2),
				}); err != nil {
					t.Fatal(err)
				}
				resps := answers(bus.produced(t))
				if c := code(resps, 3); c != pb.ErrorCode_ERROR_CODE_OUT_OF_ORDER {
					t.Fatalf("m3 before m2: %v, want OUT_OF_ORDER", c)
				}
				if code(resps, 1) != pb.ErrorCode_ERROR_CODE_OK || code(resps, 2) != pb.ErrorCode_ERROR_CODE_OK {
					t.Fatalf("m1, m2: %v, %v", resps[1], resps[2])
				}
				// The resend of m3 comes after m2: sequenced. A resend of m2
				// naming something never sent gets its original ack.
				if err := r.handleBatch(t.Context(), []core.BusRecord{
					sendAfter(t, alice, 4, conv, "m3", "m2", 3),
					sendAfter(t, alice, 5, conv, "m2", "never-sent", 4),
				}); err != nil {
					t.Fatal(err)
				}
				resps = answers(bus.produced(t))
				if ack := resps[4].GetSend(); ack.GetSeq() != 3 {
					t.Fatalf("m3 resent after m2: %v, want seq 3", resps[4])
				}
				if ack := resps[5].GetSend(); ack.GetSeq() != 2 {
					t.Fatalf("m2 resent: %v, want its original seq 2", resps[5])
				}
				// A new region on the same store (nothing cached): the
				// predecessor is looked up in the store.
				r2, bus2 := captureRegion(t, st, noGroupCommit)
				if err := r2.handleBatch(t.Context(), []core.BusRecord{
					sendAfter(t, alice, 6, conv, "m4", "m3", 5),
					sendAfter(t, alice, 7, conv, "m6", "m5", 6),
					sendAfter(t, alice, 8, core.DirectConvID("alice", "carol"), "c1", "c0", 7),
				}); err != nil {
					t.Fatal(err)
				}
				resps = answers(bus2.produced(t))
				if ack := resps[6].GetSend(); ack.GetSeq() != 4 {
					t.Fatalf("m4 after m3 (looked up): %v, want seq 4", resps[6])
				}
				if c := code(resps, 7); c != pb.ErrorCode_ERROR_CODE_OUT_OF_ORDER {
					t.Fatalf("m6 naming an unsent m5: %v, want OUT_OF_ORDER", c)
				}
				if c := code(resps, 8); c != pb.ErrorCode_ERROR_CODE_OUT_OF_ORDER {
					t.Fatalf("a first message naming a predecessor: %v, want OUT_OF_ORDER", c)
				}
				if _, err := st.Conversation(t.Context(), core.DirectConvID("alice", "carol")); err == nil {
					t.Fatal("the refused first message created the conversation")
				}
				ms, err := st.Messages(t.Context(), conv, 0, 100, 0)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, m := range ms {
					got = append(got, m.GetClientMsgId())
				}
				if fmt.Sprint(got) != "[m1 m2 m3 m4]" {
					t.Fatalf("stored %v, want [m1 m2 m3 m4]", got)
				}
				if n := r.Stats().OutOfOrder + r2.Stats().OutOfOrder; n != 3 {
					t.Fatalf("%d counted out of order, want 3", n)
				}
			})
		}
	}
}

// TestReceiptsCoalescedPerBatch: the acks and read markers of one batch
// reach a sender as one Receipts frame per maxReceiptsPerFrame receipts,
// one per (reader device, kind) with the highest seq, instead of one frame
// per ack; a lone receipt is still a Receipt frame.
func TestReceiptsCoalescedPerBatch(t *testing.T) {
	for name, open := range groupCommitStores(t) {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			const members = maxReceiptsPerFrame + 44
			alice := registerUser(t, st, "alice")
			var users []string
			var devs []core.DeviceKey
			for i := range members {
				u := fmt.Sprintf("u%03d", i)
				users = append(users, u)
				devs = append(devs, registerUser(t, st, u))
			}
			if err := st.SetRoute(t.Context(), core.Route{Device: alice, Edge: "e1", Session: 1, SinceMs: 1}); err != nil {
				t.Fatal(err)
			}
			conv := core.GroupID("alice", "coalesce")
			r, bus := captureRegion(t, st)
			off := int64(0)
			next := func() int64 { off++; return off }
			batch := []core.BusRecord{ingressRecord(t, alice, 1, conv, next(), &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{
				ConvId: conv, Members: users,
			}}})}
			for i := range 3 {
				batch = append(batch, sendAfter(t, alice, uint64(10+i), conv, fmt.Sprintf("m%d", i), "", next()))
			}
			if err := r.handleBatch(t.Context(), batch); err != nil {
				t.Fatal(err)
			}
			resps := answers(bus.produced(t))
			head := resps[12].GetSend().GetSeq()
			if resps[1].GetError() != nil || head == 0 {
				t.Fatalf("setup: create %v, last send %v", resps[1], resps[12])
			}
			// Every member acks twice (head-1, then head) and reads once.
			batch = nil
			for _, d := range devs {
				batch = append(batch,
					ingressRecord(t, d, 0, conv, next(), &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: head - 1}}}),
					ingressRecord(t, d, 0, conv, next(), &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: head}}}),
					ingressRecord(t, d, 0, conv, next(), &pb.IngressRecord{Op: &pb.IngressRecord_Read{Read: &pb.ReadMarker{ConvId: conv, Seq: head - 1}}}))
			}
			if err := r.handleBatch(t.Context(), batch); err != nil {
				t.Fatal(err)
			}
			frames, lone := 0, 0
			got := map[receiptKey]uint64{}
			for _, er := range bus.produced(t) {
				f := er.GetFrame()
				var rs []*pb.Receipt
				switch {
				case f.GetReceipts() != nil:
					rs = f.GetReceipts().GetReceipts()
					if len(rs) < 2 || len(rs) > maxReceiptsPerFrame {
						t.Fatalf("a Receipts frame of %d", len(rs))
					}
				case f.GetReceipt() != nil:
					rs, lone = []*pb.Receipt{f.GetReceipt()}, lone+1
				default:
					continue
				}
				frames++
				if len(er.GetTargets()) != 1 || core.KeyOf(er.GetTargets()[0]) != alice {
					t.Fatalf("receipt frame to %v, want alice only", er.GetTargets())
				}
				for _, rc := range rs {
					k := receiptKey{conv: rc.GetConvId(), from: core.KeyOf(rc.GetFrom()), kind: rc.GetKind()}
					if _, dup := got[k]; dup {
						t.Fatalf("two receipts of %v in one batch", k)
					}
					got[k] = rc.GetSeq()
				}
			}
			if len(got) != 2*members {
				t.Fatalf("%d receipts, want %d (delivered and read per member)", len(got), 2*members)
			}
			for _, d := range devs {
				if s := got[receiptKey{conv, d, pb.ReceiptKind_RECEIPT_KIND_DELIVERED}]; s != head {
					t.Fatalf("%v delivered receipt at %d, want the highest ack %d", d, s, head)
				}
				if s := got[receiptKey{conv, d, pb.ReceiptKind_RECEIPT_KIND_READ}]; s != head-1 {
					t.Fatalf("%v read receipt at %d, want %d", d, s, head-1)
				}
			}
			if want := (2*members + maxReceiptsPerFrame - 1) / maxReceiptsPerFrame; frames != want || lone != 0 {
				t.Fatalf("%d receipt frames (%d lone), want %d Receipts frames", frames, lone, want)
			}
			// A lone ack in a batch of its own: a plain Receipt frame.
			if err := r.handleBatch(t.Context(), []core.BusRecord{ingressRecord(t, devs[0], 0, conv, next(), &pb.IngressRecord{Op: &pb.IngressRecord_Read{Read: &pb.ReadMarker{ConvId: conv, Seq: head}}})}); err != nil {
				t.Fatal(err)
			}
			var single *pb.Receipt
			for _, er := range bus.produced(t) {
				if er.GetFrame().GetReceipts() != nil {
					t.Fatal("a lone receipt sent as Receipts")
				}
				if rc := er.GetFrame().GetReceipt(); rc != nil {
					single = rc
				}
			}
			if single.GetSeq() != head || single.GetKind() != pb.ReceiptKind_RECEIPT_KIND_READ {
				t.Fatalf("lone receipt %v", single)
			}

			// Two senders (alice, then u000) in a small group; half the
			// members ack both messages at once (a receipt for both
			// senders), half one then the other (one for each): each sender
			// still gets one frame for the batch, not one per set of senders.
			small := core.GroupID("alice", "twosenders")
			if err := st.SetRoute(t.Context(), core.Route{Device: devs[0], Edge: "e1", Session: 2, SinceMs: 1}); err != nil {
				t.Fatal(err)
			}
			if err := r.handleBatch(t.Context(), []core.BusRecord{
				ingressRecord(t, alice, 30, small, next(), &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{ConvId: small, Members: users[:10]}}}),
				sendAfter(t, alice, 31, small, "a1", "", next()),
				sendAfter(t, devs[0], 32, small, "u1", "", next()),
			}); err != nil {
				t.Fatal(err)
			}
			resps = answers(bus.produced(t))
			h := resps[32].GetSend().GetSeq()
			if h != 3 {
				t.Fatalf("setup: %v", resps)
			}
			batch = nil
			for i, d := range devs[1:10] {
				if i%2 == 0 {
					batch = append(batch, ingressRecord(t, d, 0, small, next(), &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: small, Seq: h}}}))
					continue
				}
				batch = append(batch,
					ingressRecord(t, d, 0, small, next(), &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: small, Seq: h - 1}}}),
					ingressRecord(t, d, 0, small, next(), &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: small, Seq: h}}}))
			}
			if err := r.handleBatch(t.Context(), batch); err != nil {
				t.Fatal(err)
			}
			perTarget := map[core.DeviceKey]int{}
			receipts := map[core.DeviceKey]int{}
			for _, er := range bus.produced(t) {
				n := len(er.GetFrame().GetReceipts().GetReceipts())
				if er.GetFrame().GetReceipt() != nil {
					n = 1
				}
				if n == 0 {
					continue
				}
				for _, tg := range er.GetTargets() {
					perTarget[core.KeyOf(tg)]++
					receipts[core.KeyOf(tg)] += n
				}
			}
			if perTarget[alice] != 1 || perTarget[devs[0]] != 1 || receipts[alice] != 9 || receipts[devs[0]] != 9 {
				t.Fatalf("frames per sender %v, receipts %v; want one frame of 9 receipts each", perTarget, receipts)
			}
		})
	}
}

// TestFlushReceiptsBounds: a user's receipts of one batch are split into
// frames of at most maxReceiptsPerFrame receipts and maxReceiptFrameSize
// bytes — at the count limit, one over it, with the longest ids (the byte
// bound decides), and at 10x the count — and every receipt goes out once.
func TestFlushReceiptsBounds(t *testing.T) {
	r, err := New(Config{}, answeringStore{}, &countingBus{})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("u", core.MaxUserIDLen)
	for _, tc := range []struct {
		name   string
		n      int
		user   func(i int) string
		frames int // 0: only the bounds are checked
	}{
		{"limit", maxReceiptsPerFrame, func(i int) string { return fmt.Sprintf("u%d", i) }, 1},
		{"limit+1", maxReceiptsPerFrame + 1, func(i int) string { return fmt.Sprintf("u%d", i) }, 2},
		{"longest ids", maxReceiptsPerFrame, func(i int) string { return fmt.Sprintf("%s%04d", long[:core.MaxUserIDLen-4], i) }, 0},
		{"10x", 10 * maxReceiptsPerFrame, func(i int) string { return fmt.Sprintf("%s%04d", long[:core.MaxUserIDLen-4], i) }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBatch(r.store)
			conv := "g:" + strings.Repeat("C", 64)
			for i := range tc.n {
				b.receipts = append(b.receipts, pendingReceipt{users: []string{"alice"}, r: &pb.Receipt{
					ConvId: conv, From: &pb.DeviceAddr{UserId: tc.user(i), DeviceId: 1 << 31}, Kind: pb.ReceiptKind_RECEIPT_KIND_DELIVERED, Seq: 1 << 60,
				}})
			}
			r.flushReceipts(b)
			seen := map[string]bool{}
			for _, f := range b.fan {
				rs := f.frame.GetReceipts().GetReceipts()
				if rc := f.frame.GetReceipt(); rc != nil {
					rs = []*pb.Receipt{rc}
				}
				if len(rs) > maxReceiptsPerFrame {
					t.Fatalf("a frame of %d receipts", len(rs))
				}
				if n := proto.Size(f.frame); n > maxReceiptFrameSize+64 {
					t.Fatalf("a frame of %d bytes, bound %d", n, maxReceiptFrameSize)
				}
				for _, rc := range rs {
					if seen[rc.GetFrom().GetUserId()] {
						t.Fatalf("%s twice", rc.GetFrom().GetUserId())
					}
					seen[rc.GetFrom().GetUserId()] = true
				}
			}
			if len(seen) != tc.n {
				t.Fatalf("%d receipts out of %d", len(seen), tc.n)
			}
			if tc.frames > 0 && len(b.fan) != tc.frames {
				t.Fatalf("%d frames, want %d", len(b.fan), tc.frames)
			}
			if tc.frames == 0 && len(b.fan) <= tc.n/maxReceiptsPerFrame {
				t.Fatalf("%d frames for %d receipts with the longest ids: the byte bound never split one", len(b.fan), tc.n)
			}
		})
	}
}
