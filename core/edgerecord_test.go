package core

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// viewOf is what ParseEdgeRecord makes of b, in pb form, its frame
// decoded as the edge does next, and each record of a bundle read with
// ParseBundled the same way.
func viewOf(b []byte) (*pb.EdgeRecord, error) {
	v, err := ParseEdgeRecord(b)
	if err != nil {
		return nil, err
	}
	out, err := pbOf(v)
	if err != nil {
		return nil, err
	}
	for _, rb := range v.Bundle {
		bv, err := ParseBundled(rb)
		if err != nil {
			return nil, err
		}
		in, err := pbOf(bv)
		if err != nil {
			return nil, err
		}
		out.Bundle = append(out.Bundle, in)
	}
	return out, nil
}

func pbOf(v EdgeRecordView) (*pb.EdgeRecord, error) {
	out := &pb.EdgeRecord{SessionId: v.SessionID}
	v.Targets(func(user []byte, dev uint32) bool {
		out.Targets = append(out.Targets, &pb.DeviceAddr{UserId: string(user), DeviceId: dev})
		return true
	})
	if v.HasFrame {
		out.Frame = &pb.ServerFrame{}
		if err := proto.Unmarshal(v.Frame, out.Frame); err != nil {
			return nil, err // the edge decodes the frame next
		}
	}
	return out, nil
}

// known is m without its unknown fields (ParseEdgeRecord skips them).
func known(m *pb.EdgeRecord) *pb.EdgeRecord {
	out := &pb.EdgeRecord{SessionId: m.GetSessionId(), Frame: m.GetFrame()}
	for _, a := range m.GetTargets() {
		out.Targets = append(out.Targets, &pb.DeviceAddr{UserId: a.GetUserId(), DeviceId: a.GetDeviceId()})
	}
	for _, in := range m.GetBundle() {
		out.Bundle = append(out.Bundle, known(in))
	}
	return out
}

// stricter says whether m breaks a bundle rule proto does not know: a
// bundle with a frame, session or targets of its own, or a bundle inside
// a bundle. ParseEdgeRecord refuses those; proto takes them.
func stricter(m *pb.EdgeRecord) bool {
	if len(m.GetBundle()) == 0 {
		return false
	}
	if m.Frame != nil || m.GetSessionId() != 0 || len(m.GetTargets()) > 0 {
		return true
	}
	for _, in := range m.GetBundle() {
		if len(in.GetBundle()) > 0 {
			return true
		}
	}
	return false
}

func randKey(r *rand.Rand) DeviceKey {
	users := []string{"", "a", "alice", "bob.smith-2", "ü", string(bytes.Repeat([]byte("x"), 64))}
	return DeviceKey{User: users[r.IntN(len(users))], Device: []uint32{0, 1, 127, 128, 1 << 31, ^uint32(0)}[r.IntN(6)]}
}

// TestEdgeRecordCodec: AppendEdgeRecord's bytes decode with proto to the
// record it means, and ParseEdgeRecord reads proto.Marshal's bytes as
// proto.Unmarshal does, from no target to thousands.
func TestEdgeRecordCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 300 {
		n := []int{0, 1, 2, 500, 5000}[i%5]
		keys := make([]DeviceKey, n)
		want := &pb.EdgeRecord{Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:x", Seq: uint64(i)}}}}
		for j := range keys {
			keys[j] = randKey(r)
			want.Targets = append(want.Targets, keys[j].Addr())
		}
		fb, err := proto.Marshal(want.Frame)
		if err != nil {
			t.Fatal(err)
		}
		enc := AppendEdgeRecord([]byte("prefix"), keys, fb)
		if !bytes.HasPrefix(enc, []byte("prefix")) {
			t.Fatal("AppendEdgeRecord did not append")
		}
		var got pb.EdgeRecord
		if err := proto.Unmarshal(enc[len("prefix"):], &got); err != nil || !proto.Equal(&got, want) {
			t.Fatalf("record %d: proto reads %v (%v), want %v", i, &got, err, want)
		}
		if std, _ := proto.Marshal(want); !bytes.Equal(std, enc[len("prefix"):]) {
			t.Fatalf("record %d: bytes differ from proto.Marshal's", i)
		}

		want.SessionId = r.Uint64()
		std, err := proto.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		view, err := viewOf(std)
		if err != nil || !proto.Equal(view, want) {
			t.Fatalf("record %d: parsed %v (%v), want %v", i, view, err, want)
		}
	}
}

// TestParseEdgeRecordAsProto: encodings proto.Marshal does not make but
// proto.Unmarshal takes (a split frame, a repeated session id, a repeated
// or unknown field inside a target, fields of the wrong wire type) read
// the same; bytes proto refuses are refused.
func TestParseEdgeRecordAsProto(t *testing.T) {
	tag := protowire.AppendTag
	f1, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:x"}}})
	f2, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{Seq: 3}}})
	var target []byte
	target = protowire.AppendString(tag(target, 1, protowire.BytesType), "old")
	target = protowire.AppendString(tag(target, 1, protowire.BytesType), "new")
	target = protowire.AppendVarint(tag(target, 2, protowire.VarintType), 7)
	target = protowire.AppendFixed32(tag(target, 2, protowire.Fixed32Type), 9) // wrong type: unknown
	target = protowire.AppendString(tag(target, 15, protowire.BytesType), "future")
	var rec []byte
	rec = protowire.AppendBytes(tag(rec, 3, protowire.BytesType), f1)
	rec = protowire.AppendVarint(tag(rec, 2, protowire.VarintType), 5)
	rec = protowire.AppendBytes(tag(rec, 1, protowire.BytesType), target)
	rec = protowire.AppendVarint(tag(rec, 2, protowire.VarintType), 6)
	rec = protowire.AppendBytes(tag(rec, 3, protowire.BytesType), f2)
	rec = protowire.AppendVarint(tag(rec, 1, protowire.VarintType), 1) // wrong type: unknown
	rec = protowire.AppendFixed64(tag(rec, 99, protowire.Fixed64Type), 1)

	var want pb.EdgeRecord
	if err := proto.Unmarshal(rec, &want); err != nil {
		t.Fatal(err)
	}
	got, err := viewOf(rec)
	if err != nil || !proto.Equal(got, known(&want)) {
		t.Fatalf("parsed %v (%v), proto %v", got, err, &want)
	}
	if want.GetSessionId() != 6 || want.GetTargets()[0].GetUserId() != "new" || want.GetFrame().GetDelivery().GetSeq() != 3 {
		t.Fatalf("the test's record is not what it means to be: %v", &want)
	}
	if v, _ := ParseEdgeRecord(rec); !bytes.Contains(rec, f1) || &v.Frame[0] == &rec[2] {
		t.Fatal("a split frame aliases the record instead of being merged into a copy")
	}

	badUser := protowire.AppendBytes(tag(nil, 1, protowire.BytesType),
		protowire.AppendBytes(tag(nil, 1, protowire.BytesType), []byte{0xff, 0xfe}))
	for name, b := range map[string][]byte{
		"truncated":           rec[:len(rec)-1],
		"field number 0":      {0x02, 0x00},
		"target not UTF-8":    badUser,
		"target truncated":    protowire.AppendBytes(tag(nil, 1, protowire.BytesType), target[:3]),
		"session id overflow": append(tag(nil, 2, protowire.VarintType), bytes.Repeat([]byte{0xff}, 11)...),
	} {
		var p pb.EdgeRecord
		if proto.Unmarshal(b, &p) == nil {
			t.Fatalf("%s: proto takes it; the case is wrong", name)
		}
		if _, err := ParseEdgeRecord(b); !errors.Is(err, ErrBadEdgeRecord) {
			t.Errorf("%s: ParseEdgeRecord error %v, want ErrBadEdgeRecord", name, err)
		}
	}
}

// FuzzParseEdgeRecord: ParseEdgeRecord (with ParseBundled for a
// bundle's records) takes exactly the bytes proto.Unmarshal takes as a
// pb.EdgeRecord, but for the bundle rules proto does not know, and reads
// them the same.
func FuzzParseEdgeRecord(f *testing.F) {
	fb, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:x", Seq: 1}}})
	one := AppendEdgeRecord(nil, []DeviceKey{{"a", 1}, {"b", 2}}, fb)
	f.Add(one)
	f.Add([]byte{0x10, 0x05, 0x1a, 0x00})
	f.Add(AppendBundled(AppendBundled(nil, one), []byte{0x10, 0x05}))
	f.Add(AppendBundled(one, one))
	f.Fuzz(func(t *testing.T, b []byte) {
		var want pb.EdgeRecord
		perr := proto.Unmarshal(b, &want)
		got, err := viewOf(b)
		if perr != nil && err == nil {
			t.Fatalf("proto: %v, ParseEdgeRecord took it", perr)
		}
		if perr == nil && err != nil && !(errors.Is(err, ErrBadEdgeRecord) && stricter(&want)) {
			t.Fatalf("proto took it, ParseEdgeRecord: %v", err)
		}
		if err == nil && !proto.Equal(got, known(&want)) {
			t.Fatalf("parsed %v, proto %v", got, &want)
		}
	})
}

// TestEdgeBundle: AppendBundled's bytes are the pb.EdgeRecord whose
// bundle holds the records, in order; a bundle with a frame, session or
// targets of its own, and a bundle inside a bundle, are refused.
func TestEdgeBundle(t *testing.T) {
	frame := func(seq uint64) []byte {
		b, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:x", Seq: seq}}})
		return b
	}
	want := &pb.EdgeRecord{}
	var bundle []byte
	for i := range 5 {
		rec := AppendEdgeRecord(nil, []DeviceKey{{"a", uint32(i)}}, frame(uint64(i)))
		if i == 3 {
			rec = protowire.AppendVarint(protowire.AppendTag(rec, edgeRecordSessionID, protowire.VarintType), 9)
		}
		n := len(bundle)
		bundle = AppendBundled(bundle, rec)
		if len(bundle)-n != BundledSize(len(rec)) {
			t.Fatalf("BundledSize(%d) = %d, AppendBundled added %d", len(rec), BundledSize(len(rec)), len(bundle)-n)
		}
		var in pb.EdgeRecord
		if err := proto.Unmarshal(rec, &in); err != nil {
			t.Fatal(err)
		}
		want.Bundle = append(want.Bundle, &in)
	}
	var p pb.EdgeRecord
	if err := proto.Unmarshal(bundle, &p); err != nil || !proto.Equal(&p, want) {
		t.Fatalf("proto reads %v (%v), want %v", &p, err, want)
	}
	got, err := viewOf(bundle)
	if err != nil || !proto.Equal(got, want) {
		t.Fatalf("parsed %v (%v), want %v", got, err, want)
	}
	one := AppendEdgeRecord(nil, []DeviceKey{{"a", 1}}, frame(1))
	addr := protowire.AppendString(protowire.AppendTag(nil, deviceAddrUser, protowire.BytesType), "a")
	target := protowire.AppendBytes(protowire.AppendTag(nil, edgeRecordTargets, protowire.BytesType), addr)
	for name, b := range map[string][]byte{
		"bundle and frame":   AppendBundled(one, one),
		"bundle and session": AppendBundled(protowire.AppendVarint(protowire.AppendTag(nil, edgeRecordSessionID, protowire.VarintType), 4), one),
		"bundle and target":  AppendBundled(target, one),
	} {
		if _, err := ParseEdgeRecord(b); !errors.Is(err, ErrBadEdgeRecord) {
			t.Errorf("%s: %v, want ErrBadEdgeRecord", name, err)
		}
	}
	nested := AppendBundled(nil, AppendBundled(nil, one))
	v, err := ParseEdgeRecord(nested)
	if err != nil || len(v.Bundle) != 1 {
		t.Fatalf("the outer record of a nested bundle: %v", err)
	}
	if _, err := ParseBundled(v.Bundle[0]); !errors.Is(err, ErrBadEdgeRecord) {
		t.Fatalf("a bundle inside a bundle: %v, want ErrBadEdgeRecord", err)
	}
}

// TestEdgeRecordAtTheGroupLimit: the largest record a fan-out writes —
// every member of a full group (MaxGroupMembers) online with every device
// (MaxDevicesPerUser) on one edge, user ids of MaxUserIDLen bytes, the
// largest device number, a frame of MaxFramePlaintext bytes — stays under
// 1 MiB, the per-record bound of the bus (kafka-go's Writer.BatchBytes
// and the broker's message.max.bytes default), and reads back whole.
func TestEdgeRecordAtTheGroupLimit(t *testing.T) {
	targets := make([]DeviceKey, 0, MaxGroupMembers*MaxDevicesPerUser)
	for m := range MaxGroupMembers {
		user := fmt.Sprintf("%0*d", MaxUserIDLen, m)
		for d := range MaxDevicesPerUser {
			targets = append(targets, DeviceKey{User: user, Device: ^uint32(0) - uint32(d)})
		}
	}
	frame := bytes.Repeat([]byte{0}, MaxFramePlaintext)
	rec := AppendEdgeRecord(nil, targets, frame)
	const busRecordMax = 1 << 20
	if len(rec) >= busRecordMax {
		t.Fatalf("a full group's edge record is %d bytes, the bus takes < %d", len(rec), busRecordMax)
	}
	t.Logf("full group, every device on one edge: %d targets, %d bytes", len(targets), len(rec))
	v, err := ParseEdgeRecord(rec)
	if err != nil || !bytes.Equal(v.Frame, frame) {
		t.Fatalf("parse: %v (frame %d bytes)", err, len(v.Frame))
	}
	i := 0
	v.Targets(func(user []byte, dev uint32) bool {
		if i >= len(targets) || string(user) != targets[i].User || dev != targets[i].Device {
			t.Fatalf("target %d: %q.%d", i, user, dev)
		}
		i++
		return true
	})
	if i != len(targets) {
		t.Fatalf("read %d targets of %d", i, len(targets))
	}
}
