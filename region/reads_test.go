package region_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/kafkabus"
	"github.com/chatmesh/chatmesh/region/pebblestore"
)

// countingStore is the real store, observed: it records how many entry
// bytes each read returned, and can hold reads at a gate.
type countingStore struct {
	core.Store
	mu    sync.Mutex
	bytes int // entry bytes returned since the last take
	calls int
	gate  chan struct{} // non-nil: reads wait for a value (or close)
	held  chan struct{} // signalled when a read waits at the gate
}

func (s *countingStore) note(ms []*pb.Message) {
	n := 0
	for _, m := range ms {
		n += proto.Size(m)
	}
	s.mu.Lock()
	s.bytes += n
	s.calls++
	s.mu.Unlock()
}

func (s *countingStore) wait(ctx context.Context) {
	s.mu.Lock()
	gate, held := s.gate, s.held
	s.mu.Unlock()
	if gate == nil {
		return
	}
	select {
	case held <- struct{}{}:
	case <-ctx.Done():
		return
	}
	select {
	case <-gate:
	case <-ctx.Done():
	}
}

func (s *countingStore) Messages(ctx context.Context, conv string, after uint64, limit, maxBytes int) ([]*pb.Message, error) {
	s.wait(ctx)
	ms, err := s.Store.Messages(ctx, conv, after, limit, maxBytes)
	s.note(ms)
	return ms, err
}

func (s *countingStore) MessagesBefore(ctx context.Context, conv string, before, after uint64, limit, maxBytes int) ([]*pb.Message, error) {
	s.wait(ctx)
	ms, err := s.Store.MessagesBefore(ctx, conv, before, after, limit, maxBytes)
	s.note(ms)
	return ms, err
}

// take returns the bytes and calls counted since the last take.
func (s *countingStore) take() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, c := s.bytes, s.calls
	s.bytes, s.calls = 0, 0
	return b, c
}

// readRig is a region API over a real Pebble store (observed by a
// countingStore) whose data the test writes straight into the store.
type readRig struct {
	t     testing.TB
	ctx   context.Context
	store *countingStore
	api   *region.API
	reg   *region.Region
}

var sharedBus struct {
	once sync.Once
	bus  core.Bus
	err  error
}

func newReadRig(t testing.TB, adjust ...func(*region.Config)) *readRig {
	t.Helper()
	// Reads never touch the bus, but a region needs one; the tests share it.
	sharedBus.once.Do(func() {
		emb, err := kafkabus.StartEmbedded(context.Background(), kafkabus.EmbeddedConfig{})
		if err != nil {
			sharedBus.err = err
			return
		}
		sharedBus.bus, sharedBus.err = kafkabus.New(kafkabus.Config{Brokers: emb.Addrs()})
	})
	if sharedBus.err != nil {
		t.Fatal(sharedBus.err)
	}
	st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cs := &countingStore{Store: st}
	var cfg region.Config
	for _, f := range adjust {
		f(&cfg)
	}
	reg, err := region.New(cfg, cs, sharedBus.bus)
	if err != nil {
		t.Fatal(err)
	}
	return &readRig{t: t, ctx: t.Context(), store: cs, api: reg.API(), reg: reg}
}

// appendEntry stores one entry (creating conv with members on its first).
func (r *readRig) appendEntry(conv string, m *pb.Message, members ...string) *pb.Message {
	r.t.Helper()
	kind := core.KindOf(conv)
	res, err := r.store.Store.Append(r.ctx, core.AppendRequest{
		Epoch: 1, Message: m, AddMembers: members,
		Create: &core.Conversation{ID: conv, Kind: kind, HomeRegion: "local", CreatedAtMs: 1},
	})
	if err != nil {
		r.t.Fatalf("append to %s: %v", conv, err)
	}
	return res.Message
}

// entry is a user entry of conv from sender whose stored form takes
// exactly size bytes (size 0: a small entry).
func entry(t testing.TB, conv, sender, cmid string, seq uint64, size int) *pb.Message {
	t.Helper()
	m := &pb.Message{
		ConvId: conv, MsgId: "01JAAAAAAAAAAAAAAAAAAAAAAA", Sender: &pb.DeviceAddr{UserId: sender, DeviceId: 1},
		ClientMsgId: cmid, SentAtMs: 1700000000000, Kind: pb.MessageKind_MESSAGE_KIND_USER,
		Envelope: &pb.Envelope{Ciphertext: []byte("small " + cmid)},
	}
	if size == 0 {
		return m
	}
	for n := size; n >= 0; n-- {
		m.Envelope.Ciphertext = bytes.Repeat([]byte{byte(seq)}, n)
		st := proto.Clone(m).(*pb.Message)
		st.Seq, st.Epoch = seq, 1
		if got := proto.Size(st); got == size {
			return m
		} else if got < size {
			break
		}
	}
	t.Fatalf("no entry of exactly %d bytes", size)
	return nil
}

// query asks as dev, with the largest req_id, and checks that the whole
// ServerFrame the edge would build fits one Noise transport message.
func (r *readRig) query(dev core.DeviceKey, f *pb.ClientFrame) *pb.Response {
	r.t.Helper()
	f.ReqId = math.MaxUint64
	resp, err := r.api.Query(r.ctx, dev, f)
	if err != nil {
		r.t.Fatalf("query: %v", err)
	}
	if e := resp.GetError(); e != nil {
		r.t.Fatalf("query: %v", core.FromWire(e))
	}
	assertFitsFrame(r.t, resp)
	return resp
}

// assertFitsFrame fails when the response, as the edge frames it, would
// not fit one Noise transport message.
func assertFitsFrame(t testing.TB, resp *pb.Response) {
	t.Helper()
	if n := proto.Size(&pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: resp}}); n > core.MaxFramePlaintext {
		t.Fatalf("response frame of %d bytes > MaxFramePlaintext %d", n, core.MaxFramePlaintext)
	}
}

func syncReq(cursors map[string]uint64) *pb.ClientFrame {
	var cs []*pb.ConvCursor
	for c, s := range cursors {
		cs = append(cs, &pb.ConvCursor{ConvId: c, AfterSeq: s})
	}
	return &pb.ClientFrame{Body: &pb.ClientFrame_Sync{Sync: &pb.SyncRequest{Cursors: cs}}}
}

// syncAll pages a device's sync as the client does, returning the seqs
// per conversation and the number of pages.
func (r *readRig) syncAll(dev core.DeviceKey, cursors map[string]uint64) (map[string][]uint64, int) {
	r.t.Helper()
	got := map[string][]uint64{}
	for page := 1; page <= 10_000; page++ {
		r.store.take()
		s := r.query(dev, syncReq(cursors)).GetSync()
		if b, _ := r.store.take(); b > core.MaxPageBytes {
			r.t.Fatalf("sync page %d read %d entry bytes from the store, more than a page", page, b)
		}
		heads := map[string]uint64{}
		for _, h := range s.GetHeads() {
			heads[h.GetConvId()] = h.GetAfterSeq()
		}
		for _, m := range s.GetMessages() {
			if _, ok := heads[m.GetConvId()]; !ok {
				r.t.Fatalf("page %d: entries of %s without its head", page, m.GetConvId())
			}
			if m.GetSeq() != cursors[m.GetConvId()]+1 {
				r.t.Fatalf("page %d: %s seq %d after cursor %d", page, m.GetConvId(), m.GetSeq(), cursors[m.GetConvId()])
			}
			cursors[m.GetConvId()] = m.GetSeq()
			got[m.GetConvId()] = append(got[m.GetConvId()], m.GetSeq())
		}
		if len(heads) != len(slices.CompactFunc(s.GetHeads(), func(a, b *pb.ConvCursor) bool { return a.GetConvId() == b.GetConvId() })) {
			r.t.Fatalf("page %d: a conversation's head twice", page)
		}
		if !s.GetMore() {
			return got, page
		}
		if len(s.GetMessages()) == 0 {
			r.t.Fatalf("page %d: more without entries: no cursor can move", page)
		}
	}
	r.t.Fatal("sync did not finish")
	return nil, 0
}

func seqsUpTo(n uint64) []uint64 {
	out := make([]uint64, 0, n)
	for i := uint64(1); i <= n; i++ {
		out = append(out, i)
	}
	return out
}

// A backlog of large entries syncs one page at a time, every page within
// one frame, every entry once, in order.
func TestSyncPagesLargeEntries(t *testing.T) {
	r := newReadRig(t)
	conv := core.DirectConvID("alice", "bob")
	const n = 12
	for i := 1; i <= n; i++ {
		r.appendEntry(conv, entry(t, conv, "alice", fmt.Sprint(i), uint64(i), 30_000), "alice", "bob")
	}
	small := core.DirectConvID("bob", "carol")
	for i := 1; i <= 70; i++ {
		r.appendEntry(small, entry(t, small, "carol", fmt.Sprint(i), uint64(i), 1_200), "bob", "carol")
	}
	bob := core.DeviceKey{User: "bob", Device: 1}
	got, pages := r.syncAll(bob, map[string]uint64{})
	if !slices.Equal(got[conv], seqsUpTo(n)) || !slices.Equal(got[small], seqsUpTo(70)) {
		t.Fatalf("synced %v / %v", got[conv], got[small])
	}
	// 12 x 30 KB + 70 x 1.2 KB: two large entries per page.
	if pages < 7 {
		t.Fatalf("%d pages for %d KB", pages, (n*30_000+70*1_200)/1000)
	}
	// Up to date: an empty page, no heads, no more.
	s := r.query(bob, syncReq(map[string]uint64{conv: n, small: 70})).GetSync()
	if len(s.GetMessages()) != 0 || len(s.GetHeads()) != 0 || s.GetMore() {
		t.Fatalf("up-to-date sync: %d entries, %d heads, more=%v", len(s.GetMessages()), len(s.GetHeads()), s.GetMore())
	}
}

// A user in many conversations: heads are paged with the entries, and an
// up-to-date device gets no heads at all (before, every sync listed the
// head of every conversation: 1,000 long ids are 73 KB, one frame is 64 KB).
func TestSyncManyConversationsPagesHeads(t *testing.T) {
	r := newReadRig(t)
	const n = 1000
	var convs []string
	for i := range n {
		conv := fmt.Sprintf("g:%064d", i)
		convs = append(convs, conv)
		r.appendEntry(conv, entry(t, conv, "alice", "create", 1, 0), "alice", "bob")
	}
	bob := core.DeviceKey{User: "bob", Device: 1}
	cursors := map[string]uint64{}
	got, pages := r.syncAll(bob, cursors)
	if len(got) != n || pages < 2 {
		t.Fatalf("synced %d conversations in %d pages", len(got), pages)
	}
	for _, c := range convs {
		if !slices.Equal(got[c], []uint64{1}) {
			t.Fatalf("%s: %v", c, got[c])
		}
	}
	s := r.query(bob, syncReq(cursors)).GetSync()
	if len(s.GetMessages()) != 0 || len(s.GetHeads()) != 0 || s.GetMore() {
		t.Fatalf("up-to-date sync: %d entries, %d heads, more=%v", len(s.GetMessages()), len(s.GetHeads()), s.GetMore())
	}
	// list_conversations pages by after_conv_id.
	var listed []string
	after := ""
	for page := 0; ; page++ {
		if page > n {
			t.Fatal("list_conversations does not end")
		}
		l := r.query(bob, &pb.ClientFrame{Body: &pb.ClientFrame_ListConversations{ListConversations: &pb.ListConversationsRequest{AfterConvId: after}}}).GetConversations()
		for _, info := range l.GetConversations() {
			listed = append(listed, info.GetConvId())
		}
		if !l.GetMore() {
			break
		}
		if len(l.GetConversations()) == 0 {
			t.Fatal("list_conversations: more without conversations")
		}
		after = listed[len(listed)-1]
	}
	if !slices.Equal(listed, convs) {
		t.Fatalf("listed %d conversations, want %d", len(listed), n)
	}
}

// history(limit 1000) over many ~60 KB entries: every response fits one
// frame, and each request reads at most one page of bytes from the store
// (before: all 1,000 entries, 60 MB, per request). Paging back with
// before_seq = the lowest seq returned visits every entry once.
func TestHistoryBoundedByBytes(t *testing.T) {
	r := newReadRig(t)
	conv := core.DirectConvID("alice", "bob")
	const n = 40
	for i := 1; i <= n; i++ {
		r.appendEntry(conv, entry(t, conv, "alice", fmt.Sprint(i), uint64(i), 60_000), "alice", "bob")
	}
	bob := core.DeviceKey{User: "bob", Device: 1}
	var seen []uint64
	before := uint64(0)
	for range n + 1 {
		r.store.take()
		h := r.query(bob, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv, BeforeSeq: before, Limit: 1000}}}).GetHistory()
		if b, calls := r.store.take(); b > core.MaxPageBytes || calls > 1 {
			t.Fatalf("history before %d read %d entry bytes in %d store calls", before, b, calls)
		}
		ms := h.GetMessages()
		if len(ms) == 0 {
			break
		}
		if len(ms) != 1 { // one 60 KB entry per page
			t.Fatalf("history before %d: %d entries", before, len(ms))
		}
		seen = append([]uint64{ms[0].GetSeq()}, seen...)
		before = ms[0].GetSeq()
	}
	if !slices.Equal(seen, seqsUpTo(n)) {
		t.Fatalf("history walk %v", seen)
	}
	// Small entries: the newest that fit, ascending.
	small := core.DirectConvID("bob", "carol")
	for i := 1; i <= 10; i++ {
		r.appendEntry(small, entry(t, small, "carol", fmt.Sprint(i), uint64(i), 0), "bob", "carol")
	}
	h := r.query(bob, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: small, Limit: 3}}}).GetHistory()
	var got []uint64
	for _, m := range h.GetMessages() {
		got = append(got, m.GetSeq())
	}
	if !slices.Equal(got, []uint64{8, 9, 10}) {
		t.Fatalf("history(limit 3) = %v, want the newest three", got)
	}
}

// An entry of exactly MaxMessageBytes with the longest ids, in a group
// with the longest id, is returned alone by sync and history within one
// frame.
func TestMaxEntryFitsEveryPage(t *testing.T) {
	r := newReadRig(t)
	long := strings.Repeat("u", core.MaxUserIDLen)
	conv := "g:" + strings.Repeat("G", 64)
	cmid := strings.Repeat("c", core.MaxClientMsgIDLen)
	r.appendEntry(conv, entry(t, conv, long, "small", 1, 0), long)
	m := entry(t, conv, long, cmid, 2, core.MaxMessageBytes)
	if got := r.appendEntry(conv, m); proto.Size(got) != core.MaxMessageBytes {
		t.Fatalf("stored %d bytes", proto.Size(got))
	}
	r.appendEntry(conv, entry(t, conv, long, "small2", 3, 0))
	dev := core.DeviceKey{User: long, Device: 1}
	if got, _ := r.syncAll(dev, map[string]uint64{}); !slices.Equal(got[conv], []uint64{1, 2, 3}) {
		t.Fatalf("synced %v", got[conv])
	}
	h := r.query(dev, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv, BeforeSeq: 3, Limit: 1000}}}).GetHistory()
	if ms := h.GetMessages(); len(ms) == 0 || ms[len(ms)-1].GetSeq() != 2 || proto.Size(ms[len(ms)-1]) != core.MaxMessageBytes {
		t.Fatalf("history of the max entry: %d entries", len(ms))
	}
}

// The process serves at most MaxConcurrentReads reads at once; one more
// waits ReadWait and is answered UNAVAILABLE with retry_after_ms.
func TestConcurrentReadsBounded(t *testing.T) {
	r := newReadRig(t, func(c *region.Config) { c.MaxConcurrentReads = 2; c.ReadWait = 50 * time.Millisecond })
	conv := core.DirectConvID("alice", "bob")
	r.appendEntry(conv, entry(t, conv, "alice", "1", 1, 0), "alice", "bob")
	bob := core.DeviceKey{User: "bob", Device: 1}
	hist := func() *pb.ClientFrame {
		return &pb.ClientFrame{ReqId: 7, Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv}}}
	}
	gate, held := make(chan struct{}), make(chan struct{}, 2)
	r.store.mu.Lock()
	r.store.gate, r.store.held = gate, held
	r.store.mu.Unlock()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if resp, err := r.api.Query(r.ctx, bob, hist()); err != nil || resp.GetError() != nil {
				t.Errorf("held read: %v %v", err, resp.GetError())
			}
		})
	}
	<-held
	<-held
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second) // with no bound, it would wait for the gate
	defer cancel()
	resp, err := r.api.Query(ctx, bob, hist())
	if err != nil || resp.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || resp.GetError().GetRetryAfterMs() == 0 || resp.GetReqId() != 7 {
		t.Fatalf("third read: %v %v", resp, err)
	}
	if st := r.reg.Stats(); st.ReadsRefused != 1 {
		t.Fatalf("ReadsRefused = %d", st.ReadsRefused)
	}
	r.store.mu.Lock()
	r.store.gate = nil
	r.store.mu.Unlock()
	close(gate)
	wg.Wait()
	if resp := r.query(bob, hist()); len(resp.GetHistory().GetMessages()) != 1 {
		t.Fatalf("read after the others finished: %v", resp)
	}
}

// RetentionMark passes the store's trim marks through (the API reads them).
func (s *countingStore) RetentionMark(ctx context.Context, conv string) (core.RetentionMark, error) {
	return s.Store.(core.Retainer).RetentionMark(ctx, conv)
}

// TestSyncAfterExpiry: a device whose cursor lies below entries deleted by
// retention gets SyncResponse.expired naming the last deleted seq and the
// entries from the first one still stored, never a silent hole; when
// everything after its cursor is gone it gets the marker alone; history
// ends at the trim mark with expired_through.
func TestSyncAfterExpiry(t *testing.T) {
	r := newReadRig(t)
	conv := core.DirectConvID("alice", "bob")
	for i := 1; i <= 10; i++ {
		r.appendEntry(conv, entry(t, conv, "alice", fmt.Sprint(i), uint64(i), 0), "alice", "bob")
	}
	ret := r.store.Store.(core.Retainer)
	if err := ret.Trim(r.ctx, conv, 6); err != nil {
		t.Fatal(err)
	}
	bob := core.DeviceKey{User: "bob", Device: 1}
	expired := func(s *pb.SyncResponse) map[string]uint64 {
		out := map[string]uint64{}
		for _, e := range s.GetExpired() {
			out[e.GetConvId()] = e.GetAfterSeq()
		}
		return out
	}
	s := r.query(bob, syncReq(map[string]uint64{conv: 2})).GetSync()
	if got := expired(s); len(got) != 1 || got[conv] != 6 {
		t.Fatalf("expired %v, want %s through 6", got, conv)
	}
	var seqs []uint64
	for _, m := range s.GetMessages() {
		seqs = append(seqs, m.GetSeq())
	}
	if !slices.Equal(seqs, []uint64{7, 8, 9, 10}) || s.GetMore() {
		t.Fatalf("entries %v more=%v, want 7..10", seqs, s.GetMore())
	}
	// A cursor at or above the mark sees no marker.
	if s := r.query(bob, syncReq(map[string]uint64{conv: 6})).GetSync(); len(s.GetExpired()) != 0 || len(s.GetMessages()) != 4 {
		t.Fatalf("sync from the mark: %d expired, %d entries", len(s.GetExpired()), len(s.GetMessages()))
	}
	// History pages down to the mark and says it ends there.
	h := r.query(bob, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv, Limit: 2}}}).GetHistory()
	if len(h.GetMessages()) != 2 || h.GetExpiredThrough() != 0 {
		t.Fatalf("history page 1: %d entries, expired_through %d", len(h.GetMessages()), h.GetExpiredThrough())
	}
	h = r.query(bob, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv, BeforeSeq: 9, Limit: 5}}}).GetHistory()
	if len(h.GetMessages()) != 2 || h.GetMessages()[0].GetSeq() != 7 || h.GetExpiredThrough() != 6 {
		t.Fatalf("history page 2: %d entries, expired_through %d", len(h.GetMessages()), h.GetExpiredThrough())
	}

	// Everything gone: the marker alone, no entries, no heads, no more.
	if err := ret.Trim(r.ctx, conv, 10); err != nil {
		t.Fatal(err)
	}
	s = r.query(bob, syncReq(map[string]uint64{conv: 2})).GetSync()
	if got := expired(s); got[conv] != 10 || len(s.GetMessages()) != 0 || len(s.GetHeads()) != 0 || s.GetMore() {
		t.Fatalf("sync after full expiry: expired %v, %d entries, %d heads, more=%v", got, len(s.GetMessages()), len(s.GetHeads()), s.GetMore())
	}
	h = r.query(bob, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv}}}).GetHistory()
	if len(h.GetMessages()) != 0 || h.GetExpiredThrough() != 10 {
		t.Fatalf("history after full expiry: %d entries, expired_through %d", len(h.GetMessages()), h.GetExpiredThrough())
	}
	// A new entry after the expiry syncs normally.
	r.appendEntry(conv, entry(t, conv, "alice", "11", 11, 0), "alice", "bob")
	s = r.query(bob, syncReq(map[string]uint64{conv: 10})).GetSync()
	if len(s.GetExpired()) != 0 || len(s.GetMessages()) != 1 {
		t.Fatalf("sync of a new entry: %d expired, %d entries", len(s.GetExpired()), len(s.GetMessages()))
	}
}

// Many conversations expired entirely: the markers are paged like heads,
// every page fits a frame (query checks), and every marker arrives.
func TestSyncManyExpiredConversationsPaged(t *testing.T) {
	r := newReadRig(t)
	const n = 1500
	ret := r.store.Store.(core.Retainer)
	for i := range n {
		conv := fmt.Sprintf("g:%064d", i)
		r.appendEntry(conv, entry(t, conv, "alice", "create", 1, 0), "alice", "bob")
		if err := ret.Trim(r.ctx, conv, 1); err != nil {
			t.Fatal(err)
		}
	}
	bob := core.DeviceKey{User: "bob", Device: 1}
	cursors := map[string]uint64{}
	for page := 1; ; page++ {
		if page > 100 {
			t.Fatal("sync does not end")
		}
		s := r.query(bob, syncReq(cursors)).GetSync()
		for _, e := range s.GetExpired() {
			cursors[e.GetConvId()] = e.GetAfterSeq()
		}
		if !s.GetMore() {
			break
		}
		if len(s.GetExpired()) == 0 {
			t.Fatal("more without progress")
		}
	}
	if len(cursors) != n {
		t.Fatalf("%d of %d conversations reported expired", len(cursors), n)
	}
}
