package directory

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/chatmesh/chatmesh/core"
)

func mustEncode(t *testing.T, c Command) []byte {
	t.Helper()
	b, err := EncodeCommand(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fsmCase is one command applied to an FSM after pre.
type fsmCase struct {
	name    string
	pre     []Command
	cmd     Command
	raw     []byte // instead of cmd
	want    Result
	wantErr error
	changes int // changes a successful command emits; 0 means 1
	check   func(t *testing.T, f *FSM)
}

func TestFSMApply(t *testing.T) {
	fra := Region{Name: "fra", Lat: 50.1, Long: 8.7, EdgeURLs: []string{"wss://fra/ws"}, NoiseKeyHex: "ab", LinkEndpoint: "fra:9000", Healthy: true}
	iad := Region{Name: "iad", Lat: 38.9, Long: -77.0, Healthy: true}
	setup := []Command{{Op: OpPutRegion, Region: &fra}, {Op: OpPutRegion, Region: &iad}}
	tests := []fsmCase{
		{name: "put region", cmd: Command{Op: OpPutRegion, Region: &fra}, want: Result{Home: "fra"},
			check: func(t *testing.T, f *FSM) {
				if r, ok := f.Region("fra"); !ok || !reflect.DeepEqual(r, fra) {
					t.Fatalf("region = %+v %v", r, ok)
				}
			}},
		{name: "put region without name", cmd: Command{Op: OpPutRegion, Region: &Region{}}, wantErr: ErrBadCommand},
		{name: "user home", pre: setup, cmd: Command{Op: OpSetUserHome, User: "u1", Home: "fra", IfAbsent: true}, want: Result{Home: "fra"}},
		{name: "user home if absent keeps first", pre: append(setup[:2:2], Command{Op: OpSetUserHome, User: "u1", Home: "fra"}),
			cmd: Command{Op: OpSetUserHome, User: "u1", Home: "iad", IfAbsent: true}, want: Result{Code: codeExists, Home: "fra"}, wantErr: ErrExists,
			check: func(t *testing.T, f *FSM) {
				if h, _ := f.UserHome("u1"); h != "fra" {
					t.Fatalf("home = %q, want fra", h)
				}
			}},
		{name: "user move overwrites", pre: append(setup[:2:2], Command{Op: OpSetUserHome, User: "u1", Home: "fra"}),
			cmd: Command{Op: OpSetUserHome, User: "u1", Home: "iad"}, want: Result{Home: "iad"}},
		{name: "user home unknown region", pre: setup, cmd: Command{Op: OpSetUserHome, User: "u1", Home: "sin"}, want: Result{Code: codeUnknownRegion}, wantErr: ErrUnknownRegion,
			check: func(t *testing.T, f *FSM) {
				if _, ok := f.UserHome("u1"); ok {
					t.Fatal("user stored despite unknown region")
				}
			}},
		{name: "conv create", pre: setup, cmd: Command{Op: OpSetConvHome, Conv: "c1", Home: "fra"}, want: Result{Home: "fra", Epoch: 1}},
		{name: "conv create twice fenced", pre: append(setup[:2:2], Command{Op: OpSetConvHome, Conv: "c1", Home: "fra"}),
			cmd: Command{Op: OpSetConvHome, Conv: "c1", Home: "iad"}, want: Result{Code: codeFenced, Home: "fra", Epoch: 1}, wantErr: core.ErrFenced},
		{name: "conv move", pre: append(setup[:2:2], Command{Op: OpSetConvHome, Conv: "c1", Home: "fra"}),
			cmd: Command{Op: OpSetConvHome, Conv: "c1", Home: "iad", ExpectEpoch: 1}, want: Result{Home: "iad", Epoch: 2}},
		{name: "conv stale epoch", pre: append(setup[:2:2], Command{Op: OpSetConvHome, Conv: "c1", Home: "fra"}, Command{Op: OpSetConvHome, Conv: "c1", Home: "iad", ExpectEpoch: 1}),
			cmd: Command{Op: OpSetConvHome, Conv: "c1", Home: "fra", ExpectEpoch: 1}, want: Result{Code: codeFenced, Home: "iad", Epoch: 2}, wantErr: core.ErrFenced,
			check: func(t *testing.T, f *FSM) {
				if h, _ := f.Conv("c1"); h != (ConvHome{Region: "iad", Epoch: 2}) {
					t.Fatalf("conv = %+v", h)
				}
			}},
		{name: "conv future epoch fenced", pre: setup, cmd: Command{Op: OpSetConvHome, Conv: "c1", Home: "fra", ExpectEpoch: 5}, want: Result{Code: codeFenced}, wantErr: core.ErrFenced},
		{name: "conv unknown region", pre: setup, cmd: Command{Op: OpSetConvHome, Conv: "c1", Home: "sin"}, want: Result{Code: codeUnknownRegion}, wantErr: ErrUnknownRegion},
		{name: "unknown op", cmd: Command{Op: "drop_table"}, wantErr: ErrBadCommand},
		{name: "bad version", raw: []byte{9, '{', '}'}, wantErr: ErrBadCommand},
		{name: "empty", raw: []byte{}, wantErr: ErrBadCommand},
		{name: "unknown field", raw: append([]byte{cmdVersion}, `{"op":"put_region","bogus":1}`...), wantErr: ErrBadCommand},
	}
	runFSMCases(t, tests)
}

func runFSMCases(t *testing.T, tests []fsmCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var changes []Change
			f := NewFSM(func(c Change) { changes = append(changes, c) })
			idx := uint64(0)
			for _, c := range tc.pre {
				idx++
				if r := f.Apply(&raft.Log{Index: idx, Data: mustEncode(t, c)}).(Result); r.Code != "" {
					t.Fatalf("setup %+v: %+v", c, r)
				}
			}
			before := f.State()
			nChanges := len(changes)
			data := tc.raw
			if data == nil {
				data = mustEncode(t, tc.cmd)
			}
			idx++
			res := f.Apply(&raft.Log{Index: idx, Data: data}).(Result)
			err := res.err(tc.cmd)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				// A refused command changes nothing but the applied index.
				after := f.State()
				after.Index = before.Index
				if !reflect.DeepEqual(before, after) {
					t.Fatalf("refused command changed state:\n%+v\n%+v", before, after)
				}
				if len(changes) != nChanges {
					t.Fatalf("refused command emitted a change: %+v", changes[nChanges:])
				}
			} else if err != nil {
				t.Fatalf("err = %v", err)
			} else {
				want := max(tc.changes, 1)
				if len(changes) != nChanges+want {
					t.Fatalf("changes = %+v, want %d at index %d", changes[nChanges:], want, idx)
				}
				for _, ch := range changes[nChanges:] {
					if ch.Index != idx || ch.Kind != changes[len(changes)-1].Kind {
						t.Fatalf("change %+v, want index %d", ch, idx)
					}
				}
			}
			if tc.want.Code != "" || tc.wantErr == nil {
				if tc.want != res {
					t.Fatalf("result = %+v, want %+v", res, tc.want)
				}
			}
			if got, _ := f.Index(); got != idx {
				t.Fatalf("index = %d, want %d", got, idx)
			}
			if tc.check != nil {
				tc.check(t, f)
			}
		})
	}
}

func TestEpochErrorIsFenced(t *testing.T) {
	err := Result{Code: codeFenced, Epoch: 3}.err(Command{Op: OpSetConvHome, Conv: "c", ExpectEpoch: 2})
	var ee *EpochError
	if !errors.As(err, &ee) || ee.Stored != 3 || ee.Expected != 2 || !errors.Is(err, core.ErrFenced) {
		t.Fatalf("err = %#v", err)
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func TestFSMSnapshotRestore(t *testing.T) {
	f := NewFSM(nil)
	cmds := []Command{
		{Op: OpPutRegion, Region: &Region{Name: "fra", Lat: 50.1, Long: 8.7, EdgeURLs: []string{"a", "b"}, NoiseKeyHex: "00ff", LinkEndpoint: "l:1", Healthy: true}},
		{Op: OpPutRegion, Region: &Region{Name: "sin", Lat: 1.3, Long: 103.8}},
		{Op: OpSetRegionHealth, Name: "sin", Healthy: yes()},
		{Op: OpSetUserHome, User: "alice", Home: "fra"},
		{Op: OpSetUserHome, User: "bob", Home: "sin"},
		{Op: OpSetConvHome, Conv: "c1", Home: "fra"},
		{Op: OpSetConvHome, Conv: "c1", Home: "sin", ExpectEpoch: 1},
		{Op: OpSetConvHome, Conv: "c2", Home: "sin"},
		{Op: OpPutEdge, Name: "fra", Edge: &Edge{ID: "fra-1", WS: "ws://fra-1", CertHash: "ab", NoiseKeyHex: "cd", Healthy: true}},
		{Op: OpPutEdge, Name: "fra", Edge: &Edge{ID: "fra-2", WT: "https://fra-2", Healthy: true}},
		{Op: OpSetEdgeHealth, Name: "fra", EdgeID: "fra-2", Healthy: no()},
		{Op: OpSetRegionHealth, Name: "sin", Healthy: yes()},
	}
	for i, c := range cmds {
		if r := f.Apply(&raft.Log{Index: uint64(i + 1), Data: mustEncode(t, c)}).(Result); r.Code != "" {
			t.Fatalf("%+v: %+v", c, r)
		}
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Writes after Snapshot must not leak into the persisted copy.
	f.Apply(&raft.Log{Index: uint64(len(cmds) + 1), Data: mustEncode(t, Command{Op: OpSetUserHome, User: "carol", Home: "fra"})})
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	var changes []Change
	g := NewFSM(func(c Change) { changes = append(changes, c) })
	g.Apply(&raft.Log{Index: 1, Data: mustEncode(t, Command{Op: OpPutRegion, Region: &Region{Name: "old", Healthy: true}})})
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	want := f.State()
	delete(want.Users, "carol")
	want.Index = uint64(len(cmds))
	if r := want.Regions["fra"]; len(r.Edges) != 2 || r.Edges[1].Healthy || !want.Regions["sin"].Healthy {
		t.Fatalf("edges before snapshot: %+v", want.Regions)
	}
	if got := g.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored:\n%+v\nwant:\n%+v", got, want)
	}
	if len(changes) != 2 || changes[1].Kind != ChangeResync {
		t.Fatalf("changes = %+v, want a resync after restore", changes)
	}
	// The restored FSM keeps working and stays conditional.
	r := g.Apply(&raft.Log{Index: uint64(len(cmds) + 2), Data: mustEncode(t, Command{Op: OpSetConvHome, Conv: "c1", Home: "fra", ExpectEpoch: 1})}).(Result)
	if r.Code != codeFenced || r.Epoch != 2 {
		t.Fatalf("stale CAS after restore: %+v", r)
	}
	if err := g.Restore(io.NopCloser(bytes.NewReader([]byte{7, '{', '}'}))); err == nil {
		t.Fatal("restore of an unknown snapshot version succeeded")
	}
}
