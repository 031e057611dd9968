package prekey

import (
	"encoding/binary"
	"fmt"

	"github.com/chatmesh/chatmesh/crypto/identity"
)

// Bundle is what the region hands out for one device: its identity, its
// current signed prekey, its signed ML-KEM prekey and at most one one-time
// prekey (absent when the supply is exhausted).
type Bundle struct {
	Identity     identity.Public
	SignedPrekey SignedPrekey
	KEM          *KEMPrekey     // required; nil only so a dropped KEM part is representable and rejected
	OneTime      *OneTimePrekey // optional
}

// Verify checks everything a sender must check before using the bundle: the
// identity's binding signature, the signed prekey and KEM prekey signatures,
// and that the KEM prekey is present (ErrMissingKEM otherwise). Whether the
// identity is the one the sender expects (from a verified device list) is
// the caller's check (crypto/pqxdh does it).
func (b *Bundle) Verify() error {
	if err := b.Identity.Verify(); err != nil {
		return fmt.Errorf("prekey: bundle identity: %w", err)
	}
	if err := b.SignedPrekey.Verify(b.Identity); err != nil {
		return err
	}
	if b.KEM == nil {
		return ErrMissingKEM
	}
	return b.KEM.Verify(b.Identity)
}

const (
	flagKEM     = 1 << 0
	flagOneTime = 1 << 1
)

// MarshalBinary encodes the bundle:
// version(1) || flags(1) || identity || signed prekey || [kem prekey] || [one-time prekey].
func (b *Bundle) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, 2+identity.PublicSize+SignedPrekeySize+KEMPrekeySize+OneTimePrekeySize)
	var flags byte
	if b.KEM != nil {
		flags |= flagKEM
	}
	if b.OneTime != nil {
		flags |= flagOneTime
	}
	out = append(out, encodingVersion, flags)
	var err error
	if out, err = b.Identity.AppendBinary(out); err != nil {
		return nil, err
	}
	out, _ = b.SignedPrekey.AppendBinary(out)
	if b.KEM != nil {
		if out, err = b.KEM.AppendBinary(out); err != nil {
			return nil, err
		}
	}
	if b.OneTime != nil {
		out, _ = b.OneTime.AppendBinary(out)
	}
	return out, nil
}

// ParseBundle decodes a bundle. It checks lengths and the identity binding
// but not the prekey signatures: call Verify.
func ParseBundle(data []byte) (*Bundle, error) {
	r := newReader(data)
	if err := r.version(); err != nil {
		return nil, err
	}
	flags := r.Byte()
	if flags&^(flagKEM|flagOneTime) != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags)
	}
	idb := r.Take(identity.PublicSize)
	b := &Bundle{SignedPrekey: r.signedPrekey()}
	if flags&flagKEM != 0 {
		k := r.kemPrekey()
		b.KEM = &k
	}
	if flags&flagOneTime != 0 {
		o := r.oneTime()
		b.OneTime = &o
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	var err error
	if b.Identity, err = identity.ParsePublic(idb); err != nil {
		return nil, fmt.Errorf("prekey: bundle identity: %w", err)
	}
	return b, nil
}

// Upload is what a device sends to the region: a new signed prekey and/or
// KEM prekey (either may be nil when only replenishing) and a batch of
// one-time prekeys. The region verifies it with Verify against the device's
// registered identity before storing anything.
type Upload struct {
	SignedPrekey *SignedPrekey
	KEM          *KEMPrekey
	OneTime      []OneTimePrekey
}

// Verify checks the signatures against owner and the batch size.
func (u *Upload) Verify(owner identity.Public) error {
	if len(u.OneTime) > MaxOneTimePerUpload {
		return fmt.Errorf("%w: %d > %d", ErrTooMany, len(u.OneTime), MaxOneTimePerUpload)
	}
	if u.SignedPrekey != nil {
		if err := u.SignedPrekey.Verify(owner); err != nil {
			return err
		}
	}
	if u.KEM != nil {
		if err := u.KEM.Verify(owner); err != nil {
			return err
		}
	}
	seen := make(map[uint32]bool, len(u.OneTime))
	for _, o := range u.OneTime {
		if seen[o.ID] {
			return fmt.Errorf("%w: duplicate one-time prekey id %d", ErrMalformed, o.ID)
		}
		seen[o.ID] = true
	}
	return nil
}

// MarshalBinary encodes the upload:
// version(1) || flags(1) || [signed prekey] || [kem prekey] || count(2) || one-time prekeys.
func (u *Upload) MarshalBinary() ([]byte, error) {
	if len(u.OneTime) > MaxOneTimePerUpload {
		return nil, fmt.Errorf("%w: %d > %d", ErrTooMany, len(u.OneTime), MaxOneTimePerUpload)
	}
	var flags byte
	if u.SignedPrekey != nil {
		flags |= 1
	}
	if u.KEM != nil {
		flags |= 2
	}
	out := []byte{encodingVersion, flags}
	var err error
	if u.SignedPrekey != nil {
		out, _ = u.SignedPrekey.AppendBinary(out)
	}
	if u.KEM != nil {
		if out, err = u.KEM.AppendBinary(out); err != nil {
			return nil, err
		}
	}
	out = binary.BigEndian.AppendUint16(out, uint16(len(u.OneTime)))
	for _, o := range u.OneTime {
		out, _ = o.AppendBinary(out)
	}
	return out, nil
}

// ParseUpload decodes an Upload (structure only; call Verify).
func ParseUpload(data []byte) (*Upload, error) {
	r := newReader(data)
	if err := r.version(); err != nil {
		return nil, err
	}
	flags := r.Byte()
	if flags&^3 != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags)
	}
	u := &Upload{}
	if flags&1 != 0 {
		s := r.signedPrekey()
		u.SignedPrekey = &s
	}
	if flags&2 != 0 {
		k := r.kemPrekey()
		u.KEM = &k
	}
	n := int(r.U16())
	if n > MaxOneTimePerUpload {
		return nil, fmt.Errorf("%w: %d > %d", ErrTooMany, n, MaxOneTimePerUpload)
	}
	for i := 0; i < n && r.Err == nil; i++ {
		u.OneTime = append(u.OneTime, r.oneTime())
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return u, nil
}
