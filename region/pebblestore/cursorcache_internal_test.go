package pebblestore

import (
	"context"
	"fmt"
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

// TestCursorCache: cursors advance from their committed value whether it
// is cached or not — past the cache's bound (cursorCacheMax distinct
// cursors, which empties it) and after the store is opened again — so a
// cursor never moves back; every move lands in both of its keys.
func TestCursorCache(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	k := core.DeviceKey{User: "alice", Device: 1}
	if err := s.AdvanceCursors(ctx, []core.CursorMove{{Conv: "d:a:b", Dev: k, Kind: core.CursorDelivered, Seq: 100}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AdvanceCursor(ctx, "d:a:b", k, core.CursorRead, 90); err != nil {
		t.Fatal(err)
	}
	// Other cursors until the cache has been emptied at least once.
	var moves []core.CursorMove
	for i := range cursorCacheMax + 10 {
		moves = append(moves, core.CursorMove{Conv: fmt.Sprintf("g:%d", i), Dev: k, Kind: core.CursorDelivered, Seq: 1})
	}
	if err := s.AdvanceCursors(ctx, moves); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.cursors.get(cursorConvKey("d:a:b", k)); ok {
		t.Fatal("the cache was not emptied at its bound; the test does not test what it says")
	}
	check := func(what string, s *Store, delivered, read uint64) {
		t.Helper()
		cs, err := s.ConvCursors(ctx, "d:a:b")
		if err != nil || len(cs) != 1 || cs[0].Delivered != delivered || cs[0].Read != read {
			t.Fatalf("%s: conversation cursors %+v (%v), want delivered %d read %d", what, cs, err, delivered, read)
		}
		ds, err := s.Cursors(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range ds {
			if c.Conv == "d:a:b" && (c.Delivered != delivered || c.Read != read) {
				t.Fatalf("%s: device cursors %+v, want delivered %d read %d", what, c, delivered, read)
			}
		}
	}
	// Not cached any more: a lower ack must not move it back.
	if err := s.AdvanceCursors(ctx, []core.CursorMove{{Conv: "d:a:b", Dev: k, Kind: core.CursorDelivered, Seq: 50}}); err != nil {
		t.Fatal(err)
	}
	check("a lower ack after the cache was emptied", s, 100, 90)
	if prev, moved, err := s.AdvanceCursor(ctx, "d:a:b", k, core.CursorRead, 95); err != nil || !moved || prev != 90 {
		t.Fatalf("read 90 -> 95: prev %d moved %v %v", prev, moved, err)
	}
	if err := s.AdvanceCursors(ctx, []core.CursorMove{{Conv: "d:a:b", Dev: k, Kind: core.CursorDelivered, Seq: 120}}); err != nil {
		t.Fatal(err)
	}
	check("cached moves", s, 120, 95)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if prev, moved, err := s.AdvanceCursor(ctx, "d:a:b", k, core.CursorDelivered, 110); err != nil || moved || prev != 120 {
		t.Fatalf("after reopening, a lower ack: prev %d moved %v %v", prev, moved, err)
	}
	check("after reopening", s, 120, 95)
}
