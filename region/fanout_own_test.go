package region_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"slices"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// countSeq counts the deliveries of (conv, seq) to dev.
func countSeq(recs []*pb.EdgeRecord, conv string, dev core.DeviceKey, seq uint64) int {
	n := 0
	for _, s := range deliveries(recs, conv)[dev] {
		if s == seq {
			n++
		}
	}
	return n
}

// TestResendIsNotPushedAgain: a resend (same client_msg_id, new request)
// gets the original ack and is not pushed to the members a second time
// (PROTOCOL.md §7.1). Marker message 2 follows the resend in the same
// conversation (one ingress partition, one edge topic partition, so its
// delivery comes after anything the resend produced).
func TestResendIsNotPushedAgain(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	h.send(alice, 1, 1, conv, "m1", "body 1")
	h.waitFor("first delivery", func(recs []*pb.EdgeRecord) bool { return countSeq(recs, conv, bob, 1) == 1 })
	h.send(alice, 1, 2, conv, "m1", "resent body")
	h.send(alice, 1, 3, conv, "m2", "body 2")
	recs := h.waitFor("marker delivery", func(recs []*pb.EdgeRecord) bool {
		return countSeq(recs, conv, bob, 2) == 1 && len(responses(recs, 1)) == 3
	})
	if ack := responses(recs, 1)[2].GetSend(); ack.GetSeq() != 1 || ack.GetClientMsgId() != "m1" {
		t.Fatalf("resend ack = %v, want the original (seq 1)", ack)
	}
	for _, dev := range []core.DeviceKey{alice, bob} {
		if n := countSeq(recs, conv, dev, 1); n != 1 {
			t.Errorf("%s got seq 1 pushed %d times, want once (the resend was pushed again)", dev, n)
		}
	}
}

// TestOwnDevicesGetDeliveries documents which devices a message is pushed
// to: every online device of every member — the recipient's devices, the
// sender's other devices, and the sending device itself (its entry comes
// back like any other; PROTOCOL.md §7.2).
func TestOwnDevicesGetDeliveries(t *testing.T) {
	h := newHarness(t)
	// alice.1 and a linked alice.2, both online; bob online.
	static1 := make([]byte, 32)
	rand.Read(static1)
	pub1, priv1, _ := ed25519.GenerateKey(rand.Reader)
	r1, err := h.api.Register(h.ctx, static1, proven(priv1, static1, &pb.RegisterRequest{UserId: "alice", IdentityKey: pub1}))
	if err != nil {
		t.Fatal(err)
	}
	static2 := make([]byte, 32)
	rand.Read(static2)
	pub2, priv2, _ := ed25519.GenerateKey(rand.Reader)
	sig := ed25519.Sign(priv1, region.LinkMessage("alice", static2, pub2))
	r2, err := h.api.Register(h.ctx, static2, proven(priv2, static2, &pb.RegisterRequest{UserId: "alice", IdentityKey: pub2, LinkedByDevice: 1, LinkSignature: sig}))
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := core.KeyOf(r1.GetDevice()), core.KeyOf(r2.GetDevice())
	for i, d := range []core.DeviceKey{a1, a2} {
		if err := h.api.SessionOpened(h.ctx, core.Route{Device: d, Edge: h.edge, Session: uint64(10 + i), SinceMs: 1}); err != nil {
			t.Fatal(err)
		}
	}
	bob := h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	h.ingress(a1, 10, 1, &pb.IngressRecord{Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{
		ConvId: conv, ClientMsgId: "m1", Envelope: &pb.Envelope{PerDevice: []*pb.DeviceCiphertext{
			{Device: bob.Addr(), Ciphertext: []byte("for bob")},
			{Device: a2.Addr(), Ciphertext: []byte("for alice.2")},
		}},
	}}}, conv)
	recs := h.waitFor("deliveries and ack", func(recs []*pb.EdgeRecord) bool {
		d := deliveries(recs, conv)
		return len(d[bob]) == 1 && len(d[a2]) == 1 && len(d[a1]) == 1 && len(responses(recs, 10)) == 1
	})
	var targets []core.DeviceKey
	for _, r := range recs {
		if r.GetFrame().GetDelivery() != nil {
			for _, t := range r.GetTargets() {
				targets = append(targets, core.KeyOf(t))
			}
		}
	}
	slices.SortFunc(targets, func(x, y core.DeviceKey) int {
		if x.String() < y.String() {
			return -1
		}
		return 1
	})
	want := []core.DeviceKey{a1, a2, bob}
	if !slices.Equal(targets, want) {
		t.Fatalf("delivery targets %v, want %v (each device once, the sending device included)", targets, want)
	}
	// What the sending device sees once its edge strips the other
	// devices' entries: the entry without any ciphertext for itself.
	for _, r := range recs {
		if m := r.GetFrame().GetDelivery(); m != nil {
			if got := core.ForDevice(m, a1).GetEnvelope().GetPerDevice(); len(got) != 0 {
				t.Fatalf("sending device's copy carries %d per-device entries, want 0", len(got))
			}
		}
	}
}

// failDeliveriesBus fails the first produces that carry a delivery (after
// the entry was stored).
type failDeliveriesBus struct {
	*kafkabus.Bus
	left atomic.Int32
}

func (b *failDeliveriesBus) Produce(ctx context.Context, recs ...core.BusRecord) error {
	for _, r := range recs {
		var er pb.EdgeRecord
		if proto.Unmarshal(r.Value, &er) != nil {
			continue
		}
		for _, in := range region.Unbundle(&er) {
			if in.GetFrame().GetDelivery() != nil && b.left.Add(-1) >= 0 {
				return errors.New("injected: broker refused the batch")
			}
		}
	}
	return b.Bus.Produce(ctx, recs...)
}

// TestDeliverySurvivesFailedProduce: not pushing resends again must not
// lose the push of an entry whose first produce failed after it was
// stored: the retried batch finds the entry stored and emits it then.
func TestDeliverySurvivesFailedProduce(t *testing.T) {
	h := newHarnessWrapped(t, nil, func(b *kafkabus.Bus) core.Bus {
		fb := &failDeliveriesBus{Bus: b}
		fb.left.Store(2)
		return fb
	}, func(c *region.Config) { c.MaxAttempts = 100 })
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	h.send(alice, 1, 1, conv, "m1", "x")
	recs := h.waitFor("delivery and ack", func(recs []*pb.EdgeRecord) bool {
		return countSeq(recs, conv, bob, 1) == 1 && responses(recs, 1)[1] != nil
	})
	if ack := responses(recs, 1)[1].GetSend(); ack.GetSeq() != 1 {
		t.Fatalf("ack %v", responses(recs, 1)[1])
	}
}
