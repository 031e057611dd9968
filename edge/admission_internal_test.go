package edge

import (
	"context"
	"sync/atomic"
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

// TestIngressAdmissionLimit: with MaxIngressInFlight writes in flight
// (produced or being produced, not yet answered by the region), a further
// write is answered RATE_LIMITED with retry_after_ms at once instead of
// queueing; once the region's answer comes back, writes pass again.
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
		e.sessions[id] = s
		return s
	}
	first, second := newSess(1), newSess(2)
	done := make(chan struct{})
	go func() { defer close(done); first.handle(sendFrame(1)) }()
	select {
	case <-bus.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("first produce never started")
	}
	second.handle(sendFrame(2)) // must not block: the slot is taken
	expectLimited(t, second, 2)
	if st := e.AdmissionStats(); st.IngressFull != 1 {
		t.Fatalf("IngressFull %d", st.IngressFull)
	}
	close(bus.release)
	<-done
	// Produced, but not answered yet: still in flight.
	second.handle(sendFrame(3))
	expectLimited(t, second, 3)
	answer(t, e, first, 1)
	second.handle(sendFrame(4)) // the slot is free again
	<-bus.entered
	if b, ok := second.popQueued(); ok {
		t.Fatalf("unexpected answer to a write that should pass: %x", b)
	}
}

func sendFrame(reqID uint64) []byte {
	b, _ := proto.Marshal(&pb.ClientFrame{ReqId: reqID, Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
		ConvId: "g:x", ClientMsgId: "m", Envelope: &pb.Envelope{}}}})
	return b
}

// expectLimited takes the next frame queued to s: RATE_LIMITED with
// retry_after_ms for reqID.
func expectLimited(t *testing.T, s *session, reqID uint64) {
	t.Helper()
	var out pb.ServerFrame
	if err := proto.Unmarshal(mustPop(t, s), &out); err != nil {
		t.Fatal(err)
	}
	r := out.GetResponse()
	if r.GetReqId() != reqID || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_RATE_LIMITED || r.GetError().GetRetryAfterMs() == 0 {
		t.Fatalf("write %d over the in-flight limit: %v", reqID, r)
	}
}

// answer delivers the region's answer to write reqID of s, as the edge
// topic does, and takes it from s's queue.
func answer(t *testing.T, e *Edge, s *session, reqID uint64) {
	t.Helper()
	rec, _ := proto.Marshal(&pb.EdgeRecord{SessionId: s.id, Targets: []*pb.DeviceAddr{s.dev.Addr()},
		Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: &pb.Response{ReqId: reqID,
			Body: &pb.Response_Empty{Empty: &pb.Empty{}}}}}})
	if err := e.handleEdgeRecord(context.Background(), core.BusRecord{Value: rec}); err != nil {
		t.Fatal(err)
	}
	var out pb.ServerFrame
	if err := proto.Unmarshal(mustPop(t, s), &out); err != nil || out.GetResponse().GetReqId() != reqID {
		t.Fatalf("answer %d: %v %v", reqID, &out, err)
	}
}

// TestSessionInFlightLimit: a session may have MaxSessionInFlight writes
// awaiting the region's answer; the next is refused RATE_LIMITED with
// retry_after_ms and not produced. An answer, an overdue answer
// (IngressAnswerTimeout) and the session's end free slots; writes the
// region does not answer (typing, ack with req_id 0) hold none.
func TestSessionInFlightLimit(t *testing.T) {
	dev := core.DeviceKey{User: "a", Device: 1}
	bus := &recordingBus{}
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	e, err := New(Config{ID: "e1", Now: func() time.Time { return time.Unix(0, clock.Load()) },
		Admission: AdmissionConfig{MaxSessionInFlight: 3, MaxIngressInFlight: 4, IngressAnswerTimeout: time.Minute}}, oneDevice{dev}, bus)
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	defer e.cancel()
	s := &session{e: e, id: 1, ip: "192.0.2.1", stop: make(chan struct{}), dev: dev, authed: true}
	s.bucket.Store(newBucket(1000, 1000, now))
	e.sessions[s.id] = s
	produced := func() int { bus.mu.Lock(); defer bus.mu.Unlock(); return len(bus.recs) }

	for i := range uint64(3) { // at the limit
		s.handle(sendFrame(10 + i))
	}
	if produced() != 3 || s.queued() != 0 {
		t.Fatalf("at the limit: produced %d, answered %d", produced(), s.queued())
	}
	s.handle(sendFrame(13)) // limit + 1
	expectLimited(t, s, 13)
	if produced() != 3 || e.AdmissionStats().SessionFull != 1 || e.AdmissionStats().InFlight != 3 {
		t.Fatalf("over the limit: produced %d, stats %+v", produced(), e.AdmissionStats())
	}
	// Writes without an answer pass and hold nothing.
	typing, _ := proto.Marshal(&pb.ClientFrame{Body: &pb.ClientFrame_Typing{Typing: &pb.TypingRequest{ConvId: "g:x"}}})
	ack, _ := proto.Marshal(&pb.ClientFrame{Body: &pb.ClientFrame_Ack{Ack: &pb.DeliveryAck{ConvId: "g:x", Seq: 1}}})
	s.handle(typing)
	s.handle(ack)
	if produced() != 5 || s.queued() != 0 || e.AdmissionStats().InFlight != 3 {
		t.Fatalf("unanswered writes: produced %d, queued %d, stats %+v", produced(), s.queued(), e.AdmissionStats())
	}
	answer(t, e, s, 11)
	s.handle(sendFrame(14))
	if produced() != 6 || s.queued() != 0 {
		t.Fatalf("after an answer: produced %d, queued %d", produced(), s.queued())
	}
	// The edge-wide bound, from another session: 3 + 1 of 4 taken.
	other := &session{e: e, id: 2, ip: "192.0.2.2", stop: make(chan struct{}), dev: dev, authed: true}
	other.bucket.Store(newBucket(1000, 1000, now))
	other.handle(sendFrame(1))
	other.handle(sendFrame(2))
	if produced() != 7 {
		t.Fatalf("edge bound: produced %d", produced())
	}
	expectLimited(t, other, 2)
	if e.AdmissionStats().IngressFull != 1 {
		t.Fatalf("stats %+v", e.AdmissionStats())
	}
	// Overdue answers free their slots.
	clock.Add(int64(2 * time.Minute))
	s.handle(sendFrame(15))
	if produced() != 8 || s.queued() != 0 || e.AdmissionStats().AnswerTimeouts != 3 {
		t.Fatalf("after the answer timeout: produced %d, queued %d, stats %+v", produced(), s.queued(), e.AdmissionStats())
	}
	// The session's end frees the rest.
	s.releaseInflight()
	other.releaseInflight()
	if n := e.AdmissionStats().InFlight; n != 0 {
		t.Fatalf("%d in flight after the sessions ended", n)
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
