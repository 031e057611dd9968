package kafkabus

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// With the brokers unreachable, Produce queues at most MaxPendingBytes and
// refuses the rest at once with ErrBackpressure (core.ErrUnavailable); a
// caller that gives up withdraws its records, so retries cannot grow the
// queue.
func TestProduceQueueBounded(t *testing.T) {
	// A "broker" that accepts connections and never answers: writes hang.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	b, err := New(Config{Brokers: []string{ln.Addr().String()}, MaxPendingBytes: 4096, DialTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rec := core.BusRecord{Topic: "t", Key: []byte("k"), Value: make([]byte, 1500)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Five callers at once: the flusher takes at most one (stuck dialing),
	// two fit the 4096-byte queue, the rest are refused at once.
	errs := make(chan error, 5)
	for range 5 {
		go func() { errs <- b.Produce(ctx, rec) }()
	}
	refused := false
	for i := 0; i < 5 && !refused; i++ {
		select {
		case err := <-errs:
			// A failed write may answer first (the broker refuses fast).
			if errors.Is(err, ErrBackpressure) {
				if !errors.Is(err, core.ErrUnavailable) {
					t.Fatalf("%v does not wrap core.ErrUnavailable", err)
				}
				refused = true
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no answer")
		}
	}
	if !refused {
		t.Fatal("five callers over a 4096-byte queue and none was refused")
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
