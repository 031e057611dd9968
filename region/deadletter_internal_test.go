package region

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// answeringStore answers the dead-letter health probe (User: not found).
type answeringStore struct{ core.Store }

func (answeringStore) User(context.Context, string) (core.User, error) {
	return core.User{}, core.ErrNotFound
}

// countingBus records what is produced.
type countingBus struct {
	core.Bus
	mu   sync.Mutex
	recs []core.BusRecord
}

func (b *countingBus) Produce(_ context.Context, recs ...core.BusRecord) error {
	b.mu.Lock()
	b.recs = append(b.recs, recs...)
	b.mu.Unlock()
	return nil
}

// TestDeadLetterOnceAcrossRedo: a record dead-lettered once and met again
// (its pipelined batch redone after the outputs failed to produce) is
// skipped without a second dead letter; another record of the partition
// still counts its own failures.
func TestDeadLetterOnceAcrossRedo(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	bus := &countingBus{}
	r, err := New(Config{MaxAttempts: 2, DeadLetterAfter: time.Second, Now: func() time.Time {
		now = now.Add(time.Second)
		return now
	}}, answeringStore{}, bus)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st := answeringStore{}
	poison := core.BusRecord{Topic: "ingress", Partition: 3, Offset: 40, Key: []byte("g:x"), Value: []byte{1}}
	boom := errors.New("injected")
	if err := r.failed(ctx, st, poison, boom); err == nil {
		t.Fatal("first failure dead-lettered")
	}
	if err := r.failed(ctx, st, poison, boom); err != nil {
		t.Fatalf("second failure: %v, want dead-lettered", err)
	}
	// The redo meets it again: skipped at once, nothing produced.
	for range 3 {
		if err := r.failed(ctx, st, poison, boom); err != nil {
			t.Fatalf("redo: %v, want skipped", err)
		}
	}
	if n := len(bus.recs); n != 1 || r.Stats().DeadLettered != 1 {
		t.Fatalf("%d dead letters produced, %d counted; want 1", n, r.Stats().DeadLettered)
	}
	// Another record of the partition fails on its own count.
	next := poison
	next.Offset = 41
	if err := r.failed(ctx, st, next, boom); err == nil {
		t.Fatal("another record skipped")
	}
	// The memory is bounded.
	for off := int64(100); off < 100+2*deadMemory; off++ {
		rec := poison
		rec.Offset = off
		_ = r.failed(ctx, st, rec, boom)
		_ = r.failed(ctx, st, rec, boom)
	}
	if n := len(r.attempts.dead[partKey{"ingress", 3}]); n != deadMemory {
		t.Fatalf("%d offsets remembered, want %d", n, deadMemory)
	}
}
