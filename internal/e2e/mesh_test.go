package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
)

// startMesh runs the three dev regions in this process on the embedded
// default (a broker and a voter per region, one shared Pebble store).
func startMesh(t *testing.T, adjust func(*stack.MeshConfig)) *stack.Mesh {
	t.Helper()
	cfg := stack.MeshConfig{DataDir: t.TempDir(), Regions: stack.DevRegions(), WTDisabled: true, MaxConnsPerIP: 2000,
		EdgeConfig: func(_ string, c *edge.Config) { oneAddress(c) }}
	if os.Getenv("CHATMESH_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if adjust != nil {
		adjust(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := stack.StartMesh(ctx, cfg)
	if err != nil {
		t.Fatalf("start mesh: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.Shutdown(ctx)
	})
	return m
}

func TestMeshDirectAcrossRegions(t *testing.T) {
	m := startMesh(t, nil)
	eu, us := m.Node("eu-central"), m.Node("us-east")
	alice := newClient(t, []string{eu.Ends.WS}, uniq("alice"))
	bob := newClient(t, []string{us.Ends.WS}, uniq("bob"))
	alice.start(t)
	bob.start(t)
	conv := core.DirectConvID(alice.name, bob.name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 20
	for i := 1; i <= n; i++ {
		if _, err := alice.SendDirect(ctx, bob.name, []byte(fmt.Sprintf("a %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, time.Minute, "bob gets alice's messages", func() bool { return len(bob.seqs(conv)) >= n })
	for i := 1; i <= n; i++ {
		if _, err := bob.Send(ctx, conv, []byte(fmt.Sprintf("b %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, time.Minute, "alice gets bob's messages", func() bool { return len(alice.seqs(conv)) >= 2*n })
	waitFor(t, time.Minute, "delivered ✓✓ across regions", func() bool {
		return alice.hasReceipt(conv, pb.ReceiptKind_RECEIPT_KIND_DELIVERED, n)
	})
	time.Sleep(200 * time.Millisecond)
	checkExactlyOnceInOrder(t, bob, conv, 1, 2*n)
	checkExactlyOnceInOrder(t, alice, conv, 1, 2*n)
	h, ok := eu.Directory.Conv(conv)
	if !ok || h.Region != "eu-central" {
		t.Fatalf("directory home of %s = %+v %v, want eu-central (the initiator's home)", conv, h, ok)
	}
	if f := us.Region.Stats().Forwarded; f == 0 {
		t.Fatal("us-east forwarded nothing to the home")
	}
}
