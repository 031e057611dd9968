package directory

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/chatmesh/chatmesh/core"
)

// fsmHarness applies commands to one FSM at increasing indexes and
// records the changes it emits.
type fsmHarness struct {
	t       *testing.T
	f       *FSM
	idx     uint64
	changes []Change
}

func newFSMHarness(t *testing.T) *fsmHarness {
	h := &fsmHarness{t: t}
	h.f = NewFSM(func(c Change) { h.changes = append(h.changes, c) })
	return h
}

func (h *fsmHarness) apply(c Command) Result {
	h.t.Helper()
	h.idx++
	return h.f.Apply(&raft.Log{Index: h.idx, Data: mustEncode(h.t, c)}).(Result)
}

// keys lists the changes since the last call as "kind:key".
func (h *fsmHarness) keys() []string {
	out := []string{}
	for _, c := range h.changes {
		out = append(out, string(c.Kind)+":"+c.Key)
	}
	h.changes = nil
	return out
}

func (h *fsmHarness) region(name string, lat, long float64, healthy bool) {
	h.t.Helper()
	if r := h.apply(Command{Op: OpPutRegion, Region: &Region{Name: name, Lat: lat, Long: long, Healthy: healthy}}); r.Code != "" {
		h.t.Fatalf("put region %s: %+v", name, r)
	}
}

// fail_region moves every user and conversation homed in the failed
// region to the nearest healthy one (skipping a nearer unhealthy region),
// conversations at epoch + 1 with their owner kept; homes elsewhere are
// untouched; changes come out region, users by id, conversations by id.
func TestFSMFailRegionMovesToNearestHealthy(t *testing.T) {
	h := newFSMHarness(t)
	h.region("fra", 50.1, 8.7, true)
	h.region("ams", 52.4, 4.9, false) // nearest to fra, but unhealthy
	h.region("lhr", 51.5, -0.1, true) // the nearest healthy one
	h.region("iad", 38.9, -77.0, true)
	h.region("sin", 1.35, 103.8, true)
	for u, r := range map[string]string{"zoe": "fra", "alice": "fra", "bob": "iad"} {
		h.apply(Command{Op: OpSetUserHome, User: u, Home: r})
	}
	h.apply(Command{Op: OpSetConvHome, Conv: "g:2", Home: "fra", Owner: "zoe"})
	h.apply(Command{Op: OpSetConvHome, Conv: "d:1", Home: "sin", Owner: "alice"})
	h.apply(Command{Op: OpSetConvHome, Conv: "d:1", Home: "fra", ExpectEpoch: 1}) // epoch 2
	h.apply(Command{Op: OpSetConvHome, Conv: "g:3", Home: "iad", Owner: "bob"})
	h.keys()

	r := h.apply(Command{Op: OpFailRegion, Name: "fra"})
	if r != (Result{Home: "lhr", Moved: 2, MovedUsers: 2}) {
		t.Fatalf("fail_region = %+v, want lhr with 2 users and 2 conversations", r)
	}
	if got, want := h.keys(), []string{"region:fra", "user:alice", "user:zoe", "conv:d:1", "conv:g:2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("changes = %v, want %v", got, want)
	}
	if reg, _ := h.f.Region("fra"); reg.Healthy {
		t.Fatal("failed region still healthy")
	}
	want := map[string]ConvHome{
		"d:1": {Region: "lhr", Epoch: 3, Owner: "alice"},
		"g:2": {Region: "lhr", Epoch: 2, Owner: "zoe"},
		"g:3": {Region: "iad", Epoch: 1, Owner: "bob"},
	}
	for c, w := range want {
		if got, _ := h.f.Conv(c); got != w {
			t.Fatalf("%s = %+v, want %+v", c, got, w)
		}
	}
	for u, w := range map[string]string{"alice": "lhr", "zoe": "lhr", "bob": "iad"} {
		if got, _ := h.f.UserHome(u); got != w {
			t.Fatalf("%s homed in %q, want %q", u, got, w)
		}
	}

	// Repeating it is harmless: nothing is homed there any more.
	before := h.f.State()
	if r := h.apply(Command{Op: OpFailRegion, Name: "fra"}); r != (Result{Home: "lhr"}) {
		t.Fatalf("repeat = %+v, want nothing moved", r)
	}
	if got := h.keys(); len(got) != 0 {
		t.Fatalf("repeat emitted %v", got)
	}
	after := h.f.State()
	after.Index = before.Index
	if !reflect.DeepEqual(before, after) {
		t.Fatal("a repeated fail_region changed the state")
	}

	// Nothing is homed in a failed region: a move, a claim or a user home
	// there is refused (ErrRegionUnhealthy) and changes nothing, so a
	// deposed region that has not learnt it yet cannot claim new homes.
	for _, c := range []Command{
		{Op: OpSetConvHome, Conv: "g:3", Home: "fra", ExpectEpoch: 1},
		{Op: OpSetConvHome, Conv: "new", Home: "fra"},
		{Op: OpSetUserHome, User: "dave", Home: "fra", IfAbsent: true},
		{Op: OpMoveUser, User: "bob", Home: "fra"},
	} {
		r := h.apply(c)
		if r.Code != codeUnhealthy || !errors.Is(r.err(c), ErrRegionUnhealthy) {
			t.Fatalf("%+v on a failed region = %+v", c, r)
		}
	}
	if got := h.keys(); len(got) != 0 {
		t.Fatalf("refused homes emitted %v", got)
	}
	// A failed region re-announcing itself (put_region, as a restarted
	// region does) stays failed.
	h.apply(Command{Op: OpPutRegion, Region: &Region{Name: "fra", Lat: 50.11, Long: 8.68, Healthy: true}})
	if r, _ := h.f.Region("fra"); r.Healthy {
		t.Fatal("put_region restored a failed region")
	}
	h.keys()

	// restore_region makes it healthy again and moves nothing back.
	if r := h.apply(Command{Op: OpRestoreRegion, Name: "fra"}); r != (Result{Home: "fra"}) {
		t.Fatalf("restore = %+v", r)
	}
	if got := h.keys(); !reflect.DeepEqual(got, []string{"region:fra"}) {
		t.Fatalf("restore changes = %v", got)
	}
	if reg, _ := h.f.Region("fra"); !reg.Healthy {
		t.Fatal("restored region not healthy")
	}
	if got, _ := h.f.Conv("g:2"); got.Region != "lhr" {
		t.Fatalf("restore moved g:2 back: %+v", got)
	}
	if h.apply(Command{Op: OpRestoreRegion, Name: "fra"}); len(h.keys()) != 0 {
		t.Fatal("restoring a healthy region emitted a change")
	}
}

// Two healthy regions at the same distance: the smaller name wins, on
// every voter, whatever the map order.
func TestFSMFailRegionTieBrokenByName(t *testing.T) {
	for range 20 { // map iteration order varies from run to run
		h := newFSMHarness(t)
		h.region("mid", 0, 0, true)
		h.region("east-b", 0, 10, true)
		h.region("west-a", 0, -10, true)
		h.region("east-a", 0, 10, true)
		h.apply(Command{Op: OpSetUserHome, User: "u", Home: "mid"})
		if r := h.apply(Command{Op: OpFailRegion, Name: "mid"}); r.Home != "east-a" || r.MovedUsers != 1 {
			t.Fatalf("fail_region = %+v, want east-a (ties by name)", r)
		}
	}
}

// Without another healthy region fail_region is refused with
// ErrNoHealthyRegion and changes nothing; unknown regions and a missing
// name are refused too.
func TestFSMFailRegionRefusals(t *testing.T) {
	h := newFSMHarness(t)
	h.region("fra", 50.1, 8.7, true)
	h.region("iad", 38.9, -77.0, false)
	h.apply(Command{Op: OpSetUserHome, User: "alice", Home: "fra"})
	h.apply(Command{Op: OpSetConvHome, Conv: "c", Home: "fra"})
	h.keys()
	before := h.f.State()
	cases := []struct {
		cmd  Command
		want error
	}{
		{Command{Op: OpFailRegion, Name: "fra"}, ErrNoHealthyRegion},
		{Command{Op: OpFailRegion, Name: "mars"}, ErrUnknownRegion},
		{Command{Op: OpFailRegion}, ErrBadCommand},
		{Command{Op: OpRestoreRegion, Name: "mars"}, ErrUnknownRegion},
		{Command{Op: OpRestoreRegion}, ErrBadCommand},
	}
	for _, tc := range cases {
		r := h.apply(tc.cmd)
		if err := r.err(tc.cmd); !errors.Is(err, tc.want) {
			t.Fatalf("%s %q: %v (%+v), want %v", tc.cmd.Op, tc.cmd.Name, err, r, tc.want)
		}
	}
	if got := h.keys(); len(got) != 0 {
		t.Fatalf("refusals emitted %v", got)
	}
	after := h.f.State()
	after.Index = before.Index
	if !reflect.DeepEqual(before, after) {
		t.Fatal("a refused command changed the state")
	}
	if reg, _ := h.f.Region("fra"); !reg.Healthy {
		t.Fatal("the last healthy region was marked unhealthy")
	}
}

// A snapshot taken after a failover restores the failed region's health
// and the moved homes and epochs.
func TestFSMFailRegionSnapshotRestore(t *testing.T) {
	h := newFSMHarness(t)
	h.region("fra", 50.1, 8.7, true)
	h.region("iad", 38.9, -77.0, true)
	h.apply(Command{Op: OpSetUserHome, User: "alice", Home: "fra"})
	h.apply(Command{Op: OpSetConvHome, Conv: "c", Home: "fra", Owner: "alice"})
	h.apply(Command{Op: OpFailRegion, Name: "fra"})
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := NewFSM(nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.State(), h.f.State()) {
		t.Fatalf("restored %+v, want %+v", g.State(), h.f.State())
	}
	if reg, _ := g.Region("fra"); reg.Healthy {
		t.Fatal("restore lost the failure")
	}
	if c, _ := g.Conv("c"); c != (ConvHome{Region: "iad", Epoch: 2, Owner: "alice"}) {
		t.Fatalf("restored conv = %+v", c)
	}
}

// The detector, driven with made-up times: a follower judges nobody; a
// new leader judges nobody before FailAfter has passed since it took over
// (it has no history); then a healthy region silent for FailAfter is due,
// one that beat recently or is already unhealthy is not; an attempt
// spaces the next one by FailAfter; a new term starts a new grace.
func TestDetectorGraceAndSilence(t *testing.T) {
	const fa = 5 * time.Second
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	regions := []Region{{Name: "ams", Healthy: true}, {Name: "fra", Healthy: true}, {Name: "iad", Healthy: false}}
	dt := newDetector(fa)
	dt.beat("ams", at(0))
	if got := dt.due(at(time.Hour), regions); got != nil {
		t.Fatalf("a follower judged %v", got)
	}
	dt.lead(7, at(10*time.Second))
	if got := dt.due(at(10*time.Second), regions); len(got) != 0 { // the first tick as leader
		t.Fatalf("judged %v at the takeover", got)
	}
	dt.beat("fra", at(11*time.Second))
	if got := dt.due(at(10*time.Second+fa-time.Millisecond), regions); len(got) != 0 {
		t.Fatalf("judged %v within the grace period", got)
	}
	// ams's last beat predates the leadership: counted from the takeover.
	if got := dt.due(at(10*time.Second+fa), regions); !reflect.DeepEqual(got, []string{"ams"}) {
		t.Fatalf("due at the end of the grace = %v, want [ams]", got)
	}
	dt.tried("ams", at(15*time.Second))
	if got := dt.due(at(16*time.Second), regions); !reflect.DeepEqual(got, []string{"fra"}) {
		t.Fatalf("due = %v, want [fra] (ams was just tried)", got)
	}
	if got := dt.due(at(20*time.Second), regions); !reflect.DeepEqual(got, []string{"ams", "fra"}) {
		t.Fatalf("due = %v, want both again", got)
	}
	dt.lead(7, at(30*time.Second)) // same term: no new grace
	if got := dt.due(at(30*time.Second), regions); len(got) != 2 {
		t.Fatalf("same term restarted the grace: %v", got)
	}
	dt.follow()
	dt.lead(9, at(40*time.Second)) // a new term: a new grace
	if got := dt.due(at(44*time.Second), regions); len(got) != 0 {
		t.Fatalf("judged %v in a new term's grace", got)
	}
	if got := dt.due(at(45*time.Second), regions); len(got) != 2 {
		t.Fatalf("due after the new grace = %v", got)
	}
	// A region that appears (put) or turns healthy (restored) also gets
	// FailAfter from when the detector first sees it healthy.
	regions = append(regions, Region{Name: "sin", Healthy: true})
	regions[2].Healthy = true // iad restored
	if got := dt.due(at(46*time.Second), regions); !reflect.DeepEqual(got, []string{"ams", "fra"}) {
		t.Fatalf("due = %v, want the new and restored regions spared", got)
	}
	if got := dt.due(at(46*time.Second+fa), regions); !reflect.DeepEqual(got, []string{"ams", "fra", "iad", "sin"}) {
		t.Fatalf("due = %v, want all four", got)
	}
}

// Silent regions and heartbeat ages, with made-up times: nothing before
// this voter has led for the threshold; then the healthy regions not heard
// from for more than it; ages count from the takeover (-1 before any beat
// in this leadership).
func TestDetectorSilentAndAges(t *testing.T) {
	t0 := time.Unix(2_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	regions := []Region{{Name: "ams", Healthy: true}, {Name: "fra", Healthy: true}, {Name: "iad", Healthy: false}}
	dt := newDetector(5 * time.Second)
	if got := dt.silent(at(0), time.Second, regions); got != nil {
		t.Fatalf("a follower reports %v silent", got)
	}
	if got := dt.ages(at(0), regions); got != nil {
		t.Fatalf("a follower reports ages %v", got)
	}
	dt.lead(3, at(0))
	dt.beat("ams", at(500*time.Millisecond))
	if got := dt.silent(at(900*time.Millisecond), time.Second, regions); got != nil {
		t.Fatalf("silent %v before leading for the threshold", got)
	}
	if got := dt.silent(at(1400*time.Millisecond), time.Second, regions); !reflect.DeepEqual(got, []string{"fra"}) {
		t.Fatalf("silent = %v, want [fra] (ams beat, iad is failed)", got)
	}
	if got := dt.silent(at(1600*time.Millisecond), time.Second, regions); !reflect.DeepEqual(got, []string{"ams", "fra"}) {
		t.Fatalf("silent = %v, want [ams fra]", got)
	}
	want := map[string]int64{"ams": 1100, "fra": -1, "iad": -1}
	if got := dt.ages(at(1600*time.Millisecond), regions); !reflect.DeepEqual(got, want) {
		t.Fatalf("ages = %v, want %v", got, want)
	}
}

// A region's name is at most core.MaxRegionNameLen bytes (every stored
// entry carries it).
func TestPutRegionNameLimit(t *testing.T) {
	f := NewFSM(nil)
	for i, tc := range []struct {
		n    int
		code string
	}{{core.MaxRegionNameLen, ""}, {core.MaxRegionNameLen + 1, codeBadCommand}} {
		c := Command{Op: OpPutRegion, Region: &Region{Name: strings.Repeat("r", tc.n), Healthy: true}}
		if r := f.Apply(&raft.Log{Index: uint64(i + 1), Data: mustEncode(t, c)}).(Result); r.Code != tc.code {
			t.Fatalf("name of %d bytes: %+v", tc.n, r)
		}
	}
}

// Who failed a region decides who restores it: a region the failure
// detector failed may rejoin by itself (restore_region By rejoin); one an
// operator failed (fail_region, set_region_health down), or one the
// detector failed and an operator then failed again, is held until an
// operator restores it. A re-announcement keeps who failed it.
func TestRejoinOnlyAfterTheDetector(t *testing.T) {
	h := newFSMHarness(t)
	h.region("fra", 50.11, 8.68, true)
	h.region("ams", 52.37, 4.90, true)
	rejoin := Command{Op: OpRestoreRegion, Name: "fra", By: ByRejoin}
	failedBy := func() (bool, string) { r, _ := h.f.Region("fra"); return r.Healthy, r.FailedBy }

	h.apply(Command{Op: OpFailRegion, Name: "fra", By: ByDetector})
	if up, by := failedBy(); up || by != FailedByDetector {
		t.Fatalf("after the detector: healthy %v by %q", up, by)
	}
	h.apply(Command{Op: OpPutRegion, Region: &Region{Name: "fra", Lat: 50.11, Long: 8.68, Healthy: true}})
	if up, by := failedBy(); up || by != FailedByDetector {
		t.Fatalf("after a re-announcement: healthy %v by %q", up, by)
	}
	if r := h.apply(rejoin); r.Code != "" {
		t.Fatalf("rejoin after the detector: %+v", r)
	}
	if up, by := failedBy(); !up || by != "" {
		t.Fatalf("after the rejoin: healthy %v by %q", up, by)
	}

	for _, fail := range []Command{
		{Op: OpFailRegion, Name: "fra"},
		{Op: OpSetRegionHealth, Name: "fra", Healthy: no()},
	} {
		h.apply(fail)
		if up, by := failedBy(); up || by != FailedByOperator {
			t.Fatalf("after %s: healthy %v by %q", fail.Op, up, by)
		}
		if r := h.apply(rejoin); r.Code != codeHeld || !errors.Is(r.err(rejoin), ErrHeldByOperator) {
			t.Fatalf("rejoin after %s: %+v", fail.Op, r)
		}
		if up, _ := failedBy(); up {
			t.Fatal("a held region rejoined")
		}
		h.apply(Command{Op: OpRestoreRegion, Name: "fra"})
		if up, by := failedBy(); !up || by != "" {
			t.Fatalf("operator restore: healthy %v by %q", up, by)
		}
	}
	// The detector fails it, then an operator fails it too: held.
	h.apply(Command{Op: OpFailRegion, Name: "fra", By: ByDetector})
	h.apply(Command{Op: OpFailRegion, Name: "fra"})
	if r := h.apply(rejoin); r.Code != codeHeld {
		t.Fatalf("rejoin after the operator took over: %+v", r)
	}
	// And the detector repeating itself does not take it back.
	h.apply(Command{Op: OpFailRegion, Name: "fra", By: ByDetector})
	if _, by := failedBy(); by != FailedByOperator {
		t.Fatalf("the detector took an operator's failure back: %q", by)
	}
}
