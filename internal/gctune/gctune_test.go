package gctune

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, headroom int64
		want           int
	}{
		{0, 32 * mib, MaxPercent},
		{1 * mib, 32 * mib, MaxPercent}, // 3,200 capped
		{8 * mib, 32 * mib, 400},
		{12 * mib, 32 * mib, 266},
		{32 * mib, 32 * mib, 100},
		{33 * mib, 32 * mib, BasePercent},
		{500 * mib, 32 * mib, BasePercent},
		{8 * mib, 0, BasePercent},
		{8 * mib, -1, BasePercent},
	} {
		if got := Percent(c.live, c.headroom); got != c.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", c.live, c.headroom, got, c.want)
		}
	}
}

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// waitCycles collects until the tuner has seen n more cycles.
func waitCycles(t *testing.T, tu *Handle, n uint64) {
	t.Helper()
	want := tu.Cycles() + n
	deadline := time.Now().Add(10 * time.Second)
	for tu.Cycles() < want {
		if time.Now().After(deadline) {
			t.Fatalf("tuner saw %d collections, want %d: its cleanup is not re-armed", tu.Cycles(), want)
		}
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
}

var keep []byte

func TestTunerFollowsLiveHeap(t *testing.T) {
	t.Setenv("GOGC", "") // Start refuses to run under an explicit GOGC
	if gogc() != BasePercent {
		t.Fatalf("GOGC is %d before the test", gogc())
	}
	// A small heap under a large headroom: GOGC goes up (capped).
	tu := Start(4 << 30)
	if tu == nil {
		t.Fatal("Start returned nil without GOGC in the environment")
	}
	defer tu.Stop()
	if got := gogc(); got != MaxPercent {
		t.Fatalf("GOGC = %d after Start with a 4 GiB headroom, want %d", got, MaxPercent)
	}
	waitCycles(t, tu, 3) // re-armed after every collection
	if got := gogc(); got != MaxPercent {
		t.Fatalf("GOGC = %d after collections, want %d", got, MaxPercent)
	}
	// A second user shares the tuner; it runs until the last one stops.
	tu2 := Start(1)
	waitCycles(t, tu2, 1)
	tu.Stop()
	tu.Stop()
	waitCycles(t, tu2, 1)
	if got := gogc(); got != MaxPercent {
		t.Fatalf("GOGC = %d with one user left, want %d", got, MaxPercent)
	}
	tu2.Stop()
	if got := gogc(); got != BasePercent {
		t.Fatalf("GOGC = %d after the last Stop, want %d", got, BasePercent)
	}

	// A live heap larger than the headroom: GOGC stays at its base, and
	// comes down to it when the heap grows past the headroom.
	tu = Start(16 << 20)
	defer tu.Stop()
	if got := gogc(); got <= BasePercent {
		t.Fatalf("GOGC = %d with a 16 MiB headroom over a small heap, want > %d", got, BasePercent)
	}
	keep = make([]byte, 64<<20)
	for i := range keep {
		keep[i] = 1
	}
	waitCycles(t, tu, 2)
	if got := gogc(); got != BasePercent {
		t.Fatalf("GOGC = %d with 64 MiB live over a 16 MiB headroom, want %d", got, BasePercent)
	}
	keep = nil
	waitCycles(t, tu, 2)
	if got := gogc(); got <= BasePercent {
		t.Fatalf("GOGC = %d after the heap shrank again, want > %d", got, BasePercent)
	}
}

func TestExplicitGOGCWins(t *testing.T) {
	t.Setenv("GOGC", "100")
	if tu := Start(DefaultHeadroom); tu != nil {
		tu.Stop()
		t.Fatal("Start ran a tuner although GOGC is set in the environment")
	}
	if tu := Start(0); tu != nil {
		tu.Stop()
		t.Fatal("Start ran a tuner with no headroom")
	}
}
