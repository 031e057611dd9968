package region_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/directory"
)

// fakeDirectory answers heartbeats as told: up or not, healthy or not,
// and counts restore_region calls.
type fakeDirectory struct {
	up, healthy atomic.Bool
	applied     atomic.Uint64 // the leader's applied index in replies
	local       atomic.Uint64 // our copy's applied index
	rejoins     atomic.Int32
	beats       atomic.Int32
}

func (f *fakeDirectory) heartbeat(ctx context.Context, region string, _ directory.HeartbeatToken) (directory.HeartbeatReply, error) {
	f.beats.Add(1)
	if !f.up.Load() {
		<-ctx.Done() // a leader that does not answer
		return directory.HeartbeatReply{}, ctx.Err()
	}
	return directory.HeartbeatReply{Region: region, Healthy: f.healthy.Load(), AppliedIndex: f.applied.Load(), LeaseMS: 300}, nil
}

func (f *fakeDirectory) waitApplied(ctx context.Context, idx uint64) error {
	for f.local.Load() < idx {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func (f *fakeDirectory) rejoin(context.Context, string) error {
	f.rejoins.Add(1)
	f.healthy.Store(true)
	return nil
}

func newFakeLease(t *testing.T, f *fakeDirectory, rejoinAfter time.Duration) *region.Lease {
	t.Helper()
	l, err := region.NewLease(region.LeaseConfig{Region: "fra", Heartbeat: f.heartbeat, WaitApplied: f.waitApplied,
		Rejoin: f.rejoin, RejoinAfter: rejoinAfter, Lease: 300 * time.Millisecond, Every: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

func eventually(t *testing.T, what string, pred func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !pred() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The lease is held only after an answered heartbeat whose index our copy
// has applied, runs out when heartbeats go unanswered, and comes back.
func TestLeaseHeldOnlyWhileAnsweredAndCaughtUp(t *testing.T) {
	f := &fakeDirectory{}
	f.healthy.Store(true)
	f.applied.Store(7) // the leader is ahead of our copy (local 0)
	l := newFakeLease(t, f, -1)
	eventually(t, "answered heartbeats", func() bool { f.up.Store(true); return f.beats.Load() > 3 })
	if err := l.Await(context.Background(), 100*time.Millisecond); !errors.Is(err, region.ErrLeaseLost) || !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("lease held before our copy caught up: %v", err)
	}
	f.local.Store(7)
	if err := l.Await(context.Background(), 10*time.Second); err != nil {
		t.Fatalf("lease not held once caught up: %v", err)
	}
	// The directory stops answering: the lease runs out.
	f.up.Store(false)
	eventually(t, "the lease runs out", func() bool { return l.Health() != nil })
	if st := l.Stats(); st.Lapses != 1 || st.Held || st.Failures == 0 {
		t.Fatalf("stats after the lapse: %+v", st)
	}
	f.up.Store(true)
	if err := l.Await(context.Background(), 10*time.Second); err != nil {
		t.Fatalf("lease not back: %v", err)
	}
}

// A region the directory failed is deposed; after RejoinAfter of answered
// heartbeats it rejoins once. A lapse starts the stretch again.
func TestLeaseDeposedThenRejoins(t *testing.T) {
	f := &fakeDirectory{}
	f.up.Store(true)
	l := newFakeLease(t, f, 400*time.Millisecond)
	eventually(t, "deposed", func() bool { return l.Stats().Deposed })
	if f.rejoins.Load() != 0 {
		t.Fatal("rejoined at once")
	}
	// Held while deposed: the sequencer runs, to forward what it holds.
	if err := l.Await(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, "rejoined", func() bool { return f.rejoins.Load() == 1 })
	eventually(t, "healthy again", func() bool { return !l.Stats().Deposed })
	time.Sleep(200 * time.Millisecond)
	if n := f.rejoins.Load(); n != 1 {
		t.Fatalf("rejoined %d times", n)
	}
}

// countStore counts appends.
type countStore struct {
	core.Store
	appends atomic.Int32
}

func (s *countStore) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	s.appends.Add(1)
	return s.Store.Append(ctx, req)
}

func (s *countStore) Begin(ctx context.Context) (core.WriteBatch, error) {
	wb, err := s.Store.(core.Batcher).Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &countBatch{WriteBatch: wb, s: s}, nil
}

type countBatch struct {
	core.WriteBatch
	s *countStore
}

func (b *countBatch) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	b.s.appends.Add(1)
	return b.WriteBatch.Append(ctx, req)
}

// Without its lease the sequencer appends nothing and dead-letters
// nothing, however long it lasts; once the lease is back the waiting
// message is stored and acked, once.
func TestSequencerStopsWithoutLease(t *testing.T) {
	f := &fakeDirectory{}
	f.healthy.Store(true)
	f.up.Store(true)
	l := newFakeLease(t, f, -1)
	if err := l.Await(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var cs *countStore
	h := newHarnessWrapped(t, func(s core.Store) core.Store { cs = &countStore{Store: s}; return cs }, nil,
		func(c *region.Config) {
			c.Lease = l
			c.MaxAttempts, c.DeadLetterAfter = 2, 10*time.Millisecond
		})
	alice := h.register("alice", 1)
	h.register("bob", 2)
	conv := core.DirectConvID("alice", "bob")
	h.send(alice, 1, 1, conv, "m1", "under the lease")
	h.waitFor("first ack", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil })

	f.up.Store(false)
	eventually(t, "the lease runs out", func() bool { return l.Health() != nil && h.reg.Health() != nil })
	before := cs.appends.Load()
	h.send(alice, 1, 2, conv, "m2", "while cut off")
	time.Sleep(1500 * time.Millisecond) // several retries of the batch, past MaxAttempts and DeadLetterAfter
	if n := cs.appends.Load(); n != before {
		t.Fatalf("appended %d entries without a lease", n-before)
	}
	if st := h.reg.Stats(); st.DeadLettered != 0 {
		t.Fatalf("dead-lettered %d records for the lease", st.DeadLettered)
	}
	f.up.Store(true)
	recs := h.waitFor("ack once the lease is back", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[2] != nil })
	if ack := responses(recs, 1)[2].GetSend(); ack.GetSeq() != 2 {
		t.Fatalf("ack %v, want seq 2", responses(recs, 1)[2])
	}
	if err := h.reg.Health(); err != nil {
		t.Fatalf("health with the lease back: %v", err)
	}
}

// A record whose home the directory's leader reports silent (likely lost,
// not failed over yet) is not forwarded into that region's ingress: the
// sender is told UNAVAILABLE with retry_after_ms and resends, reaching
// the new home once the failover is done.
func TestNoForwardToSilentHome(t *testing.T) {
	l, err := region.NewLease(region.LeaseConfig{Region: "local", Lease: 2 * time.Second, Every: 50 * time.Millisecond,
		Heartbeat: func(context.Context, string, directory.HeartbeatToken) (directory.HeartbeatReply, error) {
			return directory.HeartbeatReply{Healthy: true, LeaseMS: 20_000, FailAfterMS: 60_000, Silent: []string{"other"}}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the lease", func() bool { return l.Health() == nil })
	if !l.Silent("other") || l.Silent("local") {
		t.Fatal("Silent does not follow the reply")
	}
	p := &stalePlacement{local: map[string][2]any{}, cur: map[string][2]any{}, regions: []string{"local", "other"}}
	h := newHarness(t, func(c *region.Config) { c.Placement, c.Lease = p, l })
	a := h.register("alice", 1)
	conv := core.DirectConvID("alice", "zed")
	p.local[conv] = [2]any{"other", uint64(1)}
	p.cur[conv] = [2]any{"other", uint64(1)}
	h.send(a, 1, 9, conv, "c1", "to a silent home")
	recs := h.waitFor("the refusal", func(r []*pb.EdgeRecord) bool { return responses(r, 1)[9] != nil })
	if e := responses(recs, 1)[9].GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || e.GetRetryAfterMs() == 0 {
		t.Fatalf("answer = %v, want UNAVAILABLE with retry_after_ms", e)
	}
	if st := h.reg.Stats(); st.ForwardRefused != 1 || st.Forwarded != 0 {
		t.Fatalf("stats = %+v", st)
	}
}
