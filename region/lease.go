package region

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	// Heartbeat sends one heartbeat, echoing the token of the last reply
	// acted on, and returns the leader's reply (directory.Directory.
	// Heartbeat, or AdminClient.Heartbeat).
	Heartbeat func(ctx context.Context, region string, echo directory.HeartbeatToken) (directory.HeartbeatReply, error)
	// WaitApplied waits until the region's copy of the directory has
	// applied an index (directory.Directory.WaitApplied); nil when the
	// region reads the leader's copy itself.
	WaitApplied func(ctx context.Context, index uint64) error
	// Rejoin marks the region healthy again once the failure detector
	// failed it and it has then held its lease for RejoinAfter
	// (directory.Directory.Rejoin: refused with ErrHeldByOperator when an
	// operator failed it); nil: an operator restores it.
	Rejoin func(ctx context.Context, region string) error
	// RejoinAfter is how long a deposed region must hold its lease (every
	// heartbeat answered, its copy caught up, so it forwards everything
	// it holds to the current homes) before it rejoins. Default 10 s;
	// negative: never rejoin by itself.
	RejoinAfter time.Duration
	// Lease and FailAfter are used until a reply carries the directory's
	// (HeartbeatReply.LeaseMS, FailAfterMS); defaults
	// directory.DefaultLease and directory.DefaultFailAfter.
	Lease, FailAfter time.Duration
	// Every is the heartbeat interval until a reply carries the lease;
	// then a quarter of the directory's lease.
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
	Rejoins  uint64 `json:"rejoins"`  // rejoins (restore_region) that succeeded
	Held     bool   `json:"held"`     // the lease is held now
}

// Lease is a region's lease from the directory (the region side of the
// contract in region/directory's doc.go, "Heartbeats, failure detection
// and failover"). Run heartbeats to the directory's leader every quarter
// lease. Each heartbeat echoes the token of the last reply the region
// acted on; the leader counts the region as alive at that reply's time,
// so a region whose replies are lost is failed like a silent one. A reply
// extends the lease — once the region's own copy of the directory has
// applied the index the leader answered at — to the time the heartbeat
// was SENT plus the lease, but only when that heartbeat was sent within
// FailAfter - 2 x Lease of receiving the reply whose token it echoed (and
// that reply came within a lease of its own send): then the leader, which
// fails a region no sooner than FailAfter after the echoed reply, cannot
// fail it before the lease ends. The sequencer sequences only while the
// lease is held (Valid). Times are the process's monotonic clock.
//
// A reply with Healthy=false means the directory failed the region: its
// homes moved away at higher epochs. The region keeps its lease (its copy
// shows the moves, so its sequencer forwards every record it still holds
// to the current homes instead of writing), and after RejoinAfter of
// answered heartbeats it rejoins (Rejoin) if the failure detector failed
// it; a region an operator failed waits for the operator. Rejoining only
// lets new users and conversations be homed here again: homes that moved
// away stay where they are until a planned move brings them back.
type Lease struct {
	cfg  LeaseConfig
	log  *slog.Logger
	base time.Time // monotonic origin of until
	// until is the lease's end, in nanoseconds after base.
	until atomic.Int64
	// silent is the leader's latest list of regions it has not heard from
	// (HeartbeatReply.Silent).
	silent atomic.Pointer[[]string]

	beats, failures, lapses, rejoins atomic.Uint64
	deposed                          atomic.Bool

	mu sync.Mutex
	// echo is the token of the last reply acted on, and echoRecv when it
	// arrived (zero: none yet).
	echo     directory.HeartbeatToken
	echoRecv time.Time
	// lease, failAfter and every follow the directory's replies.
	lease, failAfter, every time.Duration
	deposedSince            time.Time // first answered heartbeat of the current deposed stretch
	lapsed                  bool
	held                    bool // an operator holds the region failed: do not ask to rejoin
}

// NewLease returns a Lease; Run starts it.
func NewLease(cfg LeaseConfig) (*Lease, error) {
	if cfg.Region == "" || cfg.Heartbeat == nil {
		return nil, errors.New("region: lease needs a region name and a heartbeat function")
	}
	if cfg.Lease <= 0 {
		cfg.Lease = directory.DefaultLease
	}
	if cfg.FailAfter <= 0 {
		cfg.FailAfter = directory.DefaultFailAfter
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
	l := &Lease{cfg: cfg, log: cfg.Logger.With("component", "lease", "region", cfg.Region), base: cfg.Now(),
		lease: cfg.Lease, failAfter: cfg.FailAfter, every: cfg.Every}
	l.until.Store(-1)
	return l, nil
}

// Valid reports whether the lease is held at now.
func (l *Lease) Valid(now time.Time) bool { return int64(now.Sub(l.base)) < l.until.Load() }

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
// heartbeat, had not heard from region for three heartbeat intervals: it
// is likely lost and about to be failed over. The sequencer does not
// forward records to such a region (the sender retries shortly).
func (l *Lease) Silent(region string) bool {
	p := l.silent.Load()
	return p != nil && slices.Contains(*p, region)
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
	l.mu.Lock()
	every := l.every
	l.mu.Unlock()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		l.beat(ctx)
		l.mu.Lock()
		if l.every != every {
			every = l.every
			t.Reset(every)
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// beat sends one heartbeat and extends the lease if the reply allows it.
func (l *Lease) beat(ctx context.Context) {
	l.mu.Lock()
	echo, echoRecv, lease := l.echo, l.echoRecv, l.lease
	l.mu.Unlock()
	sent := l.cfg.Now()
	// A reply later than a lease is worthless: it could not extend
	// anything (and the contract needs replies within a lease).
	hctx, cancel := context.WithTimeout(ctx, lease)
	defer cancel()
	rep, err := l.cfg.Heartbeat(hctx, l.cfg.Region, echo)
	if err == nil && l.cfg.WaitApplied != nil {
		// The lease is only as good as our copy: the sequencer must see
		// every failover the leader had applied when it answered.
		err = l.cfg.WaitApplied(hctx, rep.AppliedIndex)
	}
	recv := l.cfg.Now()
	if err == nil && recv.Sub(sent) >= lease {
		err = fmt.Errorf("reply after %v, more than the lease", recv.Sub(sent))
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
	l.mu.Lock()
	if rep.LeaseMS > 0 {
		l.lease = time.Duration(rep.LeaseMS) * time.Millisecond
		l.every = max(l.lease/4, 10*time.Millisecond)
	}
	if rep.FailAfterMS > 0 {
		l.failAfter = time.Duration(rep.FailAfterMS) * time.Millisecond
	}
	// Extend only from a heartbeat that followed the echoed reply closely
	// enough (see Lease): the leader fails us no sooner than FailAfter
	// after that reply.
	extend := !echoRecv.IsZero() && sent.Sub(echoRecv) <= l.failAfter-2*l.lease
	l.echo, l.echoRecv = rep.Token, recv
	if extend {
		until := int64(sent.Sub(l.base) + l.lease)
		for {
			cur := l.until.Load()
			if until <= cur || l.until.CompareAndSwap(cur, until) {
				break
			}
		}
		if l.lapsed {
			l.lapsed = false
			l.log.Info("directory lease held again; sequencing resumes", "leader", rep.Leader, "term", rep.Term)
		}
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
		l.mu.Lock()
		l.held, l.deposedSince = false, time.Time{}
		l.mu.Unlock()
		return
	}
	if !l.deposed.Swap(true) {
		l.log.Warn("the directory failed this region: its homes moved away; forwarding what it holds to the current homes")
	}
	l.mu.Lock()
	if l.deposedSince.IsZero() {
		l.deposedSince = at
	}
	since, held, lease := l.deposedSince, l.held, l.lease
	l.mu.Unlock()
	if held || l.cfg.Rejoin == nil || l.cfg.RejoinAfter < 0 || at.Sub(since) < l.cfg.RejoinAfter {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, lease)
	err := l.cfg.Rejoin(rctx, l.cfg.Region)
	cancel()
	switch {
	case errors.Is(err, directory.ErrHeldByOperator):
		l.mu.Lock()
		l.held = true
		l.mu.Unlock()
		l.log.Warn("an operator failed this region: it stays failed until an operator restores it (chatmesh directory restore-region)")
		return
	case err != nil:
		l.log.Warn("rejoin (restore_region) failed; retrying at the next heartbeat", "err", err)
		return
	}
	l.rejoins.Add(1)
	l.mu.Lock()
	l.deposedSince = time.Time{}
	l.mu.Unlock()
	l.log.Info("region rejoined the mesh (restore_region): it may home new users and conversations again; moved homes stay where they are")
}
