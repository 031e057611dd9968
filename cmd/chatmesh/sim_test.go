package main

import (
	"strings"
	"testing"
	"time"
)

// TestSoakSummary: the soak's RTO figures are over recovered
// conversations only and say so; the never recovered and those over the
// bound are counted beside them, and a failed run shows in the verdict.
func TestSoakSummary(t *testing.T) {
	s := soakSummary{Runs: 2, RTOConversations: 7, RTORecovered: 5, Never: 1, NoTraffic: 1,
		Failed: []uint64{8}, NotLive: []uint64{8}}
	s.finish([]float64{12000, 900, 3000, 1500, 2500}, 10*time.Second)
	if s.RTOP50Ms != 2500 || s.RTOP99Ms != 12000 || s.RTOMaxMs != 12000 || s.OverBound != 1 || s.MaxRTO != "10s" {
		t.Fatalf("summary %+v", s)
	}
	line := s.line()
	for _, w := range []string{"7 conversations: 5 recovered (RTO of those p50 2500 ms", "1 over 10s", "1 never recovered", "1 runs FAILED", "not live: 1"} {
		if !strings.Contains(line, w) {
			t.Errorf("summary %q does not say %q", line, w)
		}
	}
	s = soakSummary{}
	s.finish(nil, -1)
	if s.MaxRTO != "none" || s.OverBound != 0 || !strings.Contains(s.line(), "every run safe and live") {
		t.Fatalf("empty summary %+v: %s", s, s.line())
	}
}
