package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openClient(t *testing.T, p *testPeer, dir string) *Client {
	t.Helper()
	c, err := Open(context.Background(), Config{
		Sealer: InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{p.url()}, ServerKey: p.static.Public,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// registered returns a started client of a new user.
func registered(t *testing.T, p *testPeer, user string) (*Client, string) {
	t.Helper()
	dir := t.TempDir()
	c := openClient(t, p, dir)
	t.Cleanup(func() { c.Close() })
	if _, err := c.Register(testCtx(t), user); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConnected(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	return c, dir
}

// nextMessages reads n message events (skipping others).
func nextMessages(t *testing.T, c *Client, n int) []MessageEvent {
	t.Helper()
	ctx := testCtx(t)
	var out []MessageEvent
	for len(out) < n {
		select {
		case ev := <-c.Events():
			if m, ok := ev.(MessageEvent); ok {
				out = append(out, m)
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d messages", len(out), n)
		}
	}
	return out
}

// noMoreMessages checks that no further message event is pending once the
// client has drained its backlog.
func noMoreMessages(t *testing.T, c *Client) {
	t.Helper()
	for range 20 {
		select {
		case ev := <-c.Events():
			if m, ok := ev.(MessageEvent); ok {
				t.Fatalf("unexpected extra message %s #%d", m.Conv(), m.Seq())
			}
		default:
			if c.Backlog() == 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func eventSeqs(evs []MessageEvent) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.Seq())
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}

func TestSendReceiveInOrder(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	bob, _ := registered(t, p, "bob")
	ctx := testCtx(t)
	var ids []string
	for i := range 10 {
		id, err := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "hello %d", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for i, id := range ids {
		res, err := alice.WaitSent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if res.Seq != uint64(i+1) {
			t.Fatalf("message %d acked with seq %d", i, res.Seq)
		}
	}
	if err := alice.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	conv := core.DirectConvID("alice", "bob")
	got := nextMessages(t, bob, 10)
	for i, m := range got {
		if m.Conv() != conv || m.Seq() != uint64(i+1) || string(m.Body) != fmt.Sprintf("hello %d", i) {
			t.Fatalf("event %d: %s #%d %q", i, m.Conv(), m.Seq(), m.Body)
		}
		if m.From() != (core.DeviceKey{User: "alice", Device: 1}) {
			t.Fatalf("from %v", m.From())
		}
	}
	noMoreMessages(t, bob)
	bobKey, _ := bob.Device()
	eventually(t, "bob acks seq 10", func() bool { return p.ackOf(conv, bobKey) == 10 })
	// History is local and survives.
	h, err := bob.History(conv, 0, 0)
	if err != nil || len(h) != 10 {
		t.Fatalf("history %d %v", len(h), err)
	}
}

// TestLostAckSettledByStoredEntry: a message stored by the server whose
// SendAck was lost with the session is settled by its stored entry coming
// back — pushed live to the sending device, or, when that push was lost
// too, in the next session's first sync, which runs before anything is
// resent — with the seq the SendAck would have carried, and is not sent
// again (PROTOCOL.md §7.1: a resend after the server's resend window would
// be stored twice).
func TestLostAckSettledByStoredEntry(t *testing.T) {
	for _, pushLost := range []bool{false, true} {
		t.Run(fmt.Sprintf("pushLost=%v", pushLost), func(t *testing.T) {
			p := newTestPeer(t)
			alice, _ := registered(t, p, "alice")
			ctx := testCtx(t)
			p.mu.Lock()
			p.dropReply = 1
			if pushLost {
				p.skipPush[1] = 1
			}
			p.mu.Unlock()
			id, err := alice.SendDirect(ctx, "bob", []byte("once"))
			if err != nil {
				t.Fatal(err)
			}
			res, err := alice.WaitSent(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.sends[id] != 1 {
				t.Fatalf("server saw the message %d times, want 1 (settled by its stored entry, not resent)", p.sends[id])
			}
			if res.Seq != 1 || res.MsgID != "m1" || len(p.convs[core.DirectConvID("alice", "bob")]) != 1 {
				t.Fatalf("result %+v, stored %d", res, len(p.convs[core.DirectConvID("alice", "bob")]))
			}
		})
	}
}

// TestUnstoredSendIsResentWithSameID: a send whose connection dropped
// before the server stored it is sent again on the next session, with the
// same client message id, once that session's first sync found nothing.
func TestUnstoredSendIsResentWithSameID(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	ctx := testCtx(t)
	p.mu.Lock()
	p.rejectN = 1 // UNAVAILABLE, nothing stored
	p.mu.Unlock()
	id, err := alice.SendDirect(ctx, "bob", []byte("again"))
	if err != nil {
		t.Fatal(err)
	}
	p.dropAll()
	res, err := alice.WaitSent(ctx, id)
	if err != nil || res.Seq != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sends[id] < 2 || len(p.convs[core.DirectConvID("alice", "bob")]) != 1 {
		t.Fatalf("sent %d times, stored %d; want a resend with the same id, stored once", p.sends[id], len(p.convs[core.DirectConvID("alice", "bob")]))
	}
}

func TestTransientRejectionIsRetried(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	ctx := testCtx(t)
	p.mu.Lock()
	p.rejectN = 2
	p.mu.Unlock()
	id, _ := alice.SendDirect(ctx, "bob", []byte("x"))
	res, err := alice.WaitSent(ctx, id)
	if err != nil || res.Seq != 1 {
		t.Fatalf("%v %v", res, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sends[id] != 3 {
		t.Fatalf("sent %d times, want 3", p.sends[id])
	}
}

func TestPermanentRejectionFailsTheMessage(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	ctx := testCtx(t)
	id, err := alice.Send(ctx, "g:NOSUCHGROUP", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = alice.WaitSent(ctx, id)
	if core.Code(err) != pb.ErrorCode_ERROR_CODE_NOT_MEMBER {
		t.Fatalf("err %v, want NOT_MEMBER", err)
	}
	if alice.Outbox().Len() != 0 {
		t.Fatal("failed message stayed in the outbox")
	}
	for {
		ev := <-alice.Events()
		if f, ok := ev.(SendFailedEvent); ok {
			if f.ClientMsgID != id {
				t.Fatalf("failed event for %s", f.ClientMsgID)
			}
			break
		}
	}
}

func TestGapInLivePushIsFilledBySync(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	bob, _ := registered(t, p, "bob")
	ctx := testCtx(t)
	p.mu.Lock()
	p.skipPush[2] = 1
	p.mu.Unlock()
	for i := range 3 {
		id, _ := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "m%d", i+1))
		if _, err := alice.WaitSent(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	got := nextMessages(t, bob, 3)
	if s := eventSeqs(got); !slices.Equal(s, []uint64{1, 2, 3}) {
		t.Fatalf("seqs %v", s)
	}
	if string(got[1].Body) != "m2" {
		t.Fatalf("seq 2 body %q", got[1].Body)
	}
	noMoreMessages(t, bob)
}

func TestReorderedAndDuplicatedPushes(t *testing.T) {
	p := newTestPeer(t)
	bob, _ := registered(t, p, "bob")
	conv := core.DirectConvID("bob", "carol")
	var ms []*pb.Message
	p.mu.Lock()
	p.members[conv] = []string{"bob", "carol"}
	for s := uint64(1); s <= 4; s++ {
		m := &pb.Message{ConvId: conv, Seq: s, Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: &pb.DeviceAddr{UserId: "carol", DeviceId: 1},
			Envelope: &pb.Envelope{Ciphertext: fmt.Appendf(nil, "c%d", s)}}
		ms = append(ms, m)
	}
	p.convs[conv] = ms
	p.mu.Unlock()
	for _, s := range []int{3, 2, 3, 1, 2, 4, 4, 1} {
		p.push("bob", ms[s-1])
	}
	got := nextMessages(t, bob, 4)
	if s := eventSeqs(got); !slices.Equal(s, []uint64{1, 2, 3, 4}) {
		t.Fatalf("seqs %v", s)
	}
	noMoreMessages(t, bob)
	bobKey, _ := bob.Device()
	eventually(t, "ack 4", func() bool { return p.ackOf(conv, bobKey) == 4 })
}

func TestRestartHandsEachMessageOnce(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	bob, bobDir := registered(t, p, "bob")
	ctx := testCtx(t)
	send := func(body string) {
		id, _ := alice.SendDirect(ctx, "bob", []byte(body))
		if _, err := alice.WaitSent(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 { // more than one sync page (3)
		send(fmt.Sprint(i + 1))
	}
	if s := eventSeqs(nextMessages(t, bob, 4)); !slices.Equal(s, []uint64{1, 2, 3, 4}) {
		t.Fatalf("first run %v", s)
	}
	noMoreMessages(t, bob)
	bob.Close()
	for i := range 5 {
		send(fmt.Sprint(i + 5))
	}
	bob2 := openClient(t, p, bobDir)
	defer bob2.Close()
	if err := bob2.Start(); err != nil {
		t.Fatal(err)
	}
	got := nextMessages(t, bob2, 5)
	if s := eventSeqs(got); !slices.Equal(s, []uint64{5, 6, 7, 8, 9}) {
		t.Fatalf("after restart %v", s)
	}
	noMoreMessages(t, bob2)
	h, _ := bob2.History(core.DirectConvID("alice", "bob"), 0, 0)
	if len(h) != 9 {
		t.Fatalf("history %d", len(h))
	}
}

func TestOutboxSentAfterRestart(t *testing.T) {
	p := newTestPeer(t)
	dir := t.TempDir()
	c := openClient(t, p, dir)
	ctx := testCtx(t)
	if _, err := c.Register(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	// Offline: nothing started. The message must survive Close.
	id, err := c.SendDirect(ctx, "bob", []byte("later"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c2 := openClient(t, p, dir)
	defer c2.Close()
	if c2.Outbox().Len() != 1 {
		t.Fatalf("outbox after reopen %d", c2.Outbox().Len())
	}
	if err := c2.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c2.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sends[id] != 1 || len(p.convs[core.DirectConvID("alice", "bob")]) != 1 {
		t.Fatalf("sends %d", p.sends[id])
	}
}

func TestReconnectAfterEdgeDropsSessions(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	bob, _ := registered(t, p, "bob")
	ctx := testCtx(t)
	id, _ := alice.SendDirect(ctx, "bob", []byte("1"))
	alice.WaitSent(ctx, id)
	nextMessages(t, bob, 1)
	p.dropAll()
	for i := range 3 {
		id, _ := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "%d", i+2))
		if _, err := alice.WaitSent(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if s := eventSeqs(nextMessages(t, bob, 3)); !slices.Equal(s, []uint64{2, 3, 4}) {
		t.Fatalf("after reconnect %v", s)
	}
}

func TestUnknownDeviceIsRejectedForGood(t *testing.T) {
	p := newTestPeer(t)
	first, dir := registered(t, p, "alice")
	first.Close()           // one Client per state dir at a time
	other := newTestPeer(t) // knows nothing about alice
	c, err := Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{other.url()}, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Run(testCtx(t))
	if core.Code(err) != pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED {
		t.Fatalf("run: %v, want UNAUTHENTICATED", err)
	}
}

func TestRegisterTwiceAndLink(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	if _, err := alice.Register(testCtx(t), "alice"); !errors.Is(err, ErrAlreadyRegistered) {
		t.Fatalf("second register: %v", err)
	}
	phone := openClient(t, p, t.TempDir())
	defer phone.Close()
	link, err := alice.Link(phone.LinkRequest())
	if err != nil {
		t.Fatal(err)
	}
	key, err := phone.RegisterLinked(testCtx(t), link)
	if err != nil {
		t.Fatal(err)
	}
	if key != (core.DeviceKey{User: "alice", Device: 2}) {
		t.Fatalf("linked as %v", key)
	}
	stranger := openClient(t, p, t.TempDir())
	defer stranger.Close()
	if _, err := stranger.RegisterLinked(testCtx(t), link); !errors.Is(err, ErrBadToken) {
		t.Fatalf("link used by another device: %v", err)
	}
}

func TestKeepAliveDetectsDeadSession(t *testing.T) {
	p := newTestPeer(t)
	c, err := Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: t.TempDir(), Edges: []string{p.url()},
		KeepAlive: 20 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testCtx(t)
	if _, err := c.Register(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	c.Start()
	waitConnected := func() {
		for {
			select {
			case ev := <-c.Events():
				if _, ok := ev.(ConnectedEvent); ok {
					return
				}
			case <-ctx.Done():
				t.Fatal("not connected")
			}
		}
	}
	waitConnected()
	// Answered pings keep the session: several intervals pass without a disconnect.
	eventually(t, "5 pings", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.pings >= 5 })
	for len(c.Events()) > 0 {
		if d, ok := (<-c.Events()).(DisconnectedEvent); ok {
			t.Fatalf("disconnected while pings were answered: %v", d.Err)
		}
	}
	p.mu.Lock()
	p.mutePings = true
	p.mu.Unlock()
	for {
		ev := <-c.Events()
		if d, ok := ev.(DisconnectedEvent); ok {
			if !errors.Is(d.Err, ErrSessionLost) {
				t.Fatalf("disconnect reason %v", d.Err)
			}
			break
		}
	}
	p.mu.Lock()
	p.mutePings = false
	p.mu.Unlock()
	waitConnected()
}

func TestUnconfirmedAckIsRepeatedOnNextSession(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	bob, bobDir := registered(t, p, "bob")
	ctx := testCtx(t)
	p.mu.Lock()
	p.ignoreAcks = true
	p.mu.Unlock()
	for i := range 3 {
		id, _ := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "%d", i))
		alice.WaitSent(ctx, id)
	}
	nextMessages(t, bob, 3)
	conv := core.DirectConvID("alice", "bob")
	if bob.Store().Acked(conv) != 0 {
		t.Fatal("ack recorded as confirmed although the server never answered")
	}
	bob.Close()
	p.mu.Lock()
	p.ignoreAcks = false
	p.mu.Unlock()
	// A new process: nothing new arrives, yet the unconfirmed ack is repeated.
	bob2 := openClient(t, p, bobDir)
	defer bob2.Close()
	bob2.Start()
	bobKey, _ := bob2.Device()
	eventually(t, "ack 3 after restart", func() bool { return p.ackOf(conv, bobKey) == 3 })
	eventually(t, "ack confirmed locally", func() bool { return bob2.Store().Acked(conv) == 3 })
	// Once confirmed, a reconnect does not ack again.
	p.mu.Lock()
	frames := p.ackFrames[bobKey]
	p.mu.Unlock()
	p.dropAll()
	// Wait for the new session's first sync (the old one may not have noticed yet).
	eventually(t, "a new session", func() bool {
		return bob2.WaitConnected(ctx) == nil && func() bool { _, err := bob2.Ping(ctx); return err == nil }()
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ackFrames[bobKey] != frames {
		t.Fatalf("confirmed ack repeated: %d frames, was %d", p.ackFrames[bobKey], frames)
	}
}

func TestSlowAppLosesNoMessages(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	dir := t.TempDir()
	bob, err := Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{p.url()},
		EventBuffer: 2, NoticeQueue: 4, MinBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	ctx := testCtx(t)
	if _, err := bob.Register(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	bob.Start()
	if err := bob.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 60
	var last string
	for i := range n {
		last, _ = alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "%d", i))
		// bob's own sends produce notices (acks) nobody reads yet.
		bob.SendDirect(ctx, "alice", []byte("x"))
	}
	alice.WaitSent(ctx, last)
	if err := bob.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	conv := core.DirectConvID("alice", "bob")
	// The network side stored everything although nobody read Events.
	eventually(t, "bob stored all", func() bool { return bob.Store().Head(conv) >= n })
	var got []uint64
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for len(got) < int(bob.Store().Head(conv)) {
		select {
		case ev := <-bob.Events():
			if m, ok := ev.(MessageEvent); ok && m.Conv() == conv {
				got = append(got, m.Seq())
			}
		case <-ctx2.Done():
			t.Fatalf("only %d events", len(got))
		}
	}
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, s)
		}
	}
	if bob.DroppedNotices() == 0 {
		t.Fatal("expected dropped notices with a 4-entry notice queue")
	}
}

func TestManualCommitRepeatsOnlyUncommitted(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	dir := t.TempDir()
	open := func() *Client {
		c, err := Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{p.url()}, ManualCommit: true, MinBackoff: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	bob := open()
	ctx := testCtx(t)
	bob.Register(ctx, "bob")
	bob.Start()
	for i := range 5 {
		id, _ := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "%d", i))
		alice.WaitSent(ctx, id)
	}
	evs := nextMessages(t, bob, 5)
	if err := bob.Commit(evs[2].Conv(), evs[2].Seq()); err != nil { // processed 1..3 only
		t.Fatal(err)
	}
	bob.Close()
	bob2 := open()
	defer bob2.Close()
	if s := eventSeqs(nextMessages(t, bob2, 2)); !slices.Equal(s, []uint64{4, 5}) {
		t.Fatalf("after restart %v, want [4 5]", s)
	}
}

func TestFailsOverToNextEdge(t *testing.T) {
	p := newTestPeer(t)
	dir := t.TempDir()
	c := openClient(t, p, dir)
	if _, err := c.Register(testCtx(t), "alice"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	dead := newTestPeer(t)
	deadURL := dead.url()
	dead.srv.Close() // nothing listens there any more
	c2, err := Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{deadURL, p.url()},
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Start()
	if err := c2.WaitConnected(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// TestAcksPacedUnderAStream: a steady stream into one conversation (100
// messages over about a second) is acknowledged about once per
// AckInterval (default 250 ms), not once per message, and the last ack
// covers everything.
func TestAcksPacedUnderAStream(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	bob, _ := registered(t, p, "bob")
	bobKey, _ := bob.Device()
	ctx := testCtx(t)
	const n = 100
	var last string
	for i := range n {
		id, err := alice.SendDirect(ctx, "bob", fmt.Appendf(nil, "%d", i))
		if err != nil {
			t.Error(err)
			return
		}
		last = id
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := alice.WaitSent(ctx, last); err != nil {
		t.Fatal(err)
	}
	nextMessages(t, bob, n) // within the event buffer: bob stores and acks without the app reading
	conv := core.DirectConvID("alice", "bob")
	eventually(t, "ack of the last message", func() bool { return p.ackOf(conv, bobKey) == n })
	p.mu.Lock()
	frames := p.ackFrames[bobKey]
	p.mu.Unlock()
	// About 1 s / 250 ms = 4 acks (plus scheduling slack); without the
	// pacing every message is acked on its own (about 100).
	if frames > 30 {
		t.Fatalf("%d ack frames for %d messages arriving over ~1 s", frames, n)
	}
	t.Logf("%d ack frames for %d messages", frames, n)
}

// TestAckPause: the pause after an ack is spread over [I/2, 3I/2) with
// mean I — members of a group do not ack in step — and 0 for I ≤ 0.
func TestAckPause(t *testing.T) {
	const iv = 250 * time.Millisecond
	const n = 20000
	var sum time.Duration
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range n {
		d := AckPause(iv)
		if d < iv/2 || d >= iv*3/2 {
			t.Fatalf("pause %v outside [%v, %v)", d, iv/2, iv*3/2)
		}
		sum += d
		lo, hi = min(lo, d), max(hi, d)
	}
	if mean := sum / n; mean < iv*95/100 || mean > iv*105/100 {
		t.Fatalf("mean pause %v, want about %v", mean, iv)
	}
	// Spread over the whole range, not one value: 20,000 uniform draws
	// leave no gap of a tenth of it at either end.
	if lo > iv/2+iv/10 || hi < iv*3/2-iv/10 {
		t.Fatalf("pauses only in [%v, %v]", lo, hi)
	}
	for _, iv := range []time.Duration{0, -time.Second} {
		if d := AckPause(iv); d != 0 {
			t.Fatalf("AckPause(%v) = %v, want 0", iv, d)
		}
	}
}

// TestSendRefusedWhenOutboxFull: an offline device's Send stores up to
// Config.MaxOutbox messages; the next fails with ErrOutboxFull and stores
// nothing; a reopened client still holds the ones it accepted.
func TestSendRefusedWhenOutboxFull(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{"ws://127.0.0.1:1/v1/ws"}, MaxOutbox: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := c.Send(testCtx(t), "g:full", []byte(fmt.Sprint("m", i))); err != nil {
			t.Fatalf("send %d of 3: %v", i, err)
		}
	}
	for range 30 {
		if _, err := c.Send(testCtx(t), "g:full", []byte("over")); !errors.Is(err, ErrOutboxFull) {
			t.Fatalf("send past the limit: %v, want ErrOutboxFull", err)
		}
	}
	if n := len(c.outbox.Pending()); n != 3 {
		t.Fatalf("%d pending, want 3", n)
	}
	c.Close()
	c, err = Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: dir, Edges: []string{"ws://127.0.0.1:1/v1/ws"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := len(c.outbox.Pending()); n != 3 {
		t.Fatalf("after reopen %d pending, want 3", n)
	}
}

// TestSendsDoNotStallAtMaxInflight: with every in-flight slot taken (one
// here), each answered send wakes the sender once its slot is free; a
// wake-up that came before the slot was free used to leave the rest of
// the outbox unsent.
func TestSendsDoNotStallAtMaxInflight(t *testing.T) {
	p := newTestPeer(t)
	registered(t, p, "bob")
	c, err := Open(context.Background(), Config{
		Sealer: InsecurePlaintextSealer{}, StateDir: t.TempDir(), Edges: []string{p.url()}, ServerKey: p.static.Public,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxInflight: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Register(testCtx(t), "alice"); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		var ids []string
		for i := range 20 {
			id, err := c.SendDirect(testCtx(t), "bob", fmt.Appendf(nil, "m %d %d", round, i))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		for i, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := c.WaitSent(ctx, id)
			cancel()
			if err != nil {
				t.Fatalf("round %d message %d of 20 not acked: %v (the sender stalled)", round, i, err)
			}
		}
	}
}
