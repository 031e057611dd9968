package report

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/sim/check"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// history: region fra is killed from 10 s to 20 s. Before it, fra writes
// conversations a, c, d and e at epoch 1 and nyc writes b.
//   - a: a message fra wrote just before dying is acked at 13 s (old
//     writer: no recovery); the next, sent at 10.5 s, is acked at 14 s
//     from nyc at epoch 2: RTO 4 s.
//   - e: a message pending at the fault is acked at 12 s from sgp: RTO 2 s.
//   - c: nothing sent after the fault: no traffic.
//   - d: a message sent at 11 s is never acked: never recovered.
//   - b: written by nyc, not counted.
func history() *check.History {
	h := &check.History{Members: map[string][]string{}}
	msg := func(conv, id string, seq uint64, sent, acked, delivered float64, epoch uint64, region string) {
		addMsg(h, conv, id, seq, sent, acked, delivered, epoch, region)
	}
	for i, conv := range []string{"a", "b", "c", "d", "e"} {
		region := "fra"
		if conv == "b" {
			region = "nyc"
		}
		msg(conv, conv+"1", 1, float64(i), float64(i)+0.05, float64(i)+0.1, 1, region)
	}
	msg("a", "a2", 2, 9.9, 13, 13.5, 1, "fra")
	msg("a", "a3", 3, 10.5, 14, 14.2, 2, "nyc")
	msg("e", "e2", 2, 9.95, 12, 12.1, 2, "sgp")
	msg("d", "d2", 0, 11, 0, 0, 0, "")
	msg("b", "b2", 2, 15, 15.01, 15.02, 1, "nyc")
	h.Faults = []check.Fault{
		{Kind: "kill-region", Target: "fra", Start: at(10), End: at(20)},
		{Kind: "link-latency", Target: "nyc->sgp", Start: at(21), End: at(22), Detail: "+200ms <&>"},
	}
	return h
}

// addMsg records message id of conv: sent by u/1 at sent, acked at acked
// and delivered to u/1 and v/1 at delivered (0: never), written at seq by
// region at epoch.
func addMsg(h *check.History, conv, id string, seq uint64, sent, acked, delivered float64, epoch uint64, region string) {
	h.Members[conv] = []string{"u/1", "v/1"}
	h.Sent = append(h.Sent, check.Sent{At: at(sent), Device: "u/1", Conv: conv, MsgID: id})
	if acked > 0 {
		h.Acked = append(h.Acked, check.Acked{At: at(acked), Device: "u/1", Conv: conv, MsgID: id, Seq: seq})
	}
	if delivered > 0 {
		for _, d := range []string{"u/1", "v/1"} {
			h.Delivered = append(h.Delivered, check.Delivered{At: at(delivered), Device: d, Conv: conv, Seq: seq, MsgID: id, From: "u/1", Epoch: epoch, Region: region})
		}
	}
}

func TestRTO(t *testing.T) {
	h := history()
	r := Build(h, check.Check(h), Options{})
	if len(r.RTO) != 1 {
		t.Fatalf("RTO for %d faults, want 1 (link-latency is not a region loss)", len(r.RTO))
	}
	got := r.RTO[0]
	want := RTO{Kind: "kill-region", Target: "fra", Start: at(10), Conversations: 4, Recovered: 2, NeverRecovered: 1, NoTraffic: 1,
		Times: Percentiles{N: 2, P50Ms: 2000, P99Ms: 4000, P999Ms: 4000, MaxMs: 4000}, SamplesMs: []float64{4000, 2000}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("RTO\n got %+v\nwant %+v", got, want)
	}
	if r.RTOAll != want.Times {
		t.Fatalf("RTOAll %+v", r.RTOAll)
	}
	// The lost message is the checker's business: d2 was never acked, so
	// nothing is lost.
	if !r.Invariants.OK() {
		t.Fatal(r.Invariants.Err())
	}
}

// TestRTOSameWriterReturns: a region that comes back before the
// directory moved its conversations (a short kill, a partition healed
// within the failure timeout) writes them again at the same epoch; that
// is a recovery, at its first ack after the fault ended. A conversation
// whose only message after the fault began was acked by the lost writer
// during the fault (in flight at the kill) had nothing left to write.
func TestRTOSameWriterReturns(t *testing.T) {
	h := history()
	// f: written by fra at epoch 1; a message sent during the kill is
	// acked at 21 s by fra, back at epoch 1 after the fault ended at 20 s.
	addMsg(h, "f", "f1", 1, 5, 5.05, 5.1, 1, "fra")
	addMsg(h, "f", "f2", 2, 15, 21, 21.1, 1, "fra")
	// g: the message pending at the kill was written by fra before it
	// died (acked at 10.2 s); nothing else.
	addMsg(h, "g", "g1", 1, 6, 6.05, 6.1, 1, "fra")
	addMsg(h, "g", "g2", 2, 9.9, 10.2, 10.3, 1, "fra")
	r := Build(h, check.Check(h), Options{})
	got := r.RTO[0]
	if got.Conversations != 6 || got.Recovered != 3 || got.NeverRecovered != 1 || got.NoTraffic != 2 {
		t.Fatalf("RTO %+v: want 6 conversations, 3 recovered, 1 never (d), 2 without traffic (c, g)", got)
	}
	if !reflect.DeepEqual(got.SamplesMs, []float64{4000, 2000, 11000}) || got.Times.MaxMs != 11000 {
		t.Fatalf("RTO samples %v, times %+v: want a 4 s, e 2 s, f 11 s", got.SamplesMs, got.Times)
	}
}

func TestLatencySplit(t *testing.T) {
	h := history()
	r := Build(h, check.Check(h), Options{})
	// Acked messages: a1..e1 (outside), a2 9.9→13, a3, e2 (during), b2 at
	// 15 (during the kill of fra: every fault counts).
	if r.AckLatency.All.N != 9 || r.AckLatency.During.N != 4 || r.AckLatency.Outside.N != 5 {
		t.Fatalf("ack latency %+v", r.AckLatency)
	}
	if r.AckLatency.Outside.MaxMs != 50 || r.AckLatency.During.MaxMs != 3500 {
		t.Fatalf("ack latency %+v", r.AckLatency)
	}
	if r.DeliveryLatency.All.N != 18 {
		t.Fatalf("delivery latency %+v", r.DeliveryLatency)
	}
	// Throughput: one bucket per second from 0 to 22 s.
	if len(r.Throughput) != 23 || r.Throughput[13].Acked != 1 || r.Throughput[13].AckP99Ms != 3100 {
		t.Fatalf("throughput %+v", r.Throughput)
	}
	total := 0
	for _, b := range r.Throughput {
		total += b.Acked
	}
	if total != 9 {
		t.Fatalf("%d acks in buckets", total)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	h := history()
	r := Build(h, check.Check(h), Options{})
	r.Seed = 42
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip changed the report:\n%s", b)
	}
	for _, key := range []string{`"rto"`, `"p999_ms"`, `"during_faults"`, `"invariants"`, `"lost"`, `"linearizability":"ok"`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Errorf("JSON lacks %s", key)
		}
	}
}

func TestSVGIsWellFormed(t *testing.T) {
	h := history()
	r := Build(h, check.Check(h), Options{})
	var buf bytes.Buffer
	if err := WriteSVG(&buf, &r); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&buf)
	var faults, lines int
	var texts []string
	var root string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = e.Name.Space + " " + e.Name.Local
			}
			for _, a := range e.Attr {
				if e.Name.Local == "rect" && a.Name.Local == "class" && a.Value == "fault" {
					faults++
				}
				if (e.Name.Local == "polyline" && a.Name.Local == "points" || e.Name.Local == "path" && a.Name.Local == "d") && strings.Count(a.Value, ",") > 3 {
					lines++
				}
			}
		case xml.CharData:
			texts = append(texts, string(e))
		}
	}
	if root != "http://www.w3.org/2000/svg svg" {
		t.Fatalf("root element %q", root)
	}
	if faults != len(h.Faults) || lines != 2 {
		t.Fatalf("%d fault bands, %d lines", faults, lines)
	}
	all := strings.Join(texts, "|")
	for _, want := range []string{"kill-region fra", "link-latency nyc->sgp", "+200ms <&>", "acks per second", "time since start (s)", "invariants OK"} {
		if !strings.Contains(all, want) {
			t.Errorf("SVG text lacks %q", want)
		}
	}
}

func TestEmptyHistory(t *testing.T) {
	r := Build(&check.History{}, check.Check(&check.History{}), Options{})
	var buf bytes.Buffer
	if err := WriteSVG(&buf, &r); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(buf.Bytes(), new(struct{})); err != nil {
		t.Fatal(err)
	}
}
