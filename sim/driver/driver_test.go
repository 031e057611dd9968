package driver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/sim/check"
)

// startMesh runs the three dev regions in this process on the embedded
// default (a broker and a directory voter per region, one Pebble store).
func startMesh(t *testing.T) *stack.Mesh {
	t.Helper()
	cfg := stack.MeshConfig{
		DataDir: t.TempDir(), Regions: stack.DevRegions(), WTDisabled: true, MaxConnsPerIP: 5000,
		EdgeConfig: func(_ string, c *edge.Config) {
			// Every test client connects from one address.
			c.Admission.RegisterBurst = 1_000_000
			c.Admission.IPMessagesPerSecond, c.Admission.IPMessageBurst = 1e9, 1e9
			c.Admission.IPReadsPerSecond, c.Admission.IPReadBurst = 1e9, 1e9
		},
	}
	if os.Getenv("CHATMESH_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
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

func meshRegions(m *stack.Mesh) []Region {
	var out []Region
	for _, n := range m.Nodes {
		out = append(out, Region{Name: n.Spec.Name, Edges: []Edge{{URL: n.Ends.WS, NoiseKey: n.Ends.EdgeKey}}})
	}
	return out
}

func testLogger() *slog.Logger {
	if os.Getenv("CHATMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return nil
}

// assertExactlyOnceInOrder is the local check of a run's history: every
// sent message acked once with one seq; every acked message delivered to
// every member device of its conversation exactly once; every device sees
// each conversation in increasing seq order; all devices agree on which
// message each seq holds.
func assertExactlyOnceInOrder(t *testing.T, h *check.History) {
	t.Helper()
	type key struct{ conv, id string }
	acked := map[key]uint64{}
	for _, a := range h.Acked {
		k := key{a.Conv, a.MsgID}
		if s, ok := acked[k]; ok && s != a.Seq {
			t.Fatalf("%s acked at seq %d and %d", a.MsgID, s, a.Seq)
		}
		acked[k] = a.Seq
	}
	for _, s := range h.Sent {
		if _, ok := acked[key{s.Conv, s.MsgID}]; !ok {
			t.Fatalf("%s from %s to %s never acked", s.MsgID, s.Device, s.Conv)
		}
	}
	type devConv struct{ dev, conv string }
	got := map[devConv]map[string]int{} // message id -> times delivered
	lastSeq := map[devConv]uint64{}
	bySeq := map[string]map[uint64]string{}
	for _, d := range h.Delivered {
		dc := devConv{d.Device, d.Conv}
		if !slices.Contains(h.Members[d.Conv], d.Device) {
			t.Fatalf("%s got %s of %s, not a member (%v)", d.Device, d.MsgID, d.Conv, h.Members[d.Conv])
		}
		if d.Seq <= lastSeq[dc] {
			t.Fatalf("%s saw %s seq %d after %d", d.Device, d.Conv, d.Seq, lastSeq[dc])
		}
		lastSeq[dc] = d.Seq
		if d.Epoch == 0 || d.Region == "" {
			t.Fatalf("delivery without writer epoch or region: %+v", d)
		}
		if bySeq[d.Conv] == nil {
			bySeq[d.Conv] = map[uint64]string{}
		}
		if prev, ok := bySeq[d.Conv][d.Seq]; ok && prev != d.MsgID {
			t.Fatalf("%s seq %d holds %q for one device and %q for another", d.Conv, d.Seq, prev, d.MsgID)
		}
		bySeq[d.Conv][d.Seq] = d.MsgID
		if got[dc] == nil {
			got[dc] = map[string]int{}
		}
		got[dc][d.MsgID]++
	}
	for k, seq := range acked {
		if len(h.Members[k.conv]) == 0 {
			t.Fatalf("%s: no members recorded", k.conv)
		}
		for _, dev := range h.Members[k.conv] {
			if n := got[devConv{dev, k.conv}][k.id]; n != 1 {
				t.Fatalf("%s (seq %d of %s) delivered %d times to %s", k.id, seq, k.conv, n, dev)
			}
		}
		if bySeq[k.conv][seq] != k.id {
			t.Fatalf("%s acked at seq %d of %s, which holds %q", k.id, seq, k.conv, bySeq[k.conv][seq])
		}
	}
}

// checkHistory runs the simulator's checker (sim/check) over a drained
// run's history and fails with the seed when an invariant is violated.
func checkHistory(t *testing.T, seed uint64, h *check.History) {
	t.Helper()
	res := check.Check(h)
	if err := res.Err(); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if res.Unchecked != 0 {
		t.Fatalf("seed %d: %d conversations with messages but no members", seed, res.Unchecked)
	}
}

// A short seeded run over three regions: users homed in every region,
// second devices in other regions, 1:1 pairs within and across regions,
// groups spanning the regions, devices moving between regions while
// sending. Every acked message reaches every member device exactly once,
// in one order.
func TestDriverThreeRegions(t *testing.T) {
	m := startMesh(t)
	cfg := Config{
		Regions: meshRegions(m), StateDir: t.TempDir(), Seed: 1, Prefix: "tr-",
		Users: 18, SecondDevices: 5, Directs: 10, Groups: 2, GroupSize: 9,
		DirectRate: 25, GroupRate: 4, Duration: 8 * time.Second, Drain: 90 * time.Second,
		Moves: 4, Logger: testLogger(), Checker: check.NewChecker(check.Options{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Snapshots while the run goes on are consistent prefixes.
	time.Sleep(2 * time.Second)
	snap := d.Snapshot()
	if res := cfg.Checker.Snapshot(); res.Err() != nil || res.Sent == 0 {
		t.Fatalf("continuous check after 2 s: %d sent, %v", res.Sent, res.Err())
	}
	st, err := d.Wait()
	if err != nil {
		t.Fatal(err)
	}
	h := d.History()
	t.Logf("stats: sent %d acked %d delivered %d inferred %d moves %d disconnects %d setup %v send %v drain %v errors %v",
		st.Sent, st.Acked, st.Delivered, st.AcksInferred, st.Moves, st.Disconnects,
		st.SetupTime.Round(time.Millisecond), st.SendTime.Round(time.Millisecond), st.DrainTime.Round(time.Millisecond), st.Errors)
	if len(snap.Sent) == 0 || len(snap.Sent) > len(h.Sent) || len(snap.Delivered) > len(h.Delivered) {
		t.Fatalf("snapshot after 2 s: %d sent, %d delivered (final %d, %d)", len(snap.Sent), len(snap.Delivered), len(h.Sent), len(h.Delivered))
	}
	for i := range snap.Sent {
		if snap.Sent[i] != h.Sent[i] {
			t.Fatal("the snapshot is not a prefix of the history")
		}
	}
	if !st.Drained || st.Unacked != 0 || st.MissingDeliveries != 0 || st.Failed != 0 {
		t.Fatalf("not drained: %+v", st)
	}
	if st.Moves != 4 || st.Sent < 100 || st.Acked != st.Sent || int64(len(h.Sent)) != st.Sent {
		t.Fatalf("moves %d, sent %d, acked %d, history %d", st.Moves, st.Sent, st.Acked, len(h.Sent))
	}
	var secSent int64
	for _, s := range st.PerSecond {
		secSent += s.Sent
	}
	if secSent != st.Sent || len(st.PerSecond) < 8 {
		t.Fatalf("timeline: %d seconds, %d sent in it", len(st.PerSecond), secSent)
	}
	assertExactlyOnceInOrder(t, h)
	checkHistory(t, cfg.Seed, h)
	// The fed checker saw what the history holds.
	res := cfg.Checker.Final()
	if err := res.Err(); err != nil || res.Sent != len(h.Sent) || res.Deliveries != len(h.Delivered) || res.AckEvents != len(h.Acked) {
		t.Fatalf("fed checker: %v; %d sent, %d deliveries, %d acks; history %d, %d, %d",
			err, res.Sent, res.Deliveries, res.AckEvents, len(h.Sent), len(h.Delivered), len(h.Acked))
	}

	// The plan's shape reached the mesh: members include second devices,
	// every region wrote, users are homed where the plan put them.
	p := d.Plan()
	regions := map[string]bool{}
	for _, dl := range h.Delivered {
		regions[dl.Region] = true
	}
	if len(regions) != 3 {
		t.Fatalf("writers' regions %v, want all three", regions)
	}
	for _, g := range p.Groups {
		want := 0
		for _, u := range g.Users {
			want++
			if p.Users[u].Second >= 0 {
				want++
			}
		}
		if len(h.Members[g.ID]) != want {
			t.Fatalf("group %s: %d member devices recorded, want %d", g.ID, len(h.Members[g.ID]), want)
		}
	}
	// Moved devices are connected to the region they moved to last.
	conn := d.Connected()
	final := map[string]string{}
	for _, mv := range p.Moves {
		final[fmt.Sprintf("%s/%d", p.Users[mv.User].Name, mv.Slot+1)] = cfg.Regions[mv.To].Name
	}
	for dev, r := range final {
		if conn[dev] != r {
			t.Fatalf("%s moved to %s but is connected to %q", dev, r, conn[dev])
		}
	}
	if len(conn) != st.Devices {
		t.Fatalf("%d devices known to Connected, %d in the run", len(conn), st.Devices)
	}
	for _, u := range p.Users {
		home, ok, err := m.Nodes[0].Directory.UserHomeLinearizable(ctx, u.Name)
		if err != nil || !ok || home != cfg.Regions[u.Region].Name {
			t.Fatalf("%s homed in %q (%v %v), want %s", u.Name, home, ok, err, cfg.Regions[u.Region].Name)
		}
	}
}

// deadURL is a WebSocket URL on a port nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return fmt.Sprintf("ws://%s/v1/ws", addr)
}

// A region whose first edge is dead (a closed port): its users still
// register through the region's next edge (so they are homed there, not
// in the next region), connect and get everything sent acked and
// delivered.
func TestDriverDeadFirstEdge(t *testing.T) {
	m := startMesh(t)
	eu, us := m.Node("eu-central"), m.Node("us-east")
	cfg := Config{
		Regions: []Region{
			{Name: "eu-central", Edges: []Edge{{URL: deadURL(t)}, {URL: eu.Ends.WS}}},
			{Name: "us-east", Edges: []Edge{{URL: us.Ends.WS}}},
		},
		StateDir: t.TempDir(), Seed: 2, Prefix: "de-", Users: 6, SecondDevices: -1, Directs: 3, Groups: -1,
		DirectRate: 20, Duration: 3 * time.Second, Drain: time.Minute, Logger: testLogger(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h, st, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: sent %d acked %d delivered %d disconnects %d errors %v", st.Sent, st.Acked, st.Delivered, st.Disconnects, st.Errors)
	if !st.Drained || st.Sent == 0 || st.Acked != st.Sent || st.MissingDeliveries != 0 {
		t.Fatalf("not drained: %+v", st)
	}
	assertExactlyOnceInOrder(t, h)
	checkHistory(t, cfg.Seed, h)
	p, _ := NewPlan(cfg)
	sentBy := map[string]int{}
	for _, s := range h.Sent {
		sentBy[s.Device]++
	}
	euSent := 0
	for _, u := range p.Users {
		if u.Region != 0 {
			continue
		}
		home, ok, err := eu.Directory.UserHomeLinearizable(ctx, u.Name)
		if err != nil || !ok || home != "eu-central" {
			t.Fatalf("%s homed in %q (%v %v), want eu-central via its second edge", u.Name, home, ok, err)
		}
		euSent += sentBy[u.Name+"/1"]
	}
	if euSent == 0 {
		t.Fatal("no eu-central user sent anything")
	}
}

// A region's edge dies in the middle of the traffic: its devices fail
// over to the next region's edge, their outboxes resend, and the run
// still drains with every acked message delivered exactly once, in order.
// The fault is recorded in the history.
func TestDriverEdgeLost(t *testing.T) {
	m := startMesh(t)
	cfg := Config{
		Regions: meshRegions(m), StateDir: t.TempDir(), Seed: 3, Prefix: "el-",
		Users: 12, SecondDevices: 3, Directs: 6, Groups: 1, GroupSize: 8,
		DirectRate: 20, GroupRate: 3, Duration: 6 * time.Second, Drain: 90 * time.Second, Logger: testLogger(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	ap := m.Node("ap-southeast")
	fi := d.AddFault(check.Fault{Kind: "kill-edge", Target: "ap-southeast", Start: time.Now()})
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	if err := ap.Edge.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	scancel()
	d.EndFault(fi, time.Now())
	st, err := d.Wait()
	if err != nil {
		t.Fatal(err)
	}
	h := d.History()
	t.Logf("stats: sent %d acked %d delivered %d disconnects %d send %v drain %v errors %v",
		st.Sent, st.Acked, st.Delivered, st.Disconnects, st.SendTime.Round(time.Millisecond), st.DrainTime.Round(time.Millisecond), st.Errors)
	if !st.Drained || st.Unacked != 0 || st.MissingDeliveries != 0 || st.Acked != st.Sent {
		t.Fatalf("not drained: %+v", st)
	}
	if st.Disconnects == 0 || len(h.Faults) != 1 || h.Faults[0].End.IsZero() {
		t.Fatalf("%d disconnects, faults %+v", st.Disconnects, h.Faults)
	}
	assertExactlyOnceInOrder(t, h)
	checkHistory(t, cfg.Seed, h)
	// Devices of ap-southeast sent after the edge died.
	p := d.Plan()
	after := 0
	for _, s := range h.Sent {
		u, _, _ := strings.Cut(s.Device, "/")
		for _, pu := range p.Users {
			if pu.Name == u && pu.Region == 2 && s.At.After(h.Faults[0].End) {
				after++
			}
		}
	}
	if after == 0 {
		t.Fatal("no ap-southeast user sent after its edge died")
	}
}

// A device that moves right after sending closes with the message still
// in its durable outbox; the client reopened on another region's edges
// sends it from there, and it is acked and delivered exactly once.
func TestDriverMoveCarriesOutbox(t *testing.T) {
	m := startMesh(t)
	cfg := Config{
		Regions: meshRegions(m), StateDir: t.TempDir(), Seed: 4, Prefix: "mo-",
		Users: 4, SecondDevices: -1, Directs: 2, Groups: -1, DirectRate: -1, GroupRate: -1,
		Duration: 5 * time.Second, Drain: time.Minute, Logger: testLogger(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p := d.Plan()
	u := p.Directs[0].Users[0]
	dev := d.devs[u][0]
	const moves = 6
	for k := range moves {
		// Two sends, then a move at once: the second is almost surely
		// still unacknowledged when the client closes.
		for j := range 2 {
			dev.send(SendEvent{N: uint64(2*k + j + 1), Conv: 0, User: u})
		}
		dev.move((p.Users[u].Region + 1 + k%2) % len(cfg.Regions))
	}
	st, err := d.Wait()
	if err != nil {
		t.Fatal(err)
	}
	h := d.History()
	t.Logf("stats: sent %d acked %d inferred %d moves %d carried %d errors %v", st.Sent, st.Acked, st.AcksInferred, st.Moves, st.OutboxAtMoves, st.Errors)
	if !st.Drained || st.Sent != 2*moves || st.Acked != st.Sent || st.Moves != moves || st.MissingDeliveries != 0 {
		t.Fatalf("stats %+v", st)
	}
	if st.OutboxAtMoves == 0 {
		t.Fatal("no move closed a client with a message in its outbox")
	}
	assertExactlyOnceInOrder(t, h)
	checkHistory(t, cfg.Seed, h)
	// In the order sent.
	var got []string
	for _, dl := range h.Delivered {
		if dl.Device == dev.name {
			got = append(got, dl.MsgID)
		}
	}
	var want []string
	for _, s := range h.Sent {
		want = append(want, s.MsgID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the sender's device saw its messages as %v, sent as %v", got, want)
	}
}

// Stop ends a run early: sending stops, the drain is cut short, every
// client is closed, and Wait returns what was recorded.
func TestDriverStop(t *testing.T) {
	m := startMesh(t)
	cfg := Config{
		Regions: meshRegions(m), StateDir: t.TempDir(), Seed: 5, Prefix: "st-",
		Users: 4, SecondDevices: -1, Directs: 2, Groups: -1, DirectRate: 10,
		Duration: 10 * time.Minute, Drain: 10 * time.Minute, Logger: testLogger(),
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Wait(); err != ErrNotStarted {
		t.Fatalf("Wait before Start: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	d.Stop()
	st, err := d.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent == 0 || st.Sent >= 6000 || st.Drained && st.Unacked != 0 {
		t.Fatalf("stopped run: %+v", st)
	}
	for _, ds := range d.devs {
		for _, dev := range ds {
			if dev.c != nil || dev.recvCancel != nil {
				t.Fatalf("%s still open after Wait", dev.name)
			}
		}
	}
	if err := d.Start(ctx); err == nil {
		t.Fatal("a second Start was accepted")
	}
	d.Stop() // idempotent
}
