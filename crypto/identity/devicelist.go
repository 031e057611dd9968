package identity

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/chatmesh/chatmesh/crypto/internal/wire"
	"slices"
)

// MaxDevices bounds the number of devices in one account's list.
const MaxDevices = 32

// maxUserIDLen mirrors core.MaxUserIDLen without importing core.
const maxUserIDLen = 64

const deviceListLabel = "chatmesh-device-list-v1"

// Device-list errors.
var (
	ErrUntrustedSigner = errors.New("identity: device list signer is not a trusted device")
	ErrRollback        = errors.New("identity: device list version is not newer than the trusted one")
	ErrUnknownDevice   = errors.New("identity: device not in list")
)

// Device is one entry of an account's device list.
type Device struct {
	ID          uint32
	Identity    Public
	NoiseStatic [32]byte // the device's Noise transport static key
}

// DeviceList is the signed, versioned set of an account's devices. Every
// client verifies it (VerifyUpdate) before encrypting to any of its devices.
//
// Trust rule: version 1 is signed by a device that is in it (the account's
// first device: trust on first use, confirmed by safety numbers). Every later
// version must have a strictly higher Version and be signed by a device of
// the list the verifier already trusts, so neither the server nor a new
// device can add a device on its own.
type DeviceList struct {
	UserID    string
	Version   uint64
	Devices   []Device // sorted by ID, IDs unique
	SignerID  uint32
	Signature [ed25519.SignatureSize]byte
}

// Device returns the entry with the given id.
func (l *DeviceList) Device(id uint32) (Device, error) {
	for _, d := range l.Devices {
		if d.ID == id {
			return d, nil
		}
	}
	return Device{}, fmt.Errorf("%w: user %q device %d", ErrUnknownDevice, l.UserID, id)
}

func (l *DeviceList) check() error {
	if len(l.UserID) == 0 || len(l.UserID) > maxUserIDLen {
		return fmt.Errorf("%w: user id length %d", ErrMalformed, len(l.UserID))
	}
	if len(l.Devices) == 0 || len(l.Devices) > MaxDevices {
		return fmt.Errorf("%w: %d devices", ErrMalformed, len(l.Devices))
	}
	for i, d := range l.Devices {
		if i > 0 && l.Devices[i-1].ID >= d.ID {
			return fmt.Errorf("%w: device ids not strictly increasing", ErrMalformed)
		}
		if err := d.Identity.Verify(); err != nil {
			return fmt.Errorf("device %d: %w", d.ID, err)
		}
	}
	return nil
}

// signedPart encodes everything but the signature.
func (l *DeviceList) signedPart() ([]byte, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 1+1+len(l.UserID)+8+2+len(l.Devices)*(4+PublicSize+32)+4)
	b = append(b, encodingVersion, byte(len(l.UserID)))
	b = append(b, l.UserID...)
	b = binary.BigEndian.AppendUint64(b, l.Version)
	b = binary.BigEndian.AppendUint16(b, uint16(len(l.Devices)))
	for _, d := range l.Devices {
		b = binary.BigEndian.AppendUint32(b, d.ID)
		var err error
		if b, err = d.Identity.AppendBinary(b); err != nil {
			return nil, err
		}
		b = append(b, d.NoiseStatic[:]...)
	}
	return binary.BigEndian.AppendUint32(b, l.SignerID), nil
}

// Sign sorts the devices, sets SignerID and signs the list with signer.
// signer must be the device with id signerID; whether it is trusted is for
// the verifier to decide.
func (l *DeviceList) Sign(signerID uint32, signer *Private) error {
	slices.SortFunc(l.Devices, func(a, b Device) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	l.SignerID = signerID
	part, err := l.signedPart()
	if err != nil {
		return err
	}
	copy(l.Signature[:], signer.Sign(append([]byte(deviceListLabel), part...)))
	return nil
}

// MarshalBinary encodes the signed list.
func (l *DeviceList) MarshalBinary() ([]byte, error) {
	part, err := l.signedPart()
	if err != nil {
		return nil, err
	}
	return append(part, l.Signature[:]...), nil
}

// ParseDeviceList decodes a list. It checks structure and each device's
// binding signature, not the list signature: call VerifyUpdate.
func ParseDeviceList(b []byte) (*DeviceList, error) {
	r := newReader(b)
	if v := r.Byte(); v != encodingVersion {
		if r.Err != nil {
			return nil, r.Err
		}
		return nil, fmt.Errorf("%w: %d", ErrVersion, v)
	}
	l := &DeviceList{}
	l.UserID = string(r.Take(int(r.Byte())))
	l.Version = r.U64()
	n := int(r.U16())
	if n > MaxDevices {
		return nil, fmt.Errorf("%w: %d devices", ErrMalformed, n)
	}
	for i := 0; i < n && r.Err == nil; i++ {
		var d Device
		d.ID = r.U32()
		pub := r.Take(PublicSize)
		if r.Err != nil {
			break
		}
		var err error
		if d.Identity, err = ParsePublic(pub); err != nil {
			return nil, err
		}
		copy(d.NoiseStatic[:], r.Take(32))
		l.Devices = append(l.Devices, d)
	}
	l.SignerID = r.U32()
	copy(l.Signature[:], r.Take(ed25519.SignatureSize))
	if r.Err != nil {
		return nil, r.Err
	}
	if len(r.B) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.B))
	}
	if err := l.check(); err != nil {
		return nil, err
	}
	return l, nil
}

// VerifyUpdate checks l against the list the verifier already trusts
// (trusted nil = first contact). On success l may replace trusted.
// An identical re-announcement of the trusted list is accepted.
func (l *DeviceList) VerifyUpdate(trusted *DeviceList) error {
	part, err := l.signedPart()
	if err != nil {
		return err
	}
	var signers *DeviceList
	switch {
	case trusted == nil:
		// First contact (any version): the signer must be in the list
		// itself (TOFU); the caller's safety-number check is what makes
		// this trustworthy.
		signers = l
	case trusted.UserID != l.UserID:
		return fmt.Errorf("%w: list is for %q, trusted list for %q", ErrUntrustedSigner, l.UserID, trusted.UserID)
	case l.Version < trusted.Version:
		return fmt.Errorf("%w: %d < %d", ErrRollback, l.Version, trusted.Version)
	case l.Version == trusted.Version:
		tb, err := trusted.MarshalBinary()
		if err != nil {
			return err
		}
		lb := append(part, l.Signature[:]...)
		if !bytes.Equal(tb, lb) {
			return fmt.Errorf("%w: different list with the same version %d", ErrRollback, l.Version)
		}
		return nil
	default:
		signers = trusted
	}
	signer, err := signers.Device(l.SignerID)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUntrustedSigner, err)
	}
	if !signer.Identity.VerifySignature(append([]byte(deviceListLabel), part...), l.Signature[:]) {
		return fmt.Errorf("%w: device list v%d of %q", ErrBadSignature, l.Version, l.UserID)
	}
	return nil
}

// reader is the shared bounds-checked cursor (crypto/internal/wire).
type reader struct{ wire.Reader }

func newReader(b []byte) *reader { return &reader{wire.Reader{B: b, Malformed: ErrMalformed}} }
