package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// Defaults.
const (
	// DefaultHeadroom is the garbage the collector may let accumulate
	// between collections while the live heap is smaller than it.
	DefaultHeadroom = 32 << 20
	// BasePercent is Go's default GOGC, kept once the live heap exceeds
	// the headroom.
	BasePercent = 100
	// MaxPercent caps GOGC when the live heap is tiny (a fresh process).
	MaxPercent = 1000
)

// Percent is the GOGC the tuner sets for a live heap of live bytes and a
// headroom: max(BasePercent, headroom×100/live), at most MaxPercent.
func Percent(live, headroom int64) int {
	if headroom <= 0 {
		return BasePercent
	}
	if live <= 0 {
		return MaxPercent
	}
	p := headroom * 100 / live
	switch {
	case p < BasePercent:
		return BasePercent
	case p > MaxPercent:
		return MaxPercent
	}
	return int(p)
}

// The process has one tuner however many servers it runs (chatmesh dev
// runs several; tests run servers in one process): Start and Stop count
// its users.
var (
	procMu sync.Mutex
	proc   *Tuner
	users  int
)

// Handle is one user's share of the process's tuner. Stop releases it.
type Handle struct {
	t    *Tuner
	once sync.Once
}

// Tuner adjusts GOGC after every collection.
type Tuner struct {
	headroom int64
	stopped  atomic.Bool
	mu       sync.Mutex // serializes tune with Stop
	percent  int        // last value set; 0 before the first
	sample   []metrics.Sample
	cycles   atomic.Uint64 // collections seen
}

// sentinel is allocated once per cycle; its cleanup runs after the
// collection that found it unreachable. It holds a pointer and is larger
// than the tiny allocator's 16 bytes, so it is its own object.
type sentinel struct {
	_ *byte
	_ [32]byte
}

// Start runs the process's tuner with the given headroom (bytes; <= 0
// disables it), unless GOGC is set in the environment, and returns a
// handle to stop it with; nil when no tuner runs. When the process's tuner
// runs already, Start shares it (with its headroom).
func Start(headroom int64) *Handle {
	if headroom <= 0 || os.Getenv("GOGC") != "" {
		return nil
	}
	procMu.Lock()
	defer procMu.Unlock()
	if proc == nil {
		proc = &Tuner{headroom: headroom, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		proc.tune()
		proc.arm()
	}
	users++
	return &Handle{t: proc}
}

// Cycles returns how many collections the tuner has seen; 0 on nil.
func (h *Handle) Cycles() uint64 {
	if h == nil {
		return 0
	}
	return h.t.cycles.Load()
}

// Stop releases the handle; the last one stops the tuner and puts GOGC
// back to BasePercent. Safe on nil and more than once.
func (h *Handle) Stop() {
	if h == nil {
		return
	}
	h.once.Do(func() {
		procMu.Lock()
		defer procMu.Unlock()
		users--
		if users == 0 && proc == h.t {
			proc.stop()
			proc = nil
		}
	})
}

// arm attaches the next cycle's cleanup.
func (t *Tuner) arm() {
	s := new(sentinel)
	runtime.AddCleanup(s, func(t *Tuner) {
		if t.stopped.Load() {
			return
		}
		t.cycles.Add(1)
		t.tune()
		t.arm()
	}, t)
}

// tune reads the live heap and sets GOGC when the target moved by more
// than a tenth (SetGCPercent takes the heap lock: not on every cycle).
func (t *Tuner) tune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.sample)
	var live int64
	if v := t.sample[0].Value; v.Kind() == metrics.KindUint64 {
		live = int64(v.Uint64())
	}
	p := Percent(live, t.headroom)
	if t.percent != 0 && p*10 > t.percent*9 && p*10 < t.percent*11 {
		return
	}
	debug.SetGCPercent(p)
	t.percent = p
}

// stop ends the tuner and puts GOGC back to BasePercent.
func (t *Tuner) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Swap(true) {
		return
	}
	debug.SetGCPercent(BasePercent)
}
