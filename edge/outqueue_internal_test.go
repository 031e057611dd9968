package edge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
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

// readFrames parses server frames (unmasked) from b.
func readFrames(t *testing.T, b []byte) (ops []byte, payloads [][]byte) {
	t.Helper()
	for len(b) > 0 {
		if len(b) < 2 {
			t.Fatalf("%d stray bytes", len(b))
		}
		op, l, h := b[0], int(b[1]&0x7f), 2
		if b[1]&0x80 != 0 {
			t.Fatal("masked server frame")
		}
		switch l {
		case 126:
			l, h = int(binary.BigEndian.Uint16(b[2:4])), 4
		case 127:
			l, h = int(binary.BigEndian.Uint64(b[2:10])), 10
		}
		if len(b) < h+l {
			t.Fatalf("frame of %d bytes cut at %d", l, len(b)-h)
		}
		ops, payloads = append(ops, op), append(payloads, b[h:h+l])
		b = b[h+l:]
	}
	return ops, payloads
}

// TestCorkWriter: a batch becomes one binary frame per message (2- and
// 4-byte headers), in one socket write, or in writes of at most corkBuffer
// bytes plus a header when larger (the largest Noise message fits one);
// the library's writes pass through as they come.
func TestCorkWriter(t *testing.T) {
	cc := &countConn{}
	w := &corkWriter{conn: cc}
	_, _ = w.Write([]byte{0x8a, 0}) // a library pong
	msgs := [][]byte{[]byte("a"), bytes.Repeat([]byte("b"), 125), bytes.Repeat([]byte("c"), 126), bytes.Repeat([]byte("d"), 65535)}
	if err := w.writeBinary(context.Background(), msgs[:3]); err != nil {
		t.Fatal(err)
	}
	if len(cc.writes) != 2 {
		t.Fatalf("%d socket writes, want the pong and one for the batch", len(cc.writes))
	}
	ops, got := readFrames(t, cc.writes[1])
	if len(got) != 3 || ops[0] != 0x82 || ops[2] != 0x82 || len(cc.writes[1]) != 2+1+2+125+4+126 {
		t.Fatalf("frames %x, %d bytes", ops, len(cc.writes[1]))
	}
	for i := range got {
		if !bytes.Equal(got[i], msgs[i]) {
			t.Fatalf("message %d differs", i)
		}
	}
	big := bytes.Repeat([]byte{1}, corkBuffer/2)
	if err := w.writeBinary(context.Background(), [][]byte{big, big, msgs[3], msgs[0]}); err != nil {
		t.Fatal(err)
	}
	var all []byte
	for i, b := range cc.writes[2:] {
		if len(b) > corkBuffer+wsHeaderMax {
			t.Fatalf("socket write %d of %d bytes", i, len(b))
		}
		all = append(all, b...)
	}
	if _, got := readFrames(t, all); len(got) != 4 || !bytes.Equal(got[2], msgs[3]) || !bytes.Equal(got[3], msgs[0]) {
		t.Fatalf("large batch: %d frames", len(got))
	}
	// One byte past the largest Noise message: the whole batch is refused
	// before anything is written, and the connection stays usable.
	writes := len(cc.writes)
	if err := w.writeBinary(context.Background(), [][]byte{msgs[0], make([]byte, noiseconn.MaxMessage+1)}); !errors.Is(err, noiseconn.ErrTooLarge) {
		t.Fatalf("message of MaxMessage+1 bytes: %v", err)
	}
	if len(cc.writes) != writes {
		t.Fatal("a refused batch wrote")
	}
	if err := w.writeBinary(context.Background(), msgs[:1]); err != nil {
		t.Fatalf("after a refused batch: %v", err)
	}
}

// TestCorkWriterLibraryFrames: a batch is refused after the library's close
// frame, and fails the connection (sticky, nothing written) if the library
// stopped inside a frame, instead of landing in its middle.
func TestCorkWriterLibraryFrames(t *testing.T) {
	cc := &countConn{}
	w := &corkWriter{conn: cc}
	_, _ = w.Write([]byte{0x88, 2, 0x03, 0xe8}) // close 1000
	if err := w.writeBinary(context.Background(), [][]byte{[]byte("x")}); !errors.Is(err, errCloseSent) {
		t.Fatalf("after close: %v", err)
	}
	cc = &countConn{}
	w = &corkWriter{conn: cc}
	_, _ = w.Write([]byte{0x82, 126, 0x01}) // a header cut short
	if err := w.writeBinary(context.Background(), [][]byte{[]byte("x")}); !errors.Is(err, errInterleaved) {
		t.Fatalf("inside a frame: %v", err)
	}
	if _, err := w.Write([]byte{0}); !errors.Is(err, errInterleaved) {
		t.Fatalf("not sticky: %v", err)
	}
	if len(cc.writes) != 1 {
		t.Fatalf("%d socket writes, want only the library's", len(cc.writes))
	}
}

// TestWSFrames: frame boundaries are found whatever the pieces the frames
// arrive in (all header lengths, masked or not).
func TestWSFrames(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var stream []byte
		var ends []int
		for range 1 + rng.IntN(5) {
			n := []int{0, 5, 125, 126, 300, 65535, 65536, 70000}[rng.IntN(8)]
			var h []byte
			switch {
			case n < 126:
				h = []byte{0x82, byte(n)}
			case n < 65536:
				h = []byte{0x82, 126, byte(n >> 8), byte(n)}
			default:
				h = binary.BigEndian.AppendUint64([]byte{0x82, 127}, uint64(n))
			}
			if rng.IntN(2) == 0 {
				h[1] |= 0x80
				h = append(h, 1, 2, 3, 4)
			}
			stream = append(append(stream, h...), make([]byte, n)...)
			ends = append(ends, len(stream))
		}
		var f wsFrames
		pos := 0
		for pos < len(stream) {
			k := min(len(stream)-pos, 1+rng.IntN(200))
			if rng.IntN(4) == 0 {
				k = min(len(stream)-pos, 1+rng.IntN(70000))
			}
			f.feed(stream[pos : pos+k])
			pos += k
			if want := slices.Contains(ends, pos); f.boundary() != want {
				t.Fatalf("round %d: boundary %v at %d, want %v (ends %v)", round, f.boundary(), pos, want, ends)
			}
		}
		if f.closeSent {
			t.Fatal("closeSent without a close frame")
		}
	}
}

// TestCorkWriterDeadline: a batch's socket writes are bounded by its
// context's deadline, or by the one already set when that is no later and
// at least half as far away; the library's writes (handshake, pongs, close
// frames) and batches without a deadline have none.
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
		if err := w.writeBinary(ctx, [][]byte{[]byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	d1 := now.Add(10 * time.Second)
	batch(&writeDeadline{context.Background(), d1})
	if dl, n := last(); n != 1 || !dl.Equal(d1) {
		t.Fatalf("first batch: %d deadlines, last %v, want 1 at %v", n, dl, d1)
	}
	// A later deadline with the one set still more than half as far: kept.
	batch(&writeDeadline{context.Background(), d1.Add(time.Second)})
	if _, n := last(); n != 1 {
		t.Fatalf("second batch moved the deadline (%d sets)", n)
	}
	// An earlier deadline than the one set: moved, never allowed longer.
	d2 := now.Add(5 * time.Second)
	batch(&writeDeadline{context.Background(), d2})
	if dl, n := last(); n != 2 || !dl.Equal(d2) {
		t.Fatalf("earlier deadline: %d sets, last %v, want %v", n, dl, d2)
	}
	// The one set is less than half as far as asked: moved.
	d3 := now.Add(time.Minute)
	batch(&writeDeadline{context.Background(), d3})
	if dl, n := last(); n != 3 || !dl.Equal(d3) {
		t.Fatalf("far deadline: %d sets, last %v, want %v", n, dl, d3)
	}
	// A library write between batches clears it, once.
	_, _ = w.Write([]byte{0x8a, 0})
	_, _ = w.Write([]byte{0x8a, 0})
	if dl, n := last(); n != 4 || !dl.IsZero() {
		t.Fatalf("between batches: %d sets, last %v, want 4, zero", n, dl)
	}
	batch(&writeDeadline{context.Background(), d1})
	batch(context.Background())
	if dl, n := last(); n != 6 || !dl.IsZero() {
		t.Fatalf("batch without deadline: %d sets, last %v, want 6, zero", n, dl)
	}
}

// TestTimedContext: timed turns a writeDeadline into a context that ends
// at the deadline (for transports that watch Done), and leaves any other
// context alone.
func TestTimedContext(t *testing.T) {
	ctx, cancel := timed(&writeDeadline{context.Background(), time.Now().Add(20 * time.Millisecond)})
	defer cancel()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("timed context of a pooled writeDeadline did not end at its deadline")
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

// TestEdgeRecordSplitFrame: a record whose frame field is split in two
// (which decoding merges) reaches its session as the merged frame.
func TestEdgeRecordSplitFrame(t *testing.T) {
	e, err := New(Config{ID: "e1"}, oneDevice{}, &recordingBus{})
	if err != nil {
		t.Fatal(err)
	}
	d := core.DeviceKey{User: "u", Device: 1}
	s := &session{e: e, id: 1, stop: make(chan struct{}), dev: d}
	e.byDevice[d], e.sessions[s.id] = s, s
	devs := []core.DeviceKey{d, {User: "v", Device: 1}} // v is not here
	f1, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:x", Seq: 4}}})
	f2, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{MsgId: "m"}}})
	rec := core.AppendEdgeRecord(nil, devs, f1)
	rec = protowire.AppendBytes(protowire.AppendTag(rec, 3, protowire.BytesType), f2)
	if err := e.handleEdgeRecord(context.Background(), core.BusRecord{Value: rec}); err != nil {
		t.Fatal(err)
	}
	var got pb.ServerFrame
	if err := proto.Unmarshal(mustPop(t, s), &got); err != nil {
		t.Fatal(err)
	}
	if m := got.GetDelivery(); m.GetConvId() != "g:x" || m.GetSeq() != 4 || m.GetMsgId() != "m" {
		t.Fatalf("got %v", &got)
	}
}

// TestCorkWriterWithLibraryPongs: batches written by corkWriter and the
// library's pongs share one socket. A raw client sends pings of the largest
// payload (125 bytes) while the server writes batches; it must read every
// message intact and in order, and every pong with its ping's payload.
func TestCorkWriterWithLibraryPongs(t *testing.T) {
	const perBatch, pings = 7, 300
	msg := func(n int) []byte {
		return binary.BigEndian.AppendUint32(bytes.Repeat([]byte{byte(n)}, n%700), uint32(n))
	}
	enough := make(chan struct{}) // the client has its pongs: stop writing
	served := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		lw := &leanWriter{ResponseWriter: rw}
		c, err := websocket.Accept(lw, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			served <- err
			return
		}
		ws := &wsConn{c: c, cork: lw.cork}
		go func() { // the session's reader: the library answers pings here
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		n := 0
		for {
			select {
			case <-enough:
				served <- ws.WriteMessages(context.Background(), [][]byte{[]byte("end")})
				return
			default:
			}
			msgs := make([][]byte, perBatch)
			for j := range msgs {
				msgs[j] = msg(n)
				n++
			}
			if err := ws.WriteMessages(&writeDeadline{context.Background(), time.Now().Add(10 * time.Second)}, msgs); err != nil {
				served <- err
				_ = c.CloseNow() // ends the client's read
				return
			}
			time.Sleep(50 * time.Microsecond)
		}
	}))
	defer srv.Close()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(srv.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 125) }
	go func() {
		for i := range pings {
			// Masked ping, 125 bytes (a zero mask leaves the payload as is).
			f := append([]byte{0x89, 0x80 | 125, 0, 0, 0, 0}, payload(i)...)
			if _, err := conn.Write(f); err != nil {
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	got, pongs := 0, 0
	for {
		var h [4]byte
		if _, err := io.ReadFull(br, h[:2]); err != nil {
			select {
			case serr := <-served:
				err = fmt.Errorf("server: %w", serr)
			default:
			}
			t.Fatalf("after %d messages, %d pongs: %v", got, pongs, err)
		}
		n := int(h[1] & 0x7f)
		if n == 126 {
			if _, err := io.ReadFull(br, h[2:4]); err != nil {
				t.Fatal(err)
			}
			n = int(binary.BigEndian.Uint16(h[2:4]))
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatal(err)
		}
		switch h[0] {
		case 0x8a:
			if !bytes.Equal(b, payload(pongs)) {
				t.Fatalf("pong %d: wrong payload", pongs)
			}
			if pongs++; pongs == pings {
				close(enough)
			}
			continue
		case 0x82:
		default:
			t.Fatalf("frame %#x after %d messages, %d pongs", h[0], got, pongs)
		}
		if string(b) == "end" {
			break
		}
		if !bytes.Equal(b, msg(got)) {
			t.Fatalf("message %d: %d bytes, want %d", got, len(b), len(msg(got)))
		}
		got++
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if got < 10*perBatch {
		t.Fatalf("only %d messages around %d pongs", got, pongs)
	}
	t.Logf("%d messages, %d pongs", got, pongs)
}

// TestDrainPool: the most recently parked goroutine is handed work first;
// one idle since before the previous tick is retired (told to exit), one
// parked since is not; when the edge stops, every idle one is retired and
// none parks again.
func TestDrainPool(t *testing.T) {
	var p drainPool
	slot := func() *drainSlot { return &drainSlot{work: make(chan *session, 1)} }
	if p.park(slot()) {
		t.Fatal("parked before the pool opened (no retirer runs)")
	}
	p.open()
	d1, d2, d3 := slot(), slot(), slot()
	if !p.park(d1) || !p.park(d2) {
		t.Fatal("park refused")
	}
	if got := p.take(); got != d2 {
		t.Fatal("take did not return the most recently parked slot")
	}
	p.park(d2)
	p.retire(false) // tick 1: d1 and d2 waited less than a full tick
	if len(p.idle) != 2 {
		t.Fatalf("%d idle after the first tick, want 2", len(p.idle))
	}
	p.park(d3)
	p.retire(false) // tick 2: d1 and d2 idle for a whole tick, d3 not
	for _, d := range []*drainSlot{d1, d2} {
		select {
		case s := <-d.work:
			if s != nil {
				t.Fatal("retired with a session")
			}
		default:
			t.Fatal("a slot idle for a whole tick was not retired")
		}
	}
	if len(p.idle) != 1 || p.idle[0] != d3 || len(d3.work) != 0 {
		t.Fatalf("idle %d, want only the slot parked after the first tick", len(p.idle))
	}
	p.retire(true)
	select {
	case s := <-d3.work:
		if s != nil || len(p.idle) != 0 {
			t.Fatal("stop handed work or kept idle slots")
		}
	default:
		t.Fatal("stop did not retire every idle slot")
	}
	if p.park(slot()) || p.take() != nil {
		t.Fatal("a slot parked or was taken after the edge stopped")
	}
}
