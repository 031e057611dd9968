package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/region"
)

// TestE2ESyncAfterExpiry: a device that was away while retention deleted
// everything sent to it is told so by sync (SyncResponse.expired): it
// records the seqs as skipped and acks past them (before, it stayed at its
// old cursor and acked nothing), and a new message arrives normally.
func TestE2ESyncAfterExpiry(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx := e2eCtx(t)
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir(), RegionConfig: func(c *region.Config) { c.Retention.Disabled = true }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.Shutdown(sctx)
	})
	ends := s.Endpoints()
	alice, _ := e2eUser(t, ends, "alice", false)
	bob, bobDir := e2eUser(t, ends, "bob", false)
	bob.Close()

	conv := core.DirectConvID("alice", "bob")
	for i := range 5 {
		id, err := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "gone %d", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice.WaitSent(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Store.(core.Retainer).Trim(ctx, conv, 5); err != nil {
		t.Fatal(err)
	}

	bob = e2eClient(t, ends, bobDir, false)
	if err := bob.Start(); err != nil {
		t.Fatal(err)
	}
	bobDev := core.DeviceKey{User: "bob", Device: 1}
	for {
		cs, err := s.Store.ConvCursors(ctx, conv)
		if err != nil {
			t.Fatal(err)
		}
		acked := uint64(0)
		for _, c := range cs {
			if c.Device == bobDev {
				acked = c.Delivered
			}
		}
		if acked == 5 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("bob's delivered cursor at %d, want 5 (the expired seqs acked)", acked)
		case <-time.After(20 * time.Millisecond):
		}
	}
	id, err := alice.SendDirect(ctx, "bob", []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.WaitSent(ctx, id); err != nil {
		t.Fatal(err)
	}
	got := collect(t, bob, 1)
	if got[0].Seq() != 6 {
		t.Fatalf("after expiry bob got seq %d, want 6", got[0].Seq())
	}
}
