package region

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region/pebblestore"
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

// TestResolveFanSharedAndMixedLists: a batch whose intents all address
// the state's one member list reads the routes once and gives every
// intent every member's devices; a batch mixing that list with others
// (one unsorted, with a repeated user) still gives each intent exactly its
// users' devices, each once, one EdgeRecord per edge.
func TestResolveFanSharedAndMixedLists(t *testing.T) {
	st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := batchRegion(t, st)
	ctx := t.Context()
	users := []string{"a", "b", "c", "d"}
	for i, u := range users {
		for dev := uint32(1); dev <= 2; dev++ {
			edge := []string{"e1", "e2"}[(i+int(dev))%2]
			if err := st.SetRoute(ctx, core.Route{Device: core.DeviceKey{User: u, Device: dev}, Edge: edge, Session: uint64(10*i) + uint64(dev), Region: "r1"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// got maps each intent's seq to the devices its records target, by edge.
	decode := func(recs []core.BusRecord) map[uint64]map[string][]string {
		got := map[uint64]map[string][]string{}
		for _, rec := range recs {
			var er pb.EdgeRecord
			if err := proto.Unmarshal(rec.Value, &er); err != nil {
				t.Fatal(err)
			}
			seq := er.GetFrame().GetDelivery().GetSeq()
			if got[seq] == nil {
				got[seq] = map[string][]string{}
			}
			edge := strings.TrimPrefix(rec.Topic, EdgeTopic(""))
			if got[seq][edge] != nil {
				t.Fatalf("seq %d: two records for edge %s", seq, edge)
			}
			for _, a := range er.GetTargets() {
				got[seq][edge] = append(got[seq][edge], core.KeyOf(a).String())
			}
			slices.Sort(got[seq][edge])
		}
		return got
	}
	everyone := map[string][]string{"e1": {"a.2", "b.1", "c.2", "d.1"}, "e2": {"a.1", "b.2", "c.1", "d.2"}}

	shared := slices.Clone(users)
	b := newBatch(st)
	for seq := uint64(1); seq <= 3; seq++ {
		b.fanDelivery(&pb.Message{ConvId: "g:x", Seq: seq}, shared)
	}
	recs, err := r.resolveFan(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if got := decode(recs); len(got) != 3 || !reflect.DeepEqual(got[1], everyone) || !reflect.DeepEqual(got[3], everyone) {
		t.Fatalf("shared list: %v", got)
	}

	b = newBatch(st)
	b.fanDelivery(&pb.Message{ConvId: "g:x", Seq: 1}, shared)
	b.fanDelivery(&pb.Message{ConvId: "g:y", Seq: 2}, []string{"d", "a", "d"})
	b.fanDelivery(&pb.Message{ConvId: "g:x", Seq: 3}, shared)
	b.fanDelivery(&pb.Message{ConvId: "d:b:c", Seq: 4}, []string{"b", "c"})
	recs, err = r.resolveFan(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]map[string][]string{
		1: everyone,
		2: {"e1": {"a.2", "d.1"}, "e2": {"a.1", "d.2"}},
		3: everyone,
		4: {"e1": {"b.1", "c.2"}, "e2": {"b.2", "c.1"}},
	}
	if got := decode(recs); !reflect.DeepEqual(got, want) {
		t.Fatalf("mixed lists:\n got %v\nwant %v", got, want)
	}
	if !slices.Equal(shared, users) {
		t.Fatalf("the shared list was modified: %v", shared)
	}

	// A long sorted list addressed by one intent (a group's one message in
	// a batch of receipts) is read on its own, the small lists together:
	// two route reads, and each intent still gets exactly its devices.
	long := slices.Clone(users)
	for i := range ownReadUsers {
		long = append(long, fmt.Sprintf("z%03d", i)) // members without routes
	}
	cs := &orderStore{Store: st}
	rc := batchRegion(t, cs)
	b = newBatch(cs)
	b.fanDelivery(&pb.Message{ConvId: "d:b:c", Seq: 1}, []string{"c", "b"})
	b.fanDelivery(&pb.Message{ConvId: "g:l", Seq: 2}, long)
	b.fanDelivery(&pb.Message{ConvId: "g:y", Seq: 3}, []string{"d"})
	recs, err = rc.resolveFan(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	want = map[uint64]map[string][]string{
		1: {"e1": {"b.1", "c.2"}, "e2": {"b.2", "c.1"}},
		2: everyone,
		3: {"e1": {"d.1"}, "e2": {"d.2"}},
	}
	if got := decode(recs); !reflect.DeepEqual(got, want) {
		t.Fatalf("a long list among small ones:\n got %v\nwant %v", got, want)
	}
	if n := cs.routeReads.Load(); n != 2 {
		t.Fatalf("%d route reads, want 2 (the long list, then the rest)", n)
	}
}
