package driver

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/sim/check"
)

func TestRecorderPending(t *testing.T) {
	r := newRecorder(10, nil)
	r.setMembers("d:a:b", []string{"b/1", "a/1", "a/2"})
	now := time.Now()
	r.startTraffic(now)
	// The ack may be recorded before the Sent (different goroutines).
	r.recordAcked(check.Acked{At: now, Device: "a/1", Conv: "d:a:b", MsgID: "m1", Seq: 1})
	if r.pending() != 0 {
		t.Fatal("an ack alone made a message pending")
	}
	r.recordSent(check.Sent{At: now, Device: "a/1", Conv: "d:a:b", MsgID: "m1"})
	if r.pending() != 1 {
		t.Fatalf("pending %d, want 1", r.pending())
	}
	del := func(dev string, seq uint64, id string) {
		r.recordDelivered(check.Delivered{At: now, Device: dev, Conv: "d:a:b", Seq: seq, MsgID: id, From: "a/1", Epoch: 1, Region: "x"})
	}
	del("a/1", 1, "m1")
	del("a/1", 1, "m1")  // a repeat does not count twice
	del("zz/1", 1, "m1") // nor does a non-member
	del("b/1", 1, "m1")
	if r.pending() != 1 {
		t.Fatalf("pending %d with a/2 still missing", r.pending())
	}
	del("a/2", 1, "m1")
	if r.pending() != 0 {
		t.Fatalf("pending %d after every member got it", r.pending())
	}
	// A message rejected for good is done.
	r.recordSent(check.Sent{At: now, Device: "b/1", Conv: "d:a:b", MsgID: "m2"})
	r.recordFailed("b/1", "d:a:b", "m2", "send-failed:NOT_MEMBER")
	if r.pending() != 0 {
		t.Fatal("a failed message stays pending")
	}
	var st Stats
	r.stats(&st)
	if st.Sent != 2 || st.Acked != 1 || st.Failed != 1 || st.Delivered != 5 || st.Unacked != 0 || st.MissingDeliveries != 0 ||
		st.Errors["send-failed:NOT_MEMBER"] != 1 || len(st.PerSecond) != 1 || st.PerSecond[0] != (Second{Sent: 2, Acked: 1, Delivered: 5}) {
		t.Fatalf("stats %+v", st)
	}
}

// Acks lost with a closed client are recorded from the message's first
// delivery: at once when it was delivered already, else when it is.
func TestRecorderInferAcks(t *testing.T) {
	r := newRecorder(10, nil)
	r.setMembers("d:a:b", []string{"a/1", "b/1"})
	now := time.Now()
	for _, id := range []string{"m1", "m2", "m3"} {
		r.recordSent(check.Sent{At: now, Device: "a/1", Conv: "d:a:b", MsgID: id})
	}
	r.recordDelivered(check.Delivered{At: now, Device: "b/1", Conv: "d:a:b", Seq: 1, MsgID: "m1"})
	if got := r.unfinished("a/1"); len(got) != 3 {
		t.Fatalf("unfinished %v", got)
	}
	r.inferAcks([]string{"m1", "m2"}, now)
	h := r.snapshot()
	if len(h.Acked) != 1 || h.Acked[0].MsgID != "m1" || h.Acked[0].Seq != 1 || h.Acked[0].Device != "a/1" {
		t.Fatalf("acks %+v", h.Acked)
	}
	r.recordDelivered(check.Delivered{At: now, Device: "a/1", Conv: "d:a:b", Seq: 2, MsgID: "m2"})
	h = r.snapshot()
	if len(h.Acked) != 2 || h.Acked[1].MsgID != "m2" || h.Acked[1].Seq != 2 {
		t.Fatalf("acks %+v", h.Acked)
	}
	var st Stats
	r.stats(&st)
	// m3 was never finished: unacked.
	if st.AcksInferred != 2 || st.Acked != 2 || st.Unacked != 1 || st.MissingDeliveries != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// Snapshots are stable copies while many goroutines record (run with -race).
func TestRecorderSnapshotConcurrent(t *testing.T) {
	r := newRecorder(10, nil)
	r.startTraffic(time.Now())
	fi := r.addFault(check.Fault{Kind: "kill-region", Target: "a", Start: time.Now()})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				id := fmt.Sprintf("m%d-%d", g, i)
				r.recordSent(check.Sent{At: time.Now(), Device: "a/1", Conv: "d:a:b", MsgID: id})
				r.recordDelivered(check.Delivered{At: time.Now(), Device: "b/1", Conv: "d:a:b", Seq: uint64(i + 1), MsgID: id})
			}
		})
	}
	var snaps []*check.History
	wg.Go(func() {
		for range 50 {
			snaps = append(snaps, r.snapshot())
		}
	})
	wg.Wait()
	final := r.snapshot()
	if len(final.Sent) != 2000 || len(final.Delivered) != 2000 {
		t.Fatalf("final %d sent, %d delivered", len(final.Sent), len(final.Delivered))
	}
	for _, s := range snaps {
		for i := range s.Sent {
			if s.Sent[i] != final.Sent[i] {
				t.Fatal("a snapshot is not a prefix of the history")
			}
		}
	}
	// Appending to a snapshot does not reach the recorder, and a fault
	// ended later does not change an earlier snapshot.
	s := r.snapshot()
	s.Sent = append(s.Sent, check.Sent{MsgID: "foreign"})
	r.recordSent(check.Sent{At: time.Now(), Device: "a/1", Conv: "d:a:b", MsgID: "mine"})
	r.endFault(fi, time.Now())
	if got := r.snapshot(); got.Sent[2000].MsgID != "mine" || !s.Faults[0].End.IsZero() || got.Faults[0].End.IsZero() {
		t.Fatal("snapshot and recorder share what they must not")
	}
}
