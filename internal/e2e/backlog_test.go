package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Issue 6, defect 1: a device with a backlog larger than one frame must
// catch up. 300 end-to-end encrypted 1:1 messages (about 1.5 KB each with
// their prekey headers: ~450 KB) wait for bob while he is offline; he
// connects, gets every one of them once and in order, and his session
// never drops. (Before, the first sync page did not fit a Noise message:
// the edge dropped the session, the client reconnected, forever.)
func TestBacklogReachesOfflineDevice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := startStack(t, b, nil)
		edges := []string{s.Endpoints().WS}
		alice := newClient(t, edges, uniq("alice"))
		bob := newClient(t, edges, uniq("bob"))
		alice.start(t)
		conv := core.DirectConvID(alice.name, bob.name)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		const n = 300
		for i := 1; i <= n; i++ {
			if _, err := alice.SendDirect(ctx, bob.name, []byte(fmt.Sprintf("backlog %d", i))); err != nil {
				t.Fatal(err)
			}
		}
		if err := alice.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
		var stored int
		for after := uint64(0); after < n; {
			ms, err := s.Store.Messages(ctx, conv, after, 0, 0)
			if err != nil || len(ms) == 0 {
				t.Fatalf("stored entries after %d: %d, %v", after, len(ms), err)
			}
			for _, m := range ms {
				stored += proto.Size(m)
			}
			after = ms[len(ms)-1].GetSeq()
		}
		if stored <= core.MaxFramePlaintext {
			t.Fatalf("the backlog takes %d bytes: not more than one frame, the test proves nothing", stored)
		}
		bob.start(t)
		waitFor(t, 2*time.Minute, "bob gets the backlog", func() bool { return len(bob.seqs(conv)) >= n })
		time.Sleep(200 * time.Millisecond) // let any duplicate arrive before judging
		checkExactlyOnceInOrder(t, bob, conv, 1, n)
		for i, body := range bob.bodies(conv) {
			if want := fmt.Sprintf("backlog %d", i+1); body != want {
				t.Fatalf("bob's message %d: %q, want %q", i+1, body, want)
			}
		}
		if d := bob.disconnects(); d != 0 {
			t.Fatalf("bob's session dropped %d times while catching up on %d bytes", d, stored)
		}
	})
}

// longName is a user id of the maximum length.
func longName(prefix string) string {
	u := uniq(prefix)
	return u + strings.Repeat("x", core.MaxUserIDLen-len(u))
}

// plainClient registers a client that does not encrypt (the test sends
// raw envelopes of exact sizes).
func plainClient(t *testing.T, edges []string, name string) *tclient {
	t.Helper()
	tc := openClientWith(t, edges, name, filepath.Join(t.TempDir(), name), client.InsecurePlaintextSealer{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := tc.Register(ctx, name); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return tc
}

// envelopeOf returns an envelope whose encoding takes exactly size bytes.
func envelopeOf(t *testing.T, size int) *pb.Envelope {
	t.Helper()
	for n := size; n > 0; n-- {
		env := &pb.Envelope{Ciphertext: []byte(strings.Repeat("e", n)), ContentHint: client.ContentText}
		if got := proto.Size(env); got == size {
			return env
		} else if got < size {
			break
		}
	}
	t.Fatalf("no envelope of exactly %d bytes", size)
	return nil
}

// Issue 6, defects 1 and 2: an envelope of exactly MaxEnvelopeBytes from a
// sender with the longest user id, with the longest client_msg_id, in a
// group with the longest id, is stored and reaches a member online (push),
// a member that connects later (sync) and a history request, none of
// whose sessions drops; one byte more is refused with MESSAGE_TOO_LARGE.
func TestMaxEnvelopeDeliveredEverywhere(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := startStack(t, b, nil)
		edges := []string{s.Endpoints().WS}
		alice := plainClient(t, edges, longName("a"))
		bob := plainClient(t, edges, longName("b"))
		carol := plainClient(t, edges, longName("c"))
		alice.start(t)
		bob.start(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		u := strings.ToUpper(uniq(""))
		conv := core.GroupID(alice.name, strings.Repeat("Z", 54-len(u))+u) // the longest group id
		if len(conv) != 66 {
			t.Fatalf("group id %q is not the longest", conv)
		}
		if _, err := alice.CreateGroupWithID(ctx, conv, "max", []string{bob.name, carol.name}); err != nil {
			t.Fatal(err)
		}
		// Four 1 KB messages first: with them, the max envelope does not
		// fit in a page with everything before it.
		const pre = 4
		for i := range pre {
			if _, err := alice.Send(ctx, conv, []byte(fmt.Sprintf("%01000d", i))); err != nil {
				t.Fatal(err)
			}
		}
		if err := alice.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
		send := func(cmid string, env *pb.Envelope) (*pb.Response, error) {
			return alice.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: conv, ClientMsgId: cmid, Envelope: env}}})
		}
		// One byte more: refused, and nothing stored.
		_, err := send(strings.Repeat("o", core.MaxClientMsgIDLen), envelopeOf(t, core.MaxEnvelopeBytes+1))
		var we *core.WireError
		if !errors.As(err, &we) || we.Code != pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE {
			t.Fatalf("envelope of %d bytes: %v, want MESSAGE_TOO_LARGE", core.MaxEnvelopeBytes+1, err)
		}
		env := envelopeOf(t, core.MaxEnvelopeBytes)
		r, err := send(strings.Repeat("m", core.MaxClientMsgIDLen), env)
		if err != nil {
			t.Fatalf("envelope of exactly %d bytes: %v", core.MaxEnvelopeBytes, err)
		}
		const maxSeq, last = pre + 2, pre + 3           // after the create entry and pre; then "after"
		if seq := r.GetSend().GetSeq(); seq != maxSeq { // the refused one took no seq
			t.Fatalf("max envelope stored at seq %d, want %d", seq, maxSeq)
		}
		if _, err := alice.Send(ctx, conv, []byte("after")); err != nil {
			t.Fatal(err)
		}
		if err := alice.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
		isMax := func(m *pb.Message) bool { return proto.Equal(m.GetEnvelope(), env) }
		// Push: bob was online throughout.
		waitFor(t, time.Minute, "bob gets the max envelope and what follows", func() bool { return len(bob.seqs(conv)) >= last })
		// Sync: carol connects afterwards.
		carol.start(t)
		waitFor(t, time.Minute, "carol gets the max envelope and what follows", func() bool { return len(carol.seqs(conv)) >= last })
		for _, m := range []*tclient{bob, carol} {
			checkExactlyOnceInOrder(t, m, conv, 1, last)
			m.rec.mu.Lock()
			got := m.rec.msgs[conv][maxSeq-1]
			m.rec.mu.Unlock()
			if !isMax(got) {
				t.Fatalf("%s: entry %d is not the max envelope (%d bytes)", m.name, maxSeq, proto.Size(got.GetEnvelope()))
			}
		}
		// History: every page fits, the max envelope included.
		hist, err := carol.FetchHistory(ctx, conv, 0, 1000)
		if err != nil || len(hist) != last || !isMax(hist[maxSeq-1]) {
			t.Fatalf("history: %d entries, %v", len(hist), err)
		}
		for _, m := range []*tclient{alice, bob, carol} {
			if d := m.disconnects(); d != 0 {
				t.Fatalf("%s's session dropped %d times", m.name, d)
			}
		}
	})
}

// Issue 6, defect 1: a user in many conversations. A device that was
// offline while it was added to 300 groups with long ids syncs them all
// (the page's heads are bounded with its entries), lists them all
// (list_conversations pages), and its session never drops.
func TestManyConversationsSync(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := startStack(t, b, nil)
		edges := []string{s.Endpoints().WS}
		// Four creators: each session's writes are sequenced one after another.
		creators := make([]*tclient, 4)
		for i := range creators {
			creators[i] = plainClient(t, edges, uniq("alice"))
			creators[i].start(t)
		}
		bob := plainClient(t, edges, longName("bob"))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		const n = 300
		prefix := strings.ToUpper(uniq(""))
		convs := make([]string, n)
		errs := make(chan error, n)
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for i := range convs {
			convs[i] = core.GroupID(creators[i%len(creators)].name, fmt.Sprintf("%s%0*d", prefix, 54-len(prefix), i))
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if _, err := creators[i%len(creators)].CreateGroupWithID(ctx, convs[i], "", []string{bob.name}); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		bob.start(t)
		waitFor(t, time.Minute, "bob syncs every group", func() bool {
			for _, c := range convs {
				if len(bob.seqs(c)) < 1 {
					return false
				}
			}
			return true
		})
		for _, c := range convs {
			checkExactlyOnceInOrder(t, bob, c, 1, 1)
		}
		infos, err := bob.ListConversations(ctx)
		if err != nil || len(infos) != n {
			t.Fatalf("list conversations: %d, %v", len(infos), err)
		}
		if d := bob.disconnects(); d != 0 {
			t.Fatalf("bob's session dropped %d times", d)
		}
	})
}
