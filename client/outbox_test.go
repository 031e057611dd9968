package client

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core/pb"
)

func sreq(conv, id string) *pb.SendRequest {
	return &pb.SendRequest{ConvId: conv, ClientMsgId: id, Envelope: &pb.Envelope{Ciphertext: []byte("body " + id)}}
}

func ids(rs []*pb.SendRequest) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetClientMsgId())
	}
	return out
}

func TestOutboxSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	ob, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := ob.Add(sreq("d:a:b", fmt.Sprintf("m%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := ob.Remove("m1"); !ok || err != nil {
		t.Fatalf("remove: %v %v", ok, err)
	}
	// A torn temp file and a corrupt entry from a crash are cleaned up.
	os.WriteFile(filepath.Join(dir, ".0000000000000063.msg.tmp123"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "0000000000000064.msg"), []byte("garbage!"), 0o600)

	ob2, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ob2.Pending() {
		got = append(got, e.ClientMsgID)
	}
	if want := []string{"m0", "m2", "m3", "m4"}; !slices.Equal(got, want) {
		t.Fatalf("pending after reopen %v, want %v", got, want)
	}
	p, _ := ob2.sendable(time.Now(), 16, 100)
	if string(p[0].GetEnvelope().GetCiphertext()) != "body m0" {
		t.Fatalf("envelope not preserved: %q", p[0].GetEnvelope().GetCiphertext())
	}
	// New entries sort after the reloaded ones.
	ob2.Add(sreq("d:a:b", "m5"))
	if e := ob2.Pending(); e[len(e)-1].ClientMsgID != "m5" {
		t.Fatalf("order after reopen: %v", e)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 5 {
		t.Fatalf("files in outbox dir: %d, want 5", len(ents))
	}
}

func TestOutboxSchedulingPreservesOrder(t *testing.T) {
	ob, err := OpenOutbox(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*pb.SendRequest{sreq("A", "a1"), sreq("B", "b1"), sreq("A", "a2"), sreq("A", "a3"), sreq("B", "b2")} {
		ob.Add(r)
	}
	now := time.Now()
	// Window 2 per conversation.
	p, _ := ob.sendable(now, 2, 100)
	if want := []string{"a1", "b1", "a2", "b2"}; !slices.Equal(ids(p), want) {
		t.Fatalf("first pick %v, want %v", ids(p), want)
	}
	// Nothing more while A is at its window.
	if p, _ := ob.sendable(now, 2, 100); len(p) != 0 {
		t.Fatalf("picked %v past the window", ids(p))
	}
	// a1 hits RATE_LIMITED: it waits 1 s, and a3 must not overtake it.
	ob.release("a1", now.Add(time.Second))
	p, wake := ob.sendable(now, 2, 100)
	if len(p) != 0 {
		t.Fatalf("a3 overtook a1 in backoff: %v", ids(p))
	}
	if !wake.Equal(now.Add(time.Second)) {
		t.Fatalf("wake %v", wake)
	}
	p, _ = ob.sendable(now.Add(2*time.Second), 2, 100)
	if want := []string{"a1"}; !slices.Equal(ids(p), want) { // a2 still in flight: window 2
		t.Fatalf("after backoff %v, want %v", ids(p), want)
	}
	if ob.attempts("a1") != 2 {
		t.Fatalf("attempts %d", ob.attempts("a1"))
	}
	// Session lost: everything goes back and is picked again in order.
	ob.resetInflight()
	p, _ = ob.sendable(now.Add(2*time.Second), 8, 100)
	if want := []string{"a1", "b1", "a2", "a3", "b2"}; !slices.Equal(ids(p), want) {
		t.Fatalf("after reset %v, want %v", ids(p), want)
	}
	ob.resetInflight()
	// The global limit caps the pick.
	if p, _ = ob.sendable(now.Add(2*time.Second), 8, 2); len(p) != 2 {
		t.Fatalf("limit 2 picked %d", len(p))
	}
}

func TestOutboxEmptySignal(t *testing.T) {
	ob, _ := OpenOutbox(t.TempDir())
	select {
	case <-ob.Empty():
	default:
		t.Fatal("new outbox not empty")
	}
	ob.Add(sreq("A", "x"))
	empty := ob.Empty()
	select {
	case <-empty:
		t.Fatal("empty while holding an entry")
	default:
	}
	ob.Remove("x")
	select {
	case <-empty:
	default:
		t.Fatal("not signalled empty after last remove")
	}
}
