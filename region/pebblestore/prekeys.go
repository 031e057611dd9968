package pebblestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/chatmesh/chatmesh/core"
)

var _ core.PrekeyStore = (*Store)(nil)

// prekeyLock returns the lock stripe of one device's (or, for device lists,
// one user's) key material.
func (s *Store) prekeyLock(id string) *sync.Mutex { return s.stripe(s.prekeyMu, id) }

// PutPrekeys implements core.PrekeyStore. A nil Identity needs an identity
// stored by an earlier upload (ErrNotFound otherwise).
func (s *Store) PutPrekeys(ctx context.Context, dev core.DeviceKey, up core.PrekeyUpload) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := checkID("user id", dev.User); err != nil {
		return err
	}
	mu := s.prekeyLock(dev.String())
	mu.Lock()
	defer mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	pk := prekeysKey(dev)
	v, found, err := s.get(pk)
	if err != nil {
		return err
	}
	var cur prekeyRow
	if found {
		if cur, err = decodePrekeys(v); err != nil {
			return err
		}
	}
	if len(up.Identity) > 0 {
		cur.identity = up.Identity
	}
	if len(cur.identity) == 0 {
		return fmt.Errorf("pebblestore: prekeys of %s: no identity stored and none uploaded: %w", dev, core.ErrNotFound)
	}
	if len(up.SignedPrekey) > 0 {
		cur.signed = up.SignedPrekey
	}
	if len(up.KEMPrekey) > 0 {
		cur.kem = up.KEMPrekey
	}
	b := s.db.NewBatch()
	errs := []error{b.Set(pk, encodePrekeys(cur), nil)}
	added := map[uint32]bool{}
	for _, o := range up.OneTime {
		if added[o.ID] {
			continue // first occurrence wins
		}
		added[o.ID] = true
		ok, used := oneTimeKey(dev, o.ID), oneTimeUsedKey(dev, o.ID)
		_, stored, err := s.get(ok)
		if err == nil && !stored {
			_, stored, err = s.get(used)
		}
		if err != nil {
			_ = b.Close()
			return err
		}
		if !stored {
			errs = append(errs, b.Set(ok, o.Key, nil))
		}
	}
	if err := errors.Join(errs...); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: prekeys of %s: %w", dev, err)
	}
	return s.commit(b)
}

// TakeBundle implements core.PrekeyStore. It is ErrNotFound until the
// identity, the signed prekey and the KEM prekey are all stored, and then
// consumes nothing.
func (s *Store) TakeBundle(ctx context.Context, dev core.DeviceKey) (core.PrekeyBundle, error) {
	if err := s.check(); err != nil {
		return core.PrekeyBundle{}, err
	}
	if err := checkID("user id", dev.User); err != nil {
		return core.PrekeyBundle{}, err
	}
	mu := s.prekeyLock(dev.String())
	mu.Lock()
	defer mu.Unlock()
	if err := ctx.Err(); err != nil {
		return core.PrekeyBundle{}, err
	}
	out, err := s.bundleParts(dev)
	if err != nil {
		return core.PrekeyBundle{}, err
	}
	p := oneTimePrefix(dev)
	n := 0
	err = s.scan(p, func(k, v []byte) (bool, error) {
		if n == 0 {
			if len(k) != len(p)+4 {
				return false, fmt.Errorf("%w: one-time key %q", ErrCorrupt, k)
			}
			out.OneTime = &core.OneTimeKey{ID: binary.BigEndian.Uint32(k[len(p):]), Key: append([]byte(nil), v...)}
		}
		n++
		return true, nil
	})
	if err != nil || out.OneTime == nil {
		return out, err
	}
	out.Remaining = n - 1
	b := s.db.NewBatch()
	if err := errors.Join(
		b.Delete(oneTimeKey(dev, out.OneTime.ID), nil),
		b.Set(oneTimeUsedKey(dev, out.OneTime.ID), nil, nil),
	); err != nil {
		_ = b.Close()
		return core.PrekeyBundle{}, fmt.Errorf("pebblestore: take one-time key of %s: %w", dev, err)
	}
	if err := s.commit(b); err != nil {
		return core.PrekeyBundle{}, err
	}
	return out, nil
}

// PeekBundle returns what TakeBundle would, without taking a one-time
// prekey: OneTime is nil and Remaining is the number left. The region
// answers with it when a fetch is over its limits (region/prekeys.go).
func (s *Store) PeekBundle(ctx context.Context, dev core.DeviceKey) (core.PrekeyBundle, error) {
	if err := s.check(); err != nil {
		return core.PrekeyBundle{}, err
	}
	if err := checkID("user id", dev.User); err != nil {
		return core.PrekeyBundle{}, err
	}
	out, err := s.bundleParts(dev)
	if err != nil {
		return core.PrekeyBundle{}, err
	}
	if out.Remaining, err = s.OneTimeCount(ctx, dev); err != nil {
		return core.PrekeyBundle{}, err
	}
	return out, nil
}

// OneTimeCount implements core.PrekeyStore (0 for a device without uploads).
func (s *Store) OneTimeCount(ctx context.Context, dev core.DeviceKey) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if err := checkID("user id", dev.User); err != nil {
		return 0, err
	}
	n := 0
	err := s.scan(oneTimePrefix(dev), func(_, _ []byte) (bool, error) {
		n++
		return true, nil
	})
	return n, err
}

// PutDeviceList implements core.PrekeyStore.
func (s *Store) PutDeviceList(ctx context.Context, user string, version uint64, list []byte) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := checkID("user id", user); err != nil {
		return err
	}
	mu := s.prekeyLock("list\x00" + user)
	mu.Lock()
	defer mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	k := deviceListKey(user)
	v, found, err := s.get(k)
	if err != nil {
		return err
	}
	if found {
		stored, _, err := decodeDeviceList(v)
		if err != nil {
			return err
		}
		if version <= stored {
			return fmt.Errorf("pebblestore: device list of %s: version %d not above stored %d: %w", user, version, stored, core.ErrAlreadyExists)
		}
	}
	b := s.db.NewBatch()
	if err := b.Set(k, encodeDeviceList(version, list), nil); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: device list of %s: %w", user, err)
	}
	return s.commit(b)
}

// DeviceList implements core.PrekeyStore.
func (s *Store) DeviceList(ctx context.Context, user string) (uint64, []byte, error) {
	if err := s.check(); err != nil {
		return 0, nil, err
	}
	v, found, err := s.get(deviceListKey(user))
	if err != nil {
		return 0, nil, err
	}
	if !found {
		return 0, nil, fmt.Errorf("pebblestore: device list of %s: %w", user, core.ErrNotFound)
	}
	return decodeDeviceList(v)
}

// ------------------------------------------------------------------ prekey keys and values

// prekeysKey: 'p' user 0x00 dev(BE32).
func prekeysKey(dev core.DeviceKey) []byte {
	return be32(append(key(tagPrekeys, dev.User), sep), dev.Device)
}

// oneTimeKey: 'o' user 0x00 dev(BE32) id(BE32); oneTimePrefix is all of a device's.
func oneTimeKey(dev core.DeviceKey, id uint32) []byte { return be32(oneTimePrefix(dev), id) }
func oneTimePrefix(dev core.DeviceKey) []byte {
	return be32(append(key(tagOneTime, dev.User), sep), dev.Device)
}

// oneTimeUsedKey: 't' user 0x00 dev(BE32) id(BE32), the tombstone of a handed-out key.
func oneTimeUsedKey(dev core.DeviceKey, id uint32) []byte {
	return be32(be32(append(key(tagOneTimeUsed, dev.User), sep), dev.Device), id)
}

// deviceListKey: 'w' user.
func deviceListKey(user string) []byte { return key(tagDeviceList, user) }

// prekeyRow is a device's stored identity, signed prekey and KEM prekey
// (each empty until uploaded).
type prekeyRow struct{ identity, signed, kem []byte }

func encodePrekeys(r prekeyRow) []byte { return enc(nil).b(r.identity).b(r.signed).b(r.kem).bytes() }

func decodePrekeys(v []byte) (prekeyRow, error) {
	d := dec{buf: v}
	r := prekeyRow{identity: d.b(), signed: d.b(), kem: d.b()}
	if err := d.done(); err != nil {
		return prekeyRow{}, fmt.Errorf("pebblestore: prekeys: %w", err)
	}
	return r, nil
}

func encodeDeviceList(version uint64, list []byte) []byte { return enc(nil).u(version).b(list).bytes() }

func decodeDeviceList(v []byte) (uint64, []byte, error) {
	d := dec{buf: v}
	version, list := d.u(), d.b()
	if err := d.done(); err != nil {
		return 0, nil, fmt.Errorf("pebblestore: device list: %w", err)
	}
	return version, list, nil
}

// bundleParts reads a device's identity, signed prekey and KEM prekey
// (ErrNotFound until it has uploaded all three); one-time keys not included.
func (s *Store) bundleParts(dev core.DeviceKey) (core.PrekeyBundle, error) {
	v, found, err := s.get(prekeysKey(dev))
	if err != nil {
		return core.PrekeyBundle{}, err
	}
	var row prekeyRow
	if found {
		if row, err = decodePrekeys(v); err != nil {
			return core.PrekeyBundle{}, err
		}
	}
	if len(row.identity) == 0 || len(row.signed) == 0 || len(row.kem) == 0 {
		return core.PrekeyBundle{}, fmt.Errorf("pebblestore: prekey bundle of %s: %w", dev, core.ErrNotFound)
	}
	return core.PrekeyBundle{Identity: row.identity, SignedPrekey: row.signed, KEMPrekey: row.kem}, nil
}
