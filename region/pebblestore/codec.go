package pebblestore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Key tags: the first byte of every key says which table it belongs to.
// See doc.go for the full layout.
const (
	tagUser       = 'u'
	tagDevice     = 'd'
	tagStatic     = 's'
	tagConv       = 'c'
	tagMessage    = 'm'
	tagDedupe     = 'k'
	tagMember     = 'b'
	tagUserConv   = 'v'
	tagCursorDev  = 'x'
	tagCursorConv = 'y'
	tagRoute      = 'r'
	tagEdgeRoute  = 'e'
	tagLastSeen   = 'l'
	tagPrivacy    = 'h' // privacy.go

	// End-to-end key material (prekeys.go).
	tagPrekeys     = 'p'
	tagOneTime     = 'o'
	tagOneTimeUsed = 't'
	tagDeviceList  = 'w'
)

const sep = 0x00

// ErrCorrupt means the store's files are damaged: a stored value did not
// decode, or Open found a checksum mismatch, a missing file or committed
// writes missing from the write-ahead log (see the package documentation,
// Integrity). Open refuses such a store.
var ErrCorrupt = errors.New("pebblestore: store damaged")

// ------------------------------------------------------------------ keys

func key(tag byte, parts ...string) []byte {
	n := 1
	for _, p := range parts {
		n += len(p) + 1
	}
	k := make([]byte, 0, n+12)
	k = append(k, tag)
	for i, p := range parts {
		if i > 0 {
			k = append(k, sep)
		}
		k = append(k, p...)
	}
	return k
}

func be32(k []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(k, v) }
func be64(k []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(k, v) }

func userKey(user string) []byte { return key(tagUser, user) }

// deviceKey: 'd' user 0x00 dev(BE32). Prefix of a user's devices: devicePrefix.
func deviceKey(d core.DeviceKey) []byte { return be32(devicePrefix(d.User), d.Device) }
func devicePrefix(user string) []byte   { return append(key(tagDevice, user), sep) }

func staticKey(static []byte) []byte { return append([]byte{tagStatic}, static...) }

func convKey(conv string) []byte { return key(tagConv, conv) }

// messageKey: 'm' conv 0x00 seq(BE64).
func messageKey(conv string, seq uint64) []byte { return be64(messagePrefix(conv), seq) }
func messagePrefix(conv string) []byte          { return append(key(tagMessage, conv), sep) }

// dedupeKey: 'k' conv 0x00 senderUser 0x00 senderDev(BE32) clientMsgID.
func dedupeKey(conv string, sender core.DeviceKey, cmid string) []byte {
	k := be32(append(key(tagDedupe, conv, sender.User), sep), sender.Device)
	return append(k, cmid...)
}

// memberKey: 'b' conv 0x00 user.
func memberKey(conv, user string) []byte { return key(tagMember, conv, user) }
func memberPrefix(conv string) []byte    { return append(key(tagMember, conv), sep) }

// userConvKey: 'v' user 0x00 conv.
func userConvKey(user, conv string) []byte { return key(tagUserConv, user, conv) }
func userConvPrefix(user string) []byte    { return append(key(tagUserConv, user), sep) }

// cursorDevKey: 'x' user 0x00 dev(BE32) conv.
func cursorDevKey(dev core.DeviceKey, conv string) []byte {
	return append(cursorDevPrefix(dev), conv...)
}
func cursorDevPrefix(dev core.DeviceKey) []byte {
	return be32(append(key(tagCursorDev, dev.User), sep), dev.Device)
}

// cursorConvKey: 'y' conv 0x00 user 0x00 dev(BE32).
func cursorConvKey(conv string, dev core.DeviceKey) []byte {
	return be32(append(key(tagCursorConv, conv, dev.User), sep), dev.Device)
}
func cursorConvPrefix(conv string) []byte { return append(key(tagCursorConv, conv), sep) }

// routeKey: 'r' user 0x00 dev(BE32).
func routeKey(dev core.DeviceKey) []byte { return be32(routePrefix(dev.User), dev.Device) }
func routePrefix(user string) []byte     { return append(key(tagRoute, user), sep) }

// edgeRouteKey: 'e' edge 0x00 user 0x00 dev(BE32).
func edgeRouteKey(edge string, dev core.DeviceKey) []byte {
	return be32(append(key(tagEdgeRoute, edge, dev.User), sep), dev.Device)
}
func edgeRoutePrefix(edge string) []byte { return append(key(tagEdgeRoute, edge), sep) }

func lastSeenKey(user string) []byte { return key(tagLastSeen, user) }

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// splitUserDev parses "user 0x00 dev(BE32)" at the end of a key whose
// prefix (of length off) has been consumed.
func splitUserDev(k []byte, off int) (core.DeviceKey, error) {
	rest := k[off:]
	if len(rest) < 5 || rest[len(rest)-5] != sep {
		return core.DeviceKey{}, fmt.Errorf("%w: key %q", ErrCorrupt, k)
	}
	return core.DeviceKey{
		User:   string(rest[:len(rest)-5]),
		Device: binary.BigEndian.Uint32(rest[len(rest)-4:]),
	}, nil
}

// ------------------------------------------------------------------ values

// enc appends fields; dec reads them back in the same order.
type enc []byte

func (e enc) u(v uint64) enc    { return binary.AppendUvarint(e, v) }
func (e enc) i(v int64) enc     { return binary.AppendVarint(e, v) }
func (e enc) b(v []byte) enc    { return append(binary.AppendUvarint(e, uint64(len(v))), v...) }
func (e enc) s(v string) enc    { return append(binary.AppendUvarint(e, uint64(len(v))), v...) }
func (e enc) bytes() []byte     { return e }
func encodeSeq(v uint64) []byte { return enc(nil).u(v) }

type dec struct {
	buf     []byte
	err     error
	scratch [binary.MaxVarintLen64]byte
}

func (d *dec) u() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 || n != len(binary.AppendUvarint(d.scratch[:0], v)) { // reject overlong forms
		d.err = ErrCorrupt
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *dec) i() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 || n != len(binary.AppendVarint(d.scratch[:0], v)) {
		d.err = ErrCorrupt
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *dec) b() []byte {
	n := d.u()
	if d.err != nil {
		return nil
	}
	if uint64(len(d.buf)) < n {
		d.err = ErrCorrupt
		return nil
	}
	v := append([]byte(nil), d.buf[:n]...)
	d.buf = d.buf[n:]
	return v
}

func (d *dec) s() string { return string(d.b()) }

func (d *dec) done() error {
	if d.err == nil && len(d.buf) != 0 {
		d.err = ErrCorrupt
	}
	return d.err
}

func decodeSeq(v []byte) (uint64, error) {
	d := dec{buf: v}
	s := d.u()
	return s, d.done()
}

func encodeUser(u core.User) []byte {
	return enc(nil).s(u.HomeRegion).i(u.CreatedAtMs).bytes()
}

func decodeUser(id string, v []byte) (core.User, error) {
	d := dec{buf: v}
	u := core.User{ID: id, HomeRegion: d.s(), CreatedAtMs: d.i()}
	return u, d.done()
}

func encodeDevice(dv core.Device) []byte {
	return enc(nil).b(dv.NoiseStatic).b(dv.IdentityKey).u(uint64(dv.LinkedBy)).b(dv.LinkSignature).i(dv.CreatedAtMs).bytes()
}

func decodeDevice(k core.DeviceKey, v []byte) (core.Device, error) {
	d := dec{buf: v}
	dv := core.Device{Key: k, NoiseStatic: d.b(), IdentityKey: d.b(), LinkedBy: uint32(d.u()), LinkSignature: d.b(), CreatedAtMs: d.i()}
	return dv, d.done()
}

// encodeDevRef is the value of a static-key index entry.
func encodeDevRef(k core.DeviceKey) []byte { return enc(nil).s(k.User).u(uint64(k.Device)).bytes() }

func decodeDevRef(v []byte) (core.DeviceKey, error) {
	d := dec{buf: v}
	k := core.DeviceKey{User: d.s(), Device: uint32(d.u())}
	return k, d.done()
}

func encodeConv(c core.Conversation) []byte {
	return enc(nil).u(uint64(c.Kind)).s(c.Title).s(c.HomeRegion).u(c.Epoch).u(c.Head).i(c.CreatedAtMs).bytes()
}

func decodeConv(id string, v []byte) (core.Conversation, error) {
	d := dec{buf: v}
	c := core.Conversation{ID: id, Kind: pb.ConversationKind(d.u()), Title: d.s(), HomeRegion: d.s(), Epoch: d.u(), Head: d.u(), CreatedAtMs: d.i()}
	return c, d.done()
}

// Member flag bits, stored after the joined seq.
const (
	memberAdmin   = 1 << 0
	memberInvited = 1 << 1
	memberFlags   = memberAdmin | memberInvited
)

// encodeMember is the value of a 'b' key: the joined seq, then the flags
// when any is set. A plain member's value is the joined seq alone, as
// before roles existed, so stores written then decode unchanged.
func encodeMember(m core.Member) []byte {
	e := enc(nil).u(m.JoinedSeq)
	var f uint64
	if m.Admin {
		f |= memberAdmin
	}
	if m.Invited {
		f |= memberInvited
	}
	if f != 0 {
		e = e.u(f)
	}
	return e.bytes()
}

func decodeMember(user string, v []byte) (core.Member, error) {
	d := dec{buf: v}
	m := core.Member{User: user, JoinedSeq: d.u()}
	if d.err == nil && len(d.buf) > 0 {
		f := d.u()
		if f == 0 || f&^memberFlags != 0 { // a zero flags field is never written
			return core.Member{}, fmt.Errorf("%w: member flags %#x", ErrCorrupt, f)
		}
		m.Admin, m.Invited = f&memberAdmin != 0, f&memberInvited != 0
	}
	return m, d.done()
}

func encodeCursor(delivered, read uint64) []byte { return enc(nil).u(delivered).u(read).bytes() }

func decodeCursor(v []byte) (delivered, read uint64, err error) {
	d := dec{buf: v}
	delivered, read = d.u(), d.u()
	return delivered, read, d.done()
}

// encodeRoute: edge, session, since, then the region only when it is set
// (routes written before the mesh, and single-region ones, end after
// since). One encoding per value: an explicitly empty region is corrupt.
func encodeRoute(r core.Route) []byte {
	e := enc(nil).s(r.Edge).u(r.Session).i(r.SinceMs)
	if r.Region != "" {
		e = e.s(r.Region)
	}
	return e.bytes()
}

func decodeRoute(dev core.DeviceKey, v []byte) (core.Route, error) {
	d := dec{buf: v}
	r := core.Route{Device: dev, Edge: d.s(), Session: d.u(), SinceMs: d.i()}
	if d.err == nil && len(d.buf) > 0 {
		if r.Region = d.s(); d.err == nil && r.Region == "" {
			d.err = ErrCorrupt
		}
	}
	return r, d.done()
}

func encodeMs(ms int64) []byte { return enc(nil).i(ms).bytes() }

func decodeMs(v []byte) (int64, error) {
	d := dec{buf: v}
	ms := d.i()
	return ms, d.done()
}
