package check

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

const (
	direct = "d:alice:bob"
	group  = "g:team"
)

// synthetic builds a correct history: a 1:1 (alice's two devices and
// bob's) and a group of five devices whose first entry is its creation (a
// system entry) and where dave joins later (a span from his ADD entry);
// an end-to-end key-distribution entry (acked, never sent by the driver,
// never handed to an app); and a failover of both conversations from fra
// at epoch 1 to nyc at epoch 2 by the directory's failure detector (not in
// Dir), then a planned move of the 1:1 to sgp at epoch 3 (in Dir, with an
// unknown-outcome move and a fenced one around it).
func synthetic() *History {
	rng := rand.New(rand.NewPCG(1, 2))
	h := &History{
		Members: map[string][]string{
			direct: {"alice/1", "alice/2", "bob/1"},
			group:  {"alice/1", "alice/2", "bob/1", "carol/1"},
		},
	}
	type entry struct {
		from, id string
		epoch    uint64
		region   string
	}
	logs := map[string][]entry{}
	now := 0
	writer := func(conv string, n int) (uint64, string) {
		switch {
		case n < 8:
			return 1, "fra"
		case conv == direct && n >= 14:
			return 3, "sgp"
		default:
			return 2, "nyc"
		}
	}
	// Group creation: a system entry at seq 1 (no client message id).
	logs[group] = append(logs[group], entry{from: "alice/1", epoch: 1, region: "fra"})
	for i := range 20 {
		for _, conv := range []string{direct, group} {
			now += 10
			if conv == group && i == 5 { // dave is added: a system entry
				logs[group] = append(logs[group], entry{from: "carol/1", epoch: 1, region: "fra"})
				h.Spans = append(h.Spans, MemberSpan{Conv: group, Device: "dave/1", From: uint64(len(logs[group]))})
			}
			if conv == group && i == 10 { // a key-distribution entry: acked only
				ep, reg := writer(conv, len(logs[conv]))
				logs[group] = append(logs[group], entry{from: "bob/1", id: "kd-1", epoch: ep, region: reg})
				h.Acked = append(h.Acked, Acked{At: at(now), Device: "bob/1", Conv: group, MsgID: "kd-1", Seq: uint64(len(logs[group]))})
				continue
			}
			mem := h.Members[conv]
			from := mem[rng.IntN(len(mem))]
			id := fmt.Sprintf("m-%s-%d", conv, i)
			h.Sent = append(h.Sent, Sent{At: at(now), Device: from, Conv: conv, MsgID: id})
			ep, reg := writer(conv, len(logs[conv]))
			logs[conv] = append(logs[conv], entry{from: from, id: id, epoch: ep, region: reg})
			seq := uint64(len(logs[conv]))
			h.Acked = append(h.Acked, Acked{At: at(now + 5), Device: from, Conv: conv, MsgID: id, Seq: seq})
			if i%7 == 0 { // an outbox resend acked again with the same seq
				h.Acked = append(h.Acked, Acked{At: at(now + 8), Device: from, Conv: conv, MsgID: id, Seq: seq})
			}
		}
	}
	// Every member device receives its part of each log in order (the
	// sender's own device included), devices interleaved.
	for _, conv := range []string{direct, group} {
		devs := slices.Clone(h.Members[conv])
		if conv == group {
			devs = append(devs, "dave/1")
		}
		for seq, e := range logs[conv] {
			if e.id == "kd-1" {
				continue // never handed to the app
			}
			for k, d := range devs {
				if d == "dave/1" && uint64(seq+1) < h.Spans[0].From {
					continue
				}
				h.Delivered = append(h.Delivered, Delivered{
					At: at(20 + 10*seq + k), Device: d, Conv: conv, Seq: uint64(seq + 1),
					MsgID: e.id, From: e.from, Epoch: e.epoch, Region: e.region,
				})
			}
		}
	}
	slices.SortStableFunc(h.Delivered, func(a, b Delivered) int { return a.At.Compare(b.At) })

	// The directory: creation claims (not recorded), the failover to nyc
	// at epoch 2 by fail_region (not recorded), a planned move of the 1:1.
	h.Dir = []DirOp{
		{Kind: DirRead, Voter: "fra", Conv: direct, Call: at(10), Return: at(12), Home: "fra", Epoch: 1},
		{Kind: DirRead, Voter: "nyc", Conv: group, Call: at(11), Return: at(13), Home: "fra", Epoch: 1},
		{Kind: DirRead, Voter: "sgp", Conv: direct, Call: at(200), Return: at(203), Home: "nyc", Epoch: 2},
		{Kind: DirRead, Voter: "sgp", Conv: group, Call: at(200), Return: at(204), Home: "nyc", Epoch: 2},
		// A move whose answer was lost, concurrent with a successful one.
		{Kind: DirMove, Voter: "nyc", Conv: direct, Call: at(210), Return: at(400), Expect: 2, To: "sgp", Unknown: true},
		{Kind: DirMove, Voter: "fra", Conv: direct, Call: at(211), Return: at(220), Expect: 2, To: "sgp", OK: true, Home: "sgp", Epoch: 3},
		{Kind: DirMove, Voter: "fra", Conv: direct, Call: at(230), Return: at(235), Expect: 2, To: "fra", Home: "sgp", Epoch: 3},
		{Kind: DirRead, Voter: "nyc", Conv: direct, Call: at(240), Return: at(241), Home: "sgp", Epoch: 3},
		{Kind: DirRead, Voter: "fra", Conv: group, Call: at(240), Return: at(242), Home: "nyc", Epoch: 2},
	}
	h.Faults = []Fault{{Kind: "kill-region", Target: "fra", Start: at(100), End: at(300)}}
	return h
}

// clone copies h deeply enough for a plant to change it.
func clone(h *History) *History {
	c := *h
	c.Sent = slices.Clone(h.Sent)
	c.Acked = slices.Clone(h.Acked)
	c.Delivered = slices.Clone(h.Delivered)
	c.Dir = slices.Clone(h.Dir)
	c.Spans = slices.Clone(h.Spans)
	return &c
}

func TestSyntheticHistoryIsOK(t *testing.T) {
	h := synthetic()
	r := Check(h)
	if !r.OK() || r.Err() != nil {
		t.Fatalf("correct history rejected: %v\n%+v", r.Err(), r)
	}
	// The checks had something to check.
	if r.Conversations != 2 || r.Devices != 5 || r.Acked != 40 || r.DirOps != len(h.Dir) || r.Unchecked != 0 {
		t.Fatalf("counts: %+v", r)
	}
	// 19 1:1 messages × 3 devices, 19 group messages × 4 devices, and dave
	// from his join on.
	if r.Required != 20*3+19*4+14 {
		t.Fatalf("required %d deliveries", r.Required)
	}
	if r.Linearizability != LinOK {
		t.Fatalf("linearizability %q", r.Linearizability)
	}
}

// find returns the index of the first delivery matching f.
func find(t *testing.T, ds []Delivered, f func(Delivered) bool) int {
	t.Helper()
	for i, d := range ds {
		if f(d) {
			return i
		}
	}
	t.Fatal("no such delivery")
	return -1
}

func TestPlantedViolations(t *testing.T) {
	base := synthetic()
	cases := []struct {
		name  string
		kind  Kind
		plant func(t *testing.T, h *History)
	}{
		{"duplicated delivery", Duplicated, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == group && d.Device == "carol/1" && d.Seq == 9 })
			h.Delivered = append(h.Delivered, h.Delivered[i]) // again, later
		}},
		{"duplicated delivery right after", Duplicated, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == direct && d.Device == "bob/1" && d.Seq == 3 })
			h.Delivered = slices.Insert(h.Delivered, i+1, h.Delivered[i])
		}},
		{"message sequenced twice (two acks disagree)", Duplicated, func(t *testing.T, h *History) {
			a := h.Acked[3]
			for _, b := range h.Acked { // the next seq of its conversation
				if b.Conv == a.Conv {
					a.Seq = max(a.Seq, b.Seq+1)
				}
			}
			h.Acked = append(h.Acked, a)
		}},
		{"message delivered under two seqs", Duplicated, func(t *testing.T, h *History) {
			// The sequencer wrote message 4 again as seq 21 of the 1:1,
			// and every device received both.
			var again []Delivered
			for _, d := range h.Delivered {
				if d.Conv == direct && d.Seq == 4 {
					d.Seq, d.At, d.Epoch, d.Region = 21, d.At.Add(time.Hour), 3, "sgp"
					again = append(again, d)
				}
			}
			h.Delivered = append(h.Delivered, again...)
		}},
		{"one device sees two entries swapped", Reordered, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == group && d.Device == "bob/1" && d.Seq == 14 })
			j := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == group && d.Device == "bob/1" && d.Seq == 15 })
			h.Delivered[i].MsgID, h.Delivered[j].MsgID = h.Delivered[j].MsgID, h.Delivered[i].MsgID
			h.Delivered[i].From, h.Delivered[j].From = h.Delivered[j].From, h.Delivered[i].From
		}},
		{"one device receives out of seq order", Reordered, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == direct && d.Device == "alice/2" && d.Seq == 6 })
			j := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == direct && d.Device == "alice/2" && d.Seq == 7 })
			h.Delivered[i], h.Delivered[j] = h.Delivered[j], h.Delivered[i]
		}},
		{"lost delivery to a member", Lost, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == group && d.Device == "carol/1" && d.Seq == 15 })
			h.Delivered = slices.Delete(h.Delivered, i, i+1)
		}},
		{"lost delivery to a device that joined later", Lost, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == group && d.Device == "dave/1" && d.Seq == 20 })
			h.Delivered = slices.Delete(h.Delivered, i, i+1)
		}},
		{"lost delivery to the sender's own device", Lost, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == direct && d.Seq == 10 && d.Device == d.From })
			h.Delivered = slices.Delete(h.Delivered, i, i+1)
		}},
		{"gap: a seq nobody ever saw", Gap, func(t *testing.T, h *History) {
			// Seq 11 of the 1:1 vanished from the log: no ack, no delivery.
			h.Delivered = slices.DeleteFunc(h.Delivered, func(d Delivered) bool { return d.Conv == direct && d.Seq == 11 })
			h.Acked = slices.DeleteFunc(h.Acked, func(a Acked) bool { return a.Conv == direct && a.Seq == 11 })
		}},
		{"second writer at one epoch", SecondWriter, func(t *testing.T, h *History) {
			for i, d := range h.Delivered {
				if d.Conv == group && d.Seq == 17 {
					h.Delivered[i].Region = "sgp" // epoch 2 is nyc's
				}
			}
		}},
		{"one seq, two writers", SecondWriter, func(t *testing.T, h *History) {
			i := find(t, h.Delivered, func(d Delivered) bool { return d.Conv == direct && d.Device == "bob/1" && d.Seq == 9 })
			h.Delivered[i].Epoch, h.Delivered[i].Region = 3, "sgp" // others saw 2/nyc
		}},
		{"epoch going backwards", EpochRegress, func(t *testing.T, h *History) {
			for i, d := range h.Delivered {
				if d.Conv == group && d.Seq == 18 {
					h.Delivered[i].Epoch, h.Delivered[i].Region = 1, "fra" // fra's own epoch, after epoch 2
				}
			}
		}},
		{"directory: stale read after a move", NonLinearizable, func(t *testing.T, h *History) {
			h.Dir = append(h.Dir, DirOp{Kind: DirRead, Voter: "nyc", Conv: direct, Call: at(500), Return: at(501), Home: "nyc", Epoch: 2})
		}},
		{"directory: two homes at one epoch", NonLinearizable, func(t *testing.T, h *History) {
			h.Dir = append(h.Dir, DirOp{Kind: DirRead, Voter: "sgp", Conv: group, Call: at(500), Return: at(501), Home: "sgp", Epoch: 2})
		}},
		{"directory: a move applied on a stale epoch", NonLinearizable, func(t *testing.T, h *History) {
			h.Dir = append(h.Dir, DirOp{Kind: DirMove, Voter: "sgp", Conv: group, Call: at(500), Return: at(501), Expect: 1, To: "sgp", OK: true, Home: "sgp", Epoch: 2})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := clone(base)
			tc.plant(t, h)
			r := Check(h)
			if r.OK() || r.Err() == nil {
				t.Fatalf("planted %s not caught: %+v", tc.kind, r)
			}
			if r.Count(tc.kind) == 0 {
				t.Fatalf("planted %s counted as %v", tc.kind, r.Err())
			}
			for _, k := range Kinds {
				if k != tc.kind && r.Count(k) != 0 {
					t.Errorf("planted %s also counted %d %s: %v", tc.kind, r.Count(k), k, r.Violations[k].Examples)
				}
			}
			if ex := r.Violations[tc.kind].Examples; len(ex) == 0 || ex[0] == "" {
				t.Errorf("no example for %s", tc.kind)
			}
			t.Logf("%v", r.Err())
		})
	}
	// The plants did not change the base.
	if r := Check(base); !r.OK() {
		t.Fatalf("base changed: %v", r.Err())
	}
}

func TestGapCountsEveryMissingSeq(t *testing.T) {
	h := clone(synthetic())
	drop := func(seq uint64) bool { return seq >= 4 && seq <= 6 }
	h.Delivered = slices.DeleteFunc(h.Delivered, func(d Delivered) bool { return d.Conv == direct && drop(d.Seq) })
	h.Acked = slices.DeleteFunc(h.Acked, func(a Acked) bool { return a.Conv == direct && drop(a.Seq) })
	r := Check(h)
	if r.Count(Gap) != 3 || !strings.Contains(r.Violations[Gap].Examples[0], "4..6") {
		t.Fatalf("gap: %+v", r.Violations[Gap])
	}
}

func TestExamplesAreBounded(t *testing.T) {
	h := clone(synthetic())
	h.Delivered = append(h.Delivered, h.Delivered...) // everything twice
	r := CheckWith(h, Options{MaxExamples: 3})
	if r.Count(Duplicated) < 100 || len(r.Violations[Duplicated].Examples) != 3 {
		t.Fatalf("duplicated %d, %d examples", r.Count(Duplicated), len(r.Violations[Duplicated].Examples))
	}
}

// The continuous checker: fed while the run goes on, it reports what is
// already certain (a duplicate) and leaves in-flight messages alone.
func TestCheckerSnapshots(t *testing.T) {
	h := synthetic()
	c := NewChecker(Options{})
	for conv, devs := range h.Members {
		c.AddMembers(conv, devs...)
	}
	for _, s := range h.Spans {
		c.AddSpan(s)
	}
	// Deliveries first, acks later: feed order across kinds is free.
	half := len(h.Delivered) / 2
	for _, d := range h.Delivered[:half] {
		c.Delivered(d)
	}
	for _, s := range h.Sent {
		c.Sent(s)
	}
	for _, a := range h.Acked {
		c.Acked(a)
	}
	snap := c.Snapshot()
	if !snap.OK() || snap.Final || snap.Count(Lost) != 0 || snap.Pending == 0 || snap.Pending >= snap.Required {
		t.Fatalf("mid-run snapshot of a correct run: %v, %d of %d pending", snap.Err(), snap.Pending, snap.Required)
	}
	// Half the deliveries are still missing: a final check now would
	// call them lost.
	if r := c.Final(); r.Count(Lost) == 0 {
		t.Fatal("final check with half the deliveries found nothing lost")
	}
	c.Delivered(h.Delivered[0]) // a duplicate, mid-run
	if snap := c.Snapshot(); snap.Count(Duplicated) != 1 {
		t.Fatalf("snapshot missed a duplicate: %+v", snap.Violations[Duplicated])
	}
	for _, d := range h.Delivered[half:] {
		c.Delivered(d)
	}
	for _, op := range h.Dir {
		c.DirOp(op)
	}
	r := c.Final()
	if r.Count(Duplicated) != 1 || r.Count(Lost) != 0 || r.Pending != 0 || r.Linearizability != LinOK {
		t.Fatalf("final: %v", r.Err())
	}
}

func TestVisualization(t *testing.T) {
	h := clone(synthetic())
	h.Dir = append(h.Dir, DirOp{Kind: DirRead, Voter: "nyc", Conv: direct, Call: at(500), Return: at(501), Home: "nyc", Epoch: 2})
	path := filepath.Join(t.TempDir(), "dir.html")
	r := CheckWith(h, Options{VisualizePath: path})
	if r.Linearizability != LinIllegal || r.Visualization != path {
		t.Fatalf("%+v", r)
	}
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), "<html") {
		t.Fatalf("visualization: %v, %d bytes", err, len(b))
	}
}

// A conversation nobody is a member of cannot lose anything: the
// result says so, so the driver's test can refuse a vacuous pass.
func TestUncheckedConversations(t *testing.T) {
	h := clone(synthetic())
	h.Members = map[string][]string{direct: h.Members[direct]}
	h.Spans = nil
	if r := Check(h); r.Unchecked != 1 || !r.OK() {
		t.Fatalf("unchecked %d, %v", r.Unchecked, r.Err())
	}
}

func TestEmptyHistoryIsOK(t *testing.T) {
	if r := Check(&History{}); !r.OK() {
		t.Fatal(r.Err())
	}
}

// Check is O(n log n): a 200k-delivery history checks quickly. (Reported,
// not asserted: no timing assertions.)
func BenchmarkCheck(b *testing.B) {
	h := &History{Members: map[string][]string{}}
	const convs, msgs, members = 100, 200, 10
	for c := range convs {
		conv := fmt.Sprintf("g:%d", c)
		var devs []string
		for m := range members {
			devs = append(devs, fmt.Sprintf("u%d/1", (c+m)%300))
		}
		h.Members[conv] = devs
		for s := range msgs {
			id := fmt.Sprintf("m%d", s)
			from := devs[s%members]
			h.Sent = append(h.Sent, Sent{Device: from, Conv: conv, MsgID: id})
			h.Acked = append(h.Acked, Acked{Device: from, Conv: conv, MsgID: id, Seq: uint64(s + 1)})
			for _, d := range devs {
				h.Delivered = append(h.Delivered, Delivered{Device: d, Conv: conv, Seq: uint64(s + 1), MsgID: id, From: from, Epoch: 1, Region: "fra"})
			}
		}
	}
	b.ResetTimer()
	for b.Loop() {
		if r := Check(h); !r.OK() {
			b.Fatal(r.Err())
		}
	}
}
