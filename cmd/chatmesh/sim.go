package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/chatmesh/chatmesh/internal/loadgen"
	"github.com/chatmesh/chatmesh/sim"
)

func runSim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	crashEvery := fs.Duration("crash-every", 5*time.Second, "SIGKILL the region process this often (0: no faults)")
	downtime := fs.Duration("downtime", 300*time.Millisecond, "how long the region stays down after a kill")
	clients := fs.Int("clients", 20, "clients (one device each)")
	groups := fs.Int("groups", 1, "groups")
	groupSize := fs.Int("group-size", 10, "members per group")
	rate := fs.Float64("rate", 40, "1:1 messages per second (total)")
	groupRate := fs.Float64("group-rate", 5, "group messages per second (total)")
	duration := fs.Duration("duration", 30*time.Second, "traffic time")
	drain := fs.Duration("drain", 2*time.Minute, "max wait for acks and deliveries after traffic")
	data := fs.String("data", "", "region data directory (default: temporary)")
	verbose := fs.Bool("v", false, "log each injected fault")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	rep, err := sim.Run(ctx, sim.Config{
		DataDir: *data, CrashEvery: *crashEvery, Downtime: *downtime, Logger: logger,
		Load: loadgen.Config{Users: *clients, Groups: *groups, GroupSize: *groupSize, DirectRate: *rate,
			GroupRate: *groupRate, Duration: *duration, Drain: *drain},
	})
	b, jerr := json.MarshalIndent(rep, "", "  ")
	if jerr != nil {
		return jerr
	}
	fmt.Fprintln(stdout, string(b))
	if err != nil {
		return fmt.Errorf("sim: invariant violated or run failed: %w", err)
	}
	fmt.Fprintf(stdout, "sim: %d crashes; %d messages acked, %d deliveries; none lost, duplicated or reordered\n",
		rep.Crashes, rep.Load.Acked, rep.Load.Deliveries)
	return nil
}
