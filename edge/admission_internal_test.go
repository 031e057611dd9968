package edge

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// blockingBus holds every Produce until release is closed.
type blockingBus struct {
	recordingBus
	entered chan struct{}
	release chan struct{}
}

func (b *blockingBus) Produce(ctx context.Context, _ ...core.BusRecord) error {
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestIngressAdmissionLimit: with MaxIngressInFlight produces in flight, a
// further write is answered RATE_LIMITED with retry_after_ms at once
// instead of queueing; once the slot frees, writes pass again.
func TestIngressAdmissionLimit(t *testing.T) {
	dev := core.DeviceKey{User: "a", Device: 1}
	bus := &blockingBus{entered: make(chan struct{}, 4), release: make(chan struct{})}
	e, err := New(Config{ID: "e1", Admission: AdmissionConfig{MaxIngressInFlight: 1}}, oneDevice{dev}, bus)
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	defer e.cancel()
	newSess := func(id uint64) *session {
		s := &session{e: e, id: id, ip: "192.0.2.1", stop: make(chan struct{}), dev: dev, authed: true}
		s.bucket.Store(newBucket(100, 100, time.Now()))
		return s
	}
	send := func(reqID uint64) []byte {
		b, _ := proto.Marshal(&pb.ClientFrame{ReqId: reqID, Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
			ConvId: "g:x", ClientMsgId: "m", Envelope: &pb.Envelope{}}}})
		return b
	}
	first, second := newSess(1), newSess(2)
	done := make(chan struct{})
	go func() { defer close(done); first.handle(send(1)) }()
	select {
	case <-bus.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("first produce never started")
	}
	second.handle(send(2)) // must not block: the slot is taken
	var out pb.ServerFrame
	if err := proto.Unmarshal(mustPop(t, second), &out); err != nil {
		t.Fatal(err)
	}
	r := out.GetResponse()
	if r.GetReqId() != 2 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_RATE_LIMITED || r.GetError().GetRetryAfterMs() == 0 {
		t.Fatalf("write over the in-flight limit: %v", r)
	}
	if st := e.AdmissionStats(); st.IngressFull != 1 {
		t.Fatalf("IngressFull %d", st.IngressFull)
	}
	close(bus.release)
	<-done
	second.handle(send(3)) // the slot is free again
	<-bus.entered
	if b, ok := second.popQueued(); ok {
		t.Fatalf("unexpected answer to a write that should pass: %x", b)
	}
}

func TestFrameCost(t *testing.T) {
	users := func(n int) []string { return make([]string, n) }
	for _, c := range []struct {
		f    *pb.ClientFrame
		want cost
	}{
		{&pb.ClientFrame{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{}}}, cost{budgetMessages, 1}},
		{&pb.ClientFrame{Body: &pb.ClientFrame_Sync{Sync: &pb.SyncRequest{}}}, cost{budgetReads, 1 + core.DefaultPageSize/100}},
		{&pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{Limit: 1000}}}, cost{budgetReads, 11}},
		{&pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{Limit: 1 << 30}}}, cost{budgetReads, 11}},
		{&pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: users(500)}}}, cost{budgetReads, 500}},
		{&pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{}}}, cost{budgetReads, 1}},
		{&pb.ClientFrame{Body: &pb.ClientFrame_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{Users: users(120)}}}, cost{budgetMessages, 3}},
		{&pb.ClientFrame{Body: &pb.ClientFrame_FetchBundle{FetchBundle: &pb.FetchBundleRequest{}}}, cost{budgetReads, 1}},
	} {
		if got := frameCost(c.f); got != c.want {
			t.Errorf("%T: cost %+v, want %+v", c.f.GetBody(), got, c.want)
		}
	}
	if ipKey("2001:db8:1:2:3:4:5:6") != ipKey("2001:db8:1:2:ffff::1") || ipKey("2001:db8:1:2::1") == ipKey("2001:db8:1:3::1") {
		t.Error("IPv6 clients must be keyed by /64")
	}
	if ipKey("::ffff:192.0.2.1") != "192.0.2.1" {
		t.Errorf("mapped IPv4 key %q", ipKey("::ffff:192.0.2.1"))
	}
}
