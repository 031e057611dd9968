package edge

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// memConn is an in-memory transport end: unbuffered, so a peer that does
// not read blocks the writer, like a full TCP window.
type memConn struct {
	in, out   chan []byte
	done      chan struct{}
	once      *sync.Once
	closeCode chan pb.ErrorCode // buffered 1; receives closeWith's code
}

func memPipe() (server, client *memConn) {
	a, b := make(chan []byte), make(chan []byte)
	done, once := make(chan struct{}), new(sync.Once)
	return &memConn{in: a, out: b, done: done, once: once, closeCode: make(chan pb.ErrorCode, 1)},
		&memConn{in: b, out: a, done: done, once: once, closeCode: make(chan pb.ErrorCode, 1)}
}

var errMemClosed = errors.New("mem: closed")

func (m *memConn) ReadMessage(ctx context.Context) ([]byte, error) {
	select {
	case b := <-m.in:
		return b, nil
	case <-m.done:
		return nil, errMemClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m *memConn) WriteMessage(ctx context.Context, b []byte) error {
	select {
	case m.out <- bytes.Clone(b):
		return nil
	case <-m.done:
		return errMemClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *memConn) Close() error { m.once.Do(func() { close(m.done) }); return nil }

func (m *memConn) closeWith(code pb.ErrorCode, _ string) {
	m.closeCode <- code
	_ = m.Close()
}

// oneDevice is a test double of the region: every key is device dev.
type oneDevice struct{ dev core.DeviceKey }

func (o oneDevice) Authenticate(context.Context, []byte) (core.DeviceKey, error) { return o.dev, nil }
func (o oneDevice) Register(context.Context, []byte, *pb.RegisterRequest) (*pb.RegisterResponse, error) {
	return &pb.RegisterResponse{Device: o.dev.Addr()}, nil
}
func (oneDevice) SessionOpened(context.Context, core.Route) error             { return nil }
func (oneDevice) SessionClosed(context.Context, core.DeviceKey, uint64) error { return nil }
func (oneDevice) EdgeStarted(context.Context, string) error                   { return nil }
func (oneDevice) Query(context.Context, core.DeviceKey, *pb.ClientFrame) (*pb.Response, error) {
	return &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}}, nil
}

// recordingBus is a test double of the bus that keeps produced records.
type recordingBus struct {
	mu   sync.Mutex
	recs []core.BusRecord
}

func (b *recordingBus) Produce(_ context.Context, recs ...core.BusRecord) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.recs = append(b.recs, recs...)
	return nil
}
func (*recordingBus) EnsureTopic(context.Context, string, int) error { return nil }
func (*recordingBus) Consume(ctx context.Context, _ core.ConsumeSpec, _ core.Handler) error {
	<-ctx.Done()
	return ctx.Err()
}
func (*recordingBus) Close() error { return nil }

// TestSlowConsumerDropped runs a real session (handshake, writer, queue)
// over an in-memory transport whose client stops reading: pushes beyond
// SendQueue close the session with Disconnect{UNAVAILABLE, reconnect}.
func TestSlowConsumerDropped(t *testing.T) {
	dev := core.DeviceKey{User: "slow", Device: 1}
	e, err := New(Config{ID: "e1", SendQueue: 4, WriteTimeout: 5 * time.Second}, oneDevice{dev}, &recordingBus{})
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	defer e.cancel()
	srvEnd, cliEnd := memPipe()
	if !e.admit("127.0.0.1") {
		t.Fatal("admit")
	}
	served := make(chan struct{})
	go func() { defer close(served); e.serveConn(srvEnd, "127.0.0.1") }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key, _ := noiseconn.GenerateKeypair(rand.Reader)
	hello, _ := proto.Marshal(&pb.ClientHello{ProtocolVersion: 1})
	nc, err := noiseconn.Client(ctx, cliEnd, noiseconn.ClientConfig{Static: key, Payload: hello})
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the session is registered for pushes.
	for e.Stats().Sessions == 0 || func() bool { e.mu.Lock(); defer e.mu.Unlock(); return e.byDevice[dev] == nil }() {
		time.Sleep(5 * time.Millisecond)
	}
	rec, _ := proto.Marshal(&pb.EdgeRecord{Targets: []*pb.DeviceAddr{dev.Addr()},
		Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Typing{Typing: &pb.TypingEvent{ConvId: "g:x"}}}})
	// One frame is taken by the (blocked) writer, 4 fill the queue, the
	// next ones overflow it.
	for range 10 {
		if err := e.handleEdgeRecord(ctx, core.BusRecord{Value: rec}); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.Stats().DroppedSlowClient; got != 1 {
		t.Fatalf("DroppedSlowClient = %d", got)
	}
	// The client reads again: the frame in flight, then the Disconnect.
	var disc *pb.Disconnect
	for disc == nil {
		b, err := nc.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f pb.ServerFrame
		if err := proto.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		disc = f.GetDisconnect()
	}
	if disc.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || !disc.GetReconnect() || disc.GetDetail() != "slow consumer" {
		t.Fatalf("disconnect %v", disc)
	}
	if code := <-srvEnd.closeCode; code != pb.ErrorCode_ERROR_CODE_UNAVAILABLE {
		t.Fatalf("close code %v", code)
	}
	<-served
	if e.Stats().Sessions != 0 {
		t.Fatal("session still counted")
	}
}

func TestFrameFor(t *testing.T) {
	a, b := core.DeviceKey{User: "a", Device: 1}, core.DeviceKey{User: "a", Device: 2}
	f := &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:x", Envelope: &pb.Envelope{
		Ciphertext: []byte("c"), PerDevice: []*pb.DeviceCiphertext{{Device: a.Addr(), Ciphertext: []byte("A")}, {Device: b.Addr(), Ciphertext: []byte("B")}}}}}}
	got := frameFor(f, b).GetDelivery().GetEnvelope().GetPerDevice()
	if len(got) != 1 || string(got[0].GetCiphertext()) != "B" {
		t.Fatalf("got %v", got)
	}
	if len(f.GetDelivery().GetEnvelope().GetPerDevice()) != 2 {
		t.Fatal("frameFor modified the shared frame")
	}
}

// FuzzHandleFrame feeds arbitrary plaintext frames to an authenticated
// session. Every frame gets at most one response, whose req_id is the
// frame's; every produced record names the session as its origin and is
// keyed by a well-formed conversation id.
func FuzzHandleFrame(f *testing.F) {
	seed := func(m *pb.ClientFrame) { b, _ := proto.Marshal(m); f.Add(b) }
	seed(&pb.ClientFrame{ReqId: 1, Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{}}})
	seed(&pb.ClientFrame{ReqId: 2, Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: "d:a:b", ClientMsgId: "x", Envelope: &pb.Envelope{}}}})
	seed(&pb.ClientFrame{ReqId: 3, Body: &pb.ClientFrame_CreateGroup{CreateGroup: &pb.CreateGroupRequest{ConvId: "g:1", Members: []string{"b"}}}})
	seed(&pb.ClientFrame{ReqId: 4, Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: []string{"b"}}}})
	seed(&pb.ClientFrame{ReqId: 5, Body: &pb.ClientFrame_Typing{Typing: &pb.TypingRequest{ConvId: "g:1"}}})
	seed(&pb.ClientFrame{ReqId: 6, Body: &pb.ClientFrame_UploadPrekeys{UploadPrekeys: &pb.UploadPrekeysRequest{Identity: []byte{1}, Upload: []byte{1, 0, 0, 0}}}})
	seed(&pb.ClientFrame{ReqId: 7, Body: &pb.ClientFrame_FetchBundle{FetchBundle: &pb.FetchBundleRequest{UserId: "b", DeviceId: 1}}})
	seed(&pb.ClientFrame{ReqId: 8, Body: &pb.ClientFrame_PublishDeviceList{PublishDeviceList: &pb.PublishDeviceListRequest{DeviceList: []byte{1, 1, 'a'}}}})
	seed(&pb.ClientFrame{ReqId: 9, Body: &pb.ClientFrame_FetchDeviceList{FetchDeviceList: &pb.FetchDeviceListRequest{UserId: "b"}}})
	f.Add([]byte{0x08, 0x05, 0xff})
	dev := core.DeviceKey{User: "a", Device: 1}
	f.Fuzz(func(t *testing.T, data []byte) {
		bus := &recordingBus{}
		e, err := New(Config{ID: "e1", MaxFrameBytes: 4096}, oneDevice{dev}, bus)
		if err != nil {
			t.Fatal(err)
		}
		e.ctx, e.cancel = context.WithCancel(context.Background())
		defer e.cancel()
		s := &session{e: e, id: 99, stop: make(chan struct{}), dev: dev, authed: true}
		s.bucket.Store(newBucket(1, 1, time.Now()))
		e.sessions[s.id] = s
		s.handle(data)
		if s.queued() > 1 {
			t.Fatalf("%d responses to one frame", s.queued())
		}
		var in pb.ClientFrame
		decoded := proto.Unmarshal(data, &in) == nil && len(data) <= 4096
		if s.queued() == 1 {
			var out pb.ServerFrame
			if err := proto.Unmarshal(mustPop(t, s), &out); err != nil || out.GetResponse() == nil {
				t.Fatalf("bad response frame: %v", err)
			}
			if decoded && out.GetResponse().GetReqId() != in.GetReqId() {
				t.Fatalf("response req_id %d, frame req_id %d", out.GetResponse().GetReqId(), in.GetReqId())
			}
		}
		for _, r := range bus.recs {
			var ir pb.IngressRecord
			if err := proto.Unmarshal(r.Value, &ir); err != nil {
				t.Fatal(err)
			}
			if ir.GetOrigin().GetSessionId() != 99 || core.KeyOf(ir.GetOrigin().GetDevice()) != dev || ir.GetOrigin().GetReqId() != in.GetReqId() {
				t.Fatalf("origin %v", ir.GetOrigin())
			}
			if core.KindOf(string(r.Key)) == pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED || r.Topic != "ingress" {
				t.Fatalf("record key %q topic %q", r.Key, r.Topic)
			}
		}
	})
}

// downBus is a test double of a bus whose brokers are unreachable.
type downBus struct{ recordingBus }

func (*downBus) Produce(context.Context, ...core.BusRecord) error {
	return errors.New("kafka: leader not available")
}

// TestProduceFailureIsUnavailable: when the ingress write fails the client
// gets UNAVAILABLE for that request (retry with the same ids) and the
// session stays usable.
func TestProduceFailureIsUnavailable(t *testing.T) {
	dev := core.DeviceKey{User: "a", Device: 1}
	e, err := New(Config{ID: "e1"}, oneDevice{dev}, &downBus{})
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	defer e.cancel()
	s := &session{e: e, id: 7, stop: make(chan struct{}), dev: dev, authed: true}
	s.bucket.Store(newBucket(100, 100, time.Now()))
	frame, _ := proto.Marshal(&pb.ClientFrame{ReqId: 5, Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
		ConvId: "g:x", ClientMsgId: "m1", Envelope: &pb.Envelope{}}}})
	s.handle(frame)
	var out pb.ServerFrame
	if err := proto.Unmarshal(mustPop(t, s), &out); err != nil {
		t.Fatal(err)
	}
	if r := out.GetResponse(); r.GetReqId() != 5 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE {
		t.Fatalf("response %v", r)
	}
	if !s.live() || e.Stats().ProduceErrors != 1 {
		t.Fatalf("live %v, stats %+v", s.live(), e.Stats())
	}
}

func TestBucket(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBucket(2, 3, now)
	for i := range 3 {
		if !b.take(now) {
			t.Fatalf("burst token %d refused", i)
		}
	}
	if b.take(now) {
		t.Fatal("over burst")
	}
	if !b.take(now.Add(500 * time.Millisecond)) { // 2/s: one token per 500 ms
		t.Fatal("no refill")
	}
	if b.take(now.Add(500 * time.Millisecond)) {
		t.Fatal("refilled too much")
	}
	if n := func() int {
		k := 0
		for b.take(now.Add(time.Hour)) {
			k++
		}
		return k
	}(); n != 3 {
		t.Fatalf("refill capped at burst: got %d", n)
	}
}

func TestCollector(t *testing.T) {
	e, err := New(Config{ID: "e9"}, oneDevice{}, &recordingBus{})
	if err != nil {
		t.Fatal(err)
	}
	e.n.rateLimited.Add(3)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(e.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "chatmesh_edge_rate_limited_total" {
			m := mf.GetMetric()[0]
			found = m.GetCounter().GetValue() == 3 && m.GetLabel()[0].GetValue() == "e9"
		}
	}
	if !found || len(mfs) != len(metricDefs)+len(e.stages.collectors()) {
		t.Fatalf("found %v, %d families", found, len(mfs))
	}
}

// flakyBus is a test double of a bus whose first tail consumer dies after
// being positioned; the second one runs until cancelled.
type flakyBus struct {
	recordingBus
	mu    sync.Mutex
	calls int
}

func (b *flakyBus) Consume(ctx context.Context, spec core.ConsumeSpec, _ core.Handler) error {
	b.mu.Lock()
	b.calls++
	n := b.calls
	b.mu.Unlock()
	spec.OnReady()
	if n == 1 {
		return errors.New("kafka: connection reset")
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestConsumerRestartDisconnects: when the edge-topic consumer dies after
// start, it is restarted, and once it is positioned again every session is
// told to reconnect (and so to sync what was missed).
func TestConsumerRestartDisconnects(t *testing.T) {
	bus := &flakyBus{}
	e, err := New(Config{ID: "e1"}, oneDevice{}, bus)
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	s := &session{e: e, id: 1, stop: make(chan struct{})}
	e.live[s] = struct{}{}
	ready, failed := make(chan string, 2), make(chan error, 2)
	done := make(chan struct{})
	go func() { defer close(done); e.runConsumer("edge.e1", e.handleEdgeRecord, ready, failed, e.pushFeedLost) }()
	if got := <-ready; got != "edge.e1" {
		t.Fatal(got)
	}
	select {
	case <-s.stop:
	case <-time.After(10 * time.Second):
		t.Fatal("session not told to reconnect after the consumer restarted")
	}
	if d := s.final.Load(); d.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || !d.GetReconnect() {
		t.Fatalf("disconnect %v", d)
	}
	e.cancel()
	<-done
	if len(ready) != 0 || len(failed) != 0 || bus.calls != 2 {
		t.Fatalf("ready %d failed %d calls %d", len(ready), len(failed), bus.calls)
	}
}

// mustPop waits (at most 10 s) for the oldest frame queued to s, a session
// without a writer.
func mustPop(t testing.TB, s *session) []byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, ok := s.popQueued(); ok {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing queued to the session")
		}
		time.Sleep(time.Millisecond)
	}
}
