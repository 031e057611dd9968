package client

import (
	"context"
	"errors"
	"testing"
)

// TestStateDirLocked: a second Client of the same state dir is refused
// while the first is open (two writers would interleave the outbox and
// conversation logs and could reuse end-to-end keys), and allowed again
// after Close.
func TestStateDirLocked(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{StateDir: dir, Sealer: InsecurePlaintextSealer{}}
	a, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := Open(context.Background(), cfg); !errors.Is(err, ErrStateInUse) {
		if b != nil {
			b.Close()
		}
		t.Fatalf("second open: %v, want ErrStateInUse", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	b.Close()
	b.Close() // idempotent, releases once
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open after a double close: %v", err)
	}
	c.Close()
}
