package sim_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/internal/loadgen"
	"github.com/chatmesh/chatmesh/sim"
)

// A short simulation with two SIGKILLs of the region: every acknowledged
// message reaches every member device exactly once and in the same order.
func TestSimulationSurvivesCrashes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "chatmesh")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/chatmesh/chatmesh/cmd/chatmesh").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := sim.Run(ctx, sim.Config{
		Binary: bin, CrashEvery: 3 * time.Second,
		Load: loadgen.Config{Users: 12, Groups: 1, GroupSize: 6, DirectRate: 40, GroupRate: 5,
			Duration: 8 * time.Second, Drain: 2 * time.Minute},
	})
	if err != nil {
		t.Fatalf("simulation: %v (report %+v)", err, rep)
	}
	if rep.Crashes < 2 {
		t.Fatalf("only %d crashes injected", rep.Crashes)
	}
	l := rep.Load
	if l.Acked != l.Sent || l.Missing != 0 || l.Duplicates != 0 || l.OrderViolations != 0 || l.Deliveries != l.ExpectedDeliveries {
		t.Fatalf("invariants: %+v", l)
	}
	t.Logf("%d crashes; %d messages acked, %d deliveries, none lost, duplicated or reordered", rep.Crashes, l.Acked, l.Deliveries)
}
