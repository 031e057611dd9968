package client

import (
	"slices"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

func msg(conv string, seq uint64) *pb.Message {
	return &pb.Message{ConvId: conv, Seq: seq, Kind: pb.MessageKind_MESSAGE_KIND_USER}
}

func seqs(ms []*pb.Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.GetSeq())
	}
	return out
}

func TestRecvStateOffer(t *testing.T) {
	type step struct {
		in      []uint64
		ready   []uint64
		dups    int
		gap     bool
		wantHed uint64
	}
	cases := []struct {
		name  string
		head  uint64
		steps []step
	}{
		{"in order", 0, []step{
			{in: []uint64{1, 2, 3}, ready: []uint64{1, 2, 3}, wantHed: 3},
		}},
		{"duplicates dropped", 3, []step{
			{in: []uint64{2, 3, 4, 4}, ready: []uint64{4}, dups: 3, wantHed: 4},
		}},
		{"gap buffered then filled", 0, []step{
			{in: []uint64{1, 3, 4}, ready: []uint64{1}, gap: true, wantHed: 1},
			{in: []uint64{2}, ready: []uint64{2, 3, 4}, wantHed: 4},
		}},
		{"reverse order", 0, []step{
			{in: []uint64{5, 4, 3, 2}, gap: true, wantHed: 0},
			{in: []uint64{1}, ready: []uint64{1, 2, 3, 4, 5}, wantHed: 5},
		}},
		{"buffered duplicate counted once", 0, []step{
			{in: []uint64{3, 3}, dups: 1, gap: true},
			{in: []uint64{1, 2, 3}, ready: []uint64{1, 2, 3}, dups: 1, wantHed: 3},
		}},
		{"sync refills what live push skipped", 10, []step{
			{in: []uint64{13}, gap: true, wantHed: 10},
			{in: []uint64{11, 12, 13}, ready: []uint64{11, 12, 13}, dups: 1, wantHed: 13},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &recvState{head: tc.head}
			for i, st := range tc.steps {
				var in []*pb.Message
				for _, s := range st.in {
					in = append(in, msg("d:a:b", s))
				}
				res := r.offer(in...)
				if got := seqs(res.Ready); !slices.Equal(got, st.ready) {
					t.Errorf("step %d: ready %v, want %v", i, got, st.ready)
				}
				if res.Duplicates != st.dups {
					t.Errorf("step %d: duplicates %d, want %d", i, res.Duplicates, st.dups)
				}
				if res.Gap != st.gap {
					t.Errorf("step %d: gap %v, want %v", i, res.Gap, st.gap)
				}
				if r.head != st.wantHed {
					t.Errorf("step %d: head %d, want %d", i, r.head, st.wantHed)
				}
			}
		})
	}
}

func TestRecvStateResetAfterFailedStore(t *testing.T) {
	r := &recvState{}
	res := r.offer(msg("c", 1), msg("c", 2), msg("c", 4))
	if len(res.Ready) != 2 {
		t.Fatalf("ready %v", seqs(res.Ready))
	}
	// The store write failed: the head falls back to what is on disk.
	r.reset(0)
	res = r.offer(msg("c", 1), msg("c", 2), msg("c", 3))
	if got := seqs(res.Ready); !slices.Equal(got, []uint64{1, 2, 3, 4}) {
		t.Fatalf("after reset ready %v, want 1..4", got)
	}
}

func TestRecvStateBufferBounded(t *testing.T) {
	r := &recvState{}
	var in []*pb.Message
	for s := uint64(2); s < maxBuffered+100; s++ {
		in = append(in, msg("c", s))
	}
	r.offer(in...)
	if len(r.pending) > maxBuffered {
		t.Fatalf("buffered %d > %d", len(r.pending), maxBuffered)
	}
}
