package region_test

import (
	"crypto/rand"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/region"
)

// e2eDevice is a registered device with a real crypto/identity.
type e2eDevice struct {
	key    core.DeviceKey
	id     *identity.Private
	static [32]byte
}

// registerE2E registers a device of user with a fresh identity; linkedBy
// (nil for the first device) signs the link. With session != 0 the device
// is online at the harness edge.
func (h *harness) registerE2E(user string, session uint64, linkedBy *e2eDevice) *e2eDevice {
	h.t.Helper()
	id, err := identity.Generate(nil)
	if err != nil {
		h.t.Fatal(err)
	}
	d := &e2eDevice{id: id}
	rand.Read(d.static[:])
	req := &pb.RegisterRequest{UserId: user, IdentityKey: id.Public().Sign,
		IdentityProof: id.Sign(core.RegisterProofMessage(user, d.static[:]))}
	if linkedBy != nil {
		req.LinkedByDevice = linkedBy.key.Device
		req.LinkSignature = linkedBy.id.SignLink(user, d.static[:], req.IdentityKey)
	}
	resp, err := h.api.Register(h.ctx, d.static[:], req)
	if err != nil {
		h.t.Fatalf("register %s: %v", user, err)
	}
	d.key = core.KeyOf(resp.GetDevice())
	if session != 0 {
		if err := h.api.SessionOpened(h.ctx, core.Route{Device: d.key, Edge: h.edge, Session: session, SinceMs: 1}); err != nil {
			h.t.Fatal(err)
		}
	}
	return d
}

func (h *harness) query(dev core.DeviceKey, f *pb.ClientFrame) *pb.Response {
	h.t.Helper()
	resp, err := h.api.Query(h.ctx, dev, f)
	if err != nil {
		h.t.Fatalf("query: %v", err)
	}
	return resp
}

// prekeySet is what a device generated: the public upload and the key pairs.
type prekeySet struct {
	spk  *prekey.SignedPrekeyPair
	kem  *prekey.KEMPrekeyPair
	otks []prekey.OneTimePrekeyPair
}

func newPrekeys(t *testing.T, signer *identity.Private, firstOTK uint32, n int) prekeySet {
	t.Helper()
	spk, err := prekey.NewSignedPrekey(signer, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	kem, err := prekey.NewKEMPrekey(signer, 1)
	if err != nil {
		t.Fatal(err)
	}
	otks, err := prekey.NewOneTimePrekeys(firstOTK, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	return prekeySet{spk, kem, otks}
}

func (p prekeySet) upload(t *testing.T, withSigned bool) []byte {
	t.Helper()
	up := &prekey.Upload{}
	if withSigned {
		up.SignedPrekey, up.KEM = &p.spk.SignedPrekey, &p.kem.KEMPrekey
	}
	for _, o := range p.otks {
		up.OneTime = append(up.OneTime, o.OneTimePrekey)
	}
	b, err := up.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func identityBytes(t *testing.T, id *identity.Private) []byte {
	t.Helper()
	b, err := id.Public().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func uploadFrame(identity, upload []byte) *pb.ClientFrame {
	return &pb.ClientFrame{ReqId: 1, Body: &pb.ClientFrame_UploadPrekeys{UploadPrekeys: &pb.UploadPrekeysRequest{Identity: identity, Upload: upload}}}
}

func fetchFrame(dev core.DeviceKey) *pb.ClientFrame {
	return &pb.ClientFrame{ReqId: 2, Body: &pb.ClientFrame_FetchBundle{FetchBundle: &pb.FetchBundleRequest{UserId: dev.User, DeviceId: dev.Device}}}
}

func wantCode(t *testing.T, what string, resp *pb.Response, code pb.ErrorCode) {
	t.Helper()
	if got := resp.GetError().GetCode(); got != code {
		t.Fatalf("%s: code %v (%q), want %v", what, got, resp.GetError().GetDetail(), code)
	}
}

// fetch fetches target's bundle as dev and checks it the way a sender does.
func (h *harness) fetch(dev, target *e2eDevice) (*prekey.Bundle, uint32) {
	h.t.Helper()
	resp := h.query(dev.key, fetchFrame(target.key))
	if resp.GetError() != nil {
		h.t.Fatalf("fetch bundle of %s: %v", target.key, resp.GetError())
	}
	b, err := prekey.ParseBundle(resp.GetBundle().GetBundle())
	if err != nil {
		h.t.Fatalf("bundle of %s does not parse: %v", target.key, err)
	}
	if err := b.Verify(); err != nil {
		h.t.Fatalf("bundle of %s does not verify: %v", target.key, err)
	}
	if !b.Identity.Equal(target.id.Public()) {
		h.t.Fatalf("bundle of %s carries another identity", target.key)
	}
	return b, resp.GetBundle().GetOneTimeRemaining()
}

func TestPrekeyUploadAndFetch(t *testing.T) {
	h := newHarness(t)
	alice := h.registerE2E("alice", 1, nil)
	bob := h.registerE2E("bob", 2, nil)
	keys := newPrekeys(t, alice.id, 1, 30)
	resp := h.query(alice.key, uploadFrame(identityBytes(t, alice.id), keys.upload(t, true)))
	if st := resp.GetPrekeyStatus(); resp.GetError() != nil || st.GetOneTimeRemaining() != 30 || st.GetLow() || resp.GetReqId() != 1 {
		t.Fatalf("upload: %v", resp)
	}
	b, remaining := h.fetch(bob, alice)
	if remaining != 29 || b.OneTime == nil || b.OneTime.ID != 1 || b.OneTime.Public != keys.otks[0].Public {
		t.Fatalf("first bundle: one-time %+v remaining %d", b.OneTime, remaining)
	}
	if b.SignedPrekey != keys.spk.SignedPrekey || string(b.KEM.Public) != string(keys.kem.Public) {
		t.Fatal("bundle's signed or KEM prekey differs from the upload")
	}
	// A replenish without identity (the stored one is kept) and a new signed prekey.
	more := newPrekeys(t, alice.id, 31, 5)
	spk2, err := prekey.NewSignedPrekey(alice.id, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	up := &prekey.Upload{SignedPrekey: &spk2.SignedPrekey}
	for _, o := range more.otks {
		up.OneTime = append(up.OneTime, o.OneTimePrekey)
	}
	raw, _ := up.MarshalBinary()
	resp = h.query(alice.key, uploadFrame(nil, raw))
	if resp.GetPrekeyStatus().GetOneTimeRemaining() != 34 {
		t.Fatalf("replenish: %v", resp)
	}
	b, _ = h.fetch(bob, alice)
	if b.SignedPrekey.ID != 2 || b.OneTime.ID != 2 || string(b.KEM.Public) != string(keys.kem.Public) {
		t.Fatalf("after replenish: signed prekey %d one-time %d", b.SignedPrekey.ID, b.OneTime.ID)
	}
	// Bad addresses and devices without prekeys.
	wantCode(t, "fetch of a device without prekeys", h.query(alice.key, fetchFrame(bob.key)), pb.ErrorCode_ERROR_CODE_NOT_FOUND)
	wantCode(t, "fetch of device 0", h.query(bob.key, fetchFrame(core.DeviceKey{User: "alice"})), pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	wantCode(t, "fetch of a bad user id", h.query(bob.key, fetchFrame(core.DeviceKey{User: "Alice!", Device: 1})), pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
}

// TestPrekeyUploadRejected: every bad upload gets a typed code and stores nothing.
func TestPrekeyUploadRejected(t *testing.T) {
	h := newHarness(t)
	alice := h.registerE2E("alice", 1, nil)
	bob := h.registerE2E("bob", 2, nil)
	mallory, err := identity.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	good := newPrekeys(t, alice.id, 1, 10)
	forged := newPrekeys(t, mallory, 1, 10)
	tampered := good.upload(t, true)
	tampered[2+4+32] ^= 1 // first byte of the signed prekey's signature

	aliceID := identityBytes(t, alice.id)
	cases := []struct {
		name     string
		identity []byte
		upload   []byte
		code     pb.ErrorCode
	}{
		{"prekeys signed by another identity", aliceID, forged.upload(t, true), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"another identity than the registered one", identityBytes(t, mallory), forged.upload(t, true), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"another device's identity", identityBytes(t, bob.id), good.upload(t, true), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"tampered signature", aliceID, tampered, pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"first upload without identity", nil, good.upload(t, true), pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"identity that does not decode", aliceID[:50], good.upload(t, true), pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"upload that does not decode", aliceID, []byte{1, 3, 0}, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"upload with trailing bytes", aliceID, append(good.upload(t, true), 0), pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
	}
	for _, c := range cases {
		wantCode(t, c.name, h.query(alice.key, uploadFrame(c.identity, c.upload)), c.code)
	}
	ps := h.store.(core.PrekeyStore)
	if _, err := ps.TakeBundle(h.ctx, alice.key); core.Code(err) != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("after refused uploads the store has a bundle: %v", err)
	}
	if n, err := ps.OneTimeCount(h.ctx, alice.key); n != 0 || err != nil {
		t.Fatalf("after refused uploads the store has %d one-time keys (%v)", n, err)
	}
	wantCode(t, "fetch after refused uploads", h.query(bob.key, fetchFrame(alice.key)), pb.ErrorCode_ERROR_CODE_NOT_FOUND)

	// Accepted, then a bad replenish changes nothing.
	if resp := h.query(alice.key, uploadFrame(aliceID, good.upload(t, true))); resp.GetError() != nil {
		t.Fatal(resp.GetError())
	}
	badSPK, _ := prekey.NewSignedPrekey(mallory, 9, nil)
	up := &prekey.Upload{SignedPrekey: &badSPK.SignedPrekey, OneTime: []prekey.OneTimePrekey{forged.otks[0].OneTimePrekey}}
	up.OneTime[0].ID = 99
	raw, _ := up.MarshalBinary()
	wantCode(t, "replenish with a forged signed prekey", h.query(alice.key, uploadFrame(nil, raw)), pb.ErrorCode_ERROR_CODE_FORBIDDEN)
	if n, _ := ps.OneTimeCount(h.ctx, alice.key); n != 10 {
		t.Fatalf("refused replenish changed the one-time count to %d", n)
	}
	b, _ := h.fetch(bob, alice)
	if b.SignedPrekey.ID != 1 {
		t.Fatalf("refused replenish replaced the signed prekey (id %d)", b.SignedPrekey.ID)
	}
}

// TestPrekeyExhaustionAndLowPush drains a device's one-time prekeys: every
// fetch verifies, the remaining count falls to zero, bundles keep coming
// without a one-time key, the device is pushed PrekeyStatus{low} at the
// documented points only, and a replenish restores the supply.
func TestPrekeyExhaustionAndLowPush(t *testing.T) {
	h := newHarness(t, noFetchLimits)
	alice := h.registerE2E("alice", 1, nil)
	bob := h.registerE2E("bob", 2, nil)
	keys := newPrekeys(t, alice.id, 1, 25)
	if resp := h.query(alice.key, uploadFrame(identityBytes(t, alice.id), keys.upload(t, true))); resp.GetError() != nil {
		t.Fatal(resp.GetError())
	}
	for i := 0; i < 25; i++ {
		b, remaining := h.fetch(bob, alice)
		if b.OneTime == nil || b.OneTime.ID != uint32(i+1) || remaining != uint32(24-i) {
			t.Fatalf("fetch %d: one-time %+v remaining %d", i, b.OneTime, remaining)
		}
	}
	for i := 0; i < 3; i++ {
		b, remaining := h.fetch(bob, alice)
		if b.OneTime != nil || remaining != 0 {
			t.Fatalf("exhausted fetch %d: one-time %+v remaining %d", i, b.OneTime, remaining)
		}
	}
	// A message to alice after the fetches is delivered after every push
	// (one edge topic partition), so once it is there all pushes are too.
	conv := core.DirectConvID("alice", "bob")
	h.send(bob.key, 2, 1, conv, "after-fetches", "x")
	recs := h.waitFor("delivery after the pushes", func(recs []*pb.EdgeRecord) bool {
		return len(deliveries(recs, conv)[alice.key]) > 0
	})
	var pushed []uint32
	for _, r := range recs {
		st := r.GetFrame().GetPrekeyStatus()
		if st == nil {
			continue
		}
		if len(r.GetTargets()) != 1 || core.KeyOf(r.GetTargets()[0]) != alice.key || !st.GetLow() {
			t.Fatalf("prekey status push %v to %v", st, r.GetTargets())
		}
		pushed = append(pushed, st.GetOneTimeRemaining())
	}
	if want := []uint32{19, 15, 10, 5, 0}; !slices.Equal(pushed, want) {
		t.Fatalf("pushes at remaining %v, want %v", pushed, want)
	}
	// Replenish: the status says not low, and fetches get the new keys.
	more := newPrekeys(t, alice.id, 26, 30)
	resp := h.query(alice.key, uploadFrame(nil, more.upload(t, false)))
	if st := resp.GetPrekeyStatus(); st.GetOneTimeRemaining() != 30 || st.GetLow() {
		t.Fatalf("replenish status %v (%v)", st, resp.GetError())
	}
	// Consumed ids uploaded again are ignored.
	resp = h.query(alice.key, uploadFrame(nil, keys.upload(t, false)))
	if st := resp.GetPrekeyStatus(); st.GetOneTimeRemaining() != 30 {
		t.Fatalf("re-upload of consumed ids: status %v", st)
	}
	if b, remaining := h.fetch(bob, alice); b.OneTime.ID != 26 || remaining != 29 {
		t.Fatalf("after replenish: one-time %d remaining %d", b.OneTime.ID, remaining)
	}
}

// TestPrekeyConcurrentFetch: senders racing for one device's bundles never
// share a one-time prekey, and each key is handed out once.
func TestPrekeyConcurrentFetch(t *testing.T) {
	h := newHarness(t, noFetchLimits)
	alice := h.registerE2E("alice", 0, nil)
	const keys, senders = 40, 8
	pk := newPrekeys(t, alice.id, 1, keys)
	if resp := h.query(alice.key, uploadFrame(identityBytes(t, alice.id), pk.upload(t, true))); resp.GetError() != nil {
		t.Fatal(resp.GetError())
	}
	fetchers := make([]*e2eDevice, senders)
	for i := range fetchers {
		fetchers[i] = h.registerE2E(fmt.Sprintf("sender%d", i), 0, nil)
	}
	var mu sync.Mutex
	got := map[uint32]int{}
	exhausted := 0
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, f := range fetchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i <= keys; i++ { // bounded
				resp, err := h.api.Query(h.ctx, f.key, fetchFrame(alice.key))
				if err != nil || resp.GetError() != nil {
					t.Errorf("fetch: %v %v", err, resp.GetError())
					return
				}
				b, err := prekey.ParseBundle(resp.GetBundle().GetBundle())
				if err == nil {
					err = b.Verify()
				}
				if err != nil {
					t.Errorf("bundle: %v", err)
					return
				}
				mu.Lock()
				if b.OneTime == nil {
					exhausted++
					mu.Unlock()
					return
				}
				got[b.OneTime.ID]++
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("one-time prekey %d handed out %d times", id, n)
		}
	}
	if len(got) != keys || exhausted != senders {
		t.Fatalf("%d distinct keys handed out (want %d), %d senders saw exhaustion (want %d)", len(got), keys, exhausted, senders)
	}
}

// noFetchLimits lifts the bundle fetch limits for tests that drain a
// device on purpose.
func noFetchLimits(c *region.Config) {
	c.PrekeyFetch.PairBurst, c.PrekeyFetch.TargetBurst = 1_000_000, 1_000_000
}

// TestPrekeyDrainLimited: a stranger hammering an online victim's bundle
// takes at most PairBurst one-time prekeys — every further fetch still
// gets a verifying bundle, without a one-time prekey — and the victim's
// honest contacts still get one-time prekeys afterwards. Many strangers
// together take at most TargetBurst; a stranger refused by the target
// limit is not charged for it.
func TestPrekeyDrainLimited(t *testing.T) {
	const pairBurst, targetBurst = 5, 12
	h := newHarness(t, func(c *region.Config) {
		c.PrekeyFetch.PairBurst, c.PrekeyFetch.TargetBurst = pairBurst, targetBurst
	})
	victim := h.registerE2E("victim", 1, nil)
	keys := newPrekeys(t, victim.id, 1, 100)
	if resp := h.query(victim.key, uploadFrame(identityBytes(t, victim.id), keys.upload(t, true))); resp.GetError() != nil {
		t.Fatal(resp.GetError())
	}
	mallory := h.registerE2E("mallory", 0, nil)
	took := 0
	for i := 0; i < 200; i++ { // bounded hammering
		b, remaining := h.fetch(mallory, victim)
		if b.OneTime != nil {
			took++
		} else if remaining != uint32(100-took) {
			t.Fatalf("limited fetch %d reports %d remaining, want %d", i, remaining, 100-took)
		}
	}
	if took != pairBurst {
		t.Fatalf("the stranger took %d one-time prekeys, want at most %d", took, pairBurst)
	}
	for _, name := range []string{"bob", "carol"} {
		c := h.registerE2E(name, 0, nil)
		if b, _ := h.fetch(c, victim); b.OneTime == nil {
			t.Fatalf("honest contact %s got no one-time prekey after the stranger's attack", name)
		}
	}
	// Sybils: the target's bucket (12) has 12-5-2 = 5 left; the two
	// sybils together take those and nothing more.
	s1, s2 := h.registerE2E("sybil1", 0, nil), h.registerE2E("sybil2", 0, nil)
	for i := 0; i < 10; i++ {
		h.fetch(s1, victim)
		h.fetch(s2, victim)
	}
	ps := h.store.(core.PrekeyStore)
	if n, err := ps.OneTimeCount(h.ctx, victim.key); err != nil || n != 100-targetBurst {
		t.Fatalf("victim has %d one-time prekeys left (%v), want %d", n, err, 100-targetBurst)
	}
	if got := h.reg.PrekeyFetchesLimited(); got == 0 {
		t.Fatal("limited fetches not counted")
	}
}

func publishFrame(list []byte) *pb.ClientFrame {
	return &pb.ClientFrame{ReqId: 3, Body: &pb.ClientFrame_PublishDeviceList{PublishDeviceList: &pb.PublishDeviceListRequest{DeviceList: list}}}
}

func fetchListFrame(user string) *pb.ClientFrame {
	return &pb.ClientFrame{ReqId: 4, Body: &pb.ClientFrame_FetchDeviceList{FetchDeviceList: &pb.FetchDeviceListRequest{UserId: user}}}
}

// signedList builds and signs a device list.
func signedList(t *testing.T, user string, version uint64, signerID uint32, signer *identity.Private, devs ...*e2eDevice) []byte {
	t.Helper()
	l := &identity.DeviceList{UserID: user, Version: version}
	for _, d := range devs {
		l.Devices = append(l.Devices, identity.Device{ID: d.key.Device, Identity: d.id.Public(), NoiseStatic: d.static})
	}
	if err := l.Sign(signerID, signer); err != nil {
		t.Fatal(err)
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDeviceListPublish(t *testing.T) {
	h := newHarness(t)
	a1 := h.registerE2E("alice", 1, nil)
	a2 := h.registerE2E("alice", 0, a1)
	bob := h.registerE2E("bob", 2, nil)
	if a2.key.Device != 2 {
		t.Fatalf("linked device got %s", a2.key)
	}
	v1 := signedList(t, "alice", 1, 1, a1.id, a1, a2)
	resp := h.query(a1.key, publishFrame(v1))
	if resp.GetError() != nil || resp.GetDeviceList().GetVersion() != 1 {
		t.Fatalf("publish v1: %v", resp)
	}
	resp = h.query(bob.key, fetchListFrame("alice"))
	if resp.GetDeviceList().GetVersion() != 1 || string(resp.GetDeviceList().GetDeviceList()) != string(v1) {
		t.Fatalf("fetch v1: %v", resp)
	}
	wantCode(t, "replay of v1", h.query(a1.key, publishFrame(v1)), pb.ErrorCode_ERROR_CODE_ALREADY_EXISTS)
	wantCode(t, "another v1", h.query(a1.key, publishFrame(signedList(t, "alice", 1, 1, a1.id, a1))), pb.ErrorCode_ERROR_CODE_ALREADY_EXISTS)
	// v2 by the other device (a device of the stored list), published from device 2.
	v2 := signedList(t, "alice", 2, 2, a2.id, a1, a2)
	if resp := h.query(a2.key, publishFrame(v2)); resp.GetError() != nil {
		t.Fatalf("publish v2: %v", resp.GetError())
	}
	wantCode(t, "stale v1 after v2", h.query(a1.key, publishFrame(v1)), pb.ErrorCode_ERROR_CODE_ALREADY_EXISTS)

	mallory, _ := identity.Generate(nil)
	fake := &e2eDevice{key: core.DeviceKey{User: "alice", Device: 3}, id: mallory}
	rand.Read(fake.static[:])
	wrongStatic := *a2
	wrongStatic.static[0] ^= 1
	cases := []struct {
		name string
		from core.DeviceKey
		list []byte
		code pb.ErrorCode
	}{
		{"signed by a key that is not device 1's", a1.key, signedList(t, "alice", 3, 1, mallory, a1, a2), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"signer not in the stored list", a1.key, signedList(t, "alice", 3, 3, mallory, a1, a2, fake), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"names an unregistered device", a1.key, signedList(t, "alice", 3, 1, a1.id, a1, a2, fake), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"wrong noise static for device 2", a1.key, signedList(t, "alice", 3, 1, a1.id, a1, &wrongStatic), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"published by another user", bob.key, signedList(t, "alice", 3, 1, a1.id, a1, a2), pb.ErrorCode_ERROR_CODE_FORBIDDEN},
		{"does not decode", a1.key, v2[:40], pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
		{"version 0", a1.key, signedList(t, "alice", 0, 1, a1.id, a1, a2), pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
	}
	for _, c := range cases {
		wantCode(t, c.name, h.query(c.from, publishFrame(c.list)), c.code)
	}
	resp = h.query(bob.key, fetchListFrame("alice"))
	if resp.GetDeviceList().GetVersion() != 2 || string(resp.GetDeviceList().GetDeviceList()) != string(v2) {
		t.Fatalf("after refused publishes: v%d", resp.GetDeviceList().GetVersion())
	}
	// First publish (trust on first use): the signer must be in the list
	// and the list's keys must be the registered ones.
	carol := h.registerE2E("carol", 0, nil)
	impostor := &e2eDevice{key: carol.key, id: mallory, static: carol.static}
	wantCode(t, "first list with a key carol did not register", h.query(carol.key, publishFrame(signedList(t, "carol", 1, 1, mallory, impostor))), pb.ErrorCode_ERROR_CODE_FORBIDDEN)
	wantCode(t, "first list signed by a device not in it", h.query(carol.key, publishFrame(signedList(t, "carol", 1, 2, mallory, carol))), pb.ErrorCode_ERROR_CODE_FORBIDDEN)
	wantCode(t, "fetch before carol's first list", h.query(bob.key, fetchListFrame("carol")), pb.ErrorCode_ERROR_CODE_NOT_FOUND)
	if resp := h.query(carol.key, publishFrame(signedList(t, "carol", 5, 1, carol.id, carol))); resp.GetError() != nil {
		t.Fatalf("carol's first list at v5: %v", resp.GetError())
	}
	wantCode(t, "fetch with a bad user id", h.query(bob.key, fetchListFrame("")), pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	wantCode(t, "fetch of a user without a list", h.query(bob.key, fetchListFrame("nobody")), pb.ErrorCode_ERROR_CODE_NOT_FOUND)
}

// TestLinkMessageMatchesIdentity: the link a client signs with
// crypto/identity is the one the region checks on registration.
func TestLinkMessageMatchesIdentity(t *testing.T) {
	static, key := make([]byte, 32), make([]byte, 32)
	rand.Read(static)
	rand.Read(key)
	if string(region.LinkMessage("dana", static, key)) != string(identity.LinkMessage("dana", static, key)) {
		t.Fatal("region.LinkMessage and identity.LinkMessage differ")
	}
}
