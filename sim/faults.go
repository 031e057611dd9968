package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"
)

// ScheduledFault is one fault of a schedule: at At after the run starts,
// Kind hits Target (and Peer, for a one-way partition or a latency spike,
// with Latency) for Duration; then it is healed (a killed process is
// restarted). A kill-leader's Target is empty: the leader is whoever leads
// when it fires.
type ScheduledFault struct {
	At       time.Duration `json:"at"`
	Kind     string        `json:"kind"`
	Target   string        `json:"target,omitempty"`
	Peer     string        `json:"peer,omitempty"`
	Latency  time.Duration `json:"latency,omitempty"`
	Duration time.Duration `json:"duration"`
}

// ScheduleConfig configures NewSchedule.
type ScheduleConfig struct {
	// Seed makes the schedule: the same seed (and the rest of the
	// configuration) gives the same schedule.
	Seed uint64
	// Duration is the run's length; every fault ends by then.
	Duration time.Duration
	// Regions the faults hit (at least two).
	Regions []string
	// Kinds are the fault classes to draw from; each appears at least
	// once. Default FaultKinds (all of them).
	Kinds []string
	// Slot is the time given to one fault: the run is cut into
	// Duration/Slot slots, one fault each (so faults never overlap and a
	// quorum of voters stays up); each fault starts in the first quarter
	// of its slot and lasts 30-60% of it, leaving the rest to recover.
	// Default Duration / len(Kinds) (one fault per class), at most 20 s.
	Slot time.Duration
	// MaxLatency bounds a link-latency spike (drawn from MaxLatency/4 up).
	// Default 400 ms.
	MaxLatency time.Duration
}

// MinSlot is the shortest slot NewSchedule accepts: a kill needs time to
// restart and a partition to heal within its slot.
const MinSlot = 2 * time.Second

// NewSchedule returns a deterministic fault schedule: Duration cut into
// slots, one fault per slot, every kind of Kinds at least once (the first
// len(Kinds) slots take the kinds in an order drawn from the seed, later
// slots draw kinds at random), targets drawn from Regions. Same
// configuration, same schedule.
func NewSchedule(cfg ScheduleConfig) ([]ScheduledFault, error) {
	if len(cfg.Regions) < 2 {
		return nil, errors.New("sim: a fault schedule needs at least two regions")
	}
	kinds := cfg.Kinds
	if len(kinds) == 0 {
		kinds = FaultKinds
	}
	for _, k := range kinds {
		if !slices.Contains(FaultKinds, k) {
			return nil, fmt.Errorf("sim: unknown fault kind %q", k)
		}
	}
	slot := cfg.Slot
	if slot <= 0 {
		slot = min(cfg.Duration/time.Duration(len(kinds)), 20*time.Second)
	}
	if slot < MinSlot {
		return nil, fmt.Errorf("sim: slots of %v (duration %v, %d kinds): want at least %v", slot, cfg.Duration, len(kinds), MinSlot)
	}
	n := int(cfg.Duration / slot)
	if n < len(kinds) {
		return nil, fmt.Errorf("sim: %v holds %d slots of %v, fewer than the %d fault kinds", cfg.Duration, n, slot, len(kinds))
	}
	maxLat := cfg.MaxLatency
	if maxLat <= 0 {
		maxLat = 400 * time.Millisecond
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x63686174_6d657368)) // "chatmesh"
	order := slices.Clone(kinds)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for len(order) < n {
		order = append(order, kinds[rng.IntN(len(kinds))])
	}
	regions := cfg.Regions
	out := make([]ScheduledFault, 0, n)
	for i, kind := range order {
		start := time.Duration(i) * slot
		f := ScheduledFault{Kind: kind,
			At:       start + time.Duration(rng.Int64N(int64(slot/4))),
			Duration: slot*3/10 + time.Duration(rng.Int64N(int64(slot*3/10)))}
		if kind != FaultKillLeader {
			f.Target = regions[rng.IntN(len(regions))]
		}
		if kind == FaultOneWayPartition || kind == FaultLinkLatency {
			others := slices.DeleteFunc(slices.Clone(regions), func(r string) bool { return r == f.Target })
			f.Peer = others[rng.IntN(len(others))]
		}
		if kind == FaultLinkLatency {
			f.Latency = maxLat/4 + time.Duration(rng.Int64N(int64(maxLat-maxLat/4)+1))
		}
		out = append(out, f)
	}
	return out, nil
}

// RunSchedule applies sched to m in real time, from now: each fault at
// its At, healed (or its processes restarted) after its Duration. The
// schedule's faults must not overlap (NewSchedule's never do). It returns
// when the last fault has ended, or when ctx ends — then it heals every
// network fault and restarts what it killed (each restart bounded by
// MeshConfig.StartTimeout) before returning ctx's error. A fault that
// cannot be injected is logged and skipped (joined into the error); a
// failed restart stops the run.
func RunSchedule(ctx context.Context, m *Mesh, sched []ScheduledFault, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	begin := time.Now()
	var errs []error
	wait := func(until time.Duration) bool {
		t := time.NewTimer(time.Until(begin.Add(until)))
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for i, f := range sched {
		if i > 0 && f.At < sched[i-1].At+sched[i-1].Duration {
			return fmt.Errorf("sim: scheduled fault %d (%s at %v) overlaps the one before", i, f.Kind, f.At)
		}
	}
	for _, f := range sched {
		if !wait(f.At) {
			break
		}
		log.Info("inject", "kind", f.Kind, "target", f.Target, "peer", f.Peer, "for", f.Duration)
		undo, err := inject(ctx, m, f)
		if err != nil {
			log.Warn("fault not injected", "kind", f.Kind, "target", f.Target, "err", err)
			errs = append(errs, fmt.Errorf("%s %s: %w", f.Kind, f.Target, err))
			continue
		}
		wait(f.At + f.Duration) // on ctx's end, undo at once
		uctx := ctx
		if ctx.Err() != nil {
			var cancel context.CancelFunc
			uctx, cancel = context.WithTimeout(context.Background(), m.cfg.StartTimeout)
			defer cancel()
		}
		if err := undo(uctx); err != nil {
			m.Heal()
			return errors.Join(append(errs, fmt.Errorf("sim: heal %s %s: %w", f.Kind, f.Target, err))...)
		}
	}
	m.Heal()
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// inject applies one scheduled fault and returns how to end it.
func inject(ctx context.Context, m *Mesh, f ScheduledFault) (func(context.Context) error, error) {
	heal := func(id FaultID) func(context.Context) error {
		return func(context.Context) error { m.HealFault(id); return nil }
	}
	switch f.Kind {
	case FaultKillRegion:
		if err := m.KillRegion(f.Target); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return m.RestartRegion(ctx, f.Target) }, nil
	case FaultKillLeader:
		r, err := m.KillLeader(ctx)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return m.RestartRegion(ctx, r) }, nil
	case FaultKillBroker:
		if err := m.KillBroker(f.Target); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return m.RestartBroker(ctx, f.Target) }, nil
	case FaultPartitionDirectory:
		id, err := m.PartitionDirectory(f.Target)
		return heal(id), err
	case FaultPartitionStore:
		id, err := m.PartitionStore(f.Target)
		return heal(id), err
	case FaultPartitionLinks:
		id, err := m.PartitionLinks(f.Target)
		return heal(id), err
	case FaultOneWayPartition:
		id, err := m.OneWayPartition(f.Target, f.Peer)
		return heal(id), err
	case FaultLinkLatency:
		id, err := m.LinkLatency(f.Target, f.Peer, f.Latency)
		return heal(id), err
	default:
		return nil, fmt.Errorf("sim: unknown fault kind %q", f.Kind)
	}
}
