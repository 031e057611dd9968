package pebblestore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatmesh/chatmesh/core"
)

// scanRoutes is what Routes returned before the index: a scan of the
// database per user.
func scanRoutes(s *Store, users []string) ([]core.Route, error) {
	var out []core.Route
	for _, u := range users {
		err := s.scan(routePrefix(u), func(k, v []byte) (bool, error) {
			r, err := decodeRouteKV(k, v)
			out = append(out, r)
			return err == nil, err
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// TestRouteIndexMatchesDatabase: after every route write (set, replace,
// clear, clear of a stale session, clear of an edge) and after a reopen,
// Routes (the in-memory index) returns exactly what a scan of the database
// returns, for single users and for sets of users.
func TestRouteIndexMatchesDatabase(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	users := []string{"u0", "u1", "u2", "u3", "u4", "u5"}
	edges := []string{"e1", "e2", "e3"}
	check := func(step string) {
		t.Helper()
		for _, set := range [][]string{users, {"u3"}, {"u5", "u0", "u5"}, {"nobody"}} {
			us, err := routeUsers(set)
			if err != nil {
				t.Fatal(err)
			}
			want, err := scanRoutes(s, us)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Routes(ctx, set)
			if err != nil {
				t.Fatalf("%s: Routes(%v): %v", step, set, err)
			}
			if len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
				t.Fatalf("%s: Routes(%v) = %+v, database holds %+v", step, set, got, want)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	session := uint64(0)
	sessions := map[core.DeviceKey]uint64{}
	for i := range 400 {
		dev := core.DeviceKey{User: users[rng.IntN(len(users))], Device: uint32(1 + rng.IntN(3))}
		var step string
		switch op := rng.IntN(10); {
		case op < 6:
			session++
			sessions[dev] = session
			r := core.Route{Device: dev, Edge: edges[rng.IntN(len(edges))], Session: session, SinceMs: int64(i)}
			if rng.IntN(2) == 0 {
				r.Region = "west"
			}
			step = fmt.Sprintf("%d set %+v", i, r)
			if err := s.SetRoute(ctx, r); err != nil {
				t.Fatal(err)
			}
		case op < 9:
			sess := sessions[dev]
			if rng.IntN(4) == 0 {
				sess++ // a stale session: nothing changes
			}
			step = fmt.Sprintf("%d clear %v session %d", i, dev, sess)
			if _, err := s.ClearRoute(ctx, dev, sess, int64(i)); err != nil {
				t.Fatal(err)
			}
		default:
			e := edges[rng.IntN(len(edges))]
			step = fmt.Sprintf("%d clear edge %s", i, e)
			if _, err := s.ClearEdgeRoutes(ctx, e, int64(i)); err != nil {
				t.Fatal(err)
			}
		}
		check(step)
	}
	before, err := s.Routes(ctx, users)
	if err != nil || len(before) == 0 {
		t.Fatalf("routes before reopen: %d, %v (the test wants some)", len(before), err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("after reopen")
	after, err := s.Routes(ctx, users)
	if err != nil || !reflect.DeepEqual(after, before) {
		t.Fatalf("after reopen %+v, %v; before %+v", after, err, before)
	}
}

// TestRouteIndexDamagedValue: a route value damaged on disk fails Routes
// for its user with ErrCorrupt, as the scan did, after a reopen (the data
// directory damaged between runs); a route write of that user succeeds and
// leaves the error in place (the user is read again from the database, not
// patched in memory); other users' routes stay readable.
func TestRouteIndexDamagedValue(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"a", "b"} {
		if err := s.SetRoute(ctx, core.Route{Device: core.DeviceKey{User: u, Device: 1}, Edge: "e1", Session: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// Damage b's route behind the store's back (what a bad disk does).
	bad := core.DeviceKey{User: "b", Device: 2}
	if err := s.db.Set(routeKey(bad), []byte{0xff}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{"reopened", "written", "reopened again"} {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = Open(dir, Options{}); err != nil {
			t.Fatal(err)
		}
		if step == "written" {
			if err := s.SetRoute(ctx, core.Route{Device: core.DeviceKey{User: "b", Device: 1}, Edge: "e2", Session: 2}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.ClearRoute(ctx, core.DeviceKey{User: "b", Device: 1}, 2, 5); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Routes(ctx, []string{"a", "b"}); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: Routes(a, b) with b damaged: %v, want ErrCorrupt", step, err)
		}
		if rs, err := s.Routes(ctx, []string{"a"}); err != nil || len(rs) != 1 || rs[0].Edge != "e1" {
			t.Fatalf("%s: Routes(a): %+v, %v", step, rs, err)
		}
	}
	defer s.Close()
}
