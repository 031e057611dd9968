package region_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
)

// TestRetentionInRegion: a started region runs the retention worker: once
// the recipient acked and the resend window passed, the entries are gone;
// a resend of a deleted entry's client_msg_id is then a new entry (the
// documented cost of resending after the window).
func TestRetentionInRegion(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixMilli())
	clock := func() time.Time { return time.UnixMilli(now.Load()) }
	h := newHarness(t, func(c *region.Config) {
		c.Now = clock
		c.Retention = region.RetentionConfig{Interval: 10 * time.Millisecond}
	})
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	for i := 1; i <= 3; i++ {
		h.send(alice, 1, uint64(i), conv, []string{"", "m1", "m2", "m3"}[i], "body")
	}
	h.waitFor("acks", func(recs []*pb.EdgeRecord) bool { return len(responses(recs, 1)) >= 3 })
	h.ingress(bob, 2, 50, &pb.IngressRecord{Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: 3}}}, conv)
	h.waitFor("bob's ack answered", func(recs []*pb.EdgeRecord) bool { return responses(recs, 2)[50] != nil })

	// Within the window nothing goes, acked or not.
	time.Sleep(100 * time.Millisecond)
	if ms, err := h.store.Messages(h.ctx, conv, 0, 0, 0); err != nil || len(ms) != 3 {
		t.Fatalf("within the resend window: %d entries, %v", len(ms), err)
	}
	now.Add((region.DefaultResendWindow + time.Hour).Milliseconds())
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms, err := h.store.Messages(h.ctx, conv, 0, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries left after the window, all acked (stats %+v)", len(ms), h.reg.Retention().Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := h.reg.Retention().Stats(); st.Trimmed != 3 || st.Expired != 0 {
		t.Fatalf("retention stats %+v", st)
	}
	h.send(alice, 1, 60, conv, "m1", "again")
	recs := h.waitFor("resend answered", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[60] != nil })
	if got := responses(recs, 1)[60].GetSend().GetSeq(); got != 4 {
		t.Fatalf("resend after the window acked with seq %d, want a new entry 4", got)
	}
}
