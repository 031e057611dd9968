package edge

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// readyBus is a bus double whose consumers are positioned at once and
// then idle: records are handed to the edge by calling its handlers.
type readyBus struct{ recordingBus }

func (*readyBus) Consume(ctx context.Context, spec core.ConsumeSpec, _ core.Handler) error {
	if spec.OnReady != nil {
		spec.OnReady()
	}
	<-ctx.Done()
	return ctx.Err()
}

// keyDevices is a backend double: a static key is the device registered
// for it (Authenticate), nothing else.
type keyDevices struct {
	oneDevice
	mu   sync.Mutex
	devs map[string]core.DeviceKey
}

func (k *keyDevices) Authenticate(_ context.Context, static []byte) (core.DeviceKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, ok := k.devs[string(static)]
	if !ok {
		return d, core.ErrNotFound
	}
	return d, nil
}

// wsMsgClient is a WebSocket client that completed the Noise handshake
// and then only counts the transport messages it receives (it does not
// decrypt them, so the benchmark's process allocations are the edge's).
type wsMsgClient struct{ c *websocket.Conn }

func (w wsMsgClient) ReadMessage(ctx context.Context) ([]byte, error) {
	_, b, err := w.c.Read(ctx)
	return b, err
}
func (w wsMsgClient) WriteMessage(ctx context.Context, b []byte) error {
	return w.c.Write(ctx, websocket.MessageBinary, b)
}
func (w wsMsgClient) Close() error { return w.c.CloseNow() }

// fanoutEnv is one started edge (WebSocket on loopback, bus double) with
// members authenticated sessions, each read by a counting client.
type fanoutEnv struct {
	e        *Edge
	members  []core.DeviceKey
	received atomic.Int64
	stop     func()
	// check, if set, makes the clients decrypt and decode what they
	// receive and pass it, with the member's index, to check.
	check func(member int, f *pb.ServerFrame)
}

func newFanoutEnv(tb testing.TB, members int) *fanoutEnv {
	return newFanoutEnvChecked(tb, members, nil)
}

func newFanoutEnvChecked(tb testing.TB, members int, check func(member int, f *pb.ServerFrame)) *fanoutEnv {
	tb.Helper()
	be := &keyDevices{devs: map[string]core.DeviceKey{}}
	e, err := New(Config{ID: "fan", WSAddr: "127.0.0.1:0", MaxConnsPerIP: members + 8, MaxAcceptPerIP: 2*members + 16,
		SendQueue: 1 << 16}, be, &readyBus{})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	f := &fanoutEnv{e: e, check: check}
	var wg sync.WaitGroup
	for i := range members {
		key, _ := noiseconn.GenerateKeypair(rand.Reader)
		dev := core.DeviceKey{User: "m" + strconv.Itoa(i), Device: 1}
		be.mu.Lock()
		be.devs[string(key.Public)] = dev
		be.mu.Unlock()
		f.members = append(f.members, dev)
		ws, _, err := websocket.Dial(ctx, e.WSURL(), nil)
		if err != nil {
			tb.Fatal(err)
		}
		ws.SetReadLimit(1 << 20)
		hello, _ := proto.Marshal(&pb.ClientHello{ProtocolVersion: ProtocolVersion})
		nc, err := noiseconn.Client(ctx, wsMsgClient{ws}, noiseconn.ClientConfig{Static: key, Payload: hello})
		if err != nil {
			tb.Fatal(err)
		}
		wg.Go(func() {
			defer ws.CloseNow()
			for f.check != nil {
				b, err := nc.Recv(context.Background())
				if err != nil {
					return
				}
				var fr pb.ServerFrame
				if err := proto.Unmarshal(b, &fr); err != nil {
					return
				}
				f.check(i, &fr)
				f.received.Add(1)
			}
			for {
				_, r, err := ws.Reader(context.Background()) // no timer per read: Shutdown closes the connections
				if err != nil {
					return
				}
				if _, err := io.Copy(io.Discard, r); err != nil {
					return
				}
				f.received.Add(1)
			}
		})
	}
	deadline := time.Now().Add(time.Minute)
	for {
		e.mu.Lock()
		n := len(e.byDevice)
		e.mu.Unlock()
		if n == members {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d sessions", n, members)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.stop = func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		_ = e.Shutdown(sctx)

		wg.Wait()
	}
	return f
}

// groupRecord is a delivery of a group message (one sender-key ciphertext
// for everybody) addressed to every member.
func (f *fanoutEnv) groupRecord(tb testing.TB, seq uint64, body int) core.BusRecord {
	r := &pb.EdgeRecord{Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{
		ConvId: "g:bench", Seq: seq, Sender: f.members[0].Addr(), MsgId: "01JBENCHMSGID0000000000000",
		Envelope: &pb.Envelope{Ciphertext: make([]byte, body)}}}}}
	for _, m := range f.members {
		r.Targets = append(r.Targets, m.Addr())
	}
	b, err := proto.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	return core.BusRecord{Topic: EdgeTopic("fan"), Value: b}
}

// BenchmarkGroupFanout pushes deliveries of a 500-member group, all on
// this edge, from the edge topic's handler to 500 WebSocket clients, and
// reports delivered frames per second and the process's allocations per
// delivered frame (the clients count WebSocket messages without
// decrypting, so almost all allocations are the edge's). One op is one
// record (500 frames). The time includes draining every frame to the
// clients.
//
//	go test ./edge/ -run '^$' -bench BenchmarkGroupFanout -benchtime=200x
func BenchmarkGroupFanout(b *testing.B) {
	const members = 500
	f := newFanoutEnv(b, members)
	defer f.stop()
	recs := make([]core.BusRecord, 64)
	for i := range recs {
		recs[i] = f.groupRecord(b, uint64(i+1), 200)
	}
	ctx := context.Background()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	start := time.Now()
	n := 0
	for b.Loop() {
		_ = f.e.handleEdgeRecord(ctx, recs[n%len(recs)])
		n++
	}
	// The edge topic's one consumer spends this per record (decode,
	// targets, enqueue); the encryption and writes run on the sessions'
	// drains.
	handler := time.Since(start)
	want := int64(n * members)
	deadline := time.Now().Add(2 * time.Minute)
	for f.received.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("received %d of %d frames", f.received.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&m1)
	frames := float64(want)
	b.ReportMetric(frames/elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(handler.Microseconds())/float64(n), "handler-µs/record")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/frames, "allocs/frame")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/frames, "B/frame")
	if st := f.e.Stats(); st.DroppedSlowClient != 0 || st.WriteErrors != 0 {
		b.Fatalf("dropped %d, write errors %d", st.DroppedSlowClient, st.WriteErrors)
	}
}

// TestGroupFanoutOrder: with pushes batched per session, every member of
// a 50-member group receives all 300 deliveries of a burst once each, in
// order, and each push was written (frames out = frames pushed).
func TestGroupFanoutOrder(t *testing.T) {
	const members, records = 50, 300
	var mu sync.Mutex
	next := make([]uint64, members)
	var bad []string
	f := newFanoutEnvChecked(t, members, func(m int, fr *pb.ServerFrame) {
		mu.Lock()
		defer mu.Unlock()
		if seq := fr.GetDelivery().GetSeq(); seq != next[m]+1 {
			bad = append(bad, fmt.Sprintf("member %d: seq %d after %d", m, seq, next[m]))
		}
		next[m]++
	})
	defer f.stop()
	for i := range records {
		if err := f.e.handleEdgeRecord(context.Background(), f.groupRecord(t, uint64(i+1), 100)); err != nil {
			t.Fatal(err)
		}
	}
	for start := time.Now(); f.received.Load() < members*records; time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("received %d of %d", f.received.Load(), members*records)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d out of order, first: %s", len(bad), bad[0])
	}
	if st := f.e.Stats(); st.FramesOut < members*records || st.DroppedSlowClient != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// BenchmarkEdgeRecordDispatch is the edge-topic consumer's own work for
// one 500-target group delivery: decode, look up the targets, queue the
// shared frame to each (sessions without a writer here, emptied between
// records). It bounds what the topic's single consumer can dispatch:
// 500 frames per op.
//
//	go test ./edge/ -run '^$' -bench BenchmarkEdgeRecordDispatch -benchmem
func BenchmarkEdgeRecordDispatch(b *testing.B) {
	const members = 500
	e, err := New(Config{ID: "fan"}, oneDevice{}, &recordingBus{})
	if err != nil {
		b.Fatal(err)
	}
	f := &fanoutEnv{e: e}
	var sessions []*session
	for i := range members {
		d := core.DeviceKey{User: "m" + strconv.Itoa(i), Device: 1}
		s := &session{e: e, id: uint64(i + 1), stop: make(chan struct{}), dev: d}
		e.byDevice[d], e.sessions[s.id] = s, s
		f.members, sessions = append(f.members, d), append(sessions, s)
	}
	rec := f.groupRecord(b, 1, 200)
	ctx := context.Background()
	for b.Loop() {
		_ = e.handleEdgeRecord(ctx, rec)
		for _, s := range sessions {
			s.out.mu.Lock()
			s.out.frames, s.out.pending, s.out.bytes = s.out.frames[:0], 0, 0
			s.out.mu.Unlock()
		}
	}
	b.ReportMetric(float64(members)*float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}
