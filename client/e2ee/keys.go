package e2ee

import (
	"context"
	"crypto/ecdh"
	"crypto/mlkem"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/pqxdh"
	"github.com/chatmesh/chatmesh/crypto/prekey"
)

// keyStore is the responder's prekey store: pqxdh.MemoryKeys loaded from
// the kv, plus persistent replay tokens for sessions started without a
// one-time prekey. Consumption is written to the kv by persistConsumed
// in the same commit as the new session.
type keyStore struct {
	mem *pqxdh.MemoryKeys
	kv  *kv
}

func u32key(prefix string, id uint32) string { return prefix + strconv.FormatUint(uint64(id), 10) }

func loadKeys(s *kv) (*keyStore, error) {
	ks := &keyStore{mem: &pqxdh.MemoryKeys{}, kv: s}
	for _, k := range s.keys("spk/") {
		b, _ := s.get(k)
		p, err := prekey.ParseSignedPrekeyPair(b)
		if err != nil {
			return nil, fmt.Errorf("e2ee: %s: %w", k, err)
		}
		ks.mem.AddSignedPrekey(p)
	}
	for _, k := range s.keys("kpk/") {
		b, _ := s.get(k)
		p, err := prekey.ParseKEMPrekeyPair(b)
		if err != nil {
			return nil, fmt.Errorf("e2ee: %s: %w", k, err)
		}
		ks.mem.AddKEMPrekey(p)
	}
	var otps []prekey.OneTimePrekeyPair
	for _, k := range s.keys("otp/") {
		b, _ := s.get(k)
		p, err := prekey.ParseOneTimePrekeyPair(b)
		if err != nil {
			return nil, fmt.Errorf("e2ee: %s: %w", k, err)
		}
		otps = append(otps, *p)
	}
	if err := ks.mem.AddOneTimePrekeys(otps); err != nil {
		return nil, err
	}
	return ks, nil
}

func (k *keyStore) SignedPrekey(id uint32) (*ecdh.PrivateKey, error) { return k.mem.SignedPrekey(id) }
func (k *keyStore) KEMPrekey(id uint32) (*mlkem.DecapsulationKey768, error) {
	return k.mem.KEMPrekey(id)
}
func (k *keyStore) OneTimePrekey(id uint32) (*ecdh.PrivateKey, error) {
	return k.mem.OneTimePrekey(id)
}

// Consume implements pqxdh.KeyStore; a token remembered across restarts
// is a replay.
func (k *keyStore) Consume(u pqxdh.Use) error {
	if !u.HasOneTime {
		if _, ok := k.kv.get("tok/" + hex.EncodeToString(u.Token[:])); ok {
			return pqxdh.ErrReplay
		}
	}
	return k.mem.Consume(u)
}

// persistConsumed stages the deletion of the used one-time prekey or the
// replay token of a session started without one.
func (k *keyStore) persistConsumed(s *kv, in *pqxdh.Initial, tok [32]byte) {
	if in.HasOneTime {
		s.del(u32key("otp/", in.OneTimeID))
		return
	}
	s.put("tok/"+hex.EncodeToString(tok[:]), binary.BigEndian.AppendUint32(nil, in.SignedPrekeyID))
}

// ---------------------------------------------------------------- prekey upload

func (s *Sealer) getU32(k string) uint32 {
	b, ok := s.kv.get(k)
	if !ok || len(b) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

// rotateLocked makes a new signed prekey and KEM prekey when there is none
// or the current one is older than RotateEvery, and retires prekeys older
// than three rotations. It reports whether it made new ones.
func (s *Sealer) rotateLocked() (bool, error) {
	now := s.cfg.Now()
	cur := s.getU32("meta/spk")
	if b, ok := s.kv.get("meta/spk"); ok && len(b) == 12 {
		made := time.Unix(int64(binary.BigEndian.Uint64(b[4:])), 0)
		if now.Sub(made) < s.cfg.RotateEvery {
			return false, nil
		}
	}
	id := cur + 1
	spk, err := prekey.NewSignedPrekey(s.cfg.Identity, id, s.cfg.Rand)
	if err != nil {
		return false, err
	}
	kpk, err := prekey.NewKEMPrekey(s.cfg.Identity, id)
	if err != nil {
		return false, err
	}
	sb, err := spk.MarshalBinary()
	if err != nil {
		return false, err
	}
	kb, err := kpk.MarshalBinary()
	if err != nil {
		return false, err
	}
	s.kv.put(u32key("spk/", id), sb)
	s.kv.put(u32key("kpk/", id), kb)
	meta := binary.BigEndian.AppendUint32(nil, id)
	s.kv.put("meta/spk", binary.BigEndian.AppendUint64(meta, uint64(now.Unix())))
	s.keys.mem.AddSignedPrekey(spk)
	s.keys.mem.AddKEMPrekey(kpk)
	if id > 3 {
		old := id - 3
		s.kv.del(u32key("spk/", old))
		s.kv.del(u32key("kpk/", old))
		s.keys.mem.RemoveSignedPrekey(old)
		for _, k := range s.kv.keys("tok/") {
			if b, _ := s.kv.get(k); len(b) == 4 && binary.BigEndian.Uint32(b) <= old {
				s.kv.del(k)
			}
		}
	}
	return true, s.kv.commit()
}

func (s *Sealer) currentPrekeysLocked() (*prekey.SignedPrekey, *prekey.KEMPrekey, error) {
	id := s.getU32("meta/spk")
	sb, ok1 := s.kv.get(u32key("spk/", id))
	kb, ok2 := s.kv.get(u32key("kpk/", id))
	if !ok1 || !ok2 {
		return nil, nil, fmt.Errorf("e2ee: current prekeys missing")
	}
	spk, err := prekey.ParseSignedPrekeyPair(sb)
	if err != nil {
		return nil, nil, err
	}
	kpk, err := prekey.ParseKEMPrekeyPair(kb)
	if err != nil {
		return nil, nil, err
	}
	return &spk.SignedPrekey, &kpk.KEMPrekey, nil
}

// newOneTimeLocked makes n one-time prekeys and stores their private
// halves durably (before they are uploaded).
func (s *Sealer) newOneTimeLocked(n int) ([]prekey.OneTimePrekey, error) {
	first := s.getU32("meta/otpnext") + 1
	pairs, err := prekey.NewOneTimePrekeys(first, n, s.cfg.Rand)
	if err != nil {
		return nil, err
	}
	out := make([]prekey.OneTimePrekey, 0, n)
	for i := range pairs {
		b, err := pairs[i].MarshalBinary()
		if err != nil {
			return nil, err
		}
		s.kv.put(u32key("otp/", pairs[i].ID), b)
		out = append(out, pairs[i].OneTimePrekey)
	}
	s.kv.put("meta/otpnext", binary.BigEndian.AppendUint32(nil, first+uint32(n)-1))
	if err := s.keys.mem.AddOneTimePrekeys(pairs); err != nil {
		return nil, err
	}
	return out, s.kv.commit()
}

// EnsurePrekeys uploads the identity, the current signed and KEM prekeys
// (rotating them when due) and, the first time or when the server holds
// fewer than LowWater, a batch of one-time prekeys. It is idempotent; the
// client calls it on every connect.
func (s *Sealer) EnsurePrekeys(ctx context.Context) error {
	if _, err := s.self(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ensurePrekeysLocked(ctx)
}

func (s *Sealer) ensurePrekeysLocked(ctx context.Context) error {
	if _, err := s.rotateLocked(); err != nil {
		return err
	}
	spk, kpk, err := s.currentPrekeysLocked()
	if err != nil {
		return err
	}
	up := &prekey.Upload{SignedPrekey: spk, KEM: kpk}
	_, first := s.kv.get("meta/otpup")
	first = !first
	if first {
		if up.OneTime, err = s.newOneTimeLocked(s.cfg.OneTimeBatch); err != nil {
			return err
		}
	}
	remaining, err := s.uploadLocked(ctx, up)
	if err != nil {
		return err
	}
	if first {
		s.kv.put("meta/otpup", []byte{1})
		if err := s.kv.commit(); err != nil {
			return err
		}
	}
	if remaining >= 0 && remaining < s.cfg.LowWater {
		return s.replenishLocked(ctx)
	}
	return nil
}

// Replenish uploads a new batch of one-time prekeys (the client calls it
// when the server pushes prekey_status low).
func (s *Sealer) Replenish(ctx context.Context) error {
	if _, err := s.self(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.replenishLocked(ctx)
}

func (s *Sealer) replenishLocked(ctx context.Context) error {
	otps, err := s.newOneTimeLocked(s.cfg.OneTimeBatch)
	if err != nil {
		return err
	}
	_, err = s.uploadLocked(ctx, &prekey.Upload{OneTime: otps})
	return err
}

func (s *Sealer) uploadLocked(ctx context.Context, up *prekey.Upload) (int, error) {
	ub, err := up.MarshalBinary()
	if err != nil {
		return 0, err
	}
	ib, err := s.cfg.Identity.Public().MarshalBinary()
	if err != nil {
		return 0, err
	}
	return s.dir().UploadPrekeys(ctx, ib, ub)
}

// OneTimeHeld returns how many unused one-time prekey private keys the
// device holds.
func (s *Sealer) OneTimeHeld() int { return s.keys.mem.OneTimeCount() }

// ---------------------------------------------------------------- own device list

// InitFirstDevice makes version 1 of the user's device list with this
// device as its only member and marks it for publication (the client
// calls it right after Register; the list is published on connect). It
// does nothing when the device already has its user's list.
func (s *Sealer) InitFirstDevice(noiseStatic []byte) error {
	me, err := s.self()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.kv.get("list/" + me.User); ok {
		return nil
	}
	l := &identity.DeviceList{UserID: me.User, Version: 1, Devices: []identity.Device{{ID: me.Device, Identity: s.cfg.Identity.Public()}}}
	copy(l.Devices[0].NoiseStatic[:], noiseStatic)
	if err := l.Sign(me.Device, s.cfg.Identity); err != nil {
		return err
	}
	raw, err := l.MarshalBinary()
	if err != nil {
		return err
	}
	s.putListLocked(me.User, raw)
	s.kv.put("meta/listunpub", []byte{1})
	return s.kv.commit()
}

// PublishFirstDevice is InitFirstDevice followed by publishing the list.
func (s *Sealer) PublishFirstDevice(ctx context.Context, noiseStatic []byte) error {
	if err := s.InitFirstDevice(noiseStatic); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publishOwnLocked(ctx)
}

// publishOwnLocked publishes the trusted own list if it is marked unpublished.
func (s *Sealer) publishOwnLocked(ctx context.Context) error {
	me, err := s.self()
	if err != nil {
		return err
	}
	if _, ok := s.kv.get("meta/listunpub"); !ok {
		return nil
	}
	raw, ok := s.kv.get("list/" + me.User)
	if !ok {
		return nil
	}
	if err := s.dir().PublishDeviceList(ctx, raw); err != nil {
		return err
	}
	s.kv.del("meta/listunpub")
	return s.kv.commit()
}

// AddLinkedDevice records a device this device has just linked (its
// identity and Noise key, from the link request). Once the new device has
// registered, the next PublishLinks (on connect, before a send) adds it to
// the user's device list, signed by this device.
func (s *Sealer) AddLinkedDevice(pub identity.Public, noiseStatic []byte) error {
	if err := pub.Verify(); err != nil {
		return err
	}
	b, err := pub.MarshalBinary()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := "link/" + hex.EncodeToString(pub.Sign)
	if _, ok := s.kv.get(k); !ok {
		s.pendingLinks++
	}
	s.kv.put(k, append(b, noiseStatic...))
	return s.kv.commit()
}

// Setup does what a device does on every connect, over dir (for example a
// short session opened right after registration, so that a device is
// reachable before it ever connects for good): publish its device list if
// not yet done, upload prekeys (EnsurePrekeys), publish linked devices.
func (s *Sealer) Setup(ctx context.Context, dir Directory) error {
	me, err := s.self()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.override = dir
	defer func() { s.override = nil }()
	if err := s.publishOwnLocked(ctx); err != nil {
		return err
	}
	if err := s.ensurePrekeysLocked(ctx); err != nil {
		return err
	}
	return s.publishLinksLocked(ctx, me)
}

// dir is the directory to use (s.mu held).
func (s *Sealer) dir() Directory {
	if s.override != nil {
		return s.override
	}
	return s.cfg.Directory
}

// PendingLinks returns how many linked devices wait to be published.
func (s *Sealer) PendingLinks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pendingLinks
}

// PublishLinks publishes the device list with every linked device that
// has registered meanwhile (and a list not yet published).
func (s *Sealer) PublishLinks(ctx context.Context) error {
	me, err := s.self()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.publishOwnLocked(ctx); err != nil {
		return err
	}
	return s.publishLinksLocked(ctx, me)
}

func (s *Sealer) publishLinksLocked(ctx context.Context, me core.DeviceKey) error {
	links := s.kv.keys("link/")
	if len(links) == 0 {
		return nil
	}
	trusted, err := s.listLocked(me.User)
	if err != nil {
		return err
	}
	if trusted == nil {
		var changed []string
		if trusted, err = s.trustedListLocked(ctx, me.User, &changed); err != nil || trusted == nil {
			return fmt.Errorf("e2ee: own device list unknown: %w", err)
		}
	}
	devs, err := s.dir().Devices(ctx, me.User)
	if err != nil {
		return err
	}
	next := &identity.DeviceList{UserID: me.User, Version: trusted.Version + 1, Devices: slices.Clone(trusted.Devices)}
	var done []string
	for _, k := range links {
		want, _ := hex.DecodeString(strings.TrimPrefix(k, "link/"))
		for id, key := range devs {
			if string(key) != string(want) {
				continue
			}
			b, _ := s.kv.get(k)
			pub, err := identity.ParsePublic(b[:identity.PublicSize])
			if err != nil {
				return err
			}
			d := identity.Device{ID: id, Identity: pub}
			copy(d.NoiseStatic[:], b[identity.PublicSize:])
			next.Devices = slices.DeleteFunc(next.Devices, func(x identity.Device) bool { return x.ID == id })
			next.Devices = append(next.Devices, d)
			done = append(done, k)
		}
	}
	if len(done) == 0 {
		return nil
	}
	if err := next.Sign(me.Device, s.cfg.Identity); err != nil {
		return err
	}
	raw, err := next.MarshalBinary()
	if err != nil {
		return err
	}
	if err := s.dir().PublishDeviceList(ctx, raw); err != nil {
		return err
	}
	s.putListLocked(me.User, raw)
	for _, k := range done {
		s.kv.del(k)
	}
	s.pendingLinks = len(s.kv.keys("link/"))
	return s.kv.commit()
}
