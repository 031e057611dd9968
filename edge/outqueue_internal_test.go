package edge

import (
	"bytes"
	"context"
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
	mu     sync.Mutex
	writes [][]byte
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}
func (*countConn) SetWriteDeadline(time.Time) error { return nil }

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
