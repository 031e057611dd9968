package directory

import (
	"errors"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
)

// move_user moves the user's home and, in the same step, every
// conversation the user owns (recorded when it was claimed) that is not
// already there, each at epoch + 1; conversations of other owners, and
// owned ones already at the destination, stay as they are. A move keeps
// the owner; a refused move changes nothing.
func TestFSMMoveUser(t *testing.T) {
	var changes []Change
	f := NewFSM(func(c Change) { changes = append(changes, c) })
	idx := uint64(0)
	apply := func(c Command) Result {
		t.Helper()
		idx++
		return f.Apply(&raft.Log{Index: idx, Data: mustEncode(t, c)}).(Result)
	}
	for _, r := range []string{"fra", "iad", "sin"} {
		apply(Command{Op: OpPutRegion, Region: &Region{Name: r, Healthy: true}})
	}
	apply(Command{Op: OpSetUserHome, User: "alice", Home: "fra"})
	apply(Command{Op: OpSetConvHome, Conv: "d:alice:bob", Home: "fra", Owner: "alice"})
	apply(Command{Op: OpSetConvHome, Conv: "g:a1", Home: "fra", Owner: "alice"})
	apply(Command{Op: OpSetConvHome, Conv: "g:a2", Home: "sin", Owner: "alice"})
	apply(Command{Op: OpSetConvHome, Conv: "g:a2", Home: "iad", ExpectEpoch: 1}) // moved alone; owner kept
	apply(Command{Op: OpSetConvHome, Conv: "d:bob:carol", Home: "fra", Owner: "bob"})
	if h, _ := f.Conv("g:a2"); h.Owner != "alice" || h.Epoch != 2 {
		t.Fatalf("a moved conversation lost its owner: %+v", h)
	}
	before := f.State()
	if r := apply(Command{Op: OpMoveUser, User: "alice", Home: "mars"}); !errors.Is(r.err(Command{Home: "mars"}), ErrUnknownRegion) {
		t.Fatalf("move to an unknown region: %+v", r)
	}
	after := f.State()
	after.Index = before.Index
	if !reflect.DeepEqual(before, after) {
		t.Fatal("a refused move changed the state")
	}
	changes = nil
	r := apply(Command{Op: OpMoveUser, User: "alice", Home: "iad"})
	if r.Code != "" || r.Moved != 2 || r.Home != "iad" {
		t.Fatalf("move_user = %+v, want 2 moved", r)
	}
	want := map[string]ConvHome{
		"d:alice:bob": {Region: "iad", Epoch: 2, Owner: "alice"},
		"g:a1":        {Region: "iad", Epoch: 2, Owner: "alice"},
		"g:a2":        {Region: "iad", Epoch: 2, Owner: "alice"}, // already there: untouched
		"d:bob:carol": {Region: "fra", Epoch: 1, Owner: "bob"},
	}
	for c, w := range want {
		if h, _ := f.Conv(c); h != w {
			t.Fatalf("%s = %+v, want %+v", c, h, w)
		}
	}
	if h, _ := f.UserHome("alice"); h != "iad" {
		t.Fatalf("alice's home = %q", h)
	}
	got := []string{}
	for _, c := range changes {
		got = append(got, string(c.Kind)+":"+c.Key)
	}
	if !reflect.DeepEqual(got, []string{"user:alice", "conv:d:alice:bob", "conv:g:a1"}) {
		t.Fatalf("changes = %v, want the user then the moved conversations in id order", got)
	}
	// Repeating it moves nothing more.
	if r := apply(Command{Op: OpMoveUser, User: "alice", Home: "iad"}); r.Moved != 0 || r.Code != "" {
		t.Fatalf("repeat = %+v", r)
	}
}
