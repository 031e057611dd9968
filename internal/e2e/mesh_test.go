package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region/geo"
	"google.golang.org/protobuf/proto"
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
	if us.Region.Stats().MovedIn != 1 || eu.Region.Stats().MovedAway != 1 {
		t.Fatalf("moves seen: us-east in %d, eu-central away %d; want 1 and 1", us.Region.Stats().MovedIn, eu.Region.Stats().MovedAway)
	}
}

// The embedded three-region mesh end to end (issue 7, shown item 2): users
// homed in three regions; a 30-member group spread over them with some
// members offline; one user with devices in two regions; one user who
// connects through a region that is not their home. Every device gets
// every entry exactly once, in one order; sent, delivered and read,
// presence and typing cross regions. TestMeshRealServers runs the same on
// real servers.
func TestMeshThreeRegions(t *testing.T) {
	checkMeshThreeRegions(t, startMesh(t, nil))
}

// checkMeshThreeRegions is the body of TestMeshThreeRegions, on a running
// mesh of the three dev regions.
func checkMeshThreeRegions(t *testing.T, m *stack.Mesh) {
	regions := []*stack.MeshNode{m.Node("eu-central"), m.Node("us-east"), m.Node("ap-southeast")}
	const n = 30
	prefix := uniq("m")
	members := make([]*tclient, n)
	for i := range members {
		r := regions[i%3]
		members[i] = newClient(t, []string{r.Ends.WS}, fmt.Sprintf("%s-%02d-%s", prefix, i, r.Spec.Name))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for i, c := range members {
		want := regions[i%3].Spec.Name
		home, ok, err := regions[0].Directory.UserHomeLinearizable(ctx, c.name)
		if err != nil || !ok || home != want {
			t.Fatalf("%s homed in %q (%v, %v), want %q (where it registered)", c.name, home, ok, err, want)
		}
	}
	// members[2] (homed in ap-southeast) travels: it connects through eu-central.
	traveller := members[2]
	traveller.close()
	members[2] = openClient(t, []string{regions[0].Ends.WS}, traveller.name, traveller.dir)
	// members[0] (eu-central) has a second device connected in us-east.
	alice := members[0]
	phone := openClient(t, []string{regions[1].Ends.WS}, alice.name+"-phone", filepath.Join(t.TempDir(), "phone"))
	tok, err := alice.Link(phone.LinkRequest())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := phone.RegisterLinked(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// Every fifth member stays offline until the sends are done.
	offline := func(i int) bool { return i%5 == 4 }
	for i, c := range members {
		if !offline(i) {
			c.start(t)
		}
	}
	phone.start(t)
	if err := alice.PublishLinkedDevices(ctx); err != nil {
		t.Fatal(err)
	}

	// Presence across regions: a us-east member watches alice (eu-central).
	watcher := members[1]
	var names []string
	for _, c := range members[1:] {
		names = append(names, c.name)
	}
	info, err := alice.CreateGroup(ctx, "three regions", names)
	if err != nil {
		t.Fatal(err)
	}
	conv := info.GetConvId()
	if h, ok, err := regions[2].Directory.ConvLinearizable(ctx, conv); err != nil || !ok || h.Region != "eu-central" {
		t.Fatalf("group homed at %+v (%v %v), want the creator's home eu-central", h, ok, err)
	}
	if _, err := watcher.SubscribePresence(ctx, []string{alice.name}); err != nil {
		t.Fatal(err)
	}
	// Senders in all three regions (and the traveller through a non-home region).
	senders := []*tclient{members[0], members[1], members[2], members[5], phone}
	const perSender = 4
	for k, s := range senders {
		for j := 0; j < perSender; j++ {
			if _, err := s.Send(ctx, conv, []byte(fmt.Sprintf("from %d #%d", k, j))); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range senders {
		if err := s.WaitIdle(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	// Typing from ap-southeast reaches eu-central.
	if err := members[5].SetTyping(ctx, conv, true); err != nil {
		t.Fatal(err)
	}
	for i, c := range members {
		if offline(i) {
			c.start(t)
		}
	}
	total := 1 + len(senders)*perSender // the CREATE entry + the messages
	everyone := append(slices.Clone(members), phone)
	waitFor(t, 3*time.Minute, "every device has every entry", func() bool {
		for _, c := range everyone {
			if len(c.seqs(conv)) < total {
				return false
			}
		}
		return true
	})
	time.Sleep(300 * time.Millisecond)
	checkSameStream(t, conv, everyone, total)
	for _, b := range members[n-1].bodies(conv)[1:] {
		if !strings.HasPrefix(b, "from ") {
			t.Fatalf("a member could not read a group message: %q", b)
		}
	}
	// Delivered and read receipts from other regions reach the sender in eu-central.
	last := members[0].seqs(conv)
	head := last[len(last)-1]
	if err := members[4].MarkRead(ctx, conv, head); err != nil { // us-east, was offline
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "delivered ✓✓ from other regions", func() bool {
		return alice.hasReceipt(conv, pb.ReceiptKind_RECEIPT_KIND_DELIVERED, 2)
	})
	waitFor(t, time.Minute, "read receipt from us-east", func() bool {
		return alice.hasReceipt(conv, pb.ReceiptKind_RECEIPT_KIND_READ, head)
	})
	waitFor(t, time.Minute, "typing from ap-southeast reaches eu-central", func() bool {
		alice.rec.mu.Lock()
		defer alice.rec.mu.Unlock()
		for _, e := range alice.rec.typing {
			if e.Conv == conv && e.From.User == members[5].name && e.Typing {
				return true
			}
		}
		return false
	})
	// Presence: alice's devices go offline; the us-east watcher sees it.
	alice.close()
	phone.close()
	waitFor(t, time.Minute, "presence from eu-central reaches us-east", func() bool {
		watcher.rec.mu.Lock()
		defer watcher.rec.mu.Unlock()
		for _, e := range watcher.rec.presence {
			if e.User == alice.name && !e.Online {
				return true
			}
		}
		return false
	})
	var fwd uint64
	for _, r := range regions {
		fwd += r.Region.Stats().Forwarded
		for to, l := range r.Links {
			if err := l.Health(); err != nil {
				t.Errorf("link %s→%s: %v", r.Spec.Name, to, err)
			}
		}
	}
	if fwd == 0 {
		t.Fatal("no region forwarded anything to the group's home")
	}
}

// locateFrom asks the locator as a client whose address is local.
func locateFrom(t *testing.T, url, local string) geo.Answer {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 10 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a geo.Answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatal(err)
	}
	return a
}

// The locator (shown item 5): a client from each simulated city gets its
// own region's edge first; a region marked unhealthy is left out.
func TestMeshLocator(t *testing.T) {
	m := startMesh(t, func(c *stack.MeshConfig) { c.LocateAddr, c.ManualFailover = "127.0.0.1:0", true })
	for _, c := range []struct{ from, want string }{
		{"127.0.1.7", "eu-central"}, {"127.0.2.7", "us-east"}, {"127.0.3.7", "ap-southeast"},
	} {
		a := locateFrom(t, m.LocateURL, c.from)
		if len(a.Edges) != 3 || a.Edges[0].Region != c.want || a.Edges[0].WS != m.Node(c.want).Ends.WS ||
			a.Edges[0].NoiseKey != m.Node(c.want).Ends.EdgeKey || a.TTLS <= 0 {
			t.Fatalf("client at %s was told %+v, want %s's edge first", c.from, a, c.want)
		}
	}
	// Every edge serves the same locator.
	for _, n := range m.Nodes {
		url := "http" + strings.TrimPrefix(strings.TrimSuffix(n.Ends.WS, "/v1/ws"), "ws") + "/v1/locate"
		if a := locateFrom(t, url, "127.0.3.7"); len(a.Edges) != 3 || a.Edges[0].Region != "ap-southeast" {
			t.Fatalf("%s's edge locates a Singapore client to %+v", n.Spec.Name, a.Edges)
		}
	}
	eu := m.Node("eu-central")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := eu.Directory.SetRegionHealth(ctx, "us-east", false); err != nil {
		t.Fatal(err)
	}
	if err := eu.Directory.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "us-east left out", func() bool {
		a := locateFrom(t, m.LocateURL, "127.0.2.7")
		return len(a.Edges) == 2 && a.Edges[0].Region == "eu-central" && a.Edges[1].Region == "ap-southeast"
	})
	// One edge marked unhealthy (by an operator: `chatmesh directory edge-health`).
	if err := eu.Directory.SetEdgeHealth(ctx, "eu-central", eu.Ends.EdgeID, false); err != nil {
		t.Fatal(err)
	}
	if err := eu.Directory.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "eu-central's edge left out", func() bool {
		a := locateFrom(t, m.LocateURL, "127.0.1.7")
		return len(a.Edges) == 1 && a.Edges[0].Region == "ap-southeast"
	})
}

// Moving a user (shown with the directory's MoveUser, what `chatmesh
// directory move-user` runs) moves the conversations they own with them,
// each at a new epoch; messages continue exactly once, in order, and the
// user's next conversation is homed in the new region.
func TestMeshMoveUser(t *testing.T) {
	m := startMesh(t, nil)
	eu, us, ap := m.Node("eu-central"), m.Node("us-east"), m.Node("ap-southeast")
	alice := newClient(t, []string{eu.Ends.WS}, uniq("alice"))
	bob := newClient(t, []string{us.Ends.WS}, uniq("bob"))
	carol := newClient(t, []string{ap.Ends.WS}, uniq("carol"))
	for _, c := range []*tclient{alice, bob, carol} {
		c.start(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dm := core.DirectConvID(alice.name, bob.name)
	info, err := alice.CreateGroup(ctx, "moving", []string{bob.name, carol.name})
	if err != nil {
		t.Fatal(err)
	}
	group := info.GetConvId()
	send := func(c *tclient, conv, body string) {
		t.Helper()
		if _, err := c.Send(ctx, conv, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	send(alice, dm, "before 1")
	send(bob, group, "before 2")
	for _, c := range []*tclient{alice, bob} {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := ap.Directory.MoveUser(ctx, alice.name, "us-east")
	if err != nil || moved != 2 {
		t.Fatalf("move user: %d moved, %v (want the 1:1 and the group)", moved, err)
	}
	for _, conv := range []string{dm, group} {
		h, ok, err := eu.Directory.ConvLinearizable(ctx, conv)
		if err != nil || !ok || h.Region != "us-east" || h.Epoch != 2 {
			t.Fatalf("%s after the move: %+v %v %v", conv, h, ok, err)
		}
	}
	send(alice, dm, "after 1")
	send(bob, dm, "after 2")
	send(carol, group, "after 3")
	send(alice, group, "after 4")
	for _, c := range []*tclient{alice, bob, carol} {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, time.Minute, "the 1:1 complete", func() bool { return len(bob.seqs(dm)) >= 3 && len(alice.seqs(dm)) >= 3 })
	waitFor(t, time.Minute, "the group complete", func() bool {
		return len(carol.seqs(group)) >= 4 && len(bob.seqs(group)) >= 4 && len(alice.seqs(group)) >= 4
	})
	time.Sleep(300 * time.Millisecond)
	for _, c := range []*tclient{alice, bob} {
		checkExactlyOnceInOrder(t, c, dm, 1, 3)
	}
	checkSameStream(t, group, []*tclient{alice, bob, carol}, 4)
	for _, conv := range []string{dm, group} {
		if st, err := m.Store.Conversation(ctx, conv); err != nil || st.Epoch != 2 {
			t.Fatalf("stored %s: %+v %v, want epoch 2 (written by the new home)", conv, st, err)
		}
	}
	// alice's next conversation is homed where she lives now.
	dm2 := core.DirectConvID(alice.name, carol.name)
	send(alice, dm2, "new home")
	if err := alice.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if h, ok, err := ap.Directory.ConvLinearizable(ctx, dm2); err != nil || !ok || h.Region != "us-east" {
		t.Fatalf("alice's new 1:1 homed at %+v %v %v, want us-east", h, ok, err)
	}
}

// A region lost, failed over by hand (`chatmesh directory fail-region`,
// before issue 8's automatic detection): its users and conversations move
// to the nearest healthy region at a new epoch, its clients fail over to
// the next edge in their list, and the conversation continues exactly
// once, in order.
func TestMeshManualFailover(t *testing.T) {
	m := startMesh(t, func(c *stack.MeshConfig) { c.ManualFailover = true })
	eu, ap := m.Node("eu-central"), m.Node("ap-southeast")
	alice := newClient(t, []string{eu.Ends.WS}, uniq("alice"))
	carol := newClient(t, []string{ap.Ends.WS, eu.Ends.WS}, uniq("carol")) // registers in Singapore
	alice.start(t)
	carol.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conv := core.DirectConvID(alice.name, carol.name)
	send := func(c *tclient, body string) {
		t.Helper()
		if _, err := c.Send(ctx, conv, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	send(carol, "c1") // carol starts it: homed in ap-southeast
	if err := carol.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	send(alice, "a1")
	for _, c := range []*tclient{alice, carol} {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if h, ok, err := eu.Directory.ConvLinearizable(ctx, conv); err != nil || !ok || h.Region != "ap-southeast" || h.Epoch != 1 {
		t.Fatalf("home before the failure: %+v %v %v", h, ok, err)
	}
	// ap-southeast's edge and sequencer die.
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	if err := ap.Edge.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := ap.Region.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	scancel()
	failed := time.Now()
	fo, err := eu.Directory.FailRegion(ctx, "ap-southeast")
	if err != nil || fo.To != "eu-central" || fo.Convs != 1 || fo.Users != 1 {
		t.Fatalf("fail-region: %+v %v (want carol and the 1:1 moved to eu-central, Singapore's nearest)", fo, err)
	}
	send(carol, "c2") // through the next edge in carol's list
	if err := carol.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("manual failover: carol's first message after fail-region acked in %v", time.Since(failed).Round(time.Millisecond))
	send(alice, "a2")
	if err := alice.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tclient{alice, carol} {
		waitFor(t, time.Minute, c.name+" has all four", func() bool { return len(c.seqs(conv)) >= 4 })
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range []*tclient{alice, carol} {
		checkExactlyOnceInOrder(t, c, conv, 1, 4)
		if got := c.bodies(conv); !slices.Equal(got, []string{"c1", "a1", "c2", "a2"}) {
			t.Fatalf("%s saw %q", c.name, got)
		}
	}
	if st, err := m.Store.Conversation(ctx, conv); err != nil || st.Epoch != 2 {
		t.Fatalf("stored %+v %v, want epoch 2 (written by eu-central)", st, err)
	}
	if h, _, _ := eu.Directory.UserHomeLinearizable(ctx, carol.name); h != "eu-central" {
		t.Fatalf("carol's home after the failover: %q", h)
	}
}

// TestMeshAutomaticFailover: ap-southeast is lost whole (edge, sequencer,
// heartbeats, directory voter) with nobody acting. The directory's leader
// fails it after FailAfter of silence and moves carol and her 1:1 to
// eu-central, Singapore's nearest, at epoch 2; carol's client fails over
// to the next edge in its list, her outbox resends, and the conversation
// continues exactly once, in order. The time from the loss to carol's
// first acked message is the region's RTO for this conversation.
func TestMeshAutomaticFailover(t *testing.T) {
	m := startMesh(t, nil)
	eu, ap := m.Node("eu-central"), m.Node("ap-southeast")
	alice := newClient(t, []string{eu.Ends.WS}, uniq("alice"))
	carol := newClient(t, []string{ap.Ends.WS, eu.Ends.WS}, uniq("carol"))
	alice.start(t)
	carol.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conv := core.DirectConvID(alice.name, carol.name)
	send := func(c *tclient, body string) {
		t.Helper()
		if _, err := c.Send(ctx, conv, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	send(carol, "c1") // carol starts it: homed in ap-southeast
	if err := carol.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	send(alice, "a1")
	for _, c := range []*tclient{alice, carol} {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if h, ok, err := eu.Directory.ConvLinearizable(ctx, conv); err != nil || !ok || h.Region != "ap-southeast" || h.Epoch != 1 {
		t.Fatalf("home before the loss: %+v %v %v", h, ok, err)
	}
	// ap-southeast is lost: edge, sequencer, heartbeats and voter.
	lost := time.Now()
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	ap.StopLease()
	if err := ap.Edge.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := ap.Region.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	scancel()
	if err := ap.Directory.Close(); err != nil {
		t.Fatal(err)
	}
	send(carol, "c2") // queued in carol's outbox; resent through eu-central
	if err := carol.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	rto := time.Since(lost)
	if h, ok, err := eu.Directory.ConvLinearizable(ctx, conv); err != nil || !ok || h.Region != "eu-central" || h.Epoch != 2 {
		t.Fatalf("home after the loss: %+v %v %v", h, ok, err)
	}
	if r, _ := eu.Directory.Region("ap-southeast"); r.Healthy {
		t.Fatal("ap-southeast still healthy in the directory")
	}
	t.Logf("automatic failover: carol's first message after the loss of ap-southeast acked %v later (RTO)", rto.Round(time.Millisecond))
	send(alice, "a2")
	if err := alice.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tclient{alice, carol} {
		waitFor(t, time.Minute, c.name+" has all four", func() bool { return len(c.seqs(conv)) >= 4 })
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range []*tclient{alice, carol} {
		checkExactlyOnceInOrder(t, c, conv, 1, 4)
		if got := c.bodies(conv); !slices.Equal(got, []string{"c1", "a1", "c2", "a2"}) {
			t.Fatalf("%s saw %q", c.name, got)
		}
	}
	if st, err := m.Store.Conversation(ctx, conv); err != nil || st.Epoch != 2 {
		t.Fatalf("stored %+v %v, want epoch 2 (written by eu-central)", st, err)
	}
	if st := eu.Lease.Stats(); !st.Held || st.Deposed {
		t.Fatalf("eu-central's lease: %+v", st)
	}
}

// A frame the edge accepts is deliverable across regions too: an envelope
// of exactly MaxEnvelopeBytes, from and to users with the longest ids, in
// a 1:1 homed in the sender's region (delivered over the link to the
// peer's edge) and in one homed in the recipient's region (the send is
// forwarded over the link first), with the longest client_msg_id. Both
// reach both devices once, in order, byte for byte.
func TestMeshMaxEnvelopeAcrossRegions(t *testing.T) {
	m := startMesh(t, nil)
	eu, us := m.Node("eu-central"), m.Node("us-east")
	alice := plainClient(t, []string{eu.Ends.WS}, longName("a"))
	bob := plainClient(t, []string{us.Ends.WS}, longName("b"))
	alice.start(t)
	bob.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range m.Nodes {
			t.Logf("%s: region %+v", n.Spec.Name, n.Region.Stats())
			t.Logf("%s: edge %+v", n.Spec.Name, n.Edge.Stats())
			for to, l := range n.Links {
				t.Logf("%s→%s: link %+v", n.Spec.Name, to, l.Stats())
			}
		}
	})
	conv := core.DirectConvID(alice.name, bob.name)
	env := envelopeOf(t, core.MaxEnvelopeBytes)
	send := func(c *tclient, cmid string) {
		t.Helper()
		r, err := c.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: conv, ClientMsgId: cmid, Envelope: env}}})
		if err != nil || r.GetSend().GetSeq() == 0 {
			t.Fatalf("%s: max envelope across regions: %v %v", c.name, r, err)
		}
	}
	// alice starts it: homed in eu-central; bob's copy crosses the link.
	send(alice, strings.Repeat("a", core.MaxClientMsgIDLen))
	// bob answers from us-east: forwarded to eu-central, sequenced there,
	// and delivered back over the link.
	send(bob, strings.Repeat("b", core.MaxClientMsgIDLen))
	for _, c := range []*tclient{alice, bob} {
		waitFor(t, time.Minute, c.name+" has both max envelopes", func() bool { return len(c.seqs(conv)) >= 2 })
		checkExactlyOnceInOrder(t, c, conv, 1, 2)
		c.rec.mu.Lock()
		for i, m := range c.rec.msgs[conv] {
			if !proto.Equal(m.GetEnvelope(), env) || m.GetRegion() != "eu-central" || m.GetEpoch() != 1 {
				t.Errorf("%s: entry %d: %d bytes, written by %q at epoch %d", c.name, i+1, proto.Size(m.GetEnvelope()), m.GetRegion(), m.GetEpoch())
			}
		}
		c.rec.mu.Unlock()
	}
}
