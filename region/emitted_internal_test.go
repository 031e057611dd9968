package region

import (
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// TestEmittedSetBounded: the set remembers the newest maxEmitted entries
// and forgets the oldest first; membership entries are not recorded.
func TestEmittedSetBounded(t *testing.T) {
	var e emittedSet
	fan := func(seq uint64, kind pb.MessageKind) fanIntent {
		return fanIntent{m: &pb.Message{ConvId: "d:a:b", Seq: seq, Kind: kind}}
	}
	e.addFans([]fanIntent{fan(1, pb.MessageKind_MESSAGE_KIND_USER), fan(2, pb.MessageKind_MESSAGE_KIND_MEMBERSHIP)})
	if !e.has("d:a:b", 1) || e.has("d:a:b", 2) || e.has("d:a:c", 1) {
		t.Fatal("membership entry recorded, or user entry missing")
	}
	fans := make([]fanIntent, 0, maxEmitted)
	for i := range uint64(maxEmitted) {
		fans = append(fans, fan(100+i, pb.MessageKind_MESSAGE_KIND_USER))
	}
	e.addFans(fans)
	if e.has("d:a:b", 1) || !e.has("d:a:b", 100) || !e.has("d:a:b", 100+maxEmitted-1) || len(e.set) != maxEmitted {
		t.Fatalf("bound: oldest kept or newest lost (%d entries)", len(e.set))
	}
}
