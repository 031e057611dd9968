package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Size limits of the contract: Append refuses what could never be
// delivered, and Messages / MessagesBefore bound their pages in bytes.

// sizedMsg returns a user message from a.1 whose stored form (Seq = seq,
// Epoch = 1) encodes to exactly size bytes, with the longest sender id
// and client_msg_id.
func sizedMsg(t *testing.T, conv, cmid string, seq uint64, size int) *pb.Message {
	t.Helper()
	m := &pb.Message{
		ConvId: conv, MsgId: "01JAAAAAAAAAAAAAAAAAAAAAAA",
		Sender:      &pb.DeviceAddr{UserId: longUser, DeviceId: 7},
		ClientMsgId: cmid, SentAtMs: 1700000000123,
		Kind:     pb.MessageKind_MESSAGE_KIND_USER,
		Envelope: &pb.Envelope{ContentHint: 1},
	}
	for n := size; n >= 0; n-- {
		m.Envelope.Ciphertext = bytes.Repeat([]byte{byte(seq)}, n)
		st := proto.Clone(m).(*pb.Message)
		st.Seq, st.Epoch = seq, 1
		switch got := proto.Size(st); {
		case got == size:
			return m
		case got < size:
			t.Fatalf("sizedMsg: no ciphertext length gives %d bytes", size)
		}
	}
	t.Fatalf("sizedMsg: %d bytes is too small", size)
	return nil
}

// longUser is a user id of the maximum length.
var longUser = string(bytes.Repeat([]byte{'u'}, core.MaxUserIDLen))

// cmid64 returns a client_msg_id of the maximum length ending in i.
func cmid64(i int) string {
	s := fmt.Sprintf("%064d", i)
	return s[len(s)-core.MaxClientMsgIDLen:]
}

func sizes(ms []*pb.Message) int {
	n := 0
	for _, m := range ms {
		n += proto.Size(m)
	}
	return n
}

func messagesB(t *testing.T, s core.Store, conv string, after uint64, limit, maxBytes int) []*pb.Message {
	t.Helper()
	ms, err := s.Messages(t.Context(), conv, after, limit, maxBytes)
	if err != nil {
		t.Fatalf("Messages(%s, after=%d, limit=%d, maxBytes=%d): %v", conv, after, limit, maxBytes, err)
	}
	return ms
}

func before(t *testing.T, s core.Store, conv string, before, after uint64, limit, maxBytes int) []*pb.Message {
	t.Helper()
	ms, err := s.MessagesBefore(t.Context(), conv, before, after, limit, maxBytes)
	if err != nil {
		t.Fatalf("MessagesBefore(%s, before=%d, after=%d, limit=%d, maxBytes=%d): %v", conv, before, after, limit, maxBytes, err)
	}
	return ms
}

// testAppendTooLarge: an entry of exactly MaxMessageBytes (stored form) is
// stored and read back whole; one byte more is refused with
// MESSAGE_TOO_LARGE and leaves no trace (head, entries, idempotency key).
func testAppendTooLarge(t *testing.T, s core.Store) {
	const conv = "g:big"
	ctx := t.Context()
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, "first")})

	over := sizedMsg(t, conv, cmid64(2), 2, core.MaxMessageBytes+1)
	_, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Message: over})
	var we *core.WireError
	if !errors.As(err, &we) || we.Code != pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE {
		t.Fatalf("append of %d bytes: got %v, want a WireError MESSAGE_TOO_LARGE", core.MaxMessageBytes+1, err)
	}
	if c := conversation(t, s, conv); c.Head != 1 {
		t.Fatalf("head after refused append = %d, want 1", c.Head)
	}
	equal(t, "entries after refused append", seqs(messagesB(t, s, conv, 0, 10, 0)), seqRange(1, 1))
	// A refused create stores no conversation either.
	_, err = s.Append(ctx, core.AppendRequest{Epoch: 1, Create: group("g:big2"), Message: sizedMsg(t, "g:big2", cmid64(1), 1, core.MaxMessageBytes+1)})
	if core.Code(err) != pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE {
		t.Fatalf("create with an oversized entry: %v", err)
	}
	_, err = s.Conversation(ctx, "g:big2")
	wantErr(t, "conversation after refused create", err, core.ErrNotFound)

	// The same idempotency key with an entry at the limit is a new entry.
	at := sizedMsg(t, conv, cmid64(2), 2, core.MaxMessageBytes)
	res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: at})
	if res.Duplicate || res.Message.Seq != 2 || proto.Size(res.Message) != core.MaxMessageBytes {
		t.Fatalf("append at the limit: dup=%v seq=%d size=%d", res.Duplicate, res.Message.Seq, proto.Size(res.Message))
	}
	got := messagesB(t, s, conv, 1, 10, core.MaxMessageBytes)
	if len(got) != 1 || proto.Size(got[0]) != core.MaxMessageBytes || !bytes.Equal(got[0].GetEnvelope().GetCiphertext(), at.GetEnvelope().GetCiphertext()) {
		t.Fatalf("read back the entry at the limit: %d entries", len(got))
	}
	if got := before(t, s, conv, 3, 0, 10, core.MaxMessageBytes); len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("MessagesBefore of the entry at the limit: %v", seqs(got))
	}
	// Its replay is a duplicate, as always.
	if res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: at}); !res.Duplicate || res.Message.Seq != 2 {
		t.Fatalf("replay of the entry at the limit: dup=%v seq=%d", res.Duplicate, res.Message.Seq)
	}
}

// testMessagesByteBound: pages stop before the entry that would pass
// maxBytes, exactly at the boundary.
func testMessagesByteBound(t *testing.T, s core.Store) {
	const conv = "g:bytes"
	all := appendN(t, s, conv, 10)
	sz := make([]int, len(all))
	for i, m := range all {
		sz[i] = proto.Size(m)
	}
	sum := func(from, to int) int { // sizes of seqs from..to
		n := 0
		for i := from; i <= to; i++ {
			n += sz[i-1]
		}
		return n
	}
	cases := []struct {
		after    uint64
		limit    int
		maxBytes int
		want     []uint64
	}{
		{0, 10, sum(1, 4), seqRange(1, 4)},     // exactly at the bound
		{0, 10, sum(1, 4) - 1, seqRange(1, 3)}, // one byte short
		{0, 10, sum(1, 4) + 1, seqRange(1, 4)}, // one byte more is not the next entry
		{0, 2, sum(1, 4), seqRange(1, 2)},      // count binds first
		{3, 10, sum(4, 10), seqRange(4, 10)},
		{3, 10, sz[3] - 1, []uint64{}}, // not even one entry fits
		{0, 10, 0, seqRange(1, 10)},    // 0 = MaxPageBytes
	}
	for _, c := range cases {
		got := messagesB(t, s, conv, c.after, c.limit, c.maxBytes)
		equal(t, fmt.Sprintf("Messages(after=%d, limit=%d, maxBytes=%d)", c.after, c.limit, c.maxBytes), seqs(got), c.want)
		if sizes(got) > c.maxBytes && c.maxBytes > 0 {
			t.Fatalf("page of %d bytes > maxBytes %d", sizes(got), c.maxBytes)
		}
	}
	bcases := []struct {
		before, after uint64
		limit, maxB   int
		want          []uint64
	}{
		{11, 0, 10, sum(7, 10), seqRange(7, 10)},     // the newest that fit
		{11, 0, 10, sum(7, 10) - 1, seqRange(8, 10)}, // one byte short
		{100, 0, 10, sum(7, 10), seqRange(7, 10)},    // before past the head
		{8, 0, 3, 0, seqRange(5, 7)},                 // count binds
		{8, 5, 10, 0, seqRange(6, 7)},                // after is a floor
		{6, 5, 10, 0, []uint64{}},
		{1, 0, 10, 0, []uint64{}},
		{11, 0, 10, sz[9] - 1, []uint64{}},
	}
	for _, c := range bcases {
		got := before(t, s, conv, c.before, c.after, c.limit, c.maxB)
		equal(t, fmt.Sprintf("MessagesBefore(before=%d, after=%d, limit=%d, maxBytes=%d)", c.before, c.after, c.limit, c.maxB), seqs(got), c.want)
	}
	_, err := s.MessagesBefore(t.Context(), "g:none", 10, 0, 10, 0)
	wantErr(t, "MessagesBefore of missing", err, core.ErrNotFound)
}

// testMessagesManyLarge: many near-maximum entries; every page holds as
// many as fit in maxBytes and at least one, and paging (up and down)
// visits every entry once.
func testMessagesManyLarge(t *testing.T, s core.Store) {
	const conv = "g:large"
	const n = 24
	const size = 60_000
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: sizedMsg(t, conv, cmid64(1), 1, size)})
	for i := 2; i <= n; i++ {
		mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: sizedMsg(t, conv, cmid64(i), uint64(i), size)})
	}
	for _, maxBytes := range []int{core.MaxMessageBytes, core.MaxPageBytes, 3*size - 1, 3 * size} {
		perPage := maxBytes / size
		var up []uint64
		for after := uint64(0); ; {
			page := messagesB(t, s, conv, after, core.MaxPageSize, maxBytes)
			if len(page) == 0 {
				break
			}
			if len(page) != min(perPage, n-int(after)) || sizes(page) > maxBytes {
				t.Fatalf("maxBytes %d: page after %d has %d entries, %d bytes", maxBytes, after, len(page), sizes(page))
			}
			up = append(up, seqs(page)...)
			after = page[len(page)-1].Seq
		}
		equal(t, fmt.Sprintf("walk up with maxBytes %d", maxBytes), up, seqRange(1, n))
		var down []uint64
		for b := uint64(n + 1); ; {
			page := before(t, s, conv, b, 0, core.MaxPageSize, maxBytes)
			if len(page) == 0 {
				break
			}
			if len(page) != min(perPage, int(b)-1) || sizes(page) > maxBytes {
				t.Fatalf("maxBytes %d: page before %d has %d entries, %d bytes", maxBytes, b, len(page), sizes(page))
			}
			down = append(seqs(page), down...)
			b = page[0].Seq
		}
		equal(t, fmt.Sprintf("walk down with maxBytes %d", maxBytes), down, seqRange(1, n))
	}
}
