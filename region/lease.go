package region

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/region/directory"
)

// ErrLeaseLost: the region holds no lease from the directory (no
// successful heartbeat reply within the lease), so its sequencer does not
// sequence. It is the region's state, not the record's: the record is
// retried (never dead-lettered) once the lease is back.
var ErrLeaseLost = fmt.Errorf("region: no directory lease: %w", core.ErrUnavailable)

// LeaseConfig configures a region's lease (see Lease).
type LeaseConfig struct {
	// Region is this region's name in the directory.
	Region string
	// Heartbeat sends one heartbeat and returns the leader's reply
	// (directory.Directory.Heartbeat, or AdminClient.Heartbeat).
	Heartbeat func(ctx context.Context, region string) (directory.HeartbeatReply, error)
	// WaitApplied waits until the region's copy of the directory has
	// applied an index (directory.Directory.WaitApplied); nil when the
	// region reads the leader's copy itself.
	WaitApplied func(ctx context.Context, index uint64) error
	// Rejoin marks the region healthy again (restore_region) once it has
	// been deposed and has then held its lease for RejoinAfter; nil: an
	// operator restores it.
	Rejoin func(ctx context.Context, region string) error
	// RejoinAfter is how long a deposed region must hold its lease (every
	// heartbeat answered, its copy caught up, so it forwards everything
	// it holds to the current homes) before it rejoins. Default 10 s;
	// negative: never rejoin by itself.
	RejoinAfter time.Duration
	// Lease is the lease used until a reply carries the directory's
	// (HeartbeatReply.LeaseMS); default directory.DefaultLease.
	Lease time.Duration
	// Every is the heartbeat interval; default a quarter of the lease.
	Every  time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// LeaseStats is what a Lease did.
type LeaseStats struct {
	Beats    uint64 `json:"beats"`    // answered heartbeats
	Failures uint64 `json:"failures"` // heartbeats that got no answer
	Lapses   uint64 `json:"lapses"`   // times the lease ran out
	Deposed  bool   `json:"deposed"`  // the directory holds this region failed
	Rejoins  uint64 `json:"rejoins"`  // restore_region calls that succeeded
	Held     bool   `json:"held"`     // the lease is held now
}

// Lease is a region's lease from the directory (the region side of the
// contract in region/directory's doc.go, "Heartbeats, failure detection
// and failover"). Run heartbeats to the directory's leader every Every;
// each answered heartbeat, once the region's own copy of the directory
// has applied the leader's index at the answer, extends the lease to the
// time the heartbeat was SENT plus the lease. The sequencer sequences only
// while the lease is held (Valid), so a region cut off from the
// directory majority stops before the directory can fail it (FailAfter,
// counted from the same send at the earliest, is longer than the lease).
//
// A reply with Healthy=false means the directory failed the region: its
// homes moved away at higher epochs. The region keeps its lease (its copy
// shows the moves, so its sequencer forwards every record it still holds
// to the current homes instead of writing), and after RejoinAfter of
// answered heartbeats it rejoins (Rejoin: restore_region), which only
// lets new users and conversations be homed here again: homes that moved
// away stay where they are until a planned move brings them back.
type Lease struct {
	cfg   LeaseConfig
	log   *slog.Logger
	until atomic.Int64 // unix nanoseconds; the lease is held before it
	// lease is the current lease length (the directory's, once known).
	lease atomic.Int64

	beats, failures, lapses, rejoins atomic.Uint64
	deposed                          atomic.Bool
	// silent is the leader's latest list of regions it has not heard from
	// (HeartbeatReply.Silent).
	silent atomic.Pointer[[]string]

	mu           sync.Mutex
	deposedSince time.Time // first answered heartbeat of the current deposed stretch
	lapsed       bool
}

// NewLease returns a Lease; Run starts it.
func NewLease(cfg LeaseConfig) (*Lease, error) {
	if cfg.Region == "" || cfg.Heartbeat == nil {
		return nil, errors.New("region: lease needs a region name and a heartbeat function")
	}
	if cfg.Lease <= 0 {
		cfg.Lease = directory.DefaultLease
	}
	if cfg.Every <= 0 {
		cfg.Every = cfg.Lease / 4
	}
	if cfg.RejoinAfter == 0 {
		cfg.RejoinAfter = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Lease{cfg: cfg, log: cfg.Logger.With("component", "lease", "region", cfg.Region)}
	l.lease.Store(int64(cfg.Lease))
	return l, nil
}

// Valid reports whether the lease is held at now.
func (l *Lease) Valid(now time.Time) bool { return now.UnixNano() < l.until.Load() }

// Await waits up to max for the lease to be held: nil once it is,
// ErrLeaseLost if it still is not after max, ctx's error if ctx ends.
func (l *Lease) Await(ctx context.Context, max time.Duration) error {
	if l.Valid(l.cfg.Now()) {
		return nil
	}
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return ErrLeaseLost
		case <-tick.C:
			if l.Valid(l.cfg.Now()) {
				return nil
			}
		}
	}
}

// Silent reports whether the directory's leader, at the last answered
// heartbeat, had not heard from region for more than half a lease: it is
// likely lost and about to be failed over. The sequencer does not forward
// records to such a region (the sender retries shortly).
func (l *Lease) Silent(region string) bool {
	p := l.silent.Load()
	if p == nil {
		return false
	}
	for _, s := range *p {
		if s == region {
			return true
		}
	}
	return false
}

// Stats returns the counters.
func (l *Lease) Stats() LeaseStats {
	return LeaseStats{Beats: l.beats.Load(), Failures: l.failures.Load(), Lapses: l.lapses.Load(),
		Deposed: l.deposed.Load(), Rejoins: l.rejoins.Load(), Held: l.Valid(l.cfg.Now())}
}

// Health is nil while the lease is held, else why not.
func (l *Lease) Health() error {
	if l.Valid(l.cfg.Now()) {
		return nil
	}
	return ErrLeaseLost
}

// Run heartbeats until ctx ends. It never returns early: a failed
// heartbeat is counted, logged when the lease runs out, and retried at the
// next tick.
func (l *Lease) Run(ctx context.Context) {
	t := time.NewTicker(l.cfg.Every)
	defer t.Stop()
	for {
		l.beat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// beat sends one heartbeat and extends the lease if it is answered.
func (l *Lease) beat(ctx context.Context) {
	sent := l.cfg.Now()
	lease := time.Duration(l.lease.Load())
	// No answer after a lease is worthless: it could not extend anything.
	hctx, cancel := context.WithTimeout(ctx, lease)
	defer cancel()
	rep, err := l.cfg.Heartbeat(hctx, l.cfg.Region)
	if err == nil && l.cfg.WaitApplied != nil {
		// The lease is only as good as our copy: the sequencer must see
		// every failover the leader had applied when it answered.
		err = l.cfg.WaitApplied(hctx, rep.AppliedIndex)
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		l.failures.Add(1)
		l.noteLapse(err)
		return
	}
	l.beats.Add(1)
	silent := rep.Silent
	l.silent.Store(&silent)
	if rep.LeaseMS > 0 {
		lease = time.Duration(rep.LeaseMS) * time.Millisecond
		l.lease.Store(int64(lease))
	}
	until := sent.Add(lease).UnixNano()
	for {
		cur := l.until.Load()
		if until <= cur || l.until.CompareAndSwap(cur, until) {
			break
		}
	}
	l.mu.Lock()
	if l.lapsed {
		l.lapsed = false
		l.log.Info("directory lease held again; sequencing resumes", "leader", rep.Leader, "term", rep.Term)
	}
	l.mu.Unlock()
	l.noteHealth(ctx, rep.Healthy, sent)
}

// noteLapse logs (once per lapse) that the lease ran out.
func (l *Lease) noteLapse(err error) {
	if l.Valid(l.cfg.Now()) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deposedSince = time.Time{} // a deposed region rejoins only after an unbroken stretch
	if !l.lapsed {
		l.lapsed = true
		l.lapses.Add(1)
		l.log.Error("directory lease lost: no heartbeat answered within the lease; the sequencer stops until it is back", "err", err)
	}
}

// noteHealth follows the region's health in the directory: deposed while
// it is failed, and rejoining after RejoinAfter of answered heartbeats.
func (l *Lease) noteHealth(ctx context.Context, healthy bool, at time.Time) {
	if healthy {
		if l.deposed.Swap(false) {
			l.log.Info("region is healthy in the directory again")
		}
		return
	}
	if !l.deposed.Swap(true) {
		l.log.Warn("the directory failed this region: its homes moved away; forwarding what it holds to the current homes")
	}
	l.mu.Lock()
	if l.deposedSince.IsZero() {
		l.deposedSince = at
	}
	since := l.deposedSince
	l.mu.Unlock()
	if l.cfg.Rejoin == nil || l.cfg.RejoinAfter < 0 || at.Sub(since) < l.cfg.RejoinAfter {
		return
	}
	if err := l.cfg.Rejoin(ctx, l.cfg.Region); err != nil {
		l.log.Warn("rejoin (restore_region) failed; retrying at the next heartbeat", "err", err)
		return
	}
	l.rejoins.Add(1)
	l.mu.Lock()
	l.deposedSince = time.Time{}
	l.mu.Unlock()
	l.log.Info("region rejoined the mesh (restore_region): it may home new users and conversations again; moved homes stay where they are")
}
