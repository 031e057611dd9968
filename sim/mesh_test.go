package sim_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/sim"
	"github.com/chatmesh/chatmesh/sim/check"
)

// buildChatmesh builds the chatmesh binary into the test's temp dir.
func buildChatmesh(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "chatmesh")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/chatmesh/chatmesh/cmd/chatmesh").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// meshUser is one client device of the mesh test and what it saw.
type meshUser struct {
	*client.Client
	name string

	mu    sync.Mutex
	got   []client.MessageEvent
	acked map[string]uint64 // client_msg_id → seq
	stop  context.CancelFunc
	done  chan struct{}
}

func openMeshUser(t *testing.T, m *sim.Mesh, region, name string) *meshUser {
	t.Helper()
	ends, err := m.Endpoints(region)
	if err != nil {
		t.Fatal(err)
	}
	key, err := hex.DecodeString(ends.EdgeKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Open(context.Background(), client.Config{StateDir: t.TempDir(), Edges: []string{ends.EdgeWS}, ServerKey: key,
		EventBuffer: 1024, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, AckTimeout: 3 * time.Second,
		Sealer: client.InsecurePlaintextSealer{}})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	u := &meshUser{Client: c, name: name, acked: map[string]uint64{}, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(u.done)
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-c.Events():
				u.mu.Lock()
				switch e := ev.(type) {
				case client.MessageEvent:
					u.got = append(u.got, e)
				case client.SendAckedEvent:
					u.acked[e.ClientMsgID] = e.Seq
				}
				u.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-u.done; c.Close() })
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if _, err := c.Register(rctx, name); err != nil {
		t.Fatalf("register %s in %s: %v", name, region, err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConnected(rctx); err != nil {
		t.Fatalf("connect %s: %v", name, err)
	}
	return u
}

// bodies returns the bodies of conv's messages the device received, in
// the order received, and their seqs.
func (u *meshUser) bodies(conv string) ([]string, []uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var bs []string
	var seqs []uint64
	for _, e := range u.got {
		if e.Conv() == conv && e.Body != nil {
			bs = append(bs, string(e.Body))
			seqs = append(seqs, e.Seq())
		}
	}
	return bs, seqs
}

func (u *meshUser) ackedSeq(id string) (uint64, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.acked[id]
	return s, ok
}

// waitBodies waits (up to d) until both devices hold want for conv, in
// that order, and the sends in ids are acked.
func waitBodies(t *testing.T, m *sim.Mesh, d time.Duration, conv string, want []string, sender *meshUser, ids []string, devs ...*meshUser) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok := true
		for _, id := range ids {
			if _, acked := sender.ackedSeq(id); !acked {
				ok = false
			}
		}
		for _, u := range devs {
			if got, _ := u.bodies(conv); !slices.Equal(got, want) {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			for _, u := range devs {
				got, seqs := u.bodies(conv)
				t.Logf("%s holds %q (seqs %v)", u.name, got, seqs)
			}
			t.Fatalf("within %v: want %q on every device and %v acked\n%s", d, want, ids, m.LogTail(4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMeshProcessesSurviveFaults: a three-region mesh as OS processes
// (per region a `chatmesh broker`, a `chatmesh region` and a `chatmesh
// edge`, PostgreSQL shared through a proxy per region, a proxy on every
// inter-region path). Alice (eu-central) and bob (us-east) chat; a message
// sent while eu-central's links are partitioned arrives once they heal,
// and one sent while us-east's broker is SIGKILLed arrives once it is
// restarted: each message exactly once, in one order on both devices,
// with gapless seqs, and the faults are recorded with their start and end.
func TestMeshProcessesSurviveFaults(t *testing.T) {
	testenv.SkipShort(t, "starts a three-region mesh as processes")
	dsn := testenv.PostgresDSN(t)
	bin := buildChatmesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	began := time.Now()
	m, err := sim.StartMesh(ctx, sim.MeshConfig{Binary: bin, PostgresDSN: dsn, DataDir: t.TempDir(), StartTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("start mesh: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process logs:\n%s", m.LogTail(6000))
		}
		stopAt := time.Now()
		m.Stop()
		t.Logf("mesh stopped in %v", time.Since(stopAt).Round(time.Millisecond))
	})
	t.Logf("mesh up in %v", time.Since(began).Round(time.Millisecond))
	if got := m.Regions(); len(got) != 3 || len(m.DirectoryAddrs()) != 3 || m.DirectoryToken() == "" {
		t.Fatalf("regions %v, directory %v", got, m.DirectoryAddrs())
	}

	run := time.Now().Format("150405.000")
	alice := openMeshUser(t, m, "eu-central", "alice"+run)
	bob := openMeshUser(t, m, "us-east", "bob"+run)
	conv := "d:" + alice.name + ":" + bob.name // alice < bob

	// 1. Before any fault: alice → bob crosses eu-central → us-east.
	id1, err := alice.SendDirect(ctx, bob.name, []byte("m1"))
	if err != nil {
		t.Fatal(err)
	}
	waitBodies(t, m, time.Minute, conv, []string{"m1"}, alice, []string{id1}, alice, bob)

	// Every region reached the store, its links and the leader its
	// followers through the proxies: the faults below cut real paths.
	leader, err := m.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range m.PathStats() {
		used := ps.Accepted > 0
		switch {
		case ps.Kind == "store" && !used:
			t.Fatalf("%s reached the store around its proxy: %+v", ps.From, ps)
		case ps.Kind == "link" && ps.From == "eu-central" && ps.To == "us-east" && (!used || ps.BytesUp == 0):
			t.Fatalf("eu-central's link to us-east carried nothing through its proxy: %+v", ps)
		case ps.Kind == "directory-raft" && ps.From == leader && !used:
			t.Fatalf("the leader %s reached %s's voter around its proxy: %+v", leader, ps.To, ps)
		}
	}

	// 2. eu-central's links partitioned both ways: alice's message is
	// sequenced at home (eu-central) but cannot reach bob until healed.
	part, err := m.PartitionLinks("eu-central")
	if err != nil {
		t.Fatal(err)
	}
	id2, err := alice.SendDirect(ctx, bob.name, []byte("m2"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if got, _ := bob.bodies(conv); slices.Contains(got, "m2") {
		t.Fatal("m2 crossed a partitioned link")
	}
	m.HealFault(part)
	waitBodies(t, m, time.Minute, conv, []string{"m1", "m2"}, alice, []string{id2}, alice, bob)

	// 3. us-east's broker SIGKILLed: bob's message waits in his outbox
	// (or the edge) until the broker is back on its data.
	if err := m.KillBroker("us-east"); err != nil {
		t.Fatal(err)
	}
	id3, err := bob.SendDirect(ctx, alice.name, []byte("m3"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := m.RestartBroker(ctx, "us-east"); err != nil {
		t.Fatalf("restart broker: %v", err)
	}
	waitBodies(t, m, 90*time.Second, conv, []string{"m1", "m2", "m3"}, bob, []string{id3}, alice, bob)

	// Exactly once, one order, gapless seqs, acks matching the seqs.
	_, sa := alice.bodies(conv)
	_, sb := bob.bodies(conv)
	if !slices.Equal(sa, sb) || !slices.Equal(sa, []uint64{1, 2, 3}) {
		t.Fatalf("seqs: alice %v, bob %v, want [1 2 3] on both", sa, sb)
	}
	for i, x := range []struct {
		u  *meshUser
		id string
	}{{alice, id1}, {alice, id2}, {bob, id3}} {
		if s, _ := x.u.ackedSeq(x.id); s != uint64(i+1) {
			t.Fatalf("m%d acked at seq %d, want %d", i+1, s, i+1)
		}
	}

	// 4. A seeded schedule with every fault class once, in 4 s slots,
	// while both users keep sending: afterwards every message arrived
	// exactly once, in one order on both devices, with gapless seqs. Seed
	// 13 kills the conversation's home region (eu-central) and bob's
	// broker (us-east), cuts eu-central from the store, and partitions
	// only the regions the conversation uses.
	sched, err := sim.NewSchedule(sim.ScheduleConfig{Seed: 13, Duration: 8 * 4 * time.Second, Slot: 4 * time.Second, Regions: m.Regions()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("schedule (seed 13): %+v", sched)
	runDone := make(chan error, 1)
	go func() { runDone <- sim.RunSchedule(ctx, m, sched, nil) }()
	want := []string{"m1", "m2", "m3"}
	ids := map[*meshUser][]string{}
	for i := 4; ; i++ {
		select {
		case err := <-runDone:
			if err != nil {
				t.Fatalf("schedule: %v", err)
			}
			runDone = nil
		case <-time.After(1500 * time.Millisecond):
		}
		if runDone == nil {
			break
		}
		u, to := alice, bob
		if i%2 == 1 {
			u, to = bob, alice
		}
		body := fmt.Sprintf("m%d", i)
		id, err := u.SendDirect(ctx, to.name, []byte(body))
		if err != nil {
			t.Fatalf("send %s: %v", body, err)
		}
		want = append(want, body)
		ids[u] = append(ids[u], id)
	}
	waitAll := func() bool {
		ga, _ := alice.bodies(conv)
		gb, _ := bob.bodies(conv)
		if len(ga) != len(want) || !slices.Equal(ga, gb) {
			return false
		}
		for u, us := range ids {
			for _, id := range us {
				if _, ok := u.ackedSeq(id); !ok {
					return false
				}
			}
		}
		return true
	}
	for deadline := time.Now().Add(2 * time.Minute); !waitAll(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			ga, sa := alice.bodies(conv)
			gb, sb := bob.bodies(conv)
			t.Fatalf("after the schedule: alice %q %v, bob %q %v, want each of %q once", ga, sa, gb, sb, want)
		}
	}
	ga, sa := alice.bodies(conv)
	_, sb = bob.bodies(conv)
	slices.Sort(want)
	sorted := slices.Sorted(slices.Values(ga))
	if !slices.Equal(sorted, want) || !slices.Equal(sa, sb) {
		t.Fatalf("after the schedule: alice %q, want each of %q once; seqs alice %v bob %v", ga, want, sa, sb)
	}
	for i, s := range sa {
		if s != uint64(i+1) {
			t.Fatalf("seqs not gapless: %v", sa)
		}
	}

	faults := m.Faults()
	kinds := map[string]int{}
	for _, f := range faults[2:] {
		kinds[f.Kind]++
	}
	for _, k := range sim.FaultKinds {
		if kinds[k] != 1 {
			t.Fatalf("schedule ran %s %d times: %+v", k, kinds[k], faults)
		}
	}
	if len(faults) != 2+len(sim.FaultKinds) || faults[0].Kind != sim.FaultPartitionLinks || faults[0].Target != "eu-central" ||
		faults[1].Kind != sim.FaultKillBroker || faults[1].Target != "us-east" {
		t.Fatalf("faults %+v", faults)
	}
	for _, f := range faults {
		if f.Start.IsZero() || f.End.Before(f.Start) || f.End.IsZero() {
			t.Fatalf("fault not closed: %+v", f)
		}
	}
	var _ check.Fault = faults[0]
	t.Logf("%d messages, %d faults, each delivered once in order; %v in all", len(want), len(faults), time.Since(began).Round(time.Millisecond))
}
