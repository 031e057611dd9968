package region

// End-to-end key material: the region stores and serves public keys only.
//
// Four requests, all answered synchronously through API.Query (they are
// reads and writes of the region's store, not ingress records):
//
//   - upload_prekeys: the calling device's identity (crypto/identity Public;
//     required until the store has one for the device) and a crypto/prekey
//     Upload. The identity's Ed25519 key must equal the key the device
//     registered with (core.Device.IdentityKey), every signature in the
//     upload must verify against it, and only then are the parts stored —
//     re-marshalled, so only canonical encodings reach the store. The reply
//     is a PrekeyStatus.
//   - fetch_bundle: takes the target device's bundle from the store (which
//     hands out each one-time prekey at most once), re-checks it with
//     prekey.Bundle.Verify and returns its encoding. When the fetch leaves
//     the device with fewer one-time prekeys than Config.PrekeyLowWater, the
//     device's online sessions are pushed a ServerFrame.prekey_status
//     {low: true}.
//   - publish_device_list: a crypto/identity DeviceList of the calling user,
//     verified with DeviceList.VerifyUpdate against the stored list (nil on
//     first publish, so version 1 must be signed by a device in it); every
//     device it names must be a registered device of the user with the same
//     Ed25519 identity key and Noise static key. Newer versions only.
//   - fetch_device_list: the stored list of any user.
//
// Every refused request changes nothing and carries a typed code:
// INVALID_ARGUMENT for what does not decode or is out of range, FORBIDDEN
// for a signature or key that does not match the registered device,
// NOT_FOUND for missing material, ALREADY_EXISTS for a stale or replayed
// device list. Nothing here logs key material.
//
// Low-supply pushes are stateless: a fetch that took a one-time prekey and
// left r < low of them pushes when r == low-1 or r is a multiple of
// max(1, low/4) (with the default 20: at 19, 15, 10, 5 and 0). Because the
// store serializes takes, every remaining count is seen by exactly one
// fetch, so a device draining from low to zero gets at most about five
// pushes, however many senders race. A push is best effort (the device may
// be offline): every upload reply carries the same status, so a client that
// uploads (or sends an empty upload) on connect learns it anyway. Fetches
// that find no one-time prekey push nothing.
//
// Draining is limited (Config.PrekeyFetch, PrekeyFetchLimits): a fetch takes
// a one-time prekey only while both the (requesting device, target device)
// bucket and the target device's bucket have a token; the pair is charged
// first, so a stranger hammering one device spends its own pair budget and
// never the target's, and the device's honest contacts keep getting
// one-time prekeys. Over either limit the fetch still succeeds, with the
// target's bundle WITHOUT a one-time prekey (the same answer as when the
// device ran out): a legitimate session can always start, from the signed
// prekey and the KEM prekey alone. What that loses (PROTOCOL.md, "Prekey
// bundles"): the first message's key no longer depends on a key that is
// deleted after one use, so until the signed prekey is rotated, someone who
// later steals the device's signed prekey private key and recorded the first
// message can read it, and a replayed first message is not detected by the
// prekey's disappearance. The KEM prekey keeps the post-quantum part. The
// buckets are in memory, per region process, bounded by MaxKeys each
// (core.KeyedLimiter: least recently used evicted, an evicted key starts
// full); a restart or another region process starts with full buckets,
// which only allows what the limits allow anyway, once more.

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
)

// prekeyStore returns the store's PrekeyStore capability.
func (a *API) prekeyStore() (core.PrekeyStore, error) {
	ps, ok := a.r.store.(core.PrekeyStore)
	if !ok {
		return nil, core.Errorf(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "this region's store keeps no prekeys")
	}
	return ps, nil
}

// registeredDevice returns the stored registration of dev (FORBIDDEN when
// there is none: an authenticated session always has one).
func (a *API) registeredDevice(ctx context.Context, dev core.DeviceKey) (core.Device, error) {
	devs, err := a.r.store.Devices(ctx, dev.User)
	if err != nil && !errors.Is(err, core.ErrNotFound) {
		return core.Device{}, err
	}
	for _, d := range devs {
		if d.Key == dev {
			return d, nil
		}
	}
	return core.Device{}, fmt.Errorf("device %s is not registered: %w", dev, core.ErrForbidden)
}

// cryptoErr maps a crypto/identity or crypto/prekey error to a wire code.
func cryptoErr(what string, err error) error {
	switch {
	case errors.Is(err, identity.ErrBadSignature), errors.Is(err, prekey.ErrBadSignature),
		errors.Is(err, identity.ErrUntrustedSigner), errors.Is(err, identity.ErrUnknownDevice):
		return fmt.Errorf("%s: %w: %w", what, core.ErrForbidden, err)
	case errors.Is(err, identity.ErrRollback):
		return fmt.Errorf("%s: %w: %w", what, core.ErrAlreadyExists, err)
	default: // malformed, unsupported version, too many keys, missing KEM
		return fmt.Errorf("%s: %w: %w", what, core.ErrInvalidArgument, err)
	}
}

func (a *API) uploadPrekeys(ctx context.Context, dev core.DeviceKey, req *pb.UploadPrekeysRequest) (*pb.Response, error) {
	ps, err := a.prekeyStore()
	if err != nil {
		return nil, err
	}
	reg, err := a.registeredDevice(ctx, dev)
	if err != nil {
		return nil, fmt.Errorf("upload prekeys: %w", err)
	}
	var put core.PrekeyUpload
	// Without an identity in the request, signatures are checked against
	// the registered Ed25519 key (the only part of an identity a prekey
	// signature involves); the store then refuses the upload unless it
	// already holds an identity for the device.
	owner := identity.Public{Sign: reg.IdentityKey}
	if len(req.GetIdentity()) > 0 {
		id, err := identity.ParsePublic(req.GetIdentity())
		if err != nil {
			return nil, cryptoErr("upload prekeys: identity", err)
		}
		if err := id.Verify(); err != nil {
			return nil, cryptoErr("upload prekeys: identity", err)
		}
		if subtle.ConstantTimeCompare(id.Sign, reg.IdentityKey) != 1 {
			return nil, fmt.Errorf("upload prekeys: identity is not the key %s registered with: %w", dev, core.ErrForbidden)
		}
		owner = id
		if put.Identity, err = id.MarshalBinary(); err != nil {
			return nil, cryptoErr("upload prekeys: identity", err)
		}
	}
	up := &prekey.Upload{}
	if len(req.GetUpload()) > 0 {
		if up, err = prekey.ParseUpload(req.GetUpload()); err != nil {
			return nil, cryptoErr("upload prekeys", err)
		}
	}
	if err := up.Verify(owner); err != nil {
		return nil, cryptoErr("upload prekeys", err)
	}
	if up.SignedPrekey != nil {
		put.SignedPrekey, _ = up.SignedPrekey.AppendBinary(nil)
	}
	if up.KEM != nil {
		if put.KEMPrekey, err = up.KEM.AppendBinary(nil); err != nil {
			return nil, cryptoErr("upload prekeys", err)
		}
	}
	for _, o := range up.OneTime {
		enc, _ := o.AppendBinary(nil)
		put.OneTime = append(put.OneTime, core.OneTimeKey{ID: o.ID, Key: enc})
	}
	if err := ps.PutPrekeys(ctx, dev, put); err != nil {
		if errors.Is(err, core.ErrNotFound) {
			return nil, fmt.Errorf("upload prekeys: the first upload must carry the identity: %w", core.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("upload prekeys %s: %w", dev, err)
	}
	n, err := ps.OneTimeCount(ctx, dev)
	if err != nil {
		return nil, fmt.Errorf("upload prekeys %s: %w", dev, err)
	}
	return &pb.Response{Body: &pb.Response_PrekeyStatus{PrekeyStatus: &pb.PrekeyStatus{
		OneTimeRemaining: uint32(n), Low: n < a.r.cfg.PrekeyLowWater,
	}}}, nil
}

// PrekeyFetchLimits bound how many one-time prekeys bundle fetches take
// (see the comment at the top of this file). Zero values get the defaults.
type PrekeyFetchLimits struct {
	// PairBurst one-time prekeys one requesting device may take from one
	// target device, refilled at PairPerHour (defaults 5 and 6 per hour).
	// An honest device takes one per session it starts with the target,
	// and starts another only after losing its session state.
	PairBurst   int
	PairPerHour float64
	// TargetBurst one-time prekeys all requesters together may take from
	// one device, refilled at TargetPerHour (defaults 500 — everyone in
	// the largest group starting a session at once — and 600 per hour).
	TargetBurst   int
	TargetPerHour float64
	// MaxKeys bounds the entries of each of the two limiters (default
	// 100,000, about 100 bytes each).
	MaxKeys int
}

func (l *PrekeyFetchLimits) fill() {
	if l.PairBurst <= 0 {
		l.PairBurst = 5
	}
	if l.PairPerHour <= 0 {
		l.PairPerHour = 6
	}
	if l.TargetBurst <= 0 {
		l.TargetBurst = core.MaxGroupMembers
	}
	if l.TargetPerHour <= 0 {
		l.TargetPerHour = 600
	}
	if l.MaxKeys <= 0 {
		l.MaxKeys = 100_000
	}
}

// bundleLimiter holds the two fetch limiters of a region.
type bundleLimiter struct {
	pair, target *core.KeyedLimiter
	limited      atomic.Uint64 // fetches answered without a one-time prekey because of a limit
}

func newBundleLimiter(l PrekeyFetchLimits) *bundleLimiter {
	return &bundleLimiter{
		pair:   core.NewKeyedLimiter(l.PairPerHour/3600, l.PairBurst, l.MaxKeys),
		target: core.NewKeyedLimiter(l.TargetPerHour/3600, l.TargetBurst, l.MaxKeys),
	}
}

// allow charges one fetch of target by requester; false means the fetch
// must not take a one-time prekey.
func (b *bundleLimiter) allow(requester, target core.DeviceKey, now time.Time) bool {
	pairKey := requester.String() + ">" + target.String()
	if ok, _ := b.pair.Allow(pairKey, now, 1); !ok {
		b.limited.Add(1)
		return false
	}
	if ok, _ := b.target.Allow(target.String(), now, 1); !ok {
		b.pair.Refund(pairKey, 1)
		b.limited.Add(1)
		return false
	}
	return true
}

// bundlePeeker is the store capability fetch_bundle needs over the limit:
// the target's bundle without taking a one-time prekey (OneTime nil,
// Remaining the one-time prekeys left). Both stores implement it.
type bundlePeeker interface {
	PeekBundle(ctx context.Context, dev core.DeviceKey) (core.PrekeyBundle, error)
}

// PrekeyFetchesLimited counts bundle fetches answered without a one-time
// prekey because a PrekeyFetchLimits bucket was empty.
func (r *Region) PrekeyFetchesLimited() uint64 { return r.bundles.limited.Load() }

func (a *API) fetchBundle(ctx context.Context, requester core.DeviceKey, req *pb.FetchBundleRequest) (*pb.Response, error) {
	ps, err := a.prekeyStore()
	if err != nil {
		return nil, err
	}
	target := core.DeviceKey{User: req.GetUserId(), Device: req.GetDeviceId()}
	if !core.ValidUserID(target.User) || target.Device == 0 {
		return nil, fmt.Errorf("fetch bundle: bad device address: %w", core.ErrInvalidArgument)
	}
	// Only a registered device is charged: fetches of made-up devices must
	// not create (and so evict) limiter entries, or a requester could
	// reset a real target's buckets by flooding the limiter's LRU.
	devs, err := a.r.devices.devices(ctx, a.r.store, target.User)
	if err != nil {
		return nil, fmt.Errorf("fetch bundle %s: %w", target, err)
	}
	if !slices.ContainsFunc(devs, func(d core.Device) bool { return d.Key == target }) {
		return nil, fmt.Errorf("fetch bundle %s: %w", target, core.ErrNotFound)
	}
	var sb core.PrekeyBundle
	if a.r.bundles.allow(requester, target, a.r.cfg.Now()) {
		sb, err = ps.TakeBundle(ctx, target)
	} else if peek, ok := ps.(bundlePeeker); ok {
		sb, err = peek.PeekBundle(ctx, target)
	} else {
		return &pb.Response{Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
			Detail: "too many bundle fetches of this device", RetryAfterMs: 60_000}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fetch bundle %s: %w", target, err)
	}
	// From here on a one-time prekey may be consumed: push first, so a
	// failure below still tells the device its supply shrank.
	if sb.OneTime != nil && lowPush(sb.Remaining, a.r.cfg.PrekeyLowWater) {
		a.pushPrekeyStatus(ctx, target, sb.Remaining)
	}
	b, err := assembleBundle(sb)
	if err != nil {
		// Only verified parts are stored, so this is corruption.
		a.r.log.Error("stored prekey bundle does not verify", "device", target.String(), "err", err)
		return nil, fmt.Errorf("fetch bundle %s: stored bundle unusable", target)
	}
	enc, err := b.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("fetch bundle %s: encode: %w", target, err)
	}
	return &pb.Response{Body: &pb.Response_Bundle{Bundle: &pb.BundleResponse{
		Bundle: enc, OneTimeRemaining: uint32(sb.Remaining),
	}}}, nil
}

// lowPush reports whether a take that left remaining one-time prekeys
// should tell the device (see the comment at the top of this file).
func lowPush(remaining, low int) bool {
	if remaining >= low {
		return false
	}
	return remaining == low-1 || remaining%max(1, low/4) == 0
}

// pushPrekeyStatus sends PrekeyStatus{low} to the online sessions of dev.
// Best effort: errors are logged, the fetch still succeeds.
func (a *API) pushPrekeyStatus(ctx context.Context, dev core.DeviceKey, remaining int) {
	routes, err := a.r.store.Routes(ctx, []string{dev.User})
	if err != nil {
		a.r.log.Warn("prekey status push: routes", "device", dev.String(), "err", err)
		return
	}
	mine := routes[:0:0]
	for _, rt := range routes {
		if rt.Device == dev {
			mine = append(mine, rt)
		}
	}
	frame := &pb.ServerFrame{Body: &pb.ServerFrame_PrekeyStatus{PrekeyStatus: &pb.PrekeyStatus{
		OneTimeRemaining: uint32(remaining), Low: true,
	}}}
	recs, err := a.r.perEdge(mine, frame)
	if err == nil {
		err = a.r.produceNow(ctx, recs...)
	}
	if err != nil {
		a.r.log.Warn("prekey status push", "device", dev.String(), "err", err)
	}
}

// assembleBundle parses the stored parts (each a crypto/prekey encoding)
// with crypto/prekey's own decoder, builds the Bundle and verifies it.
func assembleBundle(sb core.PrekeyBundle) (*prekey.Bundle, error) {
	id, err := identity.ParsePublic(sb.Identity)
	if err != nil {
		return nil, err
	}
	// The stored parts laid out as an Upload encoding: version || flags
	// (signed, KEM) || signed prekey || KEM prekey || n(2) || one-time.
	hdr, err := (&prekey.Upload{}).MarshalBinary() // version || 0 || 0 0
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 2+len(sb.SignedPrekey)+len(sb.KEMPrekey)+2+prekey.OneTimePrekeySize)
	buf = append(buf, hdr[0], 1|2)
	buf = append(buf, sb.SignedPrekey...)
	buf = append(buf, sb.KEMPrekey...)
	if sb.OneTime != nil {
		buf = binary.BigEndian.AppendUint16(buf, 1)
		buf = append(buf, sb.OneTime.Key...)
	} else {
		buf = binary.BigEndian.AppendUint16(buf, 0)
	}
	up, err := prekey.ParseUpload(buf)
	if err != nil {
		return nil, err
	}
	if up.SignedPrekey == nil || up.KEM == nil {
		return nil, fmt.Errorf("%w: stored parts incomplete", prekey.ErrMalformed)
	}
	b := &prekey.Bundle{Identity: id, SignedPrekey: *up.SignedPrekey, KEM: up.KEM}
	if sb.OneTime != nil {
		if len(up.OneTime) != 1 || up.OneTime[0].ID != sb.OneTime.ID {
			return nil, fmt.Errorf("%w: one-time prekey id mismatch", prekey.ErrMalformed)
		}
		b.OneTime = &up.OneTime[0]
	}
	if err := b.Verify(); err != nil {
		return nil, err
	}
	return b, nil
}

func (a *API) publishDeviceList(ctx context.Context, dev core.DeviceKey, req *pb.PublishDeviceListRequest) (*pb.Response, error) {
	ps, err := a.prekeyStore()
	if err != nil {
		return nil, err
	}
	l, err := identity.ParseDeviceList(req.GetDeviceList())
	if err != nil {
		return nil, cryptoErr("publish device list", err)
	}
	if l.UserID != dev.User {
		return nil, fmt.Errorf("publish device list: list is for another user: %w", core.ErrForbidden)
	}
	if l.Version == 0 {
		return nil, fmt.Errorf("publish device list: versions start at 1: %w", core.ErrInvalidArgument)
	}
	// The list's own verification: against the stored list when there is
	// one (newer, signed by a device of it), else by a device in the list.
	var trusted *identity.DeviceList
	if _, stored, err := ps.DeviceList(ctx, dev.User); err == nil {
		if trusted, err = identity.ParseDeviceList(stored); err != nil {
			a.r.log.Error("stored device list does not decode", "user", dev.User, "err", err)
			return nil, fmt.Errorf("publish device list %s: stored list unusable", dev.User)
		}
	} else if !errors.Is(err, core.ErrNotFound) {
		return nil, fmt.Errorf("publish device list %s: %w", dev.User, err)
	}
	if err := l.VerifyUpdate(trusted); err != nil {
		return nil, cryptoErr("publish device list", err)
	}
	// Every listed device and the signer (who may have left the new list)
	// is a registered device of the user with the same keys.
	devs, err := a.r.store.Devices(ctx, dev.User)
	if err != nil {
		return nil, fmt.Errorf("publish device list %s: %w", dev.User, err)
	}
	reg := make(map[uint32]core.Device, len(devs))
	for _, d := range devs {
		reg[d.Key.Device] = d
	}
	signers := l
	if trusted != nil {
		signers = trusted
	}
	signer, err := signers.Device(l.SignerID)
	if err != nil {
		return nil, cryptoErr("publish device list", err)
	}
	for _, d := range append([]identity.Device{signer}, l.Devices...) {
		r, ok := reg[d.ID]
		if !ok || subtle.ConstantTimeCompare(d.Identity.Sign, r.IdentityKey) != 1 ||
			subtle.ConstantTimeCompare(d.NoiseStatic[:], r.NoiseStatic) != 1 {
			return nil, fmt.Errorf("publish device list: device %d does not match a registered device of %s: %w", d.ID, dev.User, core.ErrForbidden)
		}
	}
	enc, err := l.MarshalBinary()
	if err != nil {
		return nil, cryptoErr("publish device list", err)
	}
	if err := ps.PutDeviceList(ctx, dev.User, l.Version, enc); err != nil {
		return nil, fmt.Errorf("publish device list %s v%d: %w", dev.User, l.Version, err)
	}
	return &pb.Response{Body: &pb.Response_DeviceList{DeviceList: &pb.DeviceListResponse{Version: l.Version, DeviceList: enc}}}, nil
}

func (a *API) fetchDeviceList(ctx context.Context, req *pb.FetchDeviceListRequest) (*pb.Response, error) {
	ps, err := a.prekeyStore()
	if err != nil {
		return nil, err
	}
	user := req.GetUserId()
	if !core.ValidUserID(user) {
		return nil, fmt.Errorf("fetch device list: bad user id: %w", core.ErrInvalidArgument)
	}
	v, list, err := ps.DeviceList(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("fetch device list %s: %w", user, err)
	}
	return &pb.Response{Body: &pb.Response_DeviceList{DeviceList: &pb.DeviceListResponse{Version: v, DeviceList: list}}}, nil
}
