package core

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// EdgeRecord field numbers (pb.EdgeRecord and pb.DeviceAddr in
// proto/chatmesh/v1/chatmesh.proto).
const (
	edgeRecordTargets   = 1
	edgeRecordSessionID = 2
	edgeRecordFrame     = 3
	edgeRecordBundle    = 4
	deviceAddrUser      = 1
	deviceAddrDevice    = 2
)

// ErrBadEdgeRecord is the error of ParseEdgeRecord for bytes that are not
// an encoded pb.EdgeRecord.
var ErrBadEdgeRecord = errors.New("core: malformed edge record")

// AppendEdgeRecord appends the encoding of pb.EdgeRecord{Targets:
// targets, Frame: frame} to b, frame being an encoded pb.ServerFrame.
// A group's fan-out writes one per edge for every message, each listing
// every online member device there; written field by field from the
// route keys, it needs no pb.DeviceAddr per device, and the frame is
// encoded once for every edge rather than once per edge.
func AppendEdgeRecord(b []byte, targets []DeviceKey, frame []byte) []byte {
	n := 0
	for _, t := range targets {
		n += deviceAddrSize(t)
	}
	b = slices.Grow(b, n+protowire.SizeTag(edgeRecordFrame)+protowire.SizeBytes(len(frame)))
	for _, t := range targets {
		b = protowire.AppendTag(b, edgeRecordTargets, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(deviceAddrBodySize(t)))
		if t.User != "" {
			b = protowire.AppendTag(b, deviceAddrUser, protowire.BytesType)
			b = protowire.AppendString(b, t.User)
		}
		if t.Device != 0 {
			b = protowire.AppendTag(b, deviceAddrDevice, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(t.Device))
		}
	}
	b = protowire.AppendTag(b, edgeRecordFrame, protowire.BytesType)
	return protowire.AppendBytes(b, frame)
}

func deviceAddrBodySize(t DeviceKey) int {
	n := 0
	if t.User != "" {
		n += protowire.SizeTag(deviceAddrUser) + protowire.SizeBytes(len(t.User))
	}
	if t.Device != 0 {
		n += protowire.SizeTag(deviceAddrDevice) + protowire.SizeVarint(uint64(t.Device))
	}
	return n
}

func deviceAddrSize(t DeviceKey) int {
	return protowire.SizeTag(edgeRecordTargets) + protowire.SizeBytes(deviceAddrBodySize(t))
}

// EdgeRecordView is an encoded pb.EdgeRecord read in place: what an edge
// needs from every record it consumes, without a pb.DeviceAddr (and its
// strings) per target. ParseEdgeRecord checks the whole record, so
// Targets cannot fail.
type EdgeRecordView struct {
	raw       []byte
	targets   int
	SessionID uint64
	// Frame is the encoded pb.ServerFrame; HasFrame tells an empty frame
	// from none. It aliases the record unless the record split the frame
	// into several fields (which proto merges: here, concatenated).
	Frame    []byte
	HasFrame bool
	// Bundle holds the encoded records a bundle carries, in order
	// (aliasing the record); each is read with ParseBundled.
	Bundle [][]byte
}

// ParseEdgeRecord reads b as proto.Unmarshal would read a pb.EdgeRecord
// (the last session_id wins, several frame fields merge — each must be
// well-formed by itself —, unknown fields are skipped, a target's user id
// must be UTF-8) without decoding the frame. A bundle's records are
// returned as they are (Bundle), each to be read with ParseBundled — so a
// bad record in a bundle, which proto.Unmarshal would refuse the whole
// record for, is refused alone —, and a record with a bundle and a frame,
// session or targets of its own is refused (proto takes it).
func ParseEdgeRecord(b []byte) (EdgeRecordView, error) {
	v, err := parseEdgeRecord(b)
	if err == nil && len(v.Bundle) > 0 && (v.HasFrame || v.SessionID != 0 || v.targets > 0) {
		return EdgeRecordView{}, fmt.Errorf("%w: a bundle with a frame, session or targets of its own", ErrBadEdgeRecord)
	}
	return v, err
}

// ParseBundled is ParseEdgeRecord for a record of a bundle, which must
// not carry a bundle itself.
func ParseBundled(b []byte) (EdgeRecordView, error) {
	v, err := parseEdgeRecord(b)
	if err == nil && len(v.Bundle) > 0 {
		return EdgeRecordView{}, fmt.Errorf("%w: a bundle inside a bundle", ErrBadEdgeRecord)
	}
	return v, err
}

// AppendBundled appends rec, an encoded pb.EdgeRecord, to b as one more
// record of a bundle (pb.EdgeRecord.bundle): b, the encoding of a bundle
// so far, stays one.
func AppendBundled(b, rec []byte) []byte {
	b = protowire.AppendTag(b, edgeRecordBundle, protowire.BytesType)
	return protowire.AppendBytes(b, rec)
}

// BundledSize is what AppendBundled adds for a record of n bytes.
func BundledSize(n int) int {
	return protowire.SizeTag(edgeRecordBundle) + protowire.SizeBytes(n)
}

func parseEdgeRecord(b []byte) (EdgeRecordView, error) {
	v := EdgeRecordView{raw: b}
	frames := 0
	for rest := b; len(rest) > 0; {
		num, typ, n := consumeTag(rest)
		if n < 0 {
			return EdgeRecordView{}, fmt.Errorf("%w: %w", ErrBadEdgeRecord, protowire.ParseError(n))
		}
		rest = rest[n:]
		switch {
		case num == edgeRecordTargets && typ == protowire.BytesType:
			t, m := protowire.ConsumeBytes(rest)
			if m < 0 {
				return EdgeRecordView{}, fmt.Errorf("%w: target: %w", ErrBadEdgeRecord, protowire.ParseError(m))
			}
			if _, _, err := parseDeviceAddr(t); err != nil {
				return EdgeRecordView{}, err
			}
			v.targets++
			rest = rest[m:]
		case num == edgeRecordSessionID && typ == protowire.VarintType:
			id, m := protowire.ConsumeVarint(rest)
			if m < 0 {
				return EdgeRecordView{}, fmt.Errorf("%w: session id: %w", ErrBadEdgeRecord, protowire.ParseError(m))
			}
			v.SessionID, rest = id, rest[m:]
		case num == edgeRecordFrame && typ == protowire.BytesType:
			f, m := protowire.ConsumeBytes(rest)
			if m < 0 {
				return EdgeRecordView{}, fmt.Errorf("%w: frame: %w", ErrBadEdgeRecord, protowire.ParseError(m))
			}
			frames++
			if frames == 1 {
				v.Frame = f
			} else {
				// proto decodes each occurrence on its own and merges
				// them; the concatenation decodes to the same message
				// only if each piece is well-formed by itself.
				if frames == 2 {
					if !wellFormed(v.Frame) {
						return EdgeRecordView{}, fmt.Errorf("%w: frame: malformed piece of a split frame", ErrBadEdgeRecord)
					}
					v.Frame = slices.Clip(v.Frame)
				}
				if !wellFormed(f) {
					return EdgeRecordView{}, fmt.Errorf("%w: frame: malformed piece of a split frame", ErrBadEdgeRecord)
				}
				v.Frame = append(v.Frame, f...) // a copy from the second on
			}
			v.HasFrame, rest = true, rest[m:]
		case num == edgeRecordBundle && typ == protowire.BytesType:
			r, m := protowire.ConsumeBytes(rest)
			if m < 0 {
				return EdgeRecordView{}, fmt.Errorf("%w: bundle: %w", ErrBadEdgeRecord, protowire.ParseError(m))
			}
			v.Bundle, rest = append(v.Bundle, r), rest[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, rest)
			if m < 0 {
				return EdgeRecordView{}, fmt.Errorf("%w: field %d: %w", ErrBadEdgeRecord, num, protowire.ParseError(m))
			}
			rest = rest[m:]
		}
	}
	return v, nil
}

// Targets calls fn with each target's user id (aliasing the record: copy
// it to keep it) and device id, in order, until fn returns false.
func (v EdgeRecordView) Targets(fn func(user []byte, device uint32) bool) {
	for rest := v.raw; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		rest = rest[n:]
		if num == edgeRecordTargets && typ == protowire.BytesType {
			t, m := protowire.ConsumeBytes(rest)
			rest = rest[m:]
			user, dev, _ := parseDeviceAddr(t)
			if !fn(user, dev) {
				return
			}
			continue
		}
		rest = rest[protowire.ConsumeFieldValue(num, typ, rest):]
	}
}

// parseDeviceAddr reads an encoded pb.DeviceAddr.
func parseDeviceAddr(b []byte) (user []byte, dev uint32, err error) {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return nil, 0, fmt.Errorf("%w: target: %w", ErrBadEdgeRecord, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == deviceAddrUser && typ == protowire.BytesType:
			u, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, 0, fmt.Errorf("%w: target user: %w", ErrBadEdgeRecord, protowire.ParseError(m))
			}
			if !utf8.Valid(u) {
				return nil, 0, fmt.Errorf("%w: target user is not UTF-8", ErrBadEdgeRecord)
			}
			user, b = u, b[m:]
		case num == deviceAddrDevice && typ == protowire.VarintType:
			d, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return nil, 0, fmt.Errorf("%w: target device: %w", ErrBadEdgeRecord, protowire.ParseError(m))
			}
			dev, b = uint32(d), b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, 0, fmt.Errorf("%w: target field %d: %w", ErrBadEdgeRecord, num, protowire.ParseError(m))
			}
			b = b[m:]
		}
	}
	return user, dev, nil
}

// wellFormed reports whether b is a sequence of complete fields (their
// contents unchecked).
func wellFormed(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false
		}
		b = b[m:]
	}
	return true
}

// consumeTag is protowire.ConsumeTag refusing, as proto.Unmarshal does,
// field numbers above protowire.MaxValidNumber.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n >= 0 && num > protowire.MaxValidNumber {
		return 0, 0, -1
	}
	return num, typ, n
}
