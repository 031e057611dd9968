package client_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/internal/stack"
)

// These tests run the client against the real in-process stack (edge +
// region + embedded Kafka + Pebble) on loopback, over WebSocket and
// WebTransport.

func startStack(t *testing.T) stack.Endpoints {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the in-process stack")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s.Endpoints()
}

func e2eCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func e2eClient(t *testing.T, ends stack.Endpoints, dir string, useWT bool) *client.Client {
	t.Helper()
	key, _ := hex.DecodeString(ends.EdgeKey)
	cfg := client.Config{StateDir: dir, Edges: []string{ends.WS}, ServerKey: key,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if useWT {
		cfg.Edges = []string{ends.WT}
		cfg.CertHash, _ = hex.DecodeString(ends.CertHash)
	}
	c, err := client.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func e2eUser(t *testing.T, ends stack.Endpoints, user string, useWT bool) (*client.Client, string) {
	t.Helper()
	dir := t.TempDir()
	c := e2eClient(t, ends, dir, useWT)
	if _, err := c.Register(e2eCtx(t), user); err != nil {
		t.Fatalf("register %s: %v", user, err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConnected(e2eCtx(t)); err != nil {
		t.Fatalf("connect %s: %v (run err %v)", user, err, c.Err())
	}
	return c, dir
}

func collect(t *testing.T, c *client.Client, n int) []client.MessageEvent {
	t.Helper()
	ctx := e2eCtx(t)
	var out []client.MessageEvent
	for len(out) < n {
		select {
		case ev := <-c.Events():
			if m, ok := ev.(client.MessageEvent); ok {
				out = append(out, m)
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d messages", len(out), n)
		}
	}
	return out
}

func TestE2EDirectAndGroup(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false)
	bob, bobDir := e2eUser(t, ends, "bob", false)
	carol, _ := e2eUser(t, ends, "carol", true) // WebTransport

	const n = 20
	var ids []string
	for i := range n {
		id, err := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "hi %d", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for i, id := range ids {
		res, err := alice.WaitSent(ctx, id)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if res.Seq != uint64(i+1) {
			t.Fatalf("message %d got seq %d", i, res.Seq)
		}
	}
	dm := core.DirectConvID("alice", "bob")
	got := collect(t, bob, n)
	for i, m := range got {
		if m.Conv() != dm || m.Seq() != uint64(i+1) || string(m.Body) != fmt.Sprintf("hi %d", i) {
			t.Fatalf("bob event %d: %s #%d %q", i, m.Conv(), m.Seq(), m.Body)
		}
	}

	info, err := alice.CreateGroup(ctx, "trio", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	g := info.GetConvId()
	if !slices.Equal(info.GetMembers(), []string{"alice", "bob", "carol"}) {
		t.Fatalf("members %v", info.GetMembers())
	}
	id, _ := alice.Send(ctx, g, []byte("to the group"))
	if res, err := alice.WaitSent(ctx, id); err != nil || res.Seq != 2 {
		t.Fatalf("group send: %v %v", res, err)
	}
	cm := collect(t, carol, 2)
	if cm[0].Message.GetKind() != pb.MessageKind_MESSAGE_KIND_MEMBERSHIP || cm[1].Conv() != g || string(cm[1].Body) != "to the group" {
		t.Fatalf("carol got %v / %q", cm[0].Message.GetKind(), cm[1].Body)
	}

	// Restart bob while alice keeps writing: he gets exactly the new ones.
	bm := collect(t, bob, 2) // membership + group message
	if bm[1].Conv() != g {
		t.Fatalf("bob group event %s", bm[1].Conv())
	}
	bob.Close()
	for i := range 3 {
		id, _ := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "offline %d", i))
		if _, err := alice.WaitSent(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	bob2 := e2eClient(t, ends, bobDir, false)
	if err := bob2.Start(); err != nil {
		t.Fatal(err)
	}
	again := collect(t, bob2, 3)
	for i, m := range again {
		if m.Conv() != dm || m.Seq() != uint64(n+1+i) {
			t.Fatalf("after restart event %d: %s #%d", i, m.Conv(), m.Seq())
		}
	}

	// Non-members are refused for good.
	id, _ = carol.Send(ctx, dm, []byte("intrude"))
	if _, err := carol.WaitSent(ctx, id); core.Code(err) != pb.ErrorCode_ERROR_CODE_NOT_MEMBER {
		t.Fatalf("carol into alice/bob: %v", err)
	}
}
