package edge

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// TestSendQueueBounds: a session's queue holds at most SendQueue frames
// and SendQueueBytes bytes; the push that would exceed either ends the
// session with Disconnect{UNAVAILABLE, "slow consumer", reconnect}.
func TestSendQueueBounds(t *testing.T) {
	frame := make([]byte, 1000)
	for _, c := range []struct {
		name          string
		frames, bytes int
		fit           int // pushes that fit
	}{
		{"frames", 5, 1 << 20, 5},
		{"bytes", 1024, core.MaxFramePlaintext + 3000, (core.MaxFramePlaintext + 3000) / 1000},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, err := New(Config{ID: "e1", SendQueue: c.frames, SendQueueBytes: c.bytes}, oneDevice{}, &recordingBus{})
			if err != nil {
				t.Fatal(err)
			}
			s := &session{e: e, id: 1, stop: make(chan struct{})} // no writer: nothing drains
			for i := range c.fit {
				s.pushBytes(frame)
				if !s.live() {
					t.Fatalf("push %d of %d ended the session", i+1, c.fit)
				}
			}
			if s.queued() != c.fit {
				t.Fatalf("%d queued, want %d", s.queued(), c.fit)
			}
			s.pushBytes(frame) // limit + 1
			if s.live() {
				t.Fatal("a push over the limit did not end the session")
			}
			if d := s.final.Load(); d.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || d.GetDetail() != "slow consumer" || !d.GetReconnect() {
				t.Fatalf("disconnect %v", d)
			}
			if n := e.Stats().DroppedSlowClient; n != 1 {
				t.Fatalf("DroppedSlowClient %d", n)
			}
		})
	}
}

// countConn is a net.Conn that records its writes.
type countConn struct {
	net.Conn
	mu        sync.Mutex
	writes    [][]byte
	deadlines []time.Time // every SetWriteDeadline
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}
func (c *countConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadlines = append(c.deadlines, t)
	return nil
}

// TestCorkWriter: while held, writes are collected and released with one
// socket write (a larger batch in writes of at most corkBuffer bytes);
// otherwise they pass through.
func TestCorkWriter(t *testing.T) {
	cc := &countConn{}
	w := &corkWriter{conn: cc}
	_, _ = w.Write([]byte("direct"))
	w.hold(context.Background())
	for _, p := range []string{"a", "bb", "ccc"} {
		_, _ = w.Write([]byte(p))
	}
	if len(cc.writes) != 1 {
		t.Fatalf("%d socket writes while held, want only the direct one", len(cc.writes))
	}
	if err := w.release(); err != nil {
		t.Fatal(err)
	}
	if len(cc.writes) != 2 || string(cc.writes[1]) != "abbccc" {
		t.Fatalf("writes %q", cc.writes)
	}
	w.hold(context.Background())
	big := bytes.Repeat([]byte{1}, corkBuffer/2+1)
	for range 3 {
		_, _ = w.Write(big)
	}
	_ = w.release()
	total := 0
	for _, b := range cc.writes[2:] {
		if len(b) > corkBuffer {
			t.Fatalf("a socket write of %d bytes", len(b))
		}
		total += len(b)
	}
	if total != 3*len(big) {
		t.Fatalf("%d bytes written, want %d", total, 3*len(big))
	}
}

// TestCorkWriterDeadline: a batch's socket writes are bounded by its
// context's deadline, or by the one already set when that is no later and
// at least half as far away; writes between batches (the library's pongs
// and close frames) and batches without a deadline have none.
func TestCorkWriterDeadline(t *testing.T) {
	cc := &countConn{}
	w := &corkWriter{conn: cc}
	last := func() (time.Time, int) {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		if len(cc.deadlines) == 0 {
			return time.Time{}, 0
		}
		return cc.deadlines[len(cc.deadlines)-1], len(cc.deadlines)
	}
	batch := func(ctx context.Context) {
		t.Helper()
		w.hold(ctx)
		_, _ = w.Write([]byte("x"))
		if err := w.release(); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	d1 := now.Add(10 * time.Second)
	batch(writeDeadline{context.Background(), d1})
	if dl, n := last(); n != 1 || !dl.Equal(d1) {
		t.Fatalf("first batch: %d deadlines, last %v, want 1 at %v", n, dl, d1)
	}
	// A later deadline with the one set still more than half as far: kept.
	batch(writeDeadline{context.Background(), d1.Add(time.Second)})
	if _, n := last(); n != 1 {
		t.Fatalf("second batch moved the deadline (%d sets)", n)
	}
	// An earlier deadline than the one set: moved, never allowed longer.
	d2 := now.Add(5 * time.Second)
	batch(writeDeadline{context.Background(), d2})
	if dl, n := last(); n != 2 || !dl.Equal(d2) {
		t.Fatalf("earlier deadline: %d sets, last %v, want %v", n, dl, d2)
	}
	// The one set is less than half as far as asked: moved.
	d3 := now.Add(time.Minute)
	batch(writeDeadline{context.Background(), d3})
	if dl, n := last(); n != 3 || !dl.Equal(d3) {
		t.Fatalf("far deadline: %d sets, last %v, want %v", n, dl, d3)
	}
	// A write between batches clears it, once.
	_, _ = w.Write([]byte("pong"))
	_, _ = w.Write([]byte("pong"))
	if dl, n := last(); n != 4 || !dl.IsZero() {
		t.Fatalf("between batches: %d sets, last %v, want 4, zero", n, dl)
	}
	batch(writeDeadline{context.Background(), d1})
	batch(context.Background())
	if dl, n := last(); n != 6 || !dl.IsZero() {
		t.Fatalf("batch without deadline: %d sets, last %v, want 6, zero", n, dl)
	}
}

// TestTimedContext: timed turns a writeDeadline into a context that ends
// at the deadline (for transports that watch Done), and leaves any other
// context alone.
func TestTimedContext(t *testing.T) {
	ctx, cancel := timed(writeDeadline{context.Background(), time.Now().Add(20 * time.Millisecond)})
	defer cancel()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("timed context did not end at its deadline")
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v", ctx.Err())
	}
	plain := context.Background()
	if got, cancel := timed(plain); got != plain {
		cancel()
		t.Fatal("timed replaced a plain context")
	}
}

// TestPushEncodesOnce: a frame for many devices is encoded once and the
// same bytes are queued to every target; a delivery with per-device
// ciphertexts still reaches each device with its own ciphertext only.
func TestPushEncodesOnce(t *testing.T) {
	e, err := New(Config{ID: "e1"}, oneDevice{}, &recordingBus{})
	if err != nil {
		t.Fatal(err)
	}
	var devs []core.DeviceKey
	var sessions []*session
	for i := range 3 {
		d := core.DeviceKey{User: "u", Device: uint32(i + 1)}
		s := &session{e: e, id: uint64(i + 1), stop: make(chan struct{}), dev: d}
		e.byDevice[d], e.sessions[s.id] = s, s
		devs, sessions = append(devs, d), append(sessions, s)
	}
	addrs := func() (out []*pb.DeviceAddr) {
		for _, d := range devs {
			out = append(out, d.Addr())
		}
		return out
	}
	shared := &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:x", Seq: 7,
		Envelope: &pb.Envelope{Ciphertext: []byte("for everybody")}}}}
	rec, _ := proto.Marshal(&pb.EdgeRecord{Targets: addrs(), Frame: shared})
	if err := e.handleEdgeRecord(context.Background(), core.BusRecord{Value: rec}); err != nil {
		t.Fatal(err)
	}
	var first []byte
	for i, s := range sessions {
		b := mustPop(t, s)
		var f pb.ServerFrame
		if err := proto.Unmarshal(b, &f); err != nil || !proto.Equal(&f, shared) {
			t.Fatalf("session %d got %v (%v)", i, &f, err)
		}
		if i == 0 {
			first = b
		} else if &b[0] != &first[0] {
			t.Fatal("the frame was encoded again for another target")
		}
	}
	var per []*pb.DeviceCiphertext
	for _, d := range devs {
		per = append(per, &pb.DeviceCiphertext{Device: d.Addr(), Ciphertext: []byte(d.String())})
	}
	rec, _ = proto.Marshal(&pb.EdgeRecord{Targets: addrs(), Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{
		Delivery: &pb.Message{ConvId: "d:u:v", Envelope: &pb.Envelope{PerDevice: per}}}}})
	if err := e.handleEdgeRecord(context.Background(), core.BusRecord{Value: rec}); err != nil {
		t.Fatal(err)
	}
	for i, s := range sessions {
		var f pb.ServerFrame
		if err := proto.Unmarshal(mustPop(t, s), &f); err != nil {
			t.Fatal(err)
		}
		got := f.GetDelivery().GetEnvelope().GetPerDevice()
		if len(got) != 1 || string(got[0].GetCiphertext()) != devs[i].String() {
			t.Fatalf("device %s got %v", devs[i], got)
		}
	}
}

func TestFrameBytes(t *testing.T) {
	f := &pb.ServerFrame{Body: &pb.ServerFrame_Typing{Typing: &pb.TypingEvent{ConvId: "g:x"}}}
	fb, _ := proto.Marshal(f)
	rec, _ := proto.Marshal(&pb.EdgeRecord{SessionId: 9, Targets: []*pb.DeviceAddr{{UserId: "a", DeviceId: 1}}, Frame: f})
	if got := frameBytes(rec); !bytes.Equal(got, fb) {
		t.Fatalf("frameBytes %x, want %x", got, fb)
	}
	// Field 3 twice (a split message field, which decoding merges): not
	// taken as is.
	twice := append(append([]byte(nil), rec...), protowire.AppendBytes(protowire.AppendTag(nil, 3, protowire.BytesType), fb)...)
	if frameBytes(twice) != nil || frameBytes([]byte{0xff}) != nil || frameBytes(nil) != nil {
		t.Fatal("frameBytes accepted a record it cannot take as is")
	}
}
