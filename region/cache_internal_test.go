package region

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

// TestMemberCacheAdvance: a user entry moves the cached members to the new
// head (the same list, no rebuild); an advance from a head the cache does
// not hold changes nothing, so a stale list is never served at a new head.
func TestMemberCacheAdvance(t *testing.T) {
	c := newMemberCache()
	ms := []core.Member{{User: "a", JoinedSeq: 1}, {User: "b", JoinedSeq: 2}}
	c.put("g:x", 5, ms)
	c.advance("g:x", 5, 6)
	if _, ok := c.get("g:x", 5); ok {
		t.Fatal("the old head still served")
	}
	e, ok := c.get("g:x", 6)
	if !ok || len(e.members) != 2 || &e.members[0] != &ms[0] || len(e.set) != 2 {
		t.Fatalf("advanced entry: %+v %v", e, ok)
	}
	c.advance("g:x", 5, 7) // not at 5 any more
	if _, ok := c.get("g:x", 7); ok {
		t.Fatal("advanced from a head the cache did not hold")
	}
	c.advance("g:y", 0, 1) // never cached
	if _, ok := c.get("g:y", 1); ok {
		t.Fatal("advance created an entry")
	}
}
