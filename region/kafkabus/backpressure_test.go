package kafkabus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// With the brokers unreachable, Produce queues at most MaxPendingBytes and
// refuses the rest at once with ErrBackpressure (core.ErrUnavailable); a
// caller that gives up withdraws its records, so retries cannot grow the
// queue.
func TestProduceQueueBounded(t *testing.T) {
	b, err := New(Config{Brokers: []string{"127.0.0.1:1"}, MaxPendingBytes: 4096, DialTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rec := core.BusRecord{Topic: "t", Key: []byte("k"), Value: make([]byte, 1500)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The first call is taken by the flusher (stuck dialing); the next two
	// fill the queue.
	errs := make(chan error, 8)
	for range 3 {
		go func() { errs <- b.Produce(ctx, rec) }()
		time.Sleep(20 * time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := b.Produce(context.Background(), rec)
		if errors.Is(err, ErrBackpressure) {
			if !errors.Is(err, core.ErrUnavailable) {
				t.Fatalf("backpressure does not wrap ErrUnavailable: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue never refused: %v", err)
		}
		errs <- err
	}
	b.mu.Lock()
	queued := b.pendingB
	b.mu.Unlock()
	if queued > 4096 {
		t.Fatalf("%d bytes queued over the 4096 bound", queued)
	}
	cancel() // the waiting callers give up: their queued records are withdrawn
	waitFor := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		n := len(b.pending)
		b.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(waitFor) {
			t.Fatalf("%d abandoned requests still queued", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b.Backpressure() == 0 {
		t.Fatal("backpressure not counted")
	}
}
