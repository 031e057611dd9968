package kafkabus_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/region/bustest"
)

// BenchmarkParkedFetchWakeupRealKafka measures how long a record takes
// from Produce (acks=all) to a partition reader whose fetch is parked at
// the broker, with a fetch wait far above that: ns/op is produce →
// fetched. It is the measurement behind Config.MaxWait's default (the
// brokers answer a parked fetch when records arrive, so a long MaxWait
// costs no latency). Run against a deploy/kafka/cluster.sh cluster:
//
//	CHATMESH_KAFKA_BROKERS=… go test ./region/kafkabus -run '^$' -bench ParkedFetchWakeup -benchtime 40x
func BenchmarkParkedFetchWakeupRealKafka(b *testing.B) {
	brokers := testenv.KafkaBrokers(b)
	bus := newBus(b, brokers)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topic := bustest.Name(b, "wake")
	if err := bus.EnsureTopic(ctx, topic, 1); err != nil {
		b.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: 0,
		MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 500 * time.Millisecond, ReadLagInterval: -1})
	defer r.Close()
	if err := r.SetOffset(kafka.LastOffset); err != nil {
		b.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		for {
			if _, err := r.FetchMessage(ctx); err != nil {
				return
			}
			got <- time.Now()
		}
	}()
	time.Sleep(time.Second) // the reader's fetch is parked
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := bus.Produce(ctx, core.BusRecord{Topic: topic, Key: []byte("k"), Value: []byte("v")}); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-got:
			total += at.Sub(start)
		case <-ctx.Done():
			b.Fatal("record not fetched")
		}
		time.Sleep(37 * time.Millisecond) // the next fetch parks again
	}
	b.StopTimer()
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms-produce-to-fetched")
}
