package e2ee

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sync"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/senderkey"
)

// testKeyDirectory is a tiny in-test stand-in for the region's prekey and
// device-list endpoints (region/prekeys.go implements the real ones): it
// verifies uploads like the region, hands out each one-time prekey at most
// once, and keeps device lists newer-version-only. Its hooks let a test
// play a malicious server.
type testKeyDirectory struct {
	mu      sync.Mutex
	ids     map[core.DeviceKey]identity.Public
	spk     map[core.DeviceKey]prekey.SignedPrekey
	kem     map[core.DeviceKey]prekey.KEMPrekey
	otp     map[core.DeviceKey][]prekey.OneTimePrekey
	lists   map[string][]byte
	devs    map[string]map[uint32][]byte // registered devices (LookupUser)
	members map[string][]string
	served  map[core.DeviceKey]map[uint32]bool // one-time ids handed out, per identity

	swapBundle func(dev core.DeviceKey, b *prekey.Bundle) // malicious server
	fetches    int
}

func newTestKeyDirectory() *testKeyDirectory {
	return &testKeyDirectory{
		ids: map[core.DeviceKey]identity.Public{}, spk: map[core.DeviceKey]prekey.SignedPrekey{},
		kem: map[core.DeviceKey]prekey.KEMPrekey{}, otp: map[core.DeviceKey][]prekey.OneTimePrekey{},
		lists: map[string][]byte{}, devs: map[string]map[uint32][]byte{}, members: map[string][]string{},
		served: map[core.DeviceKey]map[uint32]bool{},
	}
}

// forDevice is the Directory as seen by one device's connection.
type dirConn struct {
	d    *testKeyDirectory
	self *core.DeviceKey
}

func (c dirConn) UploadPrekeys(_ context.Context, idb, ub []byte) (int, error) {
	d := c.d
	pub, err := identity.ParsePublic(idb)
	if err != nil {
		return 0, err
	}
	up, err := prekey.ParseUpload(ub)
	if err != nil {
		return 0, err
	}
	if err := up.Verify(pub); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	me := *c.self
	if old, ok := d.ids[me]; ok && !old.Equal(pub) {
		d.otp[me] = nil // a new identity (reinstall): old prekeys are void
		d.served[me] = nil
	}
	d.ids[me] = pub
	if up.SignedPrekey != nil {
		d.spk[me] = *up.SignedPrekey
	}
	if up.KEM != nil {
		d.kem[me] = *up.KEM
	}
	d.otp[me] = append(d.otp[me], up.OneTime...)
	return len(d.otp[me]), nil
}

func (c dirConn) FetchBundle(_ context.Context, dev core.DeviceKey) ([]byte, error) {
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fetches++
	id, ok := d.ids[dev]
	if !ok {
		return nil, fmt.Errorf("no bundle for %s", dev)
	}
	kem := d.kem[dev]
	b := &prekey.Bundle{Identity: id, SignedPrekey: d.spk[dev], KEM: &kem}
	if l := d.otp[dev]; len(l) > 0 {
		o := l[0]
		d.otp[dev] = l[1:]
		if d.served[dev] == nil {
			d.served[dev] = map[uint32]bool{}
		}
		if d.served[dev][o.ID] {
			panic("one-time prekey served twice")
		}
		d.served[dev][o.ID] = true
		b.OneTime = &o
	}
	if d.swapBundle != nil {
		d.swapBundle(dev, b)
	}
	return b.MarshalBinary()
}

func (c dirConn) PublishDeviceList(_ context.Context, raw []byte) error {
	l, err := identity.ParseDeviceList(raw)
	if err != nil {
		return err
	}
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	if old, ok := c.d.lists[l.UserID]; ok {
		ol, _ := identity.ParseDeviceList(old)
		if l.Version <= ol.Version {
			return errors.New("device list version not newer")
		}
	}
	c.d.lists[l.UserID] = raw
	return nil
}

func (c dirConn) FetchDeviceList(_ context.Context, user string) ([]byte, error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	return c.d.lists[user], nil
}

func (c dirConn) Devices(_ context.Context, user string) (map[uint32][]byte, error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	return maps.Clone(c.d.devs[user]), nil
}

func (c dirConn) GroupMembers(_ context.Context, conv string) ([]string, error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	m, ok := c.d.members[conv]
	if !ok {
		return nil, ErrNotMember
	}
	return slices.Clone(m), nil
}

// device is one test device with its sealer.
type device struct {
	t       *testing.T
	key     core.DeviceKey
	dir     string
	id      *identity.Private
	s       *Sealer
	changed []string
}

func (dv *device) open(d *testKeyDirectory) {
	dv.t.Helper()
	s, err := New(Config{Dir: dv.dir, Identity: dv.id, Directory: dirConn{d, &dv.key}, ListTTL: -1,
		Self:             func() (core.DeviceKey, bool) { return dv.key, dv.key.Device != 0 },
		OnIdentityChange: func(u string) { dv.changed = append(dv.changed, u) }})
	if err != nil {
		dv.t.Fatal(err)
	}
	dv.s = s
	dv.t.Cleanup(func() { _ = s.Close() })
}

// register makes a device: first device of user (publishes list v1) or,
// with linker, a linked one.
func register(t *testing.T, d *testKeyDirectory, key core.DeviceKey, linker *device) *device {
	t.Helper()
	id, err := identity.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	dv := &device{t: t, key: key, dir: t.TempDir(), id: id}
	dv.open(d)
	d.mu.Lock()
	if d.devs[key.User] == nil {
		d.devs[key.User] = map[uint32][]byte{}
	}
	d.devs[key.User][key.Device] = id.Public().Sign
	d.mu.Unlock()
	ctx := context.Background()
	if err := dv.s.EnsurePrekeys(ctx); err != nil {
		t.Fatal(err)
	}
	if linker == nil {
		if err := dv.s.PublishFirstDevice(ctx, make([]byte, 32)); err != nil {
			t.Fatal(err)
		}
	} else {
		if err := linker.s.AddLinkedDevice(id.Public(), make([]byte, 32)); err != nil {
			t.Fatal(err)
		}
		if err := linker.s.PublishLinks(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return dv
}

// testServer sequences sealed envelopes and hands each device what the
// real server would (core.ForDevice).
type testServer struct{ seq map[string]uint64 }

func (ts *testServer) sequence(conv string, from *device, clientID string, env *pb.Envelope) *pb.Message {
	if ts.seq == nil {
		ts.seq = map[string]uint64{}
	}
	ts.seq[conv]++
	return &pb.Message{ConvId: conv, Seq: ts.seq[conv], MsgId: ulid.Make().String(), Sender: from.key.Addr(),
		ClientMsgId: clientID, Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: env}
}

func send(t *testing.T, ts *testServer, from *device, conv string, body string) *pb.Message {
	t.Helper()
	id := ulid.Make().String()
	env, err := from.s.SealMessage(context.Background(), conv, id, []byte(body))
	if err != nil {
		t.Fatalf("seal by %s: %v", from.key, err)
	}
	if len(env.GetCiphertext()) > 0 && core.IsGroupID(conv) == false {
		t.Fatalf("1:1 envelope has shared ciphertext")
	}
	if bytes.Contains(mustMarshal(t, env), []byte(body)) {
		t.Fatalf("plaintext visible in the envelope")
	}
	return ts.sequence(conv, from, id, env)
}

func mustMarshal(t *testing.T, env *pb.Envelope) []byte {
	var b []byte
	b = append(b, env.GetCiphertext()...)
	for _, pd := range env.GetPerDevice() {
		b = append(b, pd.GetCiphertext()...)
	}
	return b
}

func open(t *testing.T, to *device, m *pb.Message) ([]byte, error) {
	t.Helper()
	return to.s.Open(context.Background(), core.ForDevice(m, to.key))
}

func mustOpen(t *testing.T, to *device, m *pb.Message, want string) {
	t.Helper()
	got, err := open(t, to, m)
	if err != nil {
		t.Fatalf("%s opens seq %d: %v", to.key, m.GetSeq(), err)
	}
	if string(got) != want {
		t.Fatalf("%s opened %q, want %q", to.key, got, want)
	}
}

func dk(u string, d uint32) core.DeviceKey { return core.DeviceKey{User: u, Device: d} }

func TestDirectConversation(t *testing.T) {
	d := newTestKeyDirectory()
	alice := register(t, d, dk("alice", 1), nil)
	bob := register(t, d, dk("bob", 1), nil)
	var ts testServer
	conv := core.DirectConvID("alice", "bob")

	m1 := send(t, &ts, alice, conv, "hello bob")
	if n := len(m1.GetEnvelope().GetPerDevice()); n != 1 {
		t.Fatalf("per-device entries = %d, want 1 (bob's only device)", n)
	}
	mustOpen(t, bob, m1, "hello bob")
	mustOpen(t, alice, m1, "hello bob") // own message: local copy
	// Opened again (after a restart of the dispatcher): same plaintext.
	mustOpen(t, bob, m1, "hello bob")

	// Before bob replies, alice's messages keep the handshake; all open.
	m2 := send(t, &ts, alice, conv, "second")
	m3 := send(t, &ts, alice, conv, "third")
	mustOpen(t, bob, m3, "third") // out of order
	mustOpen(t, bob, m2, "second")
	m4 := send(t, &ts, bob, conv, "hi alice")
	mustOpen(t, alice, m4, "hi alice")

	// A replay of m4's envelope under a new seq is rejected, and the
	// session continues.
	replay := ts.sequence(conv, bob, "x", m4.GetEnvelope())
	if _, err := open(t, alice, replay); err == nil {
		t.Fatal("replayed envelope opened")
	}
	// Tampered ciphertext is rejected, session continues.
	m5 := send(t, &ts, bob, conv, "fifth")
	tam := core.ForDevice(m5, alice.key)
	tam.Envelope.PerDevice[0] = &pb.DeviceCiphertext{Device: alice.key.Addr(), Ciphertext: bytes.Clone(tam.Envelope.PerDevice[0].Ciphertext)}
	tam.Envelope.PerDevice[0].Ciphertext[len(tam.Envelope.PerDevice[0].Ciphertext)-1] ^= 1
	tam.Seq = 99
	if _, err := alice.s.Open(context.Background(), tam); err == nil {
		t.Fatal("tampered ciphertext opened")
	}
	// A message whose claimed sender is wrong does not open (AD binds it).
	m6 := send(t, &ts, bob, conv, "sixth")
	forged := core.ForDevice(m6, alice.key)
	forged.Sender = dk("bob", 2).Addr()
	if _, err := alice.s.Open(context.Background(), forged); err == nil {
		t.Fatal("message with a forged sender opened")
	}
	// Injected garbage (plain and initial-looking) is rejected.
	for _, junk := range [][]byte{nil, []byte{1, 2, 3}, bytes.Repeat([]byte{0x50}, 1400), bytes.Repeat([]byte{0x01}, 120)} {
		inj := ts.sequence(conv, bob, "j", &pb.Envelope{PerDevice: []*pb.DeviceCiphertext{{Device: alice.key.Addr(), Ciphertext: junk}}})
		if _, err := open(t, alice, inj); err == nil {
			t.Fatalf("injected %d bytes opened", len(junk))
		}
	}
	mustOpen(t, alice, m5, "fifth")
	mustOpen(t, alice, m6, "sixth")

	// State survives a restart of both sealers.
	_ = alice.s.Close()
	_ = bob.s.Close()
	alice.open(d)
	bob.open(d)
	m7 := send(t, &ts, alice, conv, "after restart")
	mustOpen(t, bob, m7, "after restart")
	mustOpen(t, alice, m5, "fifth")
	if len(alice.changed)+len(bob.changed) != 0 {
		t.Fatalf("unexpected identity change events %v %v", alice.changed, bob.changed)
	}
}

func TestMultiDevice(t *testing.T) {
	d := newTestKeyDirectory()
	a1 := register(t, d, dk("alice", 1), nil)
	a2 := register(t, d, dk("alice", 2), a1)
	bob := register(t, d, dk("bob", 1), nil)
	b2 := register(t, d, dk("bob", 2), bob)
	var ts testServer
	conv := core.DirectConvID("alice", "bob")

	m := send(t, &ts, a1, conv, "from a1")
	var got []core.DeviceKey
	for _, pd := range m.GetEnvelope().GetPerDevice() {
		got = append(got, core.KeyOf(pd.GetDevice()))
	}
	want := []core.DeviceKey{a2.key, bob.key, b2.key}
	if !slices.Equal(got, want) {
		t.Fatalf("per-device entries %v, want %v", got, want)
	}
	mustOpen(t, bob, m, "from a1")
	mustOpen(t, b2, m, "from a1")
	mustOpen(t, a2, m, "from a1") // the sender's other device reads it
	r := send(t, &ts, b2, conv, "from b2")
	for _, dv := range []*device{a1, a2, bob} {
		mustOpen(t, dv, r, "from b2")
	}
	// An envelope without an entry for the device does not open.
	env := &pb.Envelope{PerDevice: m.GetEnvelope().GetPerDevice()[1:]}
	if _, err := open(t, a2, ts.sequence(conv, a1, "", env)); !errors.Is(err, ErrNotForDevice) {
		t.Fatalf("open for a device without entry: %v", err)
	}
}

func TestGroupRotationOnRemoval(t *testing.T) {
	d := newTestKeyDirectory()
	alice := register(t, d, dk("alice", 1), nil)
	bob := register(t, d, dk("bob", 1), nil)
	carol := register(t, d, dk("carol", 1), nil)
	var ts testServer
	g := "g:" + ulid.Make().String()
	d.members[g] = []string{"alice", "bob", "carol"}

	m1 := send(t, &ts, alice, g, "group one")
	if len(m1.GetEnvelope().GetCiphertext()) == 0 || len(m1.GetEnvelope().GetPerDevice()) != 2 {
		t.Fatal("first group message must carry the shared ciphertext and 2 distributions")
	}
	for _, dv := range []*device{bob, carol, alice} {
		mustOpen(t, dv, m1, "group one")
	}
	m2 := send(t, &ts, alice, g, "group two")
	if len(m2.GetEnvelope().GetPerDevice()) != 0 {
		t.Fatal("second group message should reuse the distributed sender key")
	}
	mustOpen(t, carol, m2, "group two")
	mustOpen(t, bob, m2, "group two")
	c1 := send(t, &ts, carol, g, "carol speaks")
	mustOpen(t, alice, c1, "carol speaks")
	mustOpen(t, bob, c1, "carol speaks")

	// carol is removed: alice rotates before her next send.
	d.mu.Lock()
	d.members[g] = []string{"alice", "bob"}
	d.mu.Unlock()
	m3 := send(t, &ts, alice, g, "without carol")
	if n := len(m3.GetEnvelope().GetPerDevice()); n != 1 {
		t.Fatalf("rotation should redistribute to bob only, got %d entries", n)
	}
	mustOpen(t, bob, m3, "without carol")
	// carol, even handed the full envelope, cannot read it.
	if _, err := carol.s.Open(context.Background(), m3); err == nil {
		t.Fatal("removed member read a message sent after her removal")
	} else if !errors.Is(err, senderkey.ErrUnknownKey) && !errors.Is(err, ErrNotForDevice) {
		t.Logf("carol's error: %v", err)
	}
}

func TestIdentityChangeBlocksSending(t *testing.T) {
	d := newTestKeyDirectory()
	alice := register(t, d, dk("alice", 1), nil)
	bob := register(t, d, dk("bob", 1), nil)
	var ts testServer
	conv := core.DirectConvID("alice", "bob")
	mustOpen(t, bob, send(t, &ts, alice, conv, "before"), "before")
	g := "g:" + ulid.Make().String()
	d.members[g] = []string{"alice", "bob"}
	mustOpen(t, bob, send(t, &ts, alice, g, "group before"), "group before")
	before, err := alice.s.SafetyNumber(context.Background(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := bob.s.SafetyNumber(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if before != theirs || !regexp.MustCompile(`^(\d{5} ){11}\d{5}$`).MatchString(before) {
		t.Fatalf("safety numbers differ or malformed: %q vs %q", before, theirs)
	}

	// bob reinstalls (or the server swaps him): a new identity and a new
	// list version 2 signed by the new device, which alice never trusted.
	id, _ := identity.Generate(nil)
	nb := &device{t: t, key: dk("bob", 1), dir: t.TempDir(), id: id}
	nb.open(d)
	if err := nb.s.EnsurePrekeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	l := &identity.DeviceList{UserID: "bob", Version: 2, Devices: []identity.Device{{ID: 1, Identity: id.Public()}}}
	if err := l.Sign(1, id); err != nil {
		t.Fatal(err)
	}
	raw, _ := l.MarshalBinary()
	d.mu.Lock()
	d.lists["bob"] = raw
	d.mu.Unlock()

	_, err = alice.s.SealMessage(context.Background(), conv, "x", []byte("blocked"))
	if !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("send after identity change: %v, want ErrIdentityChanged", err)
	}
	if !slices.Equal(alice.changed, []string{"bob"}) || !alice.s.IdentityChanged("bob") {
		t.Fatalf("identity change not announced: %v", alice.changed)
	}
	if _, err := alice.s.SealMessage(context.Background(), conv, "y", []byte("still")); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("second send: %v", err)
	}
	after, err := alice.s.SafetyNumber(context.Background(), "bob")
	if err != nil || after == before {
		t.Fatalf("safety number after change %q (err %v) should differ from %q", after, err, before)
	}
	if err := alice.s.TrustIdentity("bob"); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, nb, send(t, &ts, alice, conv, "after trust"), "after trust")
	// The group sender key is rotated and distributed to the new device.
	gm := send(t, &ts, alice, g, "group after trust")
	mustOpen(t, nb, gm, "group after trust")
	if _, err := open(t, bob, gm); err == nil {
		t.Fatal("the replaced device read a group message sent after the change")
	}
	// The old bob cannot read it.
	if _, err := open(t, bob, send(t, &ts, alice, conv, "again")); err == nil {
		t.Fatal("old identity read a message for the new one")
	}
}

func TestMaliciousBundle(t *testing.T) {
	d := newTestKeyDirectory()
	alice := register(t, d, dk("alice", 1), nil)
	register(t, d, dk("bob", 1), nil)
	mallory := register(t, d, dk("mallory", 1), nil)
	conv := core.DirectConvID("alice", "bob")
	ctx := context.Background()

	// The server swaps bob's bundle for mallory's (valid, signed by mallory).
	d.swapBundle = func(dev core.DeviceKey, b *prekey.Bundle) {
		if dev.User == "bob" {
			d.swapBundle = nil
			mb := *b
			mb.Identity = mallory.id.Public()
			mb.SignedPrekey = d.spk[mallory.key]
			k := d.kem[mallory.key]
			mb.KEM = &k
			mb.OneTime = nil
			*b = mb
		}
	}
	if _, err := alice.s.SealMessage(ctx, conv, "1", []byte("secret")); !errors.Is(err, ErrBadBundle) {
		t.Fatalf("swapped bundle: %v, want ErrBadBundle", err)
	}
	// The server drops the KEM prekey.
	d.swapBundle = func(dev core.DeviceKey, b *prekey.Bundle) { b.KEM = nil }
	if _, err := alice.s.SealMessage(ctx, conv, "2", []byte("secret")); !errors.Is(err, ErrBadBundle) || !errors.Is(err, prekey.ErrMissingKEM) {
		t.Fatalf("bundle without KEM: %v", err)
	}
	d.swapBundle = nil
	if _, err := alice.s.SealMessage(ctx, conv, "3", []byte("secret")); err != nil {
		t.Fatalf("honest bundle: %v", err)
	}
	// A rolled-back device list is ignored (alice keeps the trusted one).
	if len(alice.changed) != 0 {
		t.Fatalf("no identity change expected, got %v", alice.changed)
	}
}

func TestPrekeyExhaustionAndReplenish(t *testing.T) {
	d := newTestKeyDirectory()
	bob := register(t, d, dk("bob", 1), nil)
	var ts testServer
	if n := len(d.otp[bob.key]); n != 50 {
		t.Fatalf("uploaded %d one-time prekeys, want 50", n)
	}
	// 60 senders start sessions: 50 get a one-time prekey, 10 fall back
	// to signed-prekey only; all messages open.
	for i := range 60 {
		u := fmt.Sprintf("u%02d", i)
		s := register(t, d, dk(u, 1), nil)
		conv := core.DirectConvID(u, "bob")
		mustOpen(t, bob, send(t, &ts, s, conv, "hi "+u), "hi "+u)
	}
	if n := len(d.otp[bob.key]); n != 0 {
		t.Fatalf("server still holds %d one-time prekeys", n)
	}
	if bob.s.OneTimeHeld() != 0 {
		t.Fatalf("bob still holds %d one-time private keys", bob.s.OneTimeHeld())
	}
	// On the next connect bob sees the server is low and replenishes.
	if err := bob.s.EnsurePrekeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(d.otp[bob.key]); n != 50 || bob.s.OneTimeHeld() != 50 {
		t.Fatalf("after replenish: server %d, device %d", n, bob.s.OneTimeHeld())
	}
}

func BenchmarkSealOpenDirect(b *testing.B) {
	d := newTestKeyDirectory()
	tb := testing.TB(b)
	mk := func(key core.DeviceKey) *device {
		id, _ := identity.Generate(nil)
		dv := &device{key: key, dir: tb.TempDir(), id: id}
		s, err := New(Config{Dir: dv.dir, Identity: id, Directory: dirConn{d, &dv.key}, Self: func() (core.DeviceKey, bool) { return dv.key, true }})
		if err != nil {
			b.Fatal(err)
		}
		dv.s = s
		ctx := context.Background()
		if err := s.EnsurePrekeys(ctx); err != nil {
			b.Fatal(err)
		}
		if err := s.PublishFirstDevice(ctx, make([]byte, 32)); err != nil {
			b.Fatal(err)
		}
		return dv
	}
	alice, bob := mk(dk("alice", 1)), mk(dk("bob", 1))
	defer alice.s.Close()
	defer bob.s.Close()
	conv := core.DirectConvID("alice", "bob")
	body := bytes.Repeat([]byte("x"), 100)
	var ts testServer
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		from, to := alice, bob
		if i%2 == 1 {
			from, to = bob, alice
		}
		env, err := from.s.SealMessage(ctx, conv, "", body)
		if err != nil {
			b.Fatal(err)
		}
		m := ts.sequence(conv, from, "", env)
		if _, err := to.s.Open(ctx, core.ForDevice(m, to.key)); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLargeGroupKeyDistribution(t *testing.T) {
	d := newTestKeyDirectory()
	var ts testServer
	g := "g:" + ulid.Make().String()
	const n = 80 // 79 new devices × ~1.5 KB of handshake do not fit one envelope
	var members []*device
	var names []string
	for i := range n {
		u := fmt.Sprintf("m%03d", i)
		members = append(members, register(t, d, dk(u, 1), nil))
		names = append(names, u)
	}
	d.members[g] = names
	ctx := context.Background()
	envs, err := members[0].s.SealMessages(ctx, g, "id1", []byte("hello all"))
	if err != nil {
		t.Fatal(err)
	}
	if len(envs) < 2 {
		t.Fatalf("want key-distribution envelopes before the message, got %d envelope(s)", len(envs))
	}
	seen := map[core.DeviceKey]int{}
	var msgs []*pb.Message
	for i, env := range envs {
		if sz := len(mustMarshal(t, env)); sz > MaxEnvelope {
			t.Fatalf("envelope %d is %d bytes", i, sz)
		}
		for _, pd := range env.GetPerDevice() {
			seen[core.KeyOf(pd.GetDevice())]++
		}
		msgs = append(msgs, ts.sequence(g, members[0], fmt.Sprint(i), env))
	}
	if len(seen) != n-1 {
		t.Fatalf("distributions to %d devices, want %d", len(seen), n-1)
	}
	for k, c := range seen {
		if c != 1 {
			t.Fatalf("%s got %d distributions", k, c)
		}
	}
	for _, m := range members[1:] {
		for i, msg := range msgs {
			body, err := open(t, m, msg)
			if i < len(msgs)-1 {
				if !errors.Is(err, ErrControlMessage) {
					t.Fatalf("%s: control envelope %d: %v", m.key, i, err)
				}
				continue
			}
			if err != nil || string(body) != "hello all" {
				t.Fatalf("%s: %q %v", m.key, body, err)
			}
		}
	}
	if _, err := open(t, members[0], msgs[0]); !errors.Is(err, ErrControlMessage) {
		t.Fatalf("own control envelope: %v", err)
	}
}

// BenchmarkSealOpenGroup: one group message to 100 member devices after
// the sender key was distributed: Seal (encrypt once, sign, fsync) plus
// one member's Open (verify, decrypt, fsync).
func BenchmarkSealOpenGroup(b *testing.B) {
	d := newTestKeyDirectory()
	g := "g:bench"
	var devs []*device
	var names []string
	for i := range 100 {
		id, _ := identity.Generate(nil)
		dv := &device{key: dk(fmt.Sprintf("m%03d", i), 1), dir: b.TempDir(), id: id}
		s, err := New(Config{Dir: dv.dir, Identity: id, Directory: dirConn{d, &dv.key}, Self: func() (core.DeviceKey, bool) { return dv.key, true }})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		dv.s = s
		ctx := context.Background()
		if err := s.EnsurePrekeys(ctx); err != nil {
			b.Fatal(err)
		}
		if err := s.PublishFirstDevice(ctx, make([]byte, 32)); err != nil {
			b.Fatal(err)
		}
		devs = append(devs, dv)
		names = append(names, dv.key.User)
	}
	d.members[g] = names
	ctx := context.Background()
	var ts testServer
	envs, err := devs[0].s.SealMessages(ctx, g, "", []byte("warm up"))
	if err != nil {
		b.Fatal(err)
	}
	for _, env := range envs {
		m := ts.sequence(g, devs[0], "", env)
		if _, err := devs[1].s.Open(ctx, core.ForDevice(m, devs[1].key)); err != nil && !errors.Is(err, ErrControlMessage) {
			b.Fatal(err)
		}
	}
	body := bytes.Repeat([]byte("x"), 100)
	for b.Loop() {
		envs, err := devs[0].s.SealMessages(ctx, g, "", body)
		if err != nil || len(envs) != 1 {
			b.Fatal(err, len(envs))
		}
		m := ts.sequence(g, devs[0], "", envs[0])
		if _, err := devs[1].s.Open(ctx, core.ForDevice(m, devs[1].key)); err != nil {
			b.Fatal(err)
		}
	}
}
