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
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
)

// These tests run the client against the real in-process stack (edge +
// region + embedded Kafka + Pebble) on loopback, over WebSocket and
// WebTransport.

func startStack(t testing.TB, edgeCfg ...func(*edge.Config)) stack.Endpoints {
	t.Helper()
	return startStackWith(t, func(c *stack.Config) {
		if len(edgeCfg) > 0 {
			c.EdgeConfig = edgeCfg[0]
		}
	})
}

// startStackWith starts the in-process stack with adjust applied to its config.
func startStackWith(t testing.TB, adjust func(*stack.Config)) stack.Endpoints {
	t.Helper()
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := stack.Config{DataDir: t.TempDir()}
	adjust(&cfg)
	s, err := stack.Start(ctx, cfg)
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

func e2eCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// e2eClient opens a client of the stack; adjust changes its config (the
// defaults here retry fast: 10 ms to 200 ms backoff).
func e2eClient(t testing.TB, ends stack.Endpoints, dir string, useWT bool, adjust ...func(*client.Config)) *client.Client {
	t.Helper()
	key, _ := hex.DecodeString(ends.EdgeKey)
	// These tests are about transport, sync and delivery; they use the
	// plaintext sealer. The end-to-end sealer is tested in e2ee_stack_test.go.
	cfg := client.Config{Sealer: client.InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{ends.WS}, ServerKey: key,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if useWT {
		cfg.Edges = []string{ends.WT}
		cfg.CertHash, _ = hex.DecodeString(ends.CertHash)
	}
	for _, f := range adjust {
		f(&cfg)
	}
	c, err := client.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func e2eUser(t testing.TB, ends stack.Endpoints, user string, useWT bool, adjust ...func(*client.Config)) (*client.Client, string) {
	t.Helper()
	dir := t.TempDir()
	c := e2eClient(t, ends, dir, useWT, adjust...)
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

	// Non-members are refused for good, and told nothing (NOT_FOUND, as for a conversation that does not exist).
	id, _ = carol.Send(ctx, dm, []byte("intrude"))
	if _, err := carol.WaitSent(ctx, id); core.Code(err) != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("carol into alice/bob: %v", err)
	}
}

// waitEvent reads events until pred matches one.
func waitEvent(t *testing.T, c *client.Client, what string, pred func(client.Event) bool) client.Event {
	t.Helper()
	ctx := e2eCtx(t)
	for {
		select {
		case ev := <-c.Events():
			if pred(ev) {
				return ev
			}
		case <-ctx.Done():
			t.Fatalf("no %s event", what)
		}
	}
}

func TestE2ELinkReceiptsPresence(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false)
	bob, _ := e2eUser(t, ends, "bob", false)

	// Link a second device of bob; a forged link is refused by the server.
	phone := e2eClient(t, ends, t.TempDir(), true)
	tok, err := bob.Link(phone.LinkRequest())
	if err != nil {
		t.Fatal(err)
	}
	// A device that rewrites someone else's link for its own keys passes the
	// local check but not the server's signature check.
	forger := e2eClient(t, ends, t.TempDir(), false)
	freq, _ := client.DecodeLinkRequest(forger.LinkRequest())
	l, _ := client.DecodeLink(tok)
	l.NoiseStatic, l.IdentityKey = freq.NoiseStatic, freq.IdentityKey
	if _, err := forger.RegisterLinked(ctx, client.EncodeLink(l)); core.Code(err) != pb.ErrorCode_ERROR_CODE_FORBIDDEN {
		t.Fatalf("forged link: %v, want FORBIDDEN", err)
	}
	if _, ok := forger.Device(); ok {
		t.Fatal("forger registered")
	}
	key, err := phone.RegisterLinked(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if key != (core.DeviceKey{User: "bob", Device: 2}) {
		t.Fatalf("phone is %v", key)
	}
	if err := phone.Start(); err != nil {
		t.Fatal(err)
	}
	if err := phone.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	devs, err := alice.LookupUser(ctx, "bob")
	if err != nil || len(devs.GetDevices()) != 2 {
		t.Fatalf("lookup bob: %v %v", devs, err)
	}

	// Presence: alice and bob share no conversation yet, so alice learns
	// nothing about bob, not even that he is online.
	ps, err := alice.SubscribePresence(ctx, []string{"bob"})
	if err != nil || len(ps) != 0 {
		t.Fatalf("presence of a stranger %v %v, want nothing", ps, err)
	}

	// Both of bob's devices get the message; their acks become ✓✓ for alice,
	// bob's read marker becomes "read".
	id, _ := alice.SendDirect(ctx, "bob", []byte("ping"))
	res, err := alice.WaitSent(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// Now they are peers: bob is online.
	ps, err = alice.SubscribePresence(ctx, []string{"bob"})
	if err != nil || len(ps) != 1 || !ps[0].Online {
		t.Fatalf("presence %v %v", ps, err)
	}
	for _, c := range []*client.Client{bob, phone} {
		if m := collect(t, c, 1); string(m[0].Body) != "ping" {
			t.Fatalf("body %q", m[0].Body)
		}
	}
	dm := core.DirectConvID("alice", "bob")
	waitEvent(t, alice, "delivered receipt", func(ev client.Event) bool {
		r, ok := ev.(client.ReceiptEvent)
		return ok && r.Conv == dm && r.Kind == pb.ReceiptKind_RECEIPT_KIND_DELIVERED && r.Seq >= res.Seq && r.From.User == "bob"
	})
	if err := bob.MarkRead(ctx, dm, res.Seq); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, alice, "read receipt", func(ev client.Event) bool {
		r, ok := ev.(client.ReceiptEvent)
		return ok && r.Conv == dm && r.Kind == pb.ReceiptKind_RECEIPT_KIND_READ && r.Seq == res.Seq
	})

	// Server history and the conversation list agree with the local store.
	h, err := phone.FetchHistory(ctx, dm, 0, 10)
	if err != nil || len(h) != 1 || h[0].GetSeq() != 1 {
		t.Fatalf("history %v %v", h, err)
	}
	convs, err := bob.ListConversations(ctx)
	if err != nil || len(convs) != 1 || convs[0].GetConvId() != dm {
		t.Fatalf("conversations %v %v", convs, err)
	}
	if _, err := alice.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// Presence goes offline when bob's devices leave.
	bob.Close()
	phone.Close()
	waitEvent(t, alice, "bob offline", func(ev client.Event) bool {
		p, ok := ev.(client.PresenceEvent)
		return ok && p.User == "bob" && !p.Online
	})
}

// BenchmarkE2ESendToAck measures one device sending to one direct
// conversation through the real in-process stack (WebSocket, Noise, edge,
// embedded Kafka, sequencer, Pebble), counting until every message is acked.
func BenchmarkE2ESendToAck(b *testing.B) {
	s, err := stack.Start(context.Background(), stack.Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	c, err := client.Open(context.Background(), client.Config{Sealer: client.InsecurePlaintextSealer{}, StateDir: b.TempDir(), Edges: []string{ends.WS}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.Register(ctx, "alice"); err != nil {
		b.Fatal(err)
	}
	c.Start()
	if err := c.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 200)
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.SendDirect(ctx, "bob", body); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.WaitIdle(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func TestE2EOversizedMessageFailsAloneAndTyping(t *testing.T) {
	ends := startStack(t, func(c *edge.Config) { c.MaxFrameBytes = 2000 })
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false)
	bob, _ := e2eUser(t, ends, "bob", true)
	big, _ := alice.SendDirect(ctx, "bob", make([]byte, 3000))
	small, _ := alice.SendDirect(ctx, "bob", []byte("fits"))
	if _, err := alice.WaitSent(ctx, big); core.Code(err) != pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE {
		t.Fatalf("oversized: %v", err)
	}
	if res, err := alice.WaitSent(ctx, small); err != nil || res.Seq != 1 {
		t.Fatalf("small after oversized: %v %v", res, err)
	}
	if m := collect(t, bob, 1); string(m[0].Body) != "fits" {
		t.Fatalf("bob got %q", m[0].Body)
	}
	dm := core.DirectConvID("alice", "bob")
	if err := bob.SetTyping(ctx, dm, true); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, alice, "typing", func(ev client.Event) bool {
		ty, ok := ev.(client.TypingEvent)
		return ok && ty.Conv == dm && ty.Typing && ty.From.User == "bob"
	})
}

// BenchmarkE2EDeliveryLatency measures one message from Send on one device
// to the MessageEvent on the recipient's device (outbox fsync, edge, Kafka,
// sequencer, Pebble, fan-out, recipient store fsync), one at a time.
func BenchmarkE2EDeliveryLatency(b *testing.B) {
	s, err := stack.Start(context.Background(), stack.Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var cs []*client.Client
	for _, u := range []string{"alice", "bob"} {
		c, err := client.Open(ctx, client.Config{Sealer: client.InsecurePlaintextSealer{}, StateDir: b.TempDir(), Edges: []string{ends.WS}})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Register(ctx, u); err != nil {
			b.Fatal(err)
		}
		c.Start()
		if err := c.WaitConnected(ctx); err != nil {
			b.Fatal(err)
		}
		cs = append(cs, c)
	}
	alice, bob := cs[0], cs[1]
	body := make([]byte, 200)
	b.ResetTimer()
	for b.Loop() {
		if _, err := alice.SendDirect(ctx, "bob", body); err != nil {
			b.Fatal(err)
		}
		for got := false; !got; {
			select {
			case ev := <-bob.Events():
				_, got = ev.(client.MessageEvent)
			case <-ctx.Done():
				b.Fatal("no delivery")
			}
		}
	}
}

// TestE2EMemberAddedLaterReadsFromJoin: a user added to a group after it
// has entries receives the ADD entry and what follows — live and, after a
// restart, through sync — and nothing from before. Before the client
// recorded join points, its store accepted only seq 1 as a conversation's
// first entry, so a member added later never received anything.
func TestE2EMemberAddedLaterReadsFromJoin(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false)
	carol, carolDir := e2eUser(t, ends, "carol", false)
	info, err := alice.CreateGroup(ctx, "later", nil)
	if err != nil {
		t.Fatal(err)
	}
	g := info.GetConvId()
	send := func(body string) uint64 {
		t.Helper()
		id, err := alice.Send(ctx, g, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		res, err := alice.WaitSent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return res.Seq
	}
	send("before 1")
	send("before 2")
	if _, err := alice.AddMembers(ctx, g, "carol"); err != nil {
		t.Fatal(err)
	}
	after := send("after")
	got := collect(t, carol, 2)
	if got[0].Seq() != 4 || got[0].Message.GetMembership().GetOp() != pb.MembershipOp_MEMBERSHIP_OP_ADD ||
		got[1].Seq() != after || string(got[1].Body) != "after" {
		t.Fatalf("carol got #%d %v, #%d %q", got[0].Seq(), got[0].Message.GetMembership().GetOp(), got[1].Seq(), got[1].Body)
	}
	if hist, err := carol.History(g, 0, 0); err != nil || len(hist) != 2 || hist[0].GetSeq() != 4 {
		t.Fatalf("carol's local history: %d entries, %v", len(hist), err)
	}
	// Offline, then back: the next entry arrives through sync.
	carol.Close()
	later := send("while carol was away")
	carol2 := e2eClient(t, ends, carolDir, false)
	if err := carol2.Start(); err != nil {
		t.Fatal(err)
	}
	if m := collect(t, carol2, 1)[0]; m.Seq() != later || string(m.Body) != "while carol was away" {
		t.Fatalf("after restart: #%d %q", m.Seq(), m.Body)
	}
}

// TestRegisterProofOfWorkAndToken: against an edge that asks for a proof
// of work, the SDK solves it (and sends its identity proof, which the
// region requires); with a registration token it skips the work and the
// per-IP limit; over the per-IP limit without a token it gets
// RATE_LIMITED and is not registered; registered clients keep working.
func TestRegisterProofOfWorkAndToken(t *testing.T) {
	ends := startStack(t, func(c *edge.Config) {
		c.Admission.RegisterPowBits = 14
		c.Admission.RegisterBurst = 2
		c.Admission.RegistrationTokens = []string{"invite-7"}
	})
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false) // solves the proof of work
	open := func(token string) *client.Client {
		key, _ := hex.DecodeString(ends.EdgeKey)
		c, err := client.Open(context.Background(), client.Config{Sealer: client.InsecurePlaintextSealer{}, StateDir: t.TempDir(),
			Edges: []string{ends.WS}, ServerKey: key, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			RegistrationToken: token})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	if _, err := open("").Register(ctx, "bob"); err != nil { // second of the burst of 2
		t.Fatalf("bob: %v", err)
	}
	if _, err := open("").Register(ctx, "carol"); core.Code(err) != pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
		t.Fatalf("carol over the per-IP limit: %v, want RATE_LIMITED", err)
	}
	if _, err := open("wrong").Register(ctx, "carol"); core.Code(err) != pb.ErrorCode_ERROR_CODE_FORBIDDEN {
		t.Fatalf("carol with an unknown token: %v, want FORBIDDEN", err)
	}
	dave := open("invite-7")
	if _, err := dave.Register(ctx, "dave"); err != nil {
		t.Fatalf("dave with a token: %v", err)
	}
	if err := dave.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendDirect(ctx, "dave", []byte("welcome")); err != nil {
		t.Fatalf("send after the registration flood: %v", err)
	}
}

// TestE2EPipelinedSendsKeepOrderUnderRateLimit: with many sends of one
// conversation in flight (SendWindow 32) and an edge whose per-session
// budget refuses most of a burst (RATE_LIMITED) while a refilled token
// lets a later message through, the messages are still sequenced in send
// order: the later one names its refused predecessor and is refused
// OUT_OF_ORDER, then everything is sent again in order (PROTOCOL.md §7.1.2).
func TestE2EPipelinedSendsKeepOrderUnderRateLimit(t *testing.T) {
	ends := startStack(t, func(c *edge.Config) { c.MessagesPerSecond, c.Burst = 200, 4 })
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false)
	bob, _ := e2eUser(t, ends, "bob", false)
	const n = 120
	var ids []string
	for i := range n {
		id, err := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "burst %d", i))
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
			t.Fatalf("message %d sequenced at %d: out of send order", i, res.Seq)
		}
	}
	for i, m := range collect(t, bob, n) {
		if m.Seq() != uint64(i+1) || string(m.Body) != fmt.Sprintf("burst %d", i) {
			t.Fatalf("bob's message %d: #%d %q", i, m.Seq(), m.Body)
		}
	}
}

// BenchmarkPipelinedSendsUnderRateLimit: 120 sends of one conversation
// against an edge whose per-session budget is 200/s with a burst of 4,
// the client's default backoffs, at SendWindow 1 and 32; reports the time
// until all are acked (in send order) and the send attempts per message.
// go test ./client -run '^$' -bench PipelinedSendsUnderRateLimit -benchtime 1x
func BenchmarkPipelinedSendsUnderRateLimit(b *testing.B) {
	for _, window := range []int{1, 32} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				s, err := stack.Start(ctx, stack.Config{DataDir: b.TempDir(), WTAddr: "-",
					EdgeConfig: func(c *edge.Config) { c.MessagesPerSecond, c.Burst = 200, 4 }})
				if err != nil {
					b.Fatal(err)
				}
				// The client's default backoffs, not the fast ones of the tests.
				cfg := func(c *client.Config) { c.MinBackoff, c.MaxBackoff, c.SendWindow = 0, 0, window }
				alice, _ := e2eUser(b, s.Endpoints(), "alice", false, cfg)
				bob, _ := e2eUser(b, s.Endpoints(), "bob", false, cfg)
				const n = 120
				start := time.Now()
				var ids []string
				for i := range n {
					id, err := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "%d", i))
					if err != nil {
						b.Fatal(err)
					}
					ids = append(ids, id)
				}
				for i, id := range ids {
					if res, err := alice.WaitSent(ctx, id); err != nil || res.Seq != uint64(i+1) {
						b.Fatalf("message %d: %+v %v", i, res, err)
					}
				}
				b.ReportMetric(time.Since(start).Seconds(), "s-to-ack-all")
				b.ReportMetric(float64(s.Edge.Stats().FramesIn)/n, "frames-in/msg")
				alice.Close()
				bob.Close()
				s.Shutdown(context.Background())
				cancel()
			}
		})
	}
}
