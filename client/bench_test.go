package client

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// BenchmarkOutboxAdd measures the durable outbox write (temp file, fsync,
// rename, dir fsync) that every Send pays before returning.
func BenchmarkOutboxAdd(b *testing.B) {
	ob, err := OpenOutbox(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 200)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := ob.Add(&pb.SendRequest{ConvId: "d:a:b", ClientMsgId: fmt.Sprint(i), Envelope: &pb.Envelope{Ciphertext: body}}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStoreAppendBatch16 measures storing received entries in
// batches of 16 (one fsync per batch), as a sync page does.
func BenchmarkStoreAppendBatch16(b *testing.B) {
	s, err := OpenStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 200)
	seq := uint64(0)
	b.ResetTimer()
	for b.Loop() {
		batch := make([]*pb.Message, 16)
		for i := range batch {
			seq++
			batch[i] = &pb.Message{ConvId: "d:a:b", Seq: seq, MsgId: "01J8ZC0000000000000000000A", Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: &pb.Envelope{Ciphertext: body}}
		}
		if err := s.Append("d:a:b", batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*16)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkOutboxAddParallel shows the group commit: concurrent Sends
// share fsyncs.
func BenchmarkOutboxAddParallel(b *testing.B) {
	ob, err := OpenOutbox(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	body := make([]byte, 200)
	var n atomic.Uint64
	b.SetParallelism(8)
	b.RunParallel(func(pb_ *testing.PB) {
		for pb_.Next() {
			id := fmt.Sprint(n.Add(1))
			if err := ob.Add(&pb.SendRequest{ConvId: "d:a:b", ClientMsgId: id, Envelope: &pb.Envelope{Ciphertext: body}}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
