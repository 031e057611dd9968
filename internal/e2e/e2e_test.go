package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/internal/testenv"
)

// A 1:1 conversation: messages sent while the recipient is offline arrive
// when it connects, then live ones; exactly once, in order; the sender sees
// sent, delivered and read.
func TestDirectConversation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		s := startStack(t, b, nil)
		edges := []string{s.Endpoints().WS}
		alice := newClient(t, edges, uniq("alice"))
		bob := newClient(t, edges, uniq("bob"))
		alice.start(t)
		conv := core.DirectConvID(alice.name, bob.name)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()

		const offline, live = 25, 25
		var ids []string
		for i := 1; i <= offline; i++ {
			id, err := alice.SendDirect(ctx, bob.name, []byte(fmt.Sprintf("offline %d", i)))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if err := alice.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
		// sent ✓ for each, with seqs 1..offline in send order.
		for i, id := range ids {
			r, err := alice.WaitSent(ctx, id)
			if err != nil || r.Seq != uint64(i+1) {
				t.Fatalf("message %d: seq %d, err %v", i+1, r.Seq, err)
			}
		}
		if alice.hasReceipt(conv, pb.ReceiptKind_RECEIPT_KIND_DELIVERED, 1) {
			t.Fatal("delivered receipt before bob was ever online")
		}
		bob.start(t)
		waitFor(t, time.Minute, "bob gets the offline messages", func() bool { return len(bob.seqs(conv)) >= offline })
		for i := 1; i <= live; i++ {
			if _, err := alice.SendDirect(ctx, bob.name, []byte(fmt.Sprintf("live %d", i))); err != nil {
				t.Fatal(err)
			}
		}
		total := uint64(offline + live)
		waitFor(t, time.Minute, "bob gets the live messages", func() bool { return len(bob.seqs(conv)) >= int(total) })
		waitFor(t, time.Minute, "delivered ✓✓", func() bool { return alice.hasReceipt(conv, pb.ReceiptKind_RECEIPT_KIND_DELIVERED, total) })
		if err := bob.MarkRead(ctx, conv, total); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Minute, "read", func() bool { return alice.hasReceipt(conv, pb.ReceiptKind_RECEIPT_KIND_READ, total) })
		time.Sleep(200 * time.Millisecond) // let any duplicate arrive before judging
		checkExactlyOnceInOrder(t, bob, conv, 1, total)
		checkExactlyOnceInOrder(t, alice, conv, 1, total)
		got := bob.bodies(conv)
		for i := 0; i < offline; i++ {
			if got[i] != fmt.Sprintf("offline %d", i+1) {
				t.Fatalf("bob body %d = %q", i, got[i])
			}
		}
		// History from the server agrees with what was received.
		hist, err := bob.FetchHistory(ctx, conv, 0, 10)
		if err != nil || len(hist) != 10 || hist[9].GetSeq() != total {
			t.Fatalf("history: %d entries, err %v", len(hist), err)
		}
	})
}

// A 500-member group: every member device gets every entry exactly once and
// in order, including the devices that were offline during the sends.
func TestGroup500(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		testenv.SkipShort(t, "500 members take long")
		s := startStack(t, b, nil)
		edges := []string{s.Endpoints().WS}
		const n, offlineEvery, senders, perSender = core.MaxGroupMembers, 5, 5, 4
		prefix := uniq("g")
		members := make([]*tclient, n)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		var mu sync.Mutex
		var firstErr error
		for i := range members {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				name := fmt.Sprintf("%s-%03d", prefix, i)
				defer func() {
					if r := recover(); r != nil {
						mu.Lock()
						firstErr = fmt.Errorf("%s: %v", name, r)
						mu.Unlock()
					}
				}()
				members[i] = newClient(t, edges, name)
			}()
		}
		wg.Wait()
		if firstErr != nil {
			t.Fatal(firstErr)
		}
		// Every fifth member stays offline until the sends are done.
		for i, m := range members {
			if i%offlineEvery != offlineEvery-1 {
				m.start(t)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var others []string
		for _, m := range members[1:] {
			others = append(others, m.name)
		}
		info, err := members[0].CreateGroup(ctx, "five hundred", others)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("group created")
		if len(info.GetMembers()) != n {
			t.Fatalf("group has %d members", len(info.GetMembers()))
		}
		conv := info.GetConvId()
		// One more member is refused: the group is full.
		extra := newClient(t, edges, prefix+"-extra")
		if _, err := members[0].AddMembers(ctx, conv, extra.name); core.Code(err) != pb.ErrorCode_ERROR_CODE_GROUP_FULL {
			t.Fatalf("adding member %d: %v", n+1, err)
		}
		for k := 0; k < senders; k++ {
			for j := 0; j < perSender; j++ {
				if _, err := members[k*offlineEvery].Send(ctx, conv, []byte(fmt.Sprintf("from %d #%d", k, j))); err != nil {
					t.Fatal(err)
				}
			}
		}
		for k := 0; k < senders; k++ {
			if err := members[k*offlineEvery].WaitIdle(ctx); err != nil {
				t.Fatalf("sender %d: %v (outbox %d pending)", k, err, len(members[k*offlineEvery].Outbox().Pending()))
			}
		}
		t.Logf("sends acked")
		for i, m := range members {
			if i%offlineEvery == offlineEvery-1 {
				m.start(t)
			}
		}
		total := uint64(1 + senders*perSender) // the CREATE entry + the messages
		waitFor(t, 3*time.Minute, "every member has every entry", func() bool {
			for _, m := range members {
				if len(m.seqs(conv)) < int(total) {
					return false
				}
			}
			return true
		})
		time.Sleep(300 * time.Millisecond)
		checkSameStream(t, conv, members, int(total))
		for _, b := range members[n-1].bodies(conv)[1:] {
			if !strings.HasPrefix(b, "from ") {
				t.Fatalf("a member could not read a group message: %q", b)
			}
		}
	})
}
