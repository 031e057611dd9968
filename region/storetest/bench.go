package storetest

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Bench measures Append throughput. open returns a new, empty store for one
// sub-benchmark; Bench closes it. Sub-benchmarks:
//
//   - OneConv: one goroutine appending to one conversation (the
//     sequencer's shape: one writer per conversation, each append durable
//     before the next).
//   - ParallelConvs: GOMAXPROCS×4 goroutines (b.SetParallelism(4)), each
//     appending to its own conversation (many sequencers' partitions at once).
//   - Duplicate: replays of one stored key (the cost of the dedupe path).
//
// Each reports appends/s besides ns/op. Messages carry a 256-byte envelope.
func Bench(b *testing.B, open func(b *testing.B) core.Store) {
	payload := make([]byte, 256)
	msg := func(conv, key string) *pb.Message {
		return &pb.Message{
			ConvId: conv, MsgId: key, Sender: &pb.DeviceAddr{UserId: "bench", DeviceId: 1}, ClientMsgId: key,
			SentAtMs: 1700000000000, Kind: pb.MessageKind_MESSAGE_KIND_USER,
			Envelope: &pb.Envelope{Ciphertext: payload, ContentHint: 1},
		}
	}
	conv := func(id string) *core.Conversation {
		return &core.Conversation{ID: id, Kind: pb.ConversationKind_CONVERSATION_KIND_GROUP, HomeRegion: "bench"}
	}
	report := func(b *testing.B) {
		if s := b.Elapsed().Seconds(); s > 0 {
			b.ReportMetric(float64(b.N)/s, "appends/s")
		}
	}
	withStore := func(b *testing.B) core.Store {
		s := open(b)
		b.Cleanup(func() {
			if err := s.Close(); err != nil {
				b.Errorf("Close: %v", err)
			}
		})
		return s
	}

	b.Run("OneConv", func(b *testing.B) {
		s := withStore(b)
		ctx := b.Context()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Create: conv("g:bench"), Message: msg("g:bench", fmt.Sprintf("k%d", i))}); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		report(b)
	})

	b.Run("ParallelConvs", func(b *testing.B) {
		s := withStore(b)
		ctx := b.Context()
		var worker atomic.Int64
		b.SetParallelism(4)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			id := fmt.Sprintf("g:bench%d", worker.Add(1))
			for i := 0; pb.Next(); i++ {
				if _, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Create: conv(id), Message: msg(id, fmt.Sprintf("k%d", i))}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		report(b)
	})

	b.Run("Duplicate", func(b *testing.B) {
		s := withStore(b)
		ctx := b.Context()
		if _, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Create: conv("g:dup"), Message: msg("g:dup", "k")}); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			res, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Message: msg("g:dup", "k")})
			if err != nil || !res.Duplicate {
				b.Fatalf("replay: dup=%v err=%v", res.Duplicate, err)
			}
		}
		b.StopTimer()
		report(b)
	})
}
