package directory

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func yes() *bool { t := true; return &t }
func no() *bool  { f := false; return &f }

func edge(id string) Edge {
	return Edge{ID: id, WS: "ws://" + id + "/v1/ws", WT: "https://" + id + "/v1/wt", CertHash: "aabb", NoiseKeyHex: strings.Repeat("01", 32), Healthy: true}
}

// wantEdges checks the ids (in stored order) of region's edges.
func wantEdges(region string, ids ...string) func(t *testing.T, f *FSM) {
	return func(t *testing.T, f *FSM) {
		t.Helper()
		r, ok := f.Region(region)
		if !ok {
			t.Fatalf("region %s missing", region)
		}
		var got []string
		for _, e := range r.Edges {
			got = append(got, e.ID)
		}
		if !reflect.DeepEqual(got, ids) {
			t.Fatalf("%s edges = %v, want %v", region, got, ids)
		}
		if len(ids) == 0 && r.Edges != nil {
			t.Fatalf("%s edges = %#v, want nil", region, r.Edges)
		}
	}
}

func TestFSMEdges(t *testing.T) {
	fra := Region{Name: "fra", Lat: 50.1, Long: 8.7, Healthy: true}
	iad := Region{Name: "iad", Lat: 38.9, Long: -77.0, Healthy: true}
	setup := []Command{{Op: OpPutRegion, Region: &fra}, {Op: OpPutRegion, Region: &iad}}
	with := func(cs ...Command) []Command { return append(setup[:2:2], cs...) }
	e1, e2, e3 := edge("e1"), edge("e2"), edge("e3")
	put := func(region string, e Edge) Command { return Command{Op: OpPutEdge, Name: region, Edge: &e} }
	full := with()
	for i := range MaxEdgesPerRegion {
		full = append(full, put("fra", edge(fmt.Sprintf("x%03d", i))))
	}
	bad := func(mut func(*Edge)) *Edge { e := edge("e9"); mut(&e); return &e }

	runFSMCases(t, []fsmCase{
		{name: "put edge", pre: setup, cmd: put("fra", e1), want: Result{Home: "fra"},
			check: func(t *testing.T, f *FSM) {
				if r, _ := f.Region("fra"); !reflect.DeepEqual(r.Edges, []Edge{e1}) {
					t.Fatalf("edges = %+v", r.Edges)
				}
			}},
		{name: "edges sorted by id", pre: with(put("fra", e3), put("fra", e1)), cmd: put("fra", e2), want: Result{Home: "fra"},
			check: wantEdges("fra", "e1", "e2", "e3")},
		{name: "put edge upserts by id", pre: with(put("fra", e1), put("fra", e2)),
			cmd: Command{Op: OpPutEdge, Name: "fra", Edge: &Edge{ID: "e1", WS: "ws://new", Healthy: false}}, want: Result{Home: "fra"},
			check: func(t *testing.T, f *FSM) {
				r, _ := f.Region("fra")
				if len(r.Edges) != 2 || r.Edges[0] != (Edge{ID: "e1", WS: "ws://new"}) {
					t.Fatalf("edges = %+v", r.Edges)
				}
			}},
		{name: "put edge moves it from another region", pre: with(put("fra", e1), put("fra", e2)), cmd: put("iad", e1),
			want: Result{Home: "iad"}, changes: 2,
			check: func(t *testing.T, f *FSM) {
				wantEdges("fra", "e2")(t, f)
				wantEdges("iad", "e1")(t, f)
			}},
		{name: "moving the last edge leaves nil", pre: with(put("fra", e1)), cmd: put("iad", e1), want: Result{Home: "iad"}, changes: 2,
			check: wantEdges("fra")},
		{name: "put edge unknown region", pre: setup, cmd: put("sin", e1), want: Result{Code: codeUnknownRegion}, wantErr: ErrUnknownRegion},
		{name: "put edge without region", pre: setup, cmd: put("", e1), wantErr: ErrBadCommand},
		{name: "put edge without edge", pre: setup, cmd: Command{Op: OpPutEdge, Name: "fra"}, wantErr: ErrBadCommand},
		{name: "put edge without id", pre: setup, cmd: Command{Op: OpPutEdge, Name: "fra", Edge: bad(func(e *Edge) { e.ID = "" })}, wantErr: ErrBadCommand},
		{name: "put edge id too long", pre: setup, cmd: Command{Op: OpPutEdge, Name: "fra", Edge: bad(func(e *Edge) { e.ID = strings.Repeat("i", 129) })}, wantErr: ErrBadCommand},
		{name: "put edge without urls", pre: setup, cmd: Command{Op: OpPutEdge, Name: "fra", Edge: bad(func(e *Edge) { e.WS, e.WT = "", "" })}, wantErr: ErrBadCommand},
		{name: "put edge cert hash not hex", pre: setup, cmd: Command{Op: OpPutEdge, Name: "fra", Edge: bad(func(e *Edge) { e.CertHash = "zz" })}, wantErr: ErrBadCommand},
		{name: "put edge noise key not hex", pre: setup, cmd: Command{Op: OpPutEdge, Name: "fra", Edge: bad(func(e *Edge) { e.NoiseKeyHex = "abc" })}, wantErr: ErrBadCommand},
		{name: "put edge url too long", pre: setup, cmd: Command{Op: OpPutEdge, Name: "fra", Edge: bad(func(e *Edge) { e.WS = strings.Repeat("w", 2049) })}, wantErr: ErrBadCommand},
		{name: "edge limit", pre: full, cmd: put("fra", edge("y")), wantErr: ErrBadCommand},
		{name: "edge limit allows an upsert", pre: full, cmd: put("fra", edge("x000")), want: Result{Home: "fra"}},
		{name: "edge limit allows a move in", pre: full, cmd: put("iad", edge("x000")), want: Result{Home: "iad"}, changes: 2},

		{name: "put region keeps stored edges and health", pre: with(put("fra", e1)),
			cmd: Command{Op: OpPutRegion, Region: &Region{Name: "fra", Lat: 1, Long: 2}}, want: Result{Home: "fra"},
			check: func(t *testing.T, f *FSM) {
				r, _ := f.Region("fra")
				if r.Lat != 1 || !r.Healthy || !reflect.DeepEqual(r.Edges, []Edge{e1}) {
					t.Fatalf("region = %+v", r)
				}
			}},
		{name: "put region without edges key keeps stored edges", pre: with(put("fra", e1)),
			raw: append([]byte{cmdVersion}, `{"op":"put_region","region":{"name":"fra","lat":3,"long":4,"healthy":true}}`...), want: Result{Home: "fra"},
			check: wantEdges("fra", "e1")},
		{name: "put region with empty edges clears them", pre: with(put("fra", e1)),
			cmd: Command{Op: OpPutRegion, Region: &Region{Name: "fra", Edges: []Edge{}}}, want: Result{Home: "fra"},
			check: wantEdges("fra")},
		{name: "put region with edges replaces and moves", pre: with(put("fra", e1), put("iad", e2)),
			cmd: Command{Op: OpPutRegion, Region: &Region{Name: "fra", Edges: []Edge{e3, e2}}}, want: Result{Home: "fra"}, changes: 2,
			check: func(t *testing.T, f *FSM) {
				wantEdges("fra", "e2", "e3")(t, f)
				wantEdges("iad")(t, f)
			}},
		{name: "put region duplicate edge ids", pre: setup, cmd: Command{Op: OpPutRegion, Region: &Region{Name: "fra", Edges: []Edge{e1, e1}}}, wantErr: ErrBadCommand},
		{name: "put region invalid edge", pre: setup, cmd: Command{Op: OpPutRegion, Region: &Region{Name: "fra", Edges: []Edge{{ID: "e1"}}}}, wantErr: ErrBadCommand},

		{name: "set edge health", pre: with(put("fra", e1), put("fra", e2)), cmd: Command{Op: OpSetEdgeHealth, Name: "fra", EdgeID: "e2", Healthy: no()},
			want: Result{Home: "fra"},
			check: func(t *testing.T, f *FSM) {
				r, _ := f.Region("fra")
				if !r.Edges[0].Healthy || r.Edges[1].Healthy {
					t.Fatalf("edges = %+v", r.Edges)
				}
			}},
		{name: "set edge health unknown region", pre: with(put("fra", e1)), cmd: Command{Op: OpSetEdgeHealth, Name: "sin", EdgeID: "e1", Healthy: no()},
			want: Result{Code: codeUnknownRegion}, wantErr: ErrUnknownRegion},
		{name: "set edge health unknown edge", pre: with(put("fra", e1)), cmd: Command{Op: OpSetEdgeHealth, Name: "fra", EdgeID: "e2", Healthy: no()},
			want: Result{Code: codeUnknownEdge}, wantErr: ErrUnknownEdge},
		{name: "set edge health edge of another region", pre: with(put("fra", e1)), cmd: Command{Op: OpSetEdgeHealth, Name: "iad", EdgeID: "e1", Healthy: no()},
			want: Result{Code: codeUnknownEdge}, wantErr: ErrUnknownEdge},
		{name: "set edge health without healthy", pre: with(put("fra", e1)), cmd: Command{Op: OpSetEdgeHealth, Name: "fra", EdgeID: "e1"}, wantErr: ErrBadCommand},
		{name: "set edge health without id", pre: with(put("fra", e1)), cmd: Command{Op: OpSetEdgeHealth, Name: "fra", Healthy: yes()}, wantErr: ErrBadCommand},

		{name: "set region health", pre: with(put("fra", e1)), cmd: Command{Op: OpSetRegionHealth, Name: "fra", Healthy: no()}, want: Result{Home: "fra"},
			check: func(t *testing.T, f *FSM) {
				r, _ := f.Region("fra")
				if r.Healthy || r.Lat != fra.Lat || !reflect.DeepEqual(r.Edges, []Edge{e1}) {
					t.Fatalf("region = %+v", r)
				}
			}},
		{name: "set region health unknown region", pre: setup, cmd: Command{Op: OpSetRegionHealth, Name: "sin", Healthy: yes()},
			want: Result{Code: codeUnknownRegion}, wantErr: ErrUnknownRegion},
		{name: "set region health without healthy", pre: setup, cmd: Command{Op: OpSetRegionHealth, Name: "fra"}, wantErr: ErrBadCommand},
	})
}

// TestFSMEdgeChangesInOrder: a move emits the losing region first, then the
// gaining one, both carrying their new edge lists.
func TestFSMEdgeChangesInOrder(t *testing.T) {
	var changes []Change
	f := NewFSM(func(c Change) { changes = append(changes, c) })
	e1 := edge("e1")
	for i, c := range []Command{
		{Op: OpPutRegion, Region: &Region{Name: "fra", Healthy: true}},
		{Op: OpPutRegion, Region: &Region{Name: "iad", Healthy: true}},
		{Op: OpPutEdge, Name: "fra", Edge: &e1},
		{Op: OpPutEdge, Name: "iad", Edge: &e1},
	} {
		f.Apply(&raft.Log{Index: uint64(i + 1), Data: mustEncode(t, c)})
	}
	got := changes[len(changes)-2:]
	if got[0].Key != "fra" || got[0].Region.Edges != nil || got[1].Key != "iad" || len(got[1].Region.Edges) != 1 {
		t.Fatalf("changes = %+v", got)
	}
	// The emitted region is a copy: changing it does not touch the FSM.
	got[1].Region.Edges[0].Healthy = false
	if r, _ := f.Region("iad"); !r.Edges[0].Healthy {
		t.Fatal("a Change aliases the FSM's edges")
	}
	r, _ := f.Region("iad")
	r.Edges[0].ID = "mutated"
	if r2, _ := f.Region("iad"); r2.Edges[0].ID != "e1" {
		t.Fatal("Region aliases the FSM's edges")
	}
}

func TestEdgeErrorsTyped(t *testing.T) {
	err := Result{Code: codeUnknownEdge}.err(Command{Op: OpSetEdgeHealth, Name: "fra", EdgeID: "e1"})
	if !errors.Is(err, ErrUnknownEdge) || !strings.Contains(err.Error(), `"e1"`) {
		t.Fatalf("err = %v", err)
	}
	err = Result{Code: codeUnknownRegion}.err(Command{Op: OpPutEdge, Name: "sin"})
	if !errors.Is(err, ErrUnknownRegion) || !strings.Contains(err.Error(), `"sin"`) {
		t.Fatalf("err = %v", err)
	}
}

// TestClusterEdges: edge writes issued on a follower reach every voter, a
// region's re-announcement keeps its edges, and a voter restarted after a
// snapshot has them too.
func TestClusterEdges(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	l := c.leader()
	fd := c.node((l + 1) % 3)
	for _, r := range []string{"fra", "iad"} {
		if err := fd.PutRegion(ctx, Region{Name: r, Healthy: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range []string{"e1", "e2"} {
		if err := fd.PutEdge(ctx, "fra", edge(e)); err != nil {
			t.Fatalf("put edge %s: %v", e, err)
		}
	}
	if err := fd.PutEdge(ctx, "iad", edge("e2")); err != nil { // moves e2
		t.Fatal(err)
	}
	if err := fd.SetEdgeHealth(ctx, "fra", "e1", false); err != nil {
		t.Fatal(err)
	}
	if err := fd.SetEdgeHealth(ctx, "fra", "e2", false); !errors.Is(err, ErrUnknownEdge) {
		t.Fatalf("health of a moved edge: %v, want ErrUnknownEdge", err)
	}
	if err := fd.PutEdge(ctx, "sin", edge("e3")); !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("edge of unknown region: %v", err)
	}
	if err := fd.PutEdge(ctx, "fra", Edge{ID: "e4"}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("edge without urls: %v", err)
	}
	if err := fd.SetRegionHealth(ctx, "iad", false); err != nil {
		t.Fatal(err)
	}
	// fra restarts and re-announces itself: its edges stay.
	if err := c.node(l).PutRegion(ctx, Region{Name: "fra", Lat: 50, Healthy: true}); err != nil {
		t.Fatal(err)
	}
	e1 := edge("e1")
	e1.Healthy = false
	want := []Region{
		{Name: "fra", Lat: 50, Healthy: true, Edges: []Edge{e1}},
		{Name: "iad", Healthy: false, FailedBy: FailedByOperator, Edges: []Edge{edge("e2")}},
	}
	for i := range 3 {
		d := c.node(i)
		if err := d.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := d.Regions(); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s regions:\n%+v\nwant\n%+v", d.ID(), got, want)
		}
	}
	// A voter that misses enough writes to be caught up by a snapshot.
	down := (l + 2) % 3
	c.kill(down)
	live := c.node((down + 1) % 3)
	for i := range 60 {
		if _, err := casRetry(ctx, live, fmt.Sprintf("k%d", i), "fra", 0); err != nil {
			t.Fatal(err)
		}
	}
	c.start(down)
	d := c.node(down)
	if err := d.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := d.Regions(); !reflect.DeepEqual(got, want) {
		t.Fatalf("restarted %s regions:\n%+v\nwant\n%+v", d.ID(), got, want)
	}
}
