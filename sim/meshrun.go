package sim

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/sim/check"
	"github.com/chatmesh/chatmesh/sim/driver"
	"github.com/chatmesh/chatmesh/sim/report"
)

// MeshSimConfig configures RunMeshSim: the multi-region simulation.
// Binary and PostgresDSN are required; zero values get the defaults of
// `chatmesh sim`.
type MeshSimConfig struct {
	// Binary is the chatmesh executable that runs every process.
	Binary string
	// PostgresDSN is the global store (CockroachDB's stand-in).
	PostgresDSN string
	// Kafka, if set, is a real Kafka cluster per region (see
	// MeshConfig.Kafka); default an embedded broker process per region.
	Kafka [][]string
	// Regions is the number of regions, 2..3 (default 3).
	Regions int
	// Seed makes the run: the fault schedule, the users, conversations,
	// senders and moves. 0 draws one (printed in the result).
	Seed uint64
	// Duration is the sending time, with faults (default 2 min); Drain
	// bounds the wait afterwards for every ack and delivery (default 2
	// min).
	Duration, Drain time.Duration
	// Traffic (driver.Config's fields of the same names).
	Users, SecondDevices, Directs, Groups, GroupSize, Moves int
	DirectRate, GroupRate                                   float64
	// Faults are the fault classes to inject (default FaultKinds, every
	// class at least once); NoFaults runs none.
	Faults   []string
	NoFaults bool
	// Slot is the time given to one fault (ScheduleConfig.Slot).
	Slot time.Duration
	// ProbeEvery is how often the directory is read (linearizably, from a
	// random voter) for the linearizability check; MoveEvery how often a
	// conversation is moved by a planned move (default 250 ms and 7 s; a
	// negative MoveEvery moves nothing).
	ProbeEvery, MoveEvery time.Duration
	// CheckEvery is how often the continuous checks run while the
	// traffic flows (duplicates, orders, writers, epochs so far; default
	// 5 s). A violation found then is logged at once; the run goes on to
	// the final check, which decides.
	CheckEvery time.Duration
	// MaxRTO bounds the recovery time of every conversation a region loss
	// hit (report.RTO); a longer one fails the liveness verdict (default
	// DefaultMaxRTO, issue 8's bound; negative: no bound).
	MaxRTO time.Duration
	// ReportDir, if set, receives report.json, timeline.svg and
	// directory.html (porcupine's view of the directory history), also
	// when the run fails.
	ReportDir string
	// Logger receives progress (faults, phases). Default: discard.
	Logger *slog.Logger
	// Progress, if set, is called every ProgressEvery (default 5 s) while
	// the traffic runs and drains, from a goroutine of its own.
	Progress      func(MeshProgress)
	ProgressEvery time.Duration
}

// MeshProgress is what a run did so far (MeshSimConfig.Progress).
type MeshProgress struct {
	Elapsed time.Duration // since the traffic started
	driver.Counts
	Scheduled int // faults in the schedule
}

// MeshSimResult is what a multi-region simulation did and found.
type MeshSimResult struct {
	Seed     uint64           `json:"seed"`
	Schedule []ScheduledFault `json:"schedule"`
	Traffic  driver.Stats     `json:"traffic"`
	Moves    int              `json:"directory_moves"`
	// LiveViolations counts the violations the continuous checks saw
	// while the traffic ran (the final check repeats and decides).
	LiveViolations int `json:"live_violations"`
	// NotLive is the liveness verdict's findings (LivenessProblems):
	// empty when the run was live.
	NotLive []string      `json:"not_live,omitempty"`
	Report  report.Report `json:"report"`
	// Files written under ReportDir.
	Files []string `json:"files,omitempty"`
}

// ErrInvariant: the checker found a violation (lost, duplicated or
// reordered messages, a gap, a second writer, an epoch going back, a
// non-linearizable directory history). The error names the seed that
// reproduces the run.
var ErrInvariant = errors.New("sim: invariant violated")

// ErrNotLive: the run was safe so far as the checker saw, but not live —
// the traffic did not drain, or a region loss left conversations that
// never accepted messages again or took longer than MaxRTO to. The error
// names the seed and each finding (LivenessProblems).
var ErrNotLive = errors.New("sim: not live")

// DefaultMaxRTO is MeshSimConfig.MaxRTO's default: issue 8's bound on the
// recovery time of a region's conversations after its loss.
const DefaultMaxRTO = 10 * time.Second

// LivenessProblems is the liveness verdict over a run's traffic figures
// and report, with maxRTO the bound on recovery (≤ 0: none). It lists,
// in this order:
//   - the traffic did not drain (st.Drained false);
//   - st.Unacked > 0: messages sent and never acked nor failed;
//   - st.MissingDeliveries > 0: (acked message, member device) pairs
//     never delivered;
//   - per region-loss entry of rep.RTO with NeverRecovered > 0: those
//     conversations had messages to write and never accepted one again;
//   - per entry, when maxRTO > 0, the recovered conversations whose RTO
//     exceeds maxRTO (from SamplesMs, or Times.MaxMs when it has none).
//
// Nil means live. It is a pure function of its arguments.
func LivenessProblems(st driver.Stats, rep report.Report, maxRTO time.Duration) []string {
	var out []string
	if !st.Drained {
		out = append(out, "traffic did not drain")
	}
	if st.Unacked > 0 {
		out = append(out, fmt.Sprintf("%d messages never acked", st.Unacked))
	}
	if st.MissingDeliveries > 0 {
		out = append(out, fmt.Sprintf("%d deliveries missing", st.MissingDeliveries))
	}
	bound := float64(maxRTO) / float64(time.Millisecond)
	for _, r := range rep.RTO {
		what := fmt.Sprintf("%s %s at %s", r.Kind, r.Target, r.Start.Format("15:04:05.000"))
		if r.NeverRecovered > 0 {
			out = append(out, fmt.Sprintf("%s: %d of %d conversations never recovered", what, r.NeverRecovered, r.Conversations))
		}
		if maxRTO <= 0 {
			continue
		}
		over := 0
		for _, v := range r.SamplesMs {
			if v > bound {
				over++
			}
		}
		if over == 0 && len(r.SamplesMs) == 0 && r.Times.MaxMs > bound {
			over = 1
		}
		if over > 0 {
			out = append(out, fmt.Sprintf("%s: %d of %d recovered conversations took over %v (max %.0f ms)", what, over, r.Recovered, maxRTO, r.Times.MaxMs))
		}
	}
	return out
}

// Liveness is the liveness verdict on r (LivenessProblems over its
// Traffic and Report): nil, or ErrNotLive naming r.Seed and each finding.
func (r *MeshSimResult) Liveness(maxRTO time.Duration) error {
	p := LivenessProblems(r.Traffic, r.Report, maxRTO)
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%w (reproduce with seed %d): %s", ErrNotLive, r.Seed, strings.Join(p, "; "))
}

func (c *MeshSimConfig) defaults() error {
	if c.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		c.Binary = exe
	}
	if c.PostgresDSN == "" {
		return errors.New("sim: the multi-region simulation needs PostgreSQL as its global store (--pg or CHATMESH_PG_DSN)")
	}
	if c.Regions == 0 {
		c.Regions = 3
	}
	if c.Regions < 2 || c.Regions > 3 {
		return fmt.Errorf("sim: %d regions: want 2 or 3", c.Regions)
	}
	for c.Seed == 0 {
		c.Seed = mrand.Uint64()
	}
	if c.Duration <= 0 {
		c.Duration = 2 * time.Minute
	}
	if c.Drain <= 0 {
		c.Drain = 2 * time.Minute
	}
	if c.ProbeEvery <= 0 {
		c.ProbeEvery = 250 * time.Millisecond
	}
	if c.MoveEvery == 0 {
		c.MoveEvery = 7 * time.Second
	}
	if c.MaxRTO == 0 {
		c.MaxRTO = DefaultMaxRTO
	}
	if c.CheckEvery <= 0 {
		c.CheckEvery = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// RunMeshSim runs the region simulator: the mesh as separate processes
// (StartMesh), clients with durable outboxes across its regions
// (sim/driver), the seeded fault schedule (NewSchedule, RunSchedule) and
// a directory prober while the traffic runs; then, with every fault
// healed and the traffic drained, the checker (sim/check) over everything
// recorded and the report (sim/report), and the liveness verdict
// (LivenessProblems). Once the traffic has started, the check, the
// report and its files (under ReportDir) are made whatever happened; the
// error then joins, each naming the seed: a fault that could not be
// injected or healed, a traffic error, ctx's error, ErrNotLive and
// ErrInvariant. The result is filled either way.
func RunMeshSim(ctx context.Context, cfg MeshSimConfig) (MeshSimResult, error) {
	if err := cfg.defaults(); err != nil {
		return MeshSimResult{}, err
	}
	res := MeshSimResult{Seed: cfg.Seed}
	log := cfg.Logger.With("seed", cfg.Seed)
	dataDir, err := os.MkdirTemp("", "chatmesh-sim-")
	if err != nil {
		return res, fmt.Errorf("sim: %w", err)
	}
	defer os.RemoveAll(dataDir)
	token := "sim-" + rand.Text()
	m, err := StartMesh(ctx, MeshConfig{
		Binary: cfg.Binary, Regions: DefaultMeshRegions(cfg.Regions), DataDir: filepath.Join(dataDir, "mesh"),
		PostgresDSN: cfg.PostgresDSN, Kafka: cfg.Kafka, Logger: log,
		// Every simulated client connects from loopback: lift the per-IP
		// limits that would refuse most of them, keep the rest.
		EdgeArgs: []string{"--registration-token", token, "--max-conns-per-ip", "5000", "--ip-messages-per-second", "100000"},
	})
	if err != nil {
		return res, err
	}
	defer m.Stop()
	log.Info("sim: mesh up", "regions", m.Regions())

	var regions []driver.Region
	var voters []Voter
	for _, name := range m.Regions() {
		ep, err := m.Endpoints(name)
		if err != nil {
			return res, err
		}
		regions = append(regions, driver.Region{Name: name, Edges: []driver.Edge{{URL: ep.EdgeWS, NoiseKey: ep.EdgeKey}}})
		voters = append(voters, Voter{Name: name, Client: &directory.AdminClient{URL: ep.DirectoryHTTP, Token: m.DirectoryToken()}})
	}
	live := check.NewChecker(check.Options{})
	d, err := driver.New(driver.Config{
		Checker: live,
		Regions: regions, StateDir: filepath.Join(dataDir, "clients"), Seed: cfg.Seed,
		Users: cfg.Users, SecondDevices: cfg.SecondDevices, Directs: cfg.Directs, Groups: cfg.Groups, GroupSize: cfg.GroupSize,
		DirectRate: cfg.DirectRate, GroupRate: cfg.GroupRate, Duration: cfg.Duration, Drain: cfg.Drain, Moves: cfg.Moves,
		RegistrationToken: token, Logger: log,
	})
	if err != nil {
		return res, err
	}
	if !cfg.NoFaults {
		res.Schedule, err = NewSchedule(ScheduleConfig{Seed: cfg.Seed, Duration: cfg.Duration, Regions: m.Regions(), Kinds: cfg.Faults, Slot: cfg.Slot})
		if err != nil {
			return res, err
		}
	}
	if err := d.Start(ctx); err != nil {
		return res, fmt.Errorf("sim: seed %d: traffic setup: %w", cfg.Seed, err)
	}
	log.Info("sim: traffic running", "users", len(d.Plan().Users), "faults", len(res.Schedule))

	// Faults and the prober run beside the traffic; both end with it.
	bg, stopBG := context.WithCancel(ctx)
	if cfg.Progress != nil {
		every := cfg.ProgressEvery
		if every <= 0 {
			every = 5 * time.Second
		}
		go func(start time.Time) {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-bg.Done():
					return
				case <-t.C:
					cfg.Progress(MeshProgress{Elapsed: time.Since(start), Counts: d.Counts(), Scheduled: len(res.Schedule)})
				}
			}
		}(time.Now())
	}
	faultErr := make(chan error, 1)
	go func() { faultErr <- RunSchedule(bg, m, res.Schedule, log) }()
	// The conversations are fixed once the traffic started.
	var convs []string
	for _, pc := range slices.Concat(d.Plan().Directs, d.Plan().Groups) {
		convs = append(convs, pc.ID)
	}
	slices.Sort(convs)
	pr := &prober{voters: voters, rng: mrand.New(mrand.NewPCG(cfg.Seed, 0x70c0)), record: d.AddDirOp,
		readEvery: cfg.ProbeEvery, moveEvery: max(cfg.MoveEvery, 0), timeout: 3 * time.Second, convs: convs}
	probeDone := make(chan struct{})
	go func() { defer close(probeDone); pr.run(bg) }()
	liveDone := make(chan struct{})
	go func() { defer close(liveDone); res.LiveViolations = watchLive(bg, live, cfg.CheckEvery, log) }()
	// The schedule ends within Duration; the prober stops when the
	// traffic has drained.
	ferr := <-faultErr
	stats, werr := d.Wait()
	stopBG()
	<-probeDone
	<-liveDone
	res.Traffic, res.Moves = stats, pr.moves
	var errs []error
	if ferr != nil && ctx.Err() == nil {
		errs = append(errs, fmt.Errorf("sim: seed %d: faults: %w", cfg.Seed, ferr))
	}
	if werr != nil {
		errs = append(errs, fmt.Errorf("sim: seed %d: traffic: %w", cfg.Seed, werr))
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, fmt.Errorf("sim: seed %d: %w", cfg.Seed, err))
	}

	// Check and report whatever happened: a failed run needs its report
	// most.
	h := d.History()
	h.Faults = m.Faults()
	opts := check.Options{}
	if cfg.ReportDir != "" {
		if err := os.MkdirAll(cfg.ReportDir, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("sim: %w", err))
		} else {
			opts.VisualizePath = filepath.Join(cfg.ReportDir, "directory.html")
		}
	}
	result := check.CheckWith(h, opts)
	res.Report = report.Build(h, result, report.Options{})
	res.Report.Seed = cfg.Seed
	res.NotLive = LivenessProblems(res.Traffic, res.Report, cfg.MaxRTO)
	if opts.VisualizePath != "" {
		if err := res.writeFiles(cfg.ReportDir); err != nil {
			errs = append(errs, err)
		}
		if result.Visualization != "" {
			res.Files = append(res.Files, result.Visualization)
		}
	}
	if err := res.Liveness(cfg.MaxRTO); err != nil {
		errs = append(errs, err)
	}
	if err := result.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%w (reproduce with seed %d): %w", ErrInvariant, cfg.Seed, err))
	}
	return res, errors.Join(errs...)
}

// writeFiles writes report.json and timeline.svg under dir.
func (r *MeshSimResult) writeFiles(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("sim: report: %w", err)
	}
	jp := filepath.Join(dir, "report.json")
	if err := os.WriteFile(jp, b, 0o644); err != nil {
		return fmt.Errorf("sim: report: %w", err)
	}
	sp := filepath.Join(dir, "timeline.svg")
	f, err := os.Create(sp)
	if err != nil {
		return fmt.Errorf("sim: timeline: %w", err)
	}
	if err := report.WriteSVG(f, &r.Report); err != nil {
		f.Close()
		return fmt.Errorf("sim: timeline: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("sim: timeline: %w", err)
	}
	r.Files = append(r.Files, jp, sp)
	return nil
}

// watchLive runs the continuous checks every every until ctx ends: each
// new violation is logged at once (with the seed, in log). It returns the
// most violations seen.
func watchLive(ctx context.Context, c *check.Checker, every time.Duration, log *slog.Logger) int {
	t := time.NewTicker(every)
	defer t.Stop()
	reported := map[check.Kind]int{}
	most := 0
	for {
		select {
		case <-ctx.Done():
			return most
		case <-t.C:
		}
		r := c.Snapshot()
		total := 0
		for k, tally := range r.Violations {
			total += tally.Count
			if tally.Count > reported[k] {
				reported[k] = tally.Count
				log.Error("sim: invariant violated while running", "kind", k, "count", tally.Count, "examples", tally.Examples)
			}
		}
		most = max(most, total)
		log.Info("sim: live check", "acked", r.Acked, "deliveries", r.Deliveries, "pending", r.Pending, "violations", total)
	}
}
