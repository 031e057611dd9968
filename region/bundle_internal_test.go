package region

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// TestBundleEdgeRecords: a batch's records for one local edge topic
// become bundles of at most maxBundleRecords records and maxBundleBytes
// bytes, each in the place of its first record; read back record by
// record, every topic gets exactly its records in their order. A record
// too large to join goes alone and closes the bundle before it; link
// and other topics are left as they are; a batch with nothing to bundle
// is returned as it is.
func TestBundleEdgeRecords(t *testing.T) {
	e1, e2 := EdgeTopicPrefix+"e1", EdgeTopicPrefix+"e2"
	link := EdgeTopicPrefix + "link.r2" // a link topic that starts like an edge's: its key is not its name
	rec := func(topic string, seq, size int) core.BusRecord {
		f, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{
			ConvId: "g:x", Seq: uint64(seq), Envelope: &pb.Envelope{Ciphertext: bytes.Repeat([]byte{1}, size)}}}})
		key := strings.TrimPrefix(topic, EdgeTopicPrefix)
		if topic == link {
			key = "e1"
		}
		return core.BusRecord{Topic: topic, Key: []byte(key), Value: core.AppendEdgeRecord(nil, []core.DeviceKey{{User: "u", Device: 1}}, f)}
	}
	var in []core.BusRecord
	seq := 0
	add := func(topic string, n, size int) {
		for range n {
			seq++
			in = append(in, rec(topic, seq, size))
		}
	}
	add(e1, 300, 10)    // past maxBundleRecords: two bundles
	add(e2, 1, 10)      // alone
	add(link, 3, 10)    // never bundled
	add(e1, 2, 200<<10) // the first fits the open bundle's bytes? no: starts one; the second starts another
	add(e2, 1, 300<<10) // larger than a bundle: alone
	add(e2, 2, 10)      // after it: a new bundle
	add(e1, 1, 10)
	out := bundleEdgeRecords(in)

	want := map[string][]uint64{}
	for _, r := range in {
		want[r.Topic] = append(want[r.Topic], seqsOf(t, r)...)
	}
	got := map[string][]uint64{}
	bundles := 0
	for _, r := range out {
		var er pb.EdgeRecord
		if err := proto.Unmarshal(r.Value, &er); err != nil {
			t.Fatal(err)
		}
		if len(er.GetBundle()) > 0 {
			bundles++
			if r.Topic == link {
				t.Fatal("a link record was bundled")
			}
			if len(er.GetBundle()) > maxBundleRecords || len(r.Value) > maxBundleBytes {
				t.Fatalf("a bundle of %d records, %d bytes", len(er.GetBundle()), len(r.Value))
			}
			if v, err := core.ParseEdgeRecord(r.Value); err != nil || len(v.Bundle) != len(er.GetBundle()) {
				t.Fatalf("the edge's parser: %v", err)
			}
		}
		got[r.Topic] = append(got[r.Topic], seqsOf(t, r)...)
	}
	for topic, w := range want {
		if fmt.Sprint(got[topic]) != fmt.Sprint(w) {
			t.Fatalf("%s: records %v, want %v", topic, got[topic], w)
		}
	}
	// A, B, C, three link records, D, E, F; A, B, D and F bundles.
	if len(out) != 9 || bundles != 4 {
		t.Fatalf("%d records in, %d out with %d bundles; want 9 with 4", len(in), len(out), bundles)
	}
	if lone := []core.BusRecord{rec(e1, 1, 10), rec(e2, 2, 10), rec(link, 3, 10)}; &bundleEdgeRecords(lone)[0] != &lone[0] {
		t.Fatal("a batch with nothing to bundle was copied")
	}
}

// TestBundleByteBound: records whose bundle is exactly maxBundleBytes
// go in one bundle; one byte more and the second goes in a record of its
// own (in order after the first).
func TestBundleByteBound(t *testing.T) {
	topic := EdgeTopicPrefix + "e1"
	half := maxBundleBytes / 2
	n := half - (core.BundledSize(half) - half) // BundledSize(n) == half
	if core.BundledSize(n) != half {
		t.Fatalf("BundledSize(%d) = %d, want %d", n, core.BundledSize(n), half)
	}
	for _, c := range []struct {
		second, records int
	}{{n, 1}, {n + 1, 2}} {
		in := []core.BusRecord{
			{Topic: topic, Key: []byte("e1"), Value: bytes.Repeat([]byte{1}, n)},
			{Topic: topic, Key: []byte("e1"), Value: bytes.Repeat([]byte{2}, c.second)},
		}
		out := bundleEdgeRecords(in)
		if len(out) != c.records {
			t.Fatalf("second record of %d bytes: %d records, want %d", c.second, len(out), c.records)
		}
		if c.records == 1 && len(out[0].Value) != maxBundleBytes {
			t.Fatalf("bundle of %d bytes, want exactly %d", len(out[0].Value), maxBundleBytes)
		}
		if c.records == 2 && (out[0].Value[0] != 1 || out[1].Value[0] != 2) {
			t.Fatal("records over the bound left in the wrong order")
		}
	}
}

// seqsOf returns the delivery seqs a bus record carries, in the order
// the edge handles them.
func seqsOf(t *testing.T, r core.BusRecord) []uint64 {
	t.Helper()
	var er pb.EdgeRecord
	if err := proto.Unmarshal(r.Value, &er); err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, in := range Unbundle(&er) {
		out = append(out, in.GetFrame().GetDelivery().GetSeq())
	}
	return out
}
