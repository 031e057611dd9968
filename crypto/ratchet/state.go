package ratchet

import (
	"crypto/ecdh"
	"encoding/binary"
	"fmt"
)

const (
	flagDHr = 1 << 0
	flagCKs = 1 << 1
	flagCKr = 1 << 2
)

// MarshalBinary serialises the whole session so the client can persist it:
//
//	version(1) || flags(1) || DHs private(32) || DHr(32) || RK(32) ||
//	CKs(32) || CKr(32) || Ns(4) || Nr(4) || PN(4) ||
//	len(AD)(2) || AD || count(4) || count × (dh(32) || n(4) || mk(32))
//
// Skipped keys are written oldest first. The result is secret: it holds the
// root, chain and skipped message keys. Config is not part of the state.
func (s *Session) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 2+5*32+12+2+len(s.ad)+4+len(s.order)*68)
	var flags byte
	if s.st.hasDHr {
		flags |= flagDHr
	}
	if s.st.hasCKs {
		flags |= flagCKs
	}
	if s.st.hasCKr {
		flags |= flagCKr
	}
	b = append(b, stateVersion, flags)
	b = append(b, s.st.dhs.Bytes()...)
	b = append(b, s.st.dhr[:]...)
	b = append(b, s.st.rk[:]...)
	b = append(b, s.st.cks[:]...)
	b = append(b, s.st.ckr[:]...)
	b = binary.BigEndian.AppendUint32(b, s.st.ns)
	b = binary.BigEndian.AppendUint32(b, s.st.nr)
	b = binary.BigEndian.AppendUint32(b, s.st.pn)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.ad)))
	b = append(b, s.ad...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(s.order)))
	for _, k := range s.order {
		mk := s.skipped[k]
		b = append(b, k.dh[:]...)
		b = binary.BigEndian.AppendUint32(b, k.n)
		b = append(b, mk[:]...)
	}
	return b, nil
}

// Unmarshal restores a session written by MarshalBinary. If the stored
// skipped keys exceed cfg's total cap, the oldest are dropped.
func Unmarshal(data []byte, cfg Config) (*Session, error) {
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrBadState, what) }
	const fixed = 2 + 5*32 + 12 + 2
	if len(data) < fixed {
		return nil, bad("truncated")
	}
	if data[0] != stateVersion {
		return nil, fmt.Errorf("%w: state version %d", ErrVersion, data[0])
	}
	flags := data[1]
	if flags&^(flagDHr|flagCKs|flagCKr) != 0 {
		return nil, bad("unknown flags")
	}
	p := data[2:]
	next := func(n int) []byte { out := p[:n]; p = p[n:]; return out }
	s := &Session{cfg: cfg, skipped: map[skipKey][32]byte{}}
	var err error
	if s.st.dhs, err = ecdh.X25519().NewPrivateKey(next(32)); err != nil {
		return nil, bad("ratchet key")
	}
	copy(s.st.dhr[:], next(32))
	copy(s.st.rk[:], next(32))
	copy(s.st.cks[:], next(32))
	copy(s.st.ckr[:], next(32))
	s.st.ns = binary.BigEndian.Uint32(next(4))
	s.st.nr = binary.BigEndian.Uint32(next(4))
	s.st.pn = binary.BigEndian.Uint32(next(4))
	s.st.hasDHr = flags&flagDHr != 0
	s.st.hasCKs = flags&flagCKs != 0
	s.st.hasCKr = flags&flagCKr != 0
	adLen := int(binary.BigEndian.Uint16(next(2)))
	if adLen > MaxAssociatedData || len(p) < adLen+4 {
		return nil, bad("associated data")
	}
	s.ad = append([]byte(nil), next(adLen)...)
	count := int(binary.BigEndian.Uint32(next(4)))
	if count > hardMaxSkipped || len(p) != count*68 {
		return nil, bad("skipped keys")
	}
	for range count {
		var k skipKey
		var mk [32]byte
		copy(k.dh[:], next(32))
		k.n = binary.BigEndian.Uint32(next(4))
		copy(mk[:], next(32))
		if _, dup := s.skipped[k]; dup {
			return nil, bad("duplicate skipped key")
		}
		s.addSkipped(k, mk)
	}
	return s, nil
}
