package client

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

func userMsg(conv string, seq uint64, body string) *pb.Message {
	return &pb.Message{ConvId: conv, Seq: seq, MsgId: "m", Kind: pb.MessageKind_MESSAGE_KIND_USER,
		Envelope: &pb.Envelope{Ciphertext: []byte(body)}}
}

func TestStoreAppendReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	const conv = "d:alice:bob"
	if err := s.Append(conv, []*pb.Message{userMsg(conv, 1, "a"), userMsg(conv, 2, "b")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(conv, []*pb.Message{userMsg(conv, 3, "c")}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSeen(conv, 2); err != nil {
		t.Fatal(err)
	}
	// Non-contiguous appends are refused.
	if err := s.Append(conv, []*pb.Message{userMsg(conv, 5, "x")}); !errors.Is(err, ErrStore) {
		t.Fatalf("gap append: %v", err)
	}
	if err := s.Append(conv, []*pb.Message{userMsg("g:other", 4, "x")}); !errors.Is(err, ErrStore) {
		t.Fatalf("wrong conv: %v", err)
	}

	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h := s2.Head(conv); h != 3 {
		t.Fatalf("head after reopen %d, want 3", h)
	}
	if seen := s2.Seen(conv); seen != 2 {
		t.Fatalf("seen after reopen %d, want 2", seen)
	}
	ms, err := s2.Messages(conv, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || string(ms[0].GetEnvelope().GetCiphertext()) != "b" || ms[1].GetSeq() != 3 {
		t.Fatalf("messages after 1: %v", ms)
	}
	ms, _ = s2.Messages(conv, 0, 1)
	if len(ms) != 1 || ms[0].GetSeq() != 1 {
		t.Fatalf("limit 1: %v", ms)
	}
	if m, err := s2.Message(conv, 3); err != nil || string(m.GetEnvelope().GetCiphertext()) != "c" {
		t.Fatalf("message 3: %v %v", m, err)
	}
	if _, err := s2.Message(conv, 4); !errors.Is(err, ErrNoSuchMessage) {
		t.Fatalf("message 4: %v", err)
	}
	if cs := s2.Conversations(); len(cs) != 1 || cs[0] != (ConvSummary{Conv: conv, Head: 3, Seen: 2}) {
		t.Fatalf("conversations %v", cs)
	}
	// Seen never moves back.
	if err := s2.SetSeen(conv, 1); err != nil || s2.Seen(conv) != 2 {
		t.Fatalf("seen moved back: %d %v", s2.Seen(conv), err)
	}
}

func TestStoreTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	const conv = "g:01J0000000000000000000000A"
	if err := s.Append(conv, []*pb.Message{userMsg(conv, 1, "one"), userMsg(conv, 2, "two")}); err != nil {
		t.Fatal(err)
	}
	path := s.logPath(conv)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a crash in the middle of appending seq 3: half a record.
	rec := appendRecord(nil, recMessage, []byte("partial record payload that never finished"))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(rec[:len(rec)/2])
	f.Close()

	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h := s2.Head(conv); h != 2 {
		t.Fatalf("head %d, want 2", h)
	}
	if fi2, _ := os.Stat(path); fi2.Size() != fi.Size() {
		t.Fatalf("torn tail not truncated: %d vs %d", fi2.Size(), fi.Size())
	}
	if err := s2.Append(conv, []*pb.Message{userMsg(conv, 3, "three")}); err != nil {
		t.Fatal(err)
	}
	ms, err := s2.Messages(conv, 0, 0)
	if err != nil || len(ms) != 3 {
		t.Fatalf("after repair: %v %v", ms, err)
	}
}

func TestStoreCorruptRecordStopsScan(t *testing.T) {
	dir := t.TempDir()
	s, _ := OpenStore(dir)
	const conv = "d:a:b"
	s.Append(conv, []*pb.Message{userMsg(conv, 1, "x"), userMsg(conv, 2, "y")})
	b, _ := os.ReadFile(s.logPath(conv))
	b[len(b)-6] ^= 0xff // flip a byte inside the last record
	os.WriteFile(s.logPath(conv), b, 0o600)
	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h := s2.Head(conv); h != 1 {
		t.Fatalf("head %d, want 1 (corrupt record dropped)", h)
	}
	if _, err := os.Stat(filepath.Join(dir, "junk")); err == nil {
		t.Fatal("unexpected file")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, recMessage, []byte("hello")))
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, payload, n, ok := decodeRecord(b)
		if !ok {
			return
		}
		if n > len(b) || len(payload)+9 != n {
			t.Fatalf("n=%d len=%d payload=%d", n, len(b), len(payload))
		}
		again := appendRecord(nil, typ, payload)
		if string(again) != string(b[:n]) {
			t.Fatal("re-encoding differs")
		}
	})
}

// TestStoreSkipJoinPoints: a member added to a group later, or an invitee,
// stores the conversation from its join point; the seqs before it are
// skipped, durably, and reads step over them.
func TestStoreSkipJoinPoints(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	const conv, inv = "g:late", "g:invited"
	if err := s.Append(conv, []*pb.Message{userMsg(conv, 1, "a"), userMsg(conv, 2, "b")}); err != nil {
		t.Fatal(err)
	}
	// Removed after 2, added again at 6.
	if err := s.Skip(conv, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.Skip(conv, 3); err != nil || s.Head(conv) != 5 { // never back
		t.Fatalf("backward skip: head %d, %v", s.Head(conv), err)
	}
	if err := s.Append(conv, []*pb.Message{userMsg(conv, 6, "f"), userMsg(conv, 7, "g")}); err != nil {
		t.Fatal(err)
	}
	// An invitee's first entry is the invitation at 4; it accepts at 9.
	if err := s.Skip(inv, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(inv, []*pb.Message{userMsg(inv, 4, "invite")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Skip(inv, 8); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(inv, []*pb.Message{userMsg(inv, 9, "accept")}); err != nil {
		t.Fatal(err)
	}
	// A gap without a skip is still refused.
	if err := s.Append(conv, []*pb.Message{userMsg(conv, 9, "x")}); !errors.Is(err, ErrStore) {
		t.Fatalf("gap append: %v", err)
	}
	if err := s.SetSeen(conv, 6); err != nil {
		t.Fatal(err)
	}

	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*Store{s, s2} {
		if h := st.Head(conv); h != 7 {
			t.Fatalf("head %d, want 7", h)
		}
		cases := []struct {
			after uint64
			limit int
			want  []uint64
		}{
			{0, 0, []uint64{1, 2, 6, 7}},
			{1, 0, []uint64{2, 6, 7}},
			{2, 0, []uint64{6, 7}},
			{3, 0, []uint64{6, 7}},
			{0, 3, []uint64{1, 2, 6}},
			{2, 1, []uint64{6}},
			{6, 5, []uint64{7}},
			{7, 0, nil},
		}
		for _, tc := range cases {
			ms, err := st.Messages(conv, tc.after, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := seqs(ms); !slices.Equal(got, tc.want) {
				t.Fatalf("Messages(after %d, limit %d) = %v, want %v", tc.after, tc.limit, got, tc.want)
			}
		}
		if _, err := st.Message(conv, 4); !errors.Is(err, ErrNoSuchMessage) {
			t.Fatalf("skipped message 4: %v", err)
		}
		if m, err := st.Message(conv, 6); err != nil || string(m.GetEnvelope().GetCiphertext()) != "f" {
			t.Fatalf("message 6: %v %v", m, err)
		}
		ms, err := st.Messages(inv, 0, 0)
		if err != nil || !slices.Equal(seqs(ms), []uint64{4, 9}) || st.Head(inv) != 9 {
			t.Fatalf("invitee's log: %v %v head %d", seqs(ms), err, st.Head(inv))
		}
	}
	if cs := s2.Conversations(); len(cs) != 2 || cs[1] != (ConvSummary{Conv: conv, Head: 7, Seen: 6}) {
		t.Fatalf("conversations %v", cs)
	}
}

// A 1:1 of two users with the longest ids (131 bytes) has an id whose hex
// encoding does not fit a file name: its log lives under a hash of the id
// and starts with the id, and reopens with its entries, skips and
// cursors; short ids keep their hex names. A log whose id record was
// torn is left out, like a torn tail.
func TestStoreLongConversationIDs(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	long := core.DirectConvID(strings.Repeat("a", core.MaxUserIDLen), strings.Repeat("b", core.MaxUserIDLen))
	if len(long) != 131 {
		t.Fatalf("longest 1:1 id has %d bytes", len(long))
	}
	const short = "d:alice:bob"
	if err := s.Skip(long, 2); err != nil {
		t.Fatal(err)
	}
	for _, conv := range []string{long, short} {
		from := s.Head(conv) + 1
		if err := s.Append(conv, []*pb.Message{userMsg(conv, from, "x"), userMsg(conv, from+1, "y")}); err != nil {
			t.Fatalf("append to %d-byte id: %v", len(conv), err)
		}
	}
	if err := s.SetSeen(long, 4); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	var hashed int
	for _, n := range names {
		if len(filepath.Base(n)) > 255 {
			t.Fatalf("file name of %d bytes", len(filepath.Base(n)))
		}
		if strings.HasPrefix(filepath.Base(n), "h-") {
			hashed++
		}
	}
	if len(names) != 2 || hashed != 1 {
		t.Fatalf("logs %v", names)
	}
	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h, seen := s2.Head(long), s2.Seen(long); h != 4 || seen != 4 {
		t.Fatalf("long id after reopen: head %d seen %d, want 4 4", h, seen)
	}
	if ms, err := s2.Messages(long, 2, 0); err != nil || len(ms) != 2 || ms[0].GetSeq() != 3 || ms[0].GetConvId() != long {
		t.Fatalf("long id entries after reopen: %v %v", ms, err)
	}
	if s2.Head(short) != 2 || len(s2.Conversations()) != 2 {
		t.Fatalf("short id after reopen: head %d, %d conversations", s2.Head(short), len(s2.Conversations()))
	}
	// A torn id record: the log is left out.
	for _, n := range names {
		if strings.HasPrefix(filepath.Base(n), "h-") {
			if err := os.Truncate(n, 5); err != nil {
				t.Fatal(err)
			}
		}
	}
	s3, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s3.Head(long) != 0 || len(s3.Conversations()) != 1 {
		t.Fatalf("torn id record: head %d, %d conversations", s3.Head(long), len(s3.Conversations()))
	}
}
