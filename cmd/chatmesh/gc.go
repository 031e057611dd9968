package main

import (
	"flag"
	"fmt"
	"log/slog"

	"github.com/chatmesh/chatmesh/internal/gctune"
)

// gcFlags is the collector's heap floor of the server commands (dev,
// region, edge, broker).
type gcFlags struct{ headroomMiB int }

func addGCFlags(fs *flag.FlagSet) *gcFlags {
	g := &gcFlags{}
	fs.IntVar(&g.headroomMiB, "gc-headroom", gctune.DefaultHeadroom>>20, "MiB of garbage the Go collector may let pile up between collections while the live heap is smaller than that (fewer collections under load, a lower latency tail; GOGC=100 once the heap is larger); 0: Go's default throughout. GOGC in the environment overrides it")
	return g
}

func (g *gcFlags) check() error {
	if g.headroomMiB < 0 || g.headroomMiB > 1<<20 {
		return fmt.Errorf("--gc-headroom %d: want 0 to %d MiB", g.headroomMiB, 1<<20)
	}
	return nil
}

// start runs the process's tuner; Stop the handle when the server stops.
func (g *gcFlags) start(logger *slog.Logger) *gctune.Handle {
	h := gctune.Start(int64(g.headroomMiB) << 20)
	if h != nil {
		logger.Debug("gc heap floor", "headroom_mib", g.headroomMiB)
	}
	return h
}
