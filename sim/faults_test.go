package sim_test

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/sim"
)

// TestScheduleDeterministic: the same seed gives the same schedule, another
// seed another one; every fault kind appears, faults stay inside the run
// and never overlap, and the schedule is refused when it cannot cover
// every kind.
func TestScheduleDeterministic(t *testing.T) {
	regions := []string{"eu-central", "us-east", "ap-southeast"}
	cfg := sim.ScheduleConfig{Seed: 42, Duration: 2 * time.Minute, Regions: regions}
	a, err := sim.NewSchedule(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := sim.NewSchedule(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different schedules:\n%+v\n%+v", a, b)
	}
	cfg.Seed = 43
	c, _ := sim.NewSchedule(cfg)
	if reflect.DeepEqual(a, c) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
	for _, sched := range [][]sim.ScheduledFault{a, c} {
		seen := map[string]bool{}
		var end time.Duration
		for i, f := range sched {
			seen[f.Kind] = true
			if f.At < end {
				t.Fatalf("fault %d %+v overlaps the one before (ends %v)", i, f, end)
			}
			end = f.At + f.Duration
			if f.Duration <= 0 || end > cfg.Duration {
				t.Fatalf("fault %d %+v outside the run of %v", i, f, cfg.Duration)
			}
			switch {
			case f.Kind == sim.FaultKillLeader && f.Target != "":
				t.Fatalf("kill-leader with a target: %+v", f)
			case f.Kind != sim.FaultKillLeader && !slices.Contains(regions, f.Target):
				t.Fatalf("fault %+v targets no region", f)
			case (f.Kind == sim.FaultOneWayPartition || f.Kind == sim.FaultLinkLatency) && (f.Peer == f.Target || !slices.Contains(regions, f.Peer)):
				t.Fatalf("fault %+v: bad peer", f)
			case f.Kind == sim.FaultLinkLatency && f.Latency <= 0:
				t.Fatalf("latency spike without latency: %+v", f)
			}
		}
		for _, k := range sim.FaultKinds {
			if !seen[k] {
				t.Fatalf("kind %s missing from %+v", k, sched)
			}
		}
	}
	// Longer runs draw more faults; every kind still at least once.
	long, err := sim.NewSchedule(sim.ScheduleConfig{Seed: 1, Duration: 10 * time.Minute, Regions: regions, Slot: 10 * time.Second})
	if err != nil || len(long) != 60 {
		t.Fatalf("10 min in 10 s slots: %d faults, %v", len(long), err)
	}
	for _, bad := range []sim.ScheduleConfig{
		{Seed: 1, Duration: 10 * time.Second, Regions: regions},                       // slots too short
		{Seed: 1, Duration: time.Minute, Regions: regions[:1]},                        // one region
		{Seed: 1, Duration: time.Minute, Regions: regions, Kinds: []string{"meteor"}}, // unknown kind
		{Seed: 1, Duration: time.Minute, Regions: regions, Slot: 30 * time.Second},    // 2 slots, 8 kinds
	} {
		if _, err := sim.NewSchedule(bad); err == nil {
			t.Fatalf("NewSchedule(%+v) accepted", bad)
		}
	}
}
