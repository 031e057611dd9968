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
	h, ok, err := eu.Directory.ConvLinearizable(ctx, conv)
	if err != nil || !ok || h.Region != "eu-central" {
		t.Fatalf("directory home of %s = %+v %v, want eu-central (the initiator's home)", conv, h, ok)
	}
	if f := us.Region.Stats().Forwarded; f == 0 {
		t.Fatal("us-east forwarded nothing to the home")
	}
}

// A conversation moved between regions while both sides keep sending:
// nothing lost, duplicated or reordered; the new home continues from the
// stored head at the new epoch, and the old home forwards what reaches it.
func TestMeshMoveConversationWhileFlowing(t *testing.T) {
	m := startMesh(t, nil)
	eu, us := m.Node("eu-central"), m.Node("us-east")
	alice := newClient(t, []string{eu.Ends.WS}, uniq("alice"))
	bob := newClient(t, []string{us.Ends.WS}, uniq("bob"))
	alice.start(t)
	bob.start(t)
	conv := core.DirectConvID(alice.name, bob.name)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := alice.SendDirect(ctx, bob.name, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := alice.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	h, ok, err := eu.Directory.ConvLinearizable(ctx, conv)
	if err != nil || !ok || h.Region != "eu-central" || h.Epoch != 1 {
		t.Fatalf("home before the move = %+v %v", h, ok)
	}
	const each = 40
	errc := make(chan error, 2)
	send := func(c *tclient, tag string) {
		for i := 1; i <= each; i++ {
			if _, err := c.Send(ctx, conv, []byte(fmt.Sprintf("%s %d", tag, i))); err != nil {
				errc <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		errc <- nil
	}
	go send(alice, "a")
	go send(bob, "b")
	waitFor(t, time.Minute, "some messages before the move", func() bool { return len(bob.seqs(conv)) >= 10 })
	epoch, err := us.Directory.SetConvHome(ctx, conv, "us-east", h.Epoch)
	if err != nil || epoch != 2 {
		t.Fatalf("move: epoch %d, %v", epoch, err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*tclient{alice, bob} {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	total := uint64(1 + 2*each)
	for _, c := range []*tclient{alice, bob} {
		waitFor(t, time.Minute, c.name+" gets everything", func() bool { return len(c.seqs(conv)) >= int(total) })
	}
	time.Sleep(300 * time.Millisecond)
	checkExactlyOnceInOrder(t, alice, conv, 1, total)
	checkExactlyOnceInOrder(t, bob, conv, 1, total)
	// Each side's own messages stay in the order they were sent.
	for _, c := range []*tclient{alice, bob} {
		next := map[byte]int{'a': 1, 'b': 1}
		for _, body := range c.bodies(conv)[1:] {
			var tag byte
			var n int
			if _, err := fmt.Sscanf(body, "%c %d", &tag, &n); err != nil || n != next[tag] {
				t.Fatalf("%s: body %q out of order (want %c %d)", c.name, body, tag, next[tag])
			}
			next[tag]++
		}
	}
	st, err := m.Store.Conversation(ctx, conv)
	if err != nil || st.Epoch != 2 || st.Head != total {
		t.Fatalf("stored conversation after the move: %+v %v (want epoch 2, head %d)", st, err, total)
	}
	if us.Region.Stats().Claims != 0 && us.Region.Stats().Appended == 0 {
		t.Fatal("the new home appended nothing")
	}
	if eu.Region.Stats().Forwarded == 0 {
		t.Fatal("the old home forwarded nothing after the move")
	}
}
