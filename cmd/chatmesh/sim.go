package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/internal/loadgen"
	"github.com/chatmesh/chatmesh/sim"
	"github.com/chatmesh/chatmesh/sim/check"
)

func runSim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	regions := fs.Int("regions", 3, "regions: 2..3 runs the multi-region simulator (separate processes per region, PostgreSQL as the global store, faults from a seeded schedule); 1 runs one `chatmesh dev` region SIGKILLed every --crash-every")
	seed := fs.Uint64("seed", 0, "multi-region: the seed of the fault schedule and the traffic (0: a random one, printed); the same seed reproduces the run")
	pg := fs.String("pg", os.Getenv("CHATMESH_PG_DSN"), "multi-region: PostgreSQL DSN of the global store (env CHATMESH_PG_DSN)")
	kafka := fs.String("kafka", "", "multi-region: a real Kafka cluster per region, REGION clusters separated by ';' (brokers by ','), in region order; default an embedded broker process per region")
	faults := fs.String("faults", "", "multi-region: comma-separated fault classes (default all: "+strings.Join(sim.FaultKinds, ",")+"); none: no faults")
	slot := fs.Duration("slot", 0, "multi-region: time per fault (default duration / number of classes, at most 20 s)")
	reportDir := fs.String("report", "", "multi-region: write report.json, timeline.svg and directory.html here")
	maxRTO := fs.Duration("max-rto", sim.DefaultMaxRTO, "multi-region: a conversation a region loss hit must accept messages again within this (liveness); negative: no bound")
	soak := fs.Duration("soak", 0, "multi-region: run seed after seed (from --seed, or random) until this much time has passed, and print the figures over all runs")
	users := fs.Int("clients", 0, "users (multi-region default 12; single region 20)")
	second := fs.Int("second-devices", 0, "multi-region: users with a second device in another region (default clients/4)")
	moves := fs.Int("moves", 2, "multi-region: devices that move to another region's edges during the run")
	groups := fs.Int("groups", 1, "groups")
	groupSize := fs.Int("group-size", 10, "members per group")
	rate := fs.Float64("rate", 0, "1:1 messages per second (total; multi-region default 20, single region 40)")
	groupRate := fs.Float64("group-rate", 0, "group messages per second (total; multi-region default 2, single region 5)")
	duration := fs.Duration("duration", 2*time.Minute, "traffic time (faults run during it)")
	drain := fs.Duration("drain", 2*time.Minute, "max wait for acks and deliveries after traffic")
	crashEvery := fs.Duration("crash-every", 5*time.Second, "single region: SIGKILL the region process this often (0: no faults)")
	downtime := fs.Duration("downtime", 300*time.Millisecond, "single region: how long the region stays down after a kill")
	data := fs.String("data", "", "single region: data directory (default: temporary)")
	verbose := fs.Bool("v", false, "log progress and each injected fault to stderr")
	progress := fs.Duration("progress", 5*time.Second, "print a progress line to stderr this often (elapsed, sent, acked, delivered, errors, faults); 0: none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	if *regions == 1 {
		load := loadgen.Config{Users: *users, Groups: *groups, GroupSize: *groupSize, DirectRate: cmpOr(*rate, 40),
			GroupRate: cmpOr(*groupRate, 5), Duration: *duration, Drain: *drain}
		if *progress > 0 {
			load.Progress, load.ProgressEvery = loadProgress(stderr, "sim"), *progress
		}
		return runSimOneRegion(ctx, stdout, logger, sim.Config{
			DataDir: *data, CrashEvery: *crashEvery, Downtime: *downtime, Logger: logger, Load: load,
		})
	}
	cfg := sim.MeshSimConfig{PostgresDSN: *pg, Regions: *regions, Seed: *seed, Duration: *duration, Drain: *drain,
		Users: *users, SecondDevices: *second, Groups: *groups, GroupSize: *groupSize, Moves: *moves,
		DirectRate: *rate, GroupRate: *groupRate, Slot: *slot, ReportDir: *reportDir, Logger: logger, MaxRTO: *maxRTO}
	if *progress > 0 {
		cfg.Progress, cfg.ProgressEvery = meshProgress(stderr), *progress
	}
	if *maxRTO == 0 {
		cfg.MaxRTO = -1 // --max-rto 0: no bound
	}
	if *kafka != "" {
		for _, c := range strings.Split(*kafka, ";") {
			cfg.Kafka = append(cfg.Kafka, splitBrokers(c))
		}
	}
	switch *faults {
	case "":
	case "none":
		cfg.NoFaults = true
	default:
		for _, f := range strings.Split(*faults, ",") {
			if f = strings.TrimSpace(f); !slices.Contains(sim.FaultKinds, f) {
				return fmt.Errorf("sim: unknown fault class %q (known: %s)", f, strings.Join(sim.FaultKinds, ", "))
			}
			cfg.Faults = append(cfg.Faults, strings.TrimSpace(f))
		}
	}
	if *soak > 0 {
		return runSoak(ctx, stdout, stderr, cfg, *soak)
	}
	res, err := sim.RunMeshSim(ctx, cfg)
	printMeshSim(stdout, res)
	if err != nil {
		return fmt.Errorf("sim: seed %d: %w", res.Seed, err)
	}
	return nil
}

func cmpOr(v, def float64) float64 {
	if v == 0 {
		return def
	}
	return v
}

// printMeshSim prints a run's result as JSON and a summary line.
func printMeshSim(stdout io.Writer, res sim.MeshSimResult) {
	b, _ := json.MarshalIndent(res, "", "  ")
	fmt.Fprintln(stdout, string(b))
	inv := res.Report.Invariants
	fmt.Fprintf(stdout, "sim: seed %d: %d faults; %d messages sent, %d acked, %d deliveries; lost %d, duplicated %d, reordered %d, gaps %d, second writers %d, epoch regressions %d, directory linearizable: %s\n",
		res.Seed, len(res.Schedule), res.Traffic.Sent, res.Traffic.Acked, res.Traffic.Delivered,
		inv.Count(check.Lost), inv.Count(check.Duplicated), inv.Count(check.Reordered), inv.Count(check.Gap), inv.Count(check.SecondWriter),
		inv.Count(check.EpochRegress), inv.Linearizability)
	for _, r := range res.Report.RTO {
		fmt.Fprintf(stdout, "sim: RTO %s %s at %s: %d conversations, %d recovered, p50 %.0f ms, max %.0f ms, never %d, no traffic %d\n",
			r.Kind, r.Target, r.Start.Format(time.TimeOnly), r.Conversations, r.Recovered, r.Times.P50Ms, r.Times.MaxMs, r.NeverRecovered, r.NoTraffic)
	}
	fmt.Fprintf(stdout, "sim: traffic drained %v, %d unacked, %d deliveries missing\n", res.Traffic.Drained, res.Traffic.Unacked, res.Traffic.MissingDeliveries)
	for _, p := range res.NotLive {
		fmt.Fprintf(stdout, "sim: NOT LIVE: %s\n", p)
	}
	for _, f := range res.Files {
		fmt.Fprintf(stdout, "sim: wrote %s\n", f)
	}
}

// soakSummary is what `chatmesh sim --soak` prints at the end.
type soakSummary struct {
	Runs  int      `json:"runs"`
	Seeds []uint64 `json:"seeds"`
	// Failed is every seed whose run returned an error; of them,
	// Invariant violated a safety invariant, NotLive failed the liveness
	// verdict (a run may do both), and the rest failed otherwise (setup,
	// a fault not injected, cancelled).
	Failed     []uint64 `json:"failed_seeds"`
	Invariant  []uint64 `json:"invariant_violated_seeds"`
	NotLive    []uint64 `json:"not_live_seeds"`
	Messages   int64    `json:"messages_acked"`
	Deliveries int64    `json:"deliveries"`
	Unacked    int64    `json:"unacked"`
	Missing    int64    `json:"missing_deliveries"`
	Faults     int      `json:"faults"`
	// RTO over every region-loss fault of every run. Conversations is
	// every conversation a region loss took the writer from; Recovered,
	// NeverRecovered and NoTraffic split them (report.RTO). The
	// percentiles (nearest rank, ms) are over the Recovered ones only;
	// OverBound counts recovered ones slower than MaxRTO, and
	// NeverRecovered ones are slower than any bound.
	RTOConversations int     `json:"rto_conversations"`
	RTORecovered     int     `json:"rto_recovered"`
	Never            int     `json:"rto_never_recovered"`
	NoTraffic        int     `json:"rto_no_traffic"`
	RTOP50Ms         float64 `json:"rto_recovered_p50_ms"`
	RTOP99Ms         float64 `json:"rto_recovered_p99_ms"`
	RTOMaxMs         float64 `json:"rto_recovered_max_ms"`
	MaxRTO           string  `json:"rto_bound"`
	OverBound        int     `json:"rto_over_bound"`
	Elapsed          string  `json:"elapsed"`
}

// runSoak runs seed after seed for about budget and prints the figures.
// It fails if any run failed: an invariant, the liveness verdict, or the
// run itself.
func runSoak(ctx context.Context, stdout, stderr io.Writer, cfg sim.MeshSimConfig, budget time.Duration) error {
	start := time.Now()
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	if cfg.MaxRTO == 0 {
		cfg.MaxRTO = sim.DefaultMaxRTO
	}
	var sum soakSummary
	var rtos []float64
	base := cfg.ReportDir
	for time.Since(start) < budget && ctx.Err() == nil {
		c := cfg
		c.Seed = seed
		if base != "" {
			c.ReportDir = filepath.Join(base, fmt.Sprintf("seed-%d", seed))
		}
		res, err := sim.RunMeshSim(ctx, c)
		sum.Runs++
		sum.Seeds = append(sum.Seeds, seed)
		sum.Messages += res.Traffic.Acked
		sum.Deliveries += res.Traffic.Delivered
		sum.Unacked += res.Traffic.Unacked
		sum.Missing += res.Traffic.MissingDeliveries
		sum.Faults += len(res.Schedule)
		for _, r := range res.Report.RTO {
			rtos = append(rtos, r.SamplesMs...)
			sum.RTOConversations += r.Conversations
			sum.RTORecovered += r.Recovered
			sum.Never += r.NeverRecovered
			sum.NoTraffic += r.NoTraffic
		}
		if err != nil {
			sum.Failed = append(sum.Failed, seed)
			if errors.Is(err, sim.ErrInvariant) {
				sum.Invariant = append(sum.Invariant, seed)
			}
			if errors.Is(err, sim.ErrNotLive) {
				sum.NotLive = append(sum.NotLive, seed)
			}
			fmt.Fprintf(stderr, "sim: soak: seed %d FAILED: %v\n", seed, err)
			if errors.Is(err, context.Canceled) {
				break
			}
		} else {
			fmt.Fprintf(stderr, "sim: soak: seed %d ok: %d acked, %d faults (%v so far)\n", seed, res.Traffic.Acked, len(res.Schedule), time.Since(start).Round(time.Second))
		}
		seed++
	}
	sum.finish(rtos, cfg.MaxRTO)
	sum.Elapsed = time.Since(start).Round(time.Second).String()
	b, _ := json.MarshalIndent(sum, "", "  ")
	fmt.Fprintln(stdout, string(b))
	fmt.Fprintln(stdout, sum.line())
	if len(sum.Failed) > 0 {
		return fmt.Errorf("sim: soak: %d of %d runs failed: seeds %v (invariant violated: %v; not live: %v)",
			len(sum.Failed), sum.Runs, sum.Failed, sum.Invariant, sum.NotLive)
	}
	return nil
}

// finish computes the RTO figures from the recovered conversations'
// times (ms) and the bound (≤ 0: none).
func (s *soakSummary) finish(rtos []float64, bound time.Duration) {
	slices.Sort(rtos)
	q := func(p float64) float64 {
		if len(rtos) == 0 {
			return 0
		}
		i := int(math.Ceil(p*float64(len(rtos)))) - 1
		return rtos[min(max(i, 0), len(rtos)-1)]
	}
	s.RTOP50Ms, s.RTOP99Ms, s.RTOMaxMs = q(0.5), q(0.99), q(1)
	s.MaxRTO, s.OverBound = "none", 0
	if bound > 0 {
		s.MaxRTO = bound.String()
		for _, v := range rtos {
			if v > float64(bound)/float64(time.Millisecond) {
				s.OverBound++
			}
		}
	}
}

// line is the soak's one-line verdict.
func (s *soakSummary) line() string {
	verdict := "every run safe and live"
	if len(s.Failed) > 0 {
		verdict = fmt.Sprintf("%d runs FAILED (invariant violated: %d, not live: %d)", len(s.Failed), len(s.Invariant), len(s.NotLive))
	}
	return fmt.Sprintf("sim: soak: %d runs, %d messages acked, %d faults; region loss hit %d conversations: %d recovered (RTO of those p50 %.0f ms, p99 %.0f ms, max %.0f ms; %d over %s), %d never recovered, %d without traffic; %s",
		s.Runs, s.Messages, s.Faults, s.RTOConversations, s.RTORecovered, s.RTOP50Ms, s.RTOP99Ms, s.RTOMaxMs, s.OverBound, s.MaxRTO, s.Never, s.NoTraffic, verdict)
}

// runSimOneRegion is the single-region simulator (one `chatmesh dev`
// process SIGKILLed at an interval).
func runSimOneRegion(ctx context.Context, stdout io.Writer, logger *slog.Logger, cfg sim.Config) error {
	if cfg.Load.Users == 0 {
		cfg.Load.Users = 20
	}
	rep, err := sim.Run(ctx, cfg)
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

// loadProgress prints a loadgen run's progress to w, one line each call.
func loadProgress(w io.Writer, cmd string) func(loadgen.Progress) {
	return func(p loadgen.Progress) {
		phase := "sending"
		if p.Draining {
			phase = "draining"
		}
		fmt.Fprintf(w, "%s: %5.0fs %s: sent %d, acked %d, failed %d, deliveries %d of %d\n",
			cmd, p.Elapsed.Seconds(), phase, p.Sent, p.Acked, p.Failed, p.Deliveries, p.ExpectedDeliveries)
	}
}

// meshProgress prints a multi-region run's progress to w.
func meshProgress(w io.Writer) func(sim.MeshProgress) {
	return func(p sim.MeshProgress) {
		fmt.Fprintf(w, "sim: %5.0fs: sent %d, acked %d, delivered %d, failed %d, faults %d of %d\n",
			p.Elapsed.Seconds(), p.Sent, p.Acked, p.Delivered, p.Failed, p.Faults, p.Scheduled)
	}
}
