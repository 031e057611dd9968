package client_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region"
)

// End-to-end encryption against the in-process stack, which serves the
// prekey and device-list endpoints (issue 3): these tests always run.

func e2eeClient(t *testing.T, ends stack.Endpoints, dir string) *client.Client {
	t.Helper()
	key, _ := hex.DecodeString(ends.EdgeKey)
	c, err := client.Open(context.Background(), client.Config{StateDir: dir, Edges: []string{ends.WS}, ServerKey: key,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, DeviceListTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func e2eeStart(t *testing.T, c *client.Client) {
	t.Helper()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConnected(e2eCtx(t)); err != nil {
		t.Fatalf("connect: %v (run err %v)", err, c.Err())
	}
}

func e2eeUser(t *testing.T, ends stack.Endpoints, user string) (*client.Client, string) {
	t.Helper()
	dir := t.TempDir()
	c := e2eeClient(t, ends, dir)
	if _, err := c.Register(e2eCtx(t), user); err != nil {
		t.Fatalf("register %s: %v", user, err)
	}
	e2eeStart(t, c)
	return c, dir
}

// needKeyDirectory fails the test unless the server serves user's signed
// device list (published when the device registered): the end-to-end tests
// below depend on it, and a server that stopped serving it is a regression,
// never a reason to skip.
func needKeyDirectory(t testing.TB, c *client.Client, user string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_FetchDeviceList{FetchDeviceList: &pb.FetchDeviceListRequest{UserId: user}}})
	if err != nil {
		t.Fatalf("fetch %s's device list: %v", user, err)
	}
	if e := r.GetError(); e != nil {
		t.Fatalf("fetch %s's device list: %v %s", user, e.GetCode(), e.GetDetail())
	}
	l, err := identity.ParseDeviceList(r.GetDeviceList().GetDeviceList())
	if err != nil {
		t.Fatalf("%s's device list from the server does not parse: %v", user, err)
	}
	if l.UserID != user || len(l.Devices) == 0 {
		t.Fatalf("device list for %s names user %q with %d devices", user, l.UserID, len(l.Devices))
	}
}

// guardOutcome records how a helper ended a test, without ending this one.
type guardOutcome struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (o *guardOutcome) Helper() {}
func (o *guardOutcome) Fatalf(format string, args ...any) {
	o.failed, o.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (o *guardOutcome) Skipf(format string, args ...any) {
	o.skipped, o.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestNeedKeyDirectoryFailsOnMissingList: when the server does not serve a
// device list (here: for a user that has none, as a regressed server would
// answer for everyone), the guard of the end-to-end tests fails the test
// instead of skipping it.
func TestNeedKeyDirectoryFailsOnMissingList(t *testing.T) {
	ends := startStack(t)
	alice, _ := e2eeUser(t, ends, "alice")
	needKeyDirectory(t, alice, "alice") // served: passes
	o := &guardOutcome{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		needKeyDirectory(o, alice, "nobody")
	}()
	<-done
	if !o.failed || o.skipped {
		t.Fatalf("needKeyDirectory for a user without a device list: failed %v, skipped %v (%s); want a failure", o.failed, o.skipped, o.msg)
	}
	t.Logf("guard failed as it should: %s", o.msg)
}

// nextBody waits for the next user message event of conv.
func nextBody(t *testing.T, c *client.Client, conv string) client.MessageEvent {
	t.Helper()
	ctx := e2eCtx(t)
	for {
		select {
		case ev := <-c.Events():
			if m, ok := ev.(client.MessageEvent); ok && m.Conv() == conv && m.Message.GetKind() == pb.MessageKind_MESSAGE_KIND_USER {
				return m
			}
		case <-ctx.Done():
			t.Fatalf("no message in %s", conv)
		}
	}
}

func sendWait(t *testing.T, c *client.Client, conv, body string) {
	t.Helper()
	ctx := e2eCtx(t)
	id, err := c.Send(ctx, conv, []byte(body))
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if _, err := c.WaitSent(ctx, id); err != nil {
		t.Fatalf("send %q: %v", body, err)
	}
}

func TestE2EEDirectAndMultiDevice(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eeUser(t, ends, "alice")
	needKeyDirectory(t, alice, "alice")
	bob, _ := e2eeUser(t, ends, "bob")

	// alice links a second device.
	phone := e2eeClient(t, ends, t.TempDir())
	tok, err := alice.Link(phone.LinkRequest())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := phone.RegisterLinked(ctx, tok); err != nil {
		t.Fatal(err)
	}
	e2eeStart(t, phone)
	if err := alice.PublishLinkedDevices(ctx); err != nil {
		t.Fatal(err)
	}

	dm := core.DirectConvID("alice", "bob")
	sendWait(t, alice, dm, "secret one")
	for _, c := range []*client.Client{bob, phone, alice} {
		ev := nextBody(t, c, dm)
		if ev.OpenErr != nil || string(ev.Body) != "secret one" {
			t.Fatalf("body %q err %v", ev.Body, ev.OpenErr)
		}
	}
	sendWait(t, bob, dm, "reply")
	for _, c := range []*client.Client{alice, phone} {
		if ev := nextBody(t, c, dm); string(ev.Body) != "reply" {
			t.Fatalf("reply body %q err %v", ev.Body, ev.OpenErr)
		}
	}
	// What the server stored carries no plaintext.
	msgs, err := bob.FetchHistory(ctx, dm, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		b, _ := json.Marshal(m)
		if bytes.Contains(b, []byte("secret one")) || bytes.Contains(b, []byte("reply")) {
			t.Fatal("plaintext on the server")
		}
		for _, pd := range m.GetEnvelope().GetPerDevice() {
			if bytes.Contains(pd.GetCiphertext(), []byte("secret")) {
				t.Fatal("plaintext on the server")
			}
		}
	}
	sa, err := alice.SafetyNumber(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := bob.SafetyNumber(ctx, "alice")
	if err != nil || sa != sb {
		t.Fatalf("safety numbers %q / %q (%v)", sa, sb, err)
	}
}

func TestE2EEGroupRemovalRotates(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eeUser(t, ends, "alice")
	needKeyDirectory(t, alice, "alice")
	bob, _ := e2eeUser(t, ends, "bob")
	carol, _ := e2eeUser(t, ends, "carol")
	info, err := alice.CreateGroup(ctx, "trio", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	g := info.GetConvId()
	sendWait(t, alice, g, "to all three")
	for _, c := range []*client.Client{bob, carol} {
		if ev := nextBody(t, c, g); string(ev.Body) != "to all three" {
			t.Fatalf("group body %q err %v", ev.Body, ev.OpenErr)
		}
	}
	if _, err := alice.RemoveMembers(ctx, g, "carol"); err != nil {
		t.Fatal(err)
	}
	sendWait(t, alice, g, "carol must not read this")
	ev := nextBody(t, bob, g)
	if string(ev.Body) != "carol must not read this" {
		t.Fatalf("bob: %q %v", ev.Body, ev.OpenErr)
	}
	// Handed the ciphertext (as bob stored it), carol cannot read it: the
	// sender key was rotated and the new one never sent to her.
	leak := proto.CloneOf(ev.Message)
	leak.Seq += 1000
	if body, err := carol.OpenMessage(ctx, leak); err == nil {
		t.Fatalf("removed member read %q", body)
	}
}

// TestE2EEPeerLinksDevice: bob links a device; his first device signs the
// new device list; alice verifies it against the one she trusts, sees no
// identity change, and encrypts to both of bob's devices. A list signed by
// a device alice does not trust is refused by the region already (its
// check mirrors the client's); the client side of that case, a malicious
// server, is covered in client/e2ee (TestIdentityChangeBlocksSending).
func TestE2EEPeerLinksDevice(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eeUser(t, ends, "alice")
	needKeyDirectory(t, alice, "alice")
	bob, _ := e2eeUser(t, ends, "bob")
	dm := core.DirectConvID("alice", "bob")
	sendWait(t, alice, dm, "hello")
	nextBody(t, bob, dm)
	before, err := alice.SafetyNumber(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}

	phoneDir := t.TempDir()
	phone := e2eeClient(t, ends, phoneDir)
	tok, err := bob.Link(phone.LinkRequest())
	if err != nil {
		t.Fatal(err)
	}
	key, err := phone.RegisterLinked(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	e2eeStart(t, phone)
	if err := bob.PublishLinkedDevices(ctx); err != nil {
		t.Fatal(err)
	}
	// The phone cannot replace the list on its own.
	var st struct {
		E2EE []byte `json:"e2ee_identity"`
	}
	raw, _ := os.ReadFile(filepath.Join(phoneDir, "device.json"))
	_ = json.Unmarshal(raw, &st)
	priv, err := identity.ParsePrivate(st.E2EE)
	if err != nil {
		t.Fatal(err)
	}
	l := &identity.DeviceList{UserID: "bob", Version: 10, Devices: []identity.Device{{ID: key.Device, Identity: priv.Public()}}}
	if err := l.Sign(key.Device, priv); err != nil {
		t.Fatal(err)
	}
	lb, _ := l.MarshalBinary()
	if _, err := phone.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_PublishDeviceList{PublishDeviceList: &pb.PublishDeviceListRequest{DeviceList: lb}}}); err == nil {
		t.Fatal("region accepted a device list signed by an untrusted device")
	}

	sendWait(t, alice, dm, "to both of bob's devices")
	// The phone first syncs "hello", sent before it existed: it has no
	// ciphertext for it (no history sharing between devices).
	if ev := nextBody(t, phone, dm); !errors.Is(ev.OpenErr, e2ee.ErrNotForDevice) {
		t.Fatalf("phone, old message: %q %v", ev.Body, ev.OpenErr)
	}
	for i, c := range []*client.Client{bob, phone} {
		if ev := nextBody(t, c, dm); string(ev.Body) != "to both of bob's devices" {
			t.Fatalf("device %d: %q %v", i, ev.Body, ev.OpenErr)
		}
	}
	if alice.IdentityChanged("bob") {
		t.Fatal("a properly linked device was reported as an identity change")
	}
	after, err := alice.SafetyNumber(ctx, "bob")
	if err != nil || after == before {
		t.Fatalf("safety number should cover the new device: %q vs %q (%v)", after, before, err)
	}
}

// TestE2EELargeGroup: a group whose first message needs key-distribution
// envelopes before it (the distributions to 59 new devices exceed one
// frame); members get exactly the message as an event.
func TestE2EELargeGroup(t *testing.T) {
	// 60 users registering from one address: above the default per-IP limit.
	ends := startStack(t, func(c *edge.Config) { c.Admission.RegisterBurst = 100 })
	ctx := e2eCtx(t)
	const n = 60
	var cs []*client.Client
	var names []string
	for i := range n {
		name := "m" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		c, _ := e2eeUser(t, ends, name)
		if i == 0 {
			needKeyDirectory(t, c, name)
		}
		cs = append(cs, c)
		names = append(names, name)
	}
	info, err := cs[0].CreateGroup(ctx, "big", names[1:])
	if err != nil {
		t.Fatal(err)
	}
	g := info.GetConvId()
	// Three senders at once, each needing key-distribution entries.
	var ids [3][]string
	for k := range 3 {
		for j := range 2 {
			id, err := cs[k*7].Send(ctx, g, []byte(fmt.Sprintf("from %d #%d", k, j)))
			if err != nil {
				t.Fatal(err)
			}
			ids[k] = append(ids[k], id)
		}
	}
	for k := range 3 {
		if err := cs[k*7].WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var ref []string
	for i, c := range cs {
		var got []string
		for range 6 {
			ev := nextBody(t, c, g)
			if ev.OpenErr != nil {
				t.Fatalf("member %d: seq %d: %v", i, ev.Seq(), ev.OpenErr)
			}
			got = append(got, fmt.Sprintf("%d:%s", ev.Seq(), ev.Body))
		}
		if i == 0 {
			ref = got
		} else if !slices.Equal(got, ref) {
			t.Fatalf("member %d saw %v, member 0 %v", i, got, ref)
		}
	}
}

// TestE2EEPrekeyReplenish: bob uploads 25 one-time prekeys; as fetches
// drain them the region pushes prekey_status low and bob uploads more.
func TestE2EEPrekeyReplenish(t *testing.T) {
	// alice drains bob on purpose: lift the per-pair fetch limit.
	ends := startStackWith(t, func(c *stack.Config) {
		c.RegionConfig = func(r *region.Config) { r.PrekeyFetch.PairBurst = 1000 }
	})
	ctx := e2eCtx(t)
	alice, _ := e2eeUser(t, ends, "alice")
	needKeyDirectory(t, alice, "alice")
	key, _ := hex.DecodeString(ends.EdgeKey)
	bob, err := client.Open(ctx, client.Config{StateDir: t.TempDir(), Edges: []string{ends.WS}, ServerKey: key, PrekeyBatch: 25,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bob.Close() })
	if _, err := bob.Register(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	e2eeStart(t, bob)
	fetch := func() (hasOneTime bool, remaining uint32) {
		t.Helper()
		r, err := alice.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_FetchBundle{FetchBundle: &pb.FetchBundleRequest{UserId: "bob", DeviceId: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := prekey.ParseBundle(r.GetBundle().GetBundle())
		if err != nil {
			t.Fatal(err)
		}
		return b.OneTime != nil, r.GetBundle().GetOneTimeRemaining()
	}
	low := uint32(25)
	for i := 0; i < 60; i++ {
		ok, rem := fetch()
		if !ok {
			t.Fatalf("fetch %d got no one-time prekey (remaining %d): not replenished", i, rem)
		}
		low = min(low, rem)
		if i >= 10 && rem > 20 {
			t.Logf("replenished after %d fetches (lowest remaining %d, now %d)", i+1, low, rem)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("one-time prekeys never replenished")
}
