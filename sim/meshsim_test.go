package sim_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/sim"
	"github.com/chatmesh/chatmesh/sim/check"
	"github.com/chatmesh/chatmesh/sim/driver"
	"github.com/chatmesh/chatmesh/sim/report"
)

// TestMeshSimulation is issue 8's short seeded simulation: three regions
// as separate processes on real PostgreSQL, clients with durable outboxes
// in every region (1:1s across and within regions, a group spanning them,
// second devices, devices moving region), every fault class at least once
// from the seeded schedule, planned moves and linearizable reads of the
// directory. The checker must find nothing lost, duplicated, reordered,
// no gap, no second writer, no epoch going back and a linearizable
// directory history; and the run must be live — the traffic drained, and
// every conversation a region loss hit accepted messages again. How fast
// (issue 8's 10 s) is a figure, not an assertion here (the machine may be
// loaded): the test logs it, `make soak` and `chatmesh sim` check it;
// CHATMESH_SIM_MAX_RTO sets a bound for this test too. A failure names the
// seed (CHATMESH_SIM_SEED reproduces it). The report (JSON, timeline SVG) goes to
// CHATMESH_SIM_REPORT when set.
func TestMeshSimulation(t *testing.T) {
	testenv.SkipShort(t, "runs the three-region simulator for about two minutes")
	dsn := testenv.PostgresDSN(t)
	bin := buildChatmesh(t)
	seed := uint64(20261130)
	if s := os.Getenv("CHATMESH_SIM_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CHATMESH_SIM_SEED: %v", err)
		}
		seed = v
	}
	// CHATMESH_SIM_MAX_RTO sets an RTO bound (a duration); by default
	// none: timing is not asserted in make test.
	maxRTO := time.Duration(-1)
	if s := os.Getenv("CHATMESH_SIM_MAX_RTO"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("CHATMESH_SIM_MAX_RTO: %v", err)
		}
		maxRTO = v
	}
	dir := os.Getenv("CHATMESH_SIM_REPORT")
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "report")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	res, err := sim.RunMeshSim(ctx, sim.MeshSimConfig{
		Binary: bin, PostgresDSN: dsn, Seed: seed, Duration: 96 * time.Second, Drain: 2 * time.Minute,
		Users: 12, Groups: 1, GroupSize: 8, Moves: 2, DirectRate: 20, GroupRate: 2, ReportDir: dir, MaxRTO: maxRTO,
	})
	inv := res.Report.Invariants
	t.Logf("seed %d: %d faults, %d sent, %d acked, %d deliveries, %d directory ops (%d moves); lost %d, duplicated %d, reordered %d, gaps %d, second writers %d, epoch regressions %d, linearizable %s",
		res.Seed, len(res.Report.Faults), res.Traffic.Sent, res.Traffic.Acked, res.Traffic.Delivered, inv.DirOps, res.Moves,
		inv.Count(check.Lost), inv.Count(check.Duplicated), inv.Count(check.Reordered), inv.Count(check.Gap),
		inv.Count(check.SecondWriter), inv.Count(check.EpochRegress), inv.Linearizability)
	for _, r := range res.Report.RTO {
		t.Logf("RTO %s %s: %d conversations, %d recovered (p50 %.0f ms, max %.0f ms), %d never, %d without traffic",
			r.Kind, r.Target, r.Conversations, r.Recovered, r.Times.P50Ms, r.Times.MaxMs, r.NeverRecovered, r.NoTraffic)
	}
	t.Logf("traffic drained %v, unacked %d, missing deliveries %d; report files %v", res.Traffic.Drained, res.Traffic.Unacked, res.Traffic.MissingDeliveries, res.Files)
	// The verdict comes through err: ErrInvariant for safety, ErrNotLive
	// for liveness (undrained traffic, a region loss never recovered or
	// recovered in more than sim.DefaultMaxRTO).
	if err != nil {
		if errors.Is(err, sim.ErrInvariant) {
			for k, tally := range inv.Violations {
				t.Logf("%s: %d, e.g. %v", k, tally.Count, tally.Examples)
			}
		}
		if errors.Is(err, sim.ErrNotLive) {
			for _, p := range res.NotLive {
				t.Logf("not live: %s", p)
			}
		}
		t.Fatalf("simulation (reproduce: CHATMESH_SIM_SEED=%d): %v", res.Seed, err)
	}
	if len(res.NotLive) != 0 || !res.Traffic.Drained {
		t.Fatalf("no error, yet not live: %q, traffic %+v", res.NotLive, res.Traffic)
	}
	// Not vacuous: traffic flowed, every fault class ran, the directory
	// was probed and moved, the checker saw every conversation.
	if res.Traffic.Acked < 500 || res.Traffic.Delivered < res.Traffic.Acked || inv.Unchecked != 0 || inv.Conversations == 0 {
		t.Fatalf("too little was checked: traffic %+v, invariants %+v", res.Traffic, inv)
	}
	seen := map[string]bool{}
	for _, f := range res.Report.Faults {
		if f.End.IsZero() {
			t.Fatalf("fault %+v never ended", f)
		}
		seen[f.Kind] = true
	}
	for _, k := range sim.FaultKinds {
		if !seen[k] {
			t.Fatalf("fault class %s never ran (ran: %v)", k, seen)
		}
	}
	// Region loss was measured: some conversation lost its writer and
	// recovered.
	recovered := 0
	for _, r := range res.Report.RTO {
		recovered += r.Recovered
	}
	if len(res.Report.RTO) == 0 || recovered == 0 {
		t.Fatalf("no region loss recovery measured: %+v", res.Report.RTO)
	}
	if inv.DirOps < 100 || res.Moves == 0 || inv.Linearizability != "ok" {
		t.Fatalf("directory history: %d ops, %d moves, %s", inv.DirOps, res.Moves, inv.Linearizability)
	}
	for _, f := range []string{"report.json", "timeline.svg"} {
		if !slices.ContainsFunc(res.Files, func(p string) bool { return filepath.Base(p) == f }) {
			t.Fatalf("%s not written: %v", f, res.Files)
		}
	}
}

// TestLivenessVerdict: the liveness verdict over crafted figures (no
// processes). A run the checker passes — nothing lost, duplicated or
// reordered — is still not live when its traffic did not drain or a
// region loss left conversations that never recovered or recovered too
// late; the error names the seed and every finding.
func TestLivenessVerdict(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	live := driver.Stats{Sent: 100, Acked: 100, Delivered: 200, Drained: true}
	rto := func(never int, samples ...float64) report.RTO {
		r := report.RTO{Kind: "kill-region", Target: "fra", Start: t0, Conversations: len(samples) + never,
			Recovered: len(samples), NeverRecovered: never, SamplesMs: samples}
		for _, s := range samples {
			r.Times.MaxMs = max(r.Times.MaxMs, s)
		}
		r.Times.N = len(samples)
		return r
	}
	rep := func(rs ...report.RTO) report.Report { return report.Report{RTO: rs} }
	for _, tc := range []struct {
		name   string
		st     driver.Stats
		rep    report.Report
		maxRTO time.Duration
		want   []string // substrings of the findings, in order; none: live
	}{
		{"live", live, rep(rto(0, 1200, 3400)), sim.DefaultMaxRTO, nil},
		{"no region loss", live, rep(), sim.DefaultMaxRTO, nil},
		{"not drained", driver.Stats{Sent: 100, Acked: 90, Unacked: 10, MissingDeliveries: 3}, rep(), sim.DefaultMaxRTO,
			[]string{"did not drain", "10 messages never acked", "3 deliveries missing"}},
		{"drained flag alone", driver.Stats{Sent: 1, Acked: 1}, rep(), sim.DefaultMaxRTO, []string{"did not drain"}},
		{"never recovered", live, rep(rto(0, 900), rto(2, 800)), sim.DefaultMaxRTO,
			[]string{"kill-region fra at 12:00:00.000: 2 of 3 conversations never recovered"}},
		{"too slow", live, rep(rto(0, 900, 10001, 12000)), sim.DefaultMaxRTO, []string{"2 of 3 recovered conversations took over 10s"}},
		{"at the bound", live, rep(rto(0, 10000)), sim.DefaultMaxRTO, nil},
		{"no bound", live, rep(rto(0, 60000)), -1, nil},
		{"no bound, never recovered", live, rep(rto(1, 60000)), -1, []string{"1 of 2 conversations never recovered"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := sim.LivenessProblems(tc.st, tc.rep, tc.maxRTO)
			if len(got) != len(tc.want) {
				t.Fatalf("findings %q, want %d like %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Fatalf("finding %d %q, want it to say %q", i, got[i], w)
				}
			}
			res := sim.MeshSimResult{Seed: 4242, Traffic: tc.st, Report: tc.rep}
			err := res.Liveness(tc.maxRTO)
			if (err == nil) != (len(tc.want) == 0) {
				t.Fatalf("Liveness: %v, findings %q", err, got)
			}
			if err != nil && (!errors.Is(err, sim.ErrNotLive) || errors.Is(err, sim.ErrInvariant) || !strings.Contains(err.Error(), "seed 4242")) {
				t.Fatalf("Liveness: %v: want ErrNotLive naming seed 4242", err)
			}
		})
	}
}
