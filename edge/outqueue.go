package edge

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core/pb"
)

// The outgoing path of a session.
//
// A session has no writer goroutine while it has nothing to send: push
// appends the marshalled frame to the session's queue and, if no drain is
// running, starts one (tracked by session.writers). The drain takes the
// queued frames in batches of at most maxBatchFrames / maxBatchBytes,
// encrypts each into its own Noise transport message and writes the batch
// with one flush (noiseconn.Conn.SendBatch: on WebSocket, one binary
// message per frame as the protocol says, but one write to the socket per
// batch), and exits when the queue is empty. The queue's backing array is
// allocated at the first push and dropped once drained, so an idle session
// holds none.
//
// Limits: at most Config.SendQueue frames and Config.SendQueueBytes bytes
// are pending (queued or being written); a push beyond either ends the
// session with Disconnect{UNAVAILABLE, "slow consumer"}.
//
// When the session stops (terminate), the drain — started if none runs —
// sends the final Disconnect, if any, ahead of what is still queued (a
// batch already being written completes first) and closes the transport.
//
// A drain runs on a goroutine that, once its session's queue is empty,
// waits for another session that needs one (drainPool) and exits after
// one to two drainIdle without any. A new goroutine starts small and
// grows its stack on its way into encryption and the socket write; under
// a stream of pushes that growth, per burst, was 9% of the server's CPU
// in the 500-member group benchmark. Reused goroutines keep their grown
// stacks (until a garbage collection shrinks one that waits). A drain is
// handed only to a goroutine already waiting, never queued behind a busy
// one, so a client that does not read holds up only its own drain; an
// idle edge keeps no drain goroutines.

const (
	maxBatchFrames = 64
	maxBatchBytes  = 256 << 10
	// drainIdle: a drain goroutine without work for between drainIdle
	// and twice that exits.
	drainIdle = time.Second
)

type outQueue struct {
	mu      sync.Mutex
	frames  [][]byte // queued, oldest first
	pending int      // frames queued or being written
	bytes   int      // their bytes
	enabled bool     // the session serves: pushes and stops start a drain
	running bool     // a drain goroutine runs
	done    bool     // the final drain finished: the transport is closed
}

// enqueue adds b; false when a limit would be exceeded (nothing added).
// It starts a drain if needed.
func (s *session) enqueue(b []byte) bool {
	q := &s.out
	q.mu.Lock()
	if q.pending >= s.e.cfg.SendQueue || q.bytes+len(b) > s.e.cfg.SendQueueBytes {
		q.mu.Unlock()
		return false
	}
	q.frames = append(q.frames, b)
	q.pending++
	q.bytes += len(b)
	start := s.startLocked()
	q.mu.Unlock()
	if start {
		s.startDrain()
	}
	return true
}

// startLocked (q.mu held) reports whether the caller must start a drain
// goroutine, which it has then accounted for in s.writers.
func (s *session) startLocked() bool {
	q := &s.out
	if !q.enabled || q.running || q.done {
		return false
	}
	q.running = true
	s.writers.Add(1)
	return true
}

// enableWriter lets pushes start drains; called once the session serves.
// Anything queued before, or a stop requested meanwhile, is handled now.
func (s *session) enableWriter() {
	q := &s.out
	q.mu.Lock()
	q.enabled = true
	q.mu.Unlock()
	s.kick()
}

// kick starts a drain if there is none (it exits at once when there is
// nothing to do).
func (s *session) kick() {
	q := &s.out
	q.mu.Lock()
	start := s.startLocked()
	q.mu.Unlock()
	if start {
		s.startDrain()
	}
}

// startDrain runs s.drain on a waiting drain goroutine, or on a new one
// when none waits.
func (s *session) startDrain() {
	if d := s.e.drainPool.take(); d != nil {
		d.work <- s // capacity 1, and nothing else sends to an idle slot
		return
	}
	s.e.drainers.Go(func() { s.e.drainer(s) })
}

// drainer drains s, then the sessions handed to it, until the pool
// retires it or the edge stops.
func (e *Edge) drainer(s *session) {
	var d *drainSlot
	for s != nil {
		s.drain()
		s = nil // do not keep the session reachable while waiting
		if d == nil {
			d = &drainSlot{work: make(chan *session, 1)}
		}
		if !e.drainPool.park(d) {
			return
		}
		s = <-d.work
	}
}

// drainPool holds the drain goroutines that wait for work, each on its
// own channel. A pool is a mutex and a stack rather than one shared
// channel that waiters select on together with a timer and the edge's
// context: in the 500-member group benchmark (100,000 drains a second)
// the drain goroutines spent 0.44 s of a 6.7 s server profile outside the
// drains themselves, in that select and its timer (0.14 s now). Instead, one
// goroutine (retireDrainers) ticks every drainIdle and retires the
// goroutines that have waited since before the previous tick.
type drainPool struct {
	mu      sync.Mutex
	idle    []*drainSlot // parked, in the order they parked (ticks ascending)
	tick    uint64
	opened  bool // retireDrainers runs: goroutines may park
	stopped bool // the edge stopped: none parks again
}

type drainSlot struct {
	work   chan *session // capacity 1; nil: exit
	parked uint64        // the pool's tick when it parked
}

func (p *drainPool) open() {
	p.mu.Lock()
	p.opened = true
	p.mu.Unlock()
}

// take removes the most recently parked slot (its goroutine's stack is
// the likeliest to be warm), or returns nil.
func (p *drainPool) take() *drainSlot {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	d := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	return d
}

// park adds d to the idle slots; false: its goroutine must exit.
func (p *drainPool) park(d *drainSlot) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.opened || p.stopped {
		return false
	}
	d.parked = p.tick
	p.idle = append(p.idle, d)
	return true
}

// retire tells the slots parked before the previous tick (idle for
// between drainIdle and twice that) to exit; with all, every slot.
func (p *drainPool) retire(all bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tick++
	n := 0
	for n < len(p.idle) && (all || p.idle[n].parked+2 <= p.tick) {
		p.idle[n].work <- nil
		n++
	}
	p.idle = slices.Delete(p.idle, 0, n)
	if all {
		p.stopped = true
	}
}

// retireDrainers retires idle drain goroutines every drainIdle, and all
// of them when the edge stops.
func (e *Edge) retireDrainers() {
	t := time.NewTicker(drainIdle)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			e.drainPool.retire(false)
		case <-e.ctx.Done():
			e.drainPool.retire(true)
			return
		}
	}
}

// drain writes batches until the queue is empty or the session stops; it
// is the goroutine startLocked accounted for.
func (s *session) drain() {
	defer s.writers.Done()
	q := &s.out
	for {
		q.mu.Lock()
		if !s.live() {
			q.done, q.running = true, false
			q.frames = nil
			q.mu.Unlock()
			s.finish()
			return
		}
		n, size := 0, 0
		for n < len(q.frames) && n < maxBatchFrames && (n == 0 || size+len(q.frames[n]) <= maxBatchBytes) {
			size += len(q.frames[n])
			n++
		}
		if n == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		batch := q.frames[:n:n]
		q.frames = q.frames[n:]
		if len(q.frames) == 0 {
			q.frames = nil // the next burst starts a small array
		}
		q.mu.Unlock()

		err := s.writeBatch(batch)

		q.mu.Lock()
		q.pending -= n
		q.bytes -= size
		q.mu.Unlock()
		if err != nil {
			s.e.n.writeErrors.Add(1)
			s.e.log.Info("session ended: write to client failed", "session", s.id, "err", err)
			q.mu.Lock()
			q.done, q.running = true, false
			q.frames = nil
			q.mu.Unlock()
			s.terminate(pb.ErrorCode_ERROR_CODE_OK, "", false)
			_ = s.tr.Close()
			return
		}
	}
}

// writeBatch encrypts and writes frames with one flush.
func (s *session) writeBatch(frames [][]byte) error {
	// Pooled, not an allocation per batch: nothing keeps ctx once
	// SendBatch returns.
	ctx := writeDeadlinePool.Get().(*writeDeadline)
	*ctx = writeDeadline{s.e.ctx, time.Now().Add(s.e.cfg.WriteTimeout)}
	err := s.nc.SendBatch(ctx, frames)
	*ctx = writeDeadline{}
	writeDeadlinePool.Put(ctx)
	if err != nil {
		return err
	}
	s.e.n.framesOut.Add(uint64(len(frames)))
	s.e.n.writesOut.Add(1)
	return nil
}

// writeDeadline is the context of a batch write to a client: the edge's
// lifetime with the write's deadline, and no timer. A WebSocket connection
// applies the deadline to its socket (corkWriter.writeBinary), so a context per
// write made with context.WithTimeout — a timer armed and stopped, and a
// child registered with the edge's context under its lock, per write of
// every session — would do nothing but cost (10% of the samples of one
// group profile; the change took 3% off the group's CPU per message). A
// transport that can only end a write through ctx.Done uses timed(ctx)
// for a context that does fire at the deadline. Sessions use it by
// pointer, from writeDeadlinePool.
type writeDeadline struct {
	context.Context
	at time.Time
}

func (c writeDeadline) Deadline() (time.Time, bool) { return c.at, true }

var writeDeadlinePool = sync.Pool{New: func() any { return new(writeDeadline) }}

// timed returns a context whose Done fires at ctx's deadline: ctx itself
// unless it is a writeDeadline.
func timed(ctx context.Context) (context.Context, context.CancelFunc) {
	if wd, ok := ctx.(*writeDeadline); ok {
		return context.WithDeadline(wd.Context, wd.at)
	}
	return ctx, func() {}
}

// popQueued removes and returns the oldest queued frame (tests of
// sessions without a writer).
func (s *session) popQueued() ([]byte, bool) {
	q := &s.out
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) == 0 {
		return nil, false
	}
	b := q.frames[0]
	q.frames = q.frames[1:]
	q.pending--
	q.bytes -= len(b)
	return b, true
}

// queued is the number of frames pending.
func (s *session) queued() int {
	q := &s.out
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pending
}
