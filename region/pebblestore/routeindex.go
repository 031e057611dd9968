package pebblestore

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatmesh/chatmesh/core"
)

// routeIndex is every stored route in memory, by user, so that Routes —
// called by the sequencer's fan-out for every batch — reads a map instead
// of scanning Pebble once per member. The store owns its directory (it is
// locked), so every route write goes through SetRoute, ClearRoute or
// ClearEdgeRoutes, and the index follows what the database holds, never
// what a write meant to do: SetRoute and ClearRoute apply a committed
// write (a Pebble batch applies whole or not at all) to the index as the
// same change, under the user's lock; a failed one, a user the index
// cannot answer for, and every ClearEdgeRoutes reload the users they
// touched from the database. Its size is the route count, which is the
// number of online devices (an edge's routes are cleared when it
// restarts).
type routeIndex struct {
	mu     sync.RWMutex
	byUser map[string][]core.Route // sorted by device, as a scan returns them
	// bad is the decode error a user's stored routes give (a value or key
	// damaged on disk): Routes returns it for that user, as a scan would.
	bad map[string]error
	// stale holds users whose reload failed to read the database (not a
	// damaged record: an I/O error that may pass): Routes reloads them
	// before it answers, as the scan retried on every call.
	stale map[string]bool
}

// loadRouteIndex reads every route of db.
func loadRouteIndex(db pebble.Reader) (*routeIndex, error) {
	ix := &routeIndex{byUser: map[string][]core.Route{}, bad: map[string]error{}, stale: map[string]bool{}}
	err := scanIn(db, []byte{tagRoute}, func(k, v []byte) (bool, error) {
		// A user id has no NUL: the user is the key up to the first one.
		// A key without one lies under no user's prefix.
		i := bytes.IndexByte(k[1:], sep)
		if i < 0 {
			return true, nil
		}
		user := string(k[1 : 1+i])
		if ix.bad[user] != nil {
			return true, nil
		}
		r, err := decodeRouteKV(k, v)
		if err != nil {
			ix.bad[user] = err
			delete(ix.byUser, user)
			return true, nil
		}
		ix.byUser[user] = append(ix.byUser[user], r)
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: load routes: %w", err)
	}
	return ix, nil
}

// decodeRouteKV decodes one 'r' record.
func decodeRouteKV(k, v []byte) (core.Route, error) {
	dev, err := splitUserDev(k, 1)
	if err != nil {
		return core.Route{}, err
	}
	return decodeRoute(dev, v)
}

// reloadRoutes replaces user's entry with what the database holds and
// returns the error a read of it gave (a decode error is also kept in bad;
// any other marks the user stale). The caller excludes other route writes
// of user (its stripe of routeUserMu, or routeMu exclusively).
func (s *Store) reloadRoutes(user string) error {
	var rs []core.Route
	err := scanIn(s.db, routePrefix(user), func(k, v []byte) (bool, error) {
		r, err := decodeRouteKV(k, v)
		rs = append(rs, r)
		return err == nil, err
	})
	ix := s.routes
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if err != nil && !errors.Is(err, ErrCorrupt) {
		ix.stale[user] = true // not read: what it holds may be out of date
		return err
	}
	delete(ix.stale, user)
	delete(ix.byUser, user)
	delete(ix.bad, user)
	switch {
	case err != nil: // a damaged record
		ix.bad[user] = err
	case len(rs) > 0:
		ix.byUser[user] = rs
	}
	return err
}

// route returns dev's route as the index holds it. ok is false when the
// index cannot answer for dev's user (a damaged record or a failed
// reload): the caller reads the database.
func (ix *routeIndex) route(dev core.DeviceKey) (r core.Route, found, ok bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if ix.bad[dev.User] != nil || ix.stale[dev.User] {
		return core.Route{}, false, false
	}
	rs := ix.byUser[dev.User]
	i, found := slices.BinarySearchFunc(rs, dev, cmpRouteDevice)
	if !found {
		return core.Route{}, false, true
	}
	return rs[i], true, true
}

// applied reports a committed route write of one user to the index: r is
// set (replacing the device's route, if any) or, with del, the device's
// route is removed. It returns false, changing nothing, when the index
// does not hold the user's routes (damaged or stale): the caller reloads
// the user. The caller excludes other route writes of the user.
func (ix *routeIndex) applied(r core.Route, del bool) bool {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	u := r.Device.User
	if ix.bad[u] != nil || ix.stale[u] {
		return false
	}
	rs := ix.byUser[u]
	i, found := slices.BinarySearchFunc(rs, r.Device, cmpRouteDevice)
	// In place: readers copy routes out under ix.mu (lookup, route).
	switch {
	case del && found:
		rs = slices.Delete(rs, i, i+1)
	case del:
		return true
	case found:
		rs[i] = r
	default:
		rs = slices.Insert(rs, i, r)
	}
	if len(rs) == 0 {
		delete(ix.byUser, u)
	} else {
		ix.byUser[u] = rs
	}
	return true
}

// staleOf returns the users among us whose routes must be read again.
func (ix *routeIndex) staleOf(us []string) []string {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if len(ix.stale) == 0 {
		return nil
	}
	var out []string
	for _, u := range us {
		if ix.stale[u] {
			out = append(out, u)
		}
	}
	return out
}

// lookup appends the routes of users (sorted, without repeats, valid ids)
// to out.
func (ix *routeIndex) lookup(users []string, out []core.Route) ([]core.Route, error) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, u := range users {
		if err := ix.bad[u]; err != nil {
			return nil, err
		}
		out = append(out, ix.byUser[u]...)
	}
	return out, nil
}

// routeUsers is users sorted, without repeats, each checked.
func routeUsers(users []string) ([]string, error) {
	us := slices.Clone(users)
	slices.Sort(us)
	us = slices.Compact(us)
	for _, u := range us {
		if err := checkID("user id", u); err != nil {
			return nil, err
		}
	}
	return us, nil
}

// cmpRouteDevice orders a route of a user against a device of the same
// user as their route keys sort (the device number, big-endian).
func cmpRouteDevice(r core.Route, d core.DeviceKey) int {
	return cmp.Compare(r.Device.Device, d.Device)
}
