package client

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

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
	ob.Close()
	// A crash in the middle of a later add leaves a torn record.
	f, _ := os.OpenFile(filepath.Join(dir, "outbox.log"), os.O_WRONLY|os.O_APPEND, 0)
	body, _ := proto.Marshal(sreq("d:a:b", "torn"))
	rec := outboxAddRecord(nil, 99, body)
	f.Write(rec[:len(rec)-3])
	f.Close()

	ob2, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ob2.Close()
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
	// New entries sort after the reloaded ones, also after another reopen.
	ob2.Add(sreq("d:a:b", "m5"))
	ob2.Remove("m0")
	ob2.Close()
	ob3, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ob3.Close()
	got = nil
	for _, e := range ob3.Pending() {
		got = append(got, e.ClientMsgID)
	}
	if want := []string{"m2", "m3", "m4", "m5"}; !slices.Equal(got, want) {
		t.Fatalf("pending after second reopen %v, want %v", got, want)
	}
}

func TestOutboxConcurrentAddsShareCommits(t *testing.T) {
	dir := t.TempDir()
	ob, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := ob.Add(sreq(fmt.Sprintf("d:a:w%d", w), fmt.Sprintf("w%d-%d", w, i))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	// Per writer, the outbox order is the Add order.
	pos := map[string]int{}
	for i, e := range ob.Pending() {
		pos[e.ClientMsgID] = i
	}
	if len(pos) != writers*each {
		t.Fatalf("%d entries", len(pos))
	}
	for w := range writers {
		for i := 1; i < each; i++ {
			if pos[fmt.Sprintf("w%d-%d", w, i)] < pos[fmt.Sprintf("w%d-%d", w, i-1)] {
				t.Fatalf("writer %d: entry %d before %d", w, i, i-1)
			}
		}
	}
	ob.Close()
	ob2, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ob2.Close()
	if ob2.Len() != writers*each {
		t.Fatalf("after reopen %d", ob2.Len())
	}
}

func TestOutboxLogIsTruncatedWhenEmpty(t *testing.T) {
	dir := t.TempDir()
	ob, _ := OpenOutbox(dir)
	defer ob.Close()
	big := &pb.SendRequest{ConvId: "d:a:b", Envelope: &pb.Envelope{Ciphertext: make([]byte, 60<<10)}}
	for i := range 20 { // ~1.2 MiB
		r := proto.Clone(big).(*pb.SendRequest)
		r.ClientMsgId = fmt.Sprint(i)
		ob.Add(r)
	}
	for i := range 20 {
		ob.Remove(fmt.Sprint(i))
	}
	fi, _ := os.Stat(filepath.Join(dir, "outbox.log"))
	if fi.Size() > 1<<10 {
		t.Fatalf("log is %d bytes after the outbox emptied", fi.Size())
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
	// Each pick names the previous pending entry of its conversation
	// (PROTOCOL.md §7.1.2).
	var afters []string
	for _, r := range p {
		afters = append(afters, r.GetAfterClientMsgId())
	}
	if want := []string{"", "", "a1", "a2", "b1"}; !slices.Equal(afters, want) {
		t.Fatalf("predecessors %q, want %q", afters, want)
	}
	// a1 acked: a2 now has no pending predecessor; b2 still names b1.
	if _, err := ob.Remove("a1"); err != nil {
		t.Fatal(err)
	}
	ob.resetInflight()
	p, _ = ob.sendable(now.Add(2*time.Second), 8, 100)
	afters = afters[:0]
	for _, r := range p {
		afters = append(afters, r.GetClientMsgId()+"<"+r.GetAfterClientMsgId())
	}
	if want := []string{"b1<", "a2<", "a3<a2", "b2<b1"}; !slices.Equal(afters, want) {
		t.Fatalf("after a1 acked: %q, want %q", afters, want)
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

// A key-distribution entry goes out alone and blocks its conversation
// until it is acked, so the message needing the key cannot overtake it.
func TestOutboxKeyDistributionIsABarrier(t *testing.T) {
	ob, err := OpenOutbox(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	g := "g:G1"
	kd := func(id string) *pb.SendRequest {
		return &pb.SendRequest{ConvId: g, ClientMsgId: id, Envelope: &pb.Envelope{ContentHint: 2,
			PerDevice: []*pb.DeviceCiphertext{{Device: &pb.DeviceAddr{UserId: "b", DeviceId: 1}, Ciphertext: []byte{1}}}}}
	}
	for _, r := range []*pb.SendRequest{sreq(g, "m0"), kd("k1"), kd("k2"), sreq(g, "m1"), sreq("d:a:b", "x")} {
		if err := ob.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	step := func(want ...string) {
		t.Helper()
		got, _ := ob.sendable(now, 16, 100)
		if !slices.Equal(ids(got), want) {
			t.Fatalf("sendable %v, want %v", ids(got), want)
		}
	}
	step("m0", "x") // k1 waits for m0 (sent alone)
	if _, err := ob.Remove("m0"); err != nil {
		t.Fatal(err)
	}
	step("k1")
	step()                        // nothing overtakes k1 in flight
	ob.release("k1", time.Time{}) // transient failure: resent, still first
	step("k1")
	if _, err := ob.Remove("k1"); err != nil {
		t.Fatal(err)
	}
	step("k2")
	if _, err := ob.Remove("k2"); err != nil {
		t.Fatal(err)
	}
	step("m1")
}

// TestOutboxCongestionWindow: a transient refusal shrinks its
// conversation to one send in flight; each SendAck doubles it back; sends
// refused OUT_OF_ORDER meanwhile keep their attempt count (no backoff
// grows from them).
func TestOutboxCongestionWindow(t *testing.T) {
	ob, err := OpenOutbox(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		ob.Add(sreq("A", fmt.Sprintf("a%d", i)))
	}
	now := time.Now()
	if p, _ := ob.sendable(now, 8, 100); len(p) != 8 {
		t.Fatalf("first pick %v, want the window of 8", ids(p))
	}
	// a0 is RATE_LIMITED; a1..a7, which named it, come back OUT_OF_ORDER.
	ob.congested("A")
	ob.release("a0", now)
	for i := 1; i < 8; i++ {
		ob.releaseOutOfOrder(fmt.Sprintf("a%d", i))
	}
	if p, _ := ob.sendable(now, 8, 100); !slices.Equal(ids(p), []string{"a0"}) {
		t.Fatalf("after the refusal %v, want a0 alone", ids(p))
	}
	if n := ob.attempts("a1"); n != 0 {
		t.Fatalf("a1 counted %d attempts; the OUT_OF_ORDER one must not count", n)
	}
	// a0 acked: two in flight, then four.
	ob.acked("A", 8)
	ob.Remove("a0")
	p, _ := ob.sendable(now, 8, 100)
	if !slices.Equal(ids(p), []string{"a1", "a2"}) {
		t.Fatalf("after one ack %v, want a1 a2", ids(p))
	}
	ob.acked("A", 8)
	ob.Remove("a1")
	if p, _ := ob.sendable(now, 8, 100); !slices.Equal(ids(p), []string{"a3", "a4", "a5"}) { // a2 still in flight: 4 in all
		t.Fatalf("after two acks %v, want a3 a4 a5", ids(p))
	}
	// Back to the full window once it reaches it.
	ob.acked("A", 8)
	ob.mu.Lock()
	_, shrunk := ob.cwnd["A"]
	ob.mu.Unlock()
	if shrunk {
		t.Fatal("window not restored after reaching the configured size")
	}
}

// TestOutboxOutOfOrderWaitsForPredecessor: a send refused OUT_OF_ORDER is
// not sent again while its predecessor is still in flight (it would only
// be refused again), and goes once the predecessor's answer is in.
func TestOutboxOutOfOrderWaitsForPredecessor(t *testing.T) {
	ob, err := OpenOutbox(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ob.Add(sreq("A", "a1"))
	ob.Add(sreq("A", "a2"))
	now := time.Now()
	if p, _ := ob.sendable(now, 8, 100); len(p) != 2 {
		t.Fatalf("first pick %v", ids(p))
	}
	ob.releaseOutOfOrder("a2")
	if p, _ := ob.sendable(now, 8, 100); len(p) != 0 {
		t.Fatalf("%v sent again while a1 is in flight", ids(p))
	}
	// a1's answer is in (refused transiently) and it goes again: a2 may
	// follow it at once, naming it — it no longer waits for an answer
	// from before its refusal.
	ob.release("a1", now)
	p, _ := ob.sendable(now, 8, 100)
	if !slices.Equal(ids(p), []string{"a1", "a2"}) || p[1].GetAfterClientMsgId() != "a1" {
		t.Fatalf("%v, want a1 then a2 naming a1", ids(p))
	}
	// Both answered: a1 stored, a2 refused OUT_OF_ORDER again (say a1's
	// resend lost a race); a2 goes alone, now naming nothing.
	ob.Remove("a1")
	ob.releaseOutOfOrder("a2")
	p, _ = ob.sendable(now, 8, 100)
	if !slices.Equal(ids(p), []string{"a2"}) || p[0].GetAfterClientMsgId() != "" {
		t.Fatalf("after a1 acked: %v, want a2 naming nothing", ids(p))
	}
}

// TestOutboxLimits: the outbox holds at most its limit of entries and of
// bytes: at the limit Add succeeds, one over it fails with ErrOutboxFull
// and changes nothing (in memory and on disk), ten times the limit is
// refused past it, a settled entry makes room, a multi-request Add is all
// or none, and a reopen counts what it loaded.
func TestOutboxLimits(t *testing.T) {
	dir := t.TempDir()
	ob, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	ob.setLimits(4, 0)
	for i := range 4 {
		if err := ob.Add(sreq("A", fmt.Sprintf("a%d", i))); err != nil {
			t.Fatalf("add %d of 4: %v", i, err)
		}
	}
	refused := 0
	for i := range 40 {
		if err := ob.Add(sreq("A", fmt.Sprintf("x%d", i))); errors.Is(err, ErrOutboxFull) {
			refused++
		} else {
			t.Fatalf("add past the limit: %v", err)
		}
	}
	if refused != 40 || ob.Len() != 4 {
		t.Fatalf("refused %d of 40, %d pending; want 40 and 4", refused, ob.Len())
	}
	ob.Remove("a0")
	if err := ob.Add(sreq("A", "a4"), sreq("A", "a5")); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("two requests with room for one: %v, want ErrOutboxFull", err)
	}
	if ob.has("a4") || ob.Len() != 3 {
		t.Fatalf("a refused pair left something: %v", ob.Pending())
	}
	if err := ob.Add(sreq("A", "a4")); err != nil {
		t.Fatalf("add after one settled: %v", err)
	}
	ob.Close()

	// Bytes: each request below is the same size.
	ob, err = OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	var got []string
	for _, e := range ob.Pending() {
		got = append(got, e.ClientMsgID)
	}
	if !slices.Equal(got, []string{"a1", "a2", "a3", "a4"}) {
		t.Fatalf("after reopen %v", got)
	}
	one := proto.Size(sreq("A", "b0"))
	ob.setLimits(0, 4*proto.Size(sreq("A", "a0"))+2*one)
	for i := range 2 {
		if err := ob.Add(sreq("A", fmt.Sprintf("b%d", i))); err != nil {
			t.Fatalf("add %d up to the byte limit: %v", i, err)
		}
	}
	if err := ob.Add(sreq("A", "b2")); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("one byte-limit entry over: %v, want ErrOutboxFull", err)
	}
	ob.setLimits(0, 0)
	if err := ob.Add(sreq("A", "b2")); err != nil {
		t.Fatalf("without limits: %v", err)
	}
}
