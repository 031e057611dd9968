package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
)

// peerKeys is testPeer's key directory: it stores what devices upload and
// hands out bundles and device lists like the region, without its checks,
// so a test can play a malicious server by editing lists. p.mu guards it.
type peerKeys struct {
	ids   map[core.DeviceKey]identity.Public
	spk   map[core.DeviceKey]prekey.SignedPrekey
	kem   map[core.DeviceKey]prekey.KEMPrekey
	otp   map[core.DeviceKey][]prekey.OneTimePrekey
	lists map[string][]byte
}

func errResp(code pb.ErrorCode) *pb.Response {
	return &pb.Response{Error: &pb.Error{Code: code, Detail: "test peer"}}
}

// handleKeys answers a key-directory frame (p.mu held).
func (p *testPeer) handleKeys(dev core.DeviceKey, f *pb.ClientFrame) *pb.Response {
	k := &p.keys
	if k.ids == nil {
		k.ids, k.spk, k.kem = map[core.DeviceKey]identity.Public{}, map[core.DeviceKey]prekey.SignedPrekey{}, map[core.DeviceKey]prekey.KEMPrekey{}
		k.otp, k.lists = map[core.DeviceKey][]prekey.OneTimePrekey{}, map[string][]byte{}
	}
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_UploadPrekeys:
		pub, err := identity.ParsePublic(b.UploadPrekeys.GetIdentity())
		up, err2 := prekey.ParseUpload(b.UploadPrekeys.GetUpload())
		if err != nil || err2 != nil || up.Verify(pub) != nil {
			return errResp(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
		}
		k.ids[dev] = pub
		if up.SignedPrekey != nil {
			k.spk[dev] = *up.SignedPrekey
		}
		if up.KEM != nil {
			k.kem[dev] = *up.KEM
		}
		k.otp[dev] = append(k.otp[dev], up.OneTime...)
		return &pb.Response{Body: &pb.Response_PrekeyStatus{PrekeyStatus: &pb.PrekeyStatus{OneTimeRemaining: uint32(len(k.otp[dev]))}}}
	case *pb.ClientFrame_FetchBundle:
		to := core.DeviceKey{User: b.FetchBundle.GetUserId(), Device: b.FetchBundle.GetDeviceId()}
		id, ok := k.ids[to]
		if !ok {
			return errResp(pb.ErrorCode_ERROR_CODE_NOT_FOUND)
		}
		kem := k.kem[to]
		bundle := &prekey.Bundle{Identity: id, SignedPrekey: k.spk[to], KEM: &kem}
		if l := k.otp[to]; len(l) > 0 {
			bundle.OneTime = &l[0]
			k.otp[to] = l[1:]
		}
		raw, _ := bundle.MarshalBinary()
		return &pb.Response{Body: &pb.Response_Bundle{Bundle: &pb.BundleResponse{Bundle: raw, OneTimeRemaining: uint32(len(k.otp[to]))}}}
	case *pb.ClientFrame_PublishDeviceList:
		l, err := identity.ParseDeviceList(b.PublishDeviceList.GetDeviceList())
		if err != nil || l.UserID != dev.User {
			return errResp(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
		}
		k.lists[l.UserID] = b.PublishDeviceList.GetDeviceList()
		return &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}}
	case *pb.ClientFrame_FetchDeviceList:
		raw, ok := k.lists[b.FetchDeviceList.GetUserId()]
		if !ok {
			return errResp(pb.ErrorCode_ERROR_CODE_NOT_FOUND)
		}
		return &pb.Response{Body: &pb.Response_DeviceList{DeviceList: &pb.DeviceListResponse{DeviceList: raw}}}
	case *pb.ClientFrame_LookupUser:
		out := &pb.LookupUserResponse{UserId: b.LookupUser.GetUserId()}
		for d, id := range k.ids {
			if d.User == b.LookupUser.GetUserId() {
				out.Devices = append(out.Devices, &pb.DeviceInfo{DeviceId: d.Device, IdentityKey: id.Sign})
			}
		}
		return &pb.Response{Body: &pb.Response_User{User: out}}
	}
	return errResp(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
}

func e2eePeerUser(t *testing.T, p *testPeer, user string) *Client {
	t.Helper()
	c, err := Open(context.Background(), Config{StateDir: t.TempDir(), Edges: []string{p.url()}, ServerKey: p.static.Public,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, DeviceListTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := testCtx(t)
	if _, err := c.Register(ctx, user); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIdentityChangeThroughClient: a server that swaps bob's device list
// for one of an identity alice never saw makes alice's client raise
// IdentityChangedEvent and refuse to send to bob until TrustIdentity; the
// server's bundle then no longer matches the accepted identity and is
// refused too.
func TestIdentityChangeThroughClient(t *testing.T) {
	p := newTestPeer(t)
	alice := e2eePeerUser(t, p, "alice")
	bob := e2eePeerUser(t, p, "bob")
	ctx := testCtx(t)
	id, err := alice.SendDirect(ctx, "bob", []byte("hello bob"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.WaitSent(ctx, id); err != nil {
		t.Fatal(err)
	}
	for {
		ev := <-bob.Events()
		if m, ok := ev.(MessageEvent); ok {
			if string(m.Body) != "hello bob" || m.OpenErr != nil {
				t.Fatalf("bob got %q %v", m.Body, m.OpenErr)
			}
			break
		}
	}
	// The server replaces bob's list.
	fake, _ := identity.Generate(nil)
	l := &identity.DeviceList{UserID: "bob", Version: 2, Devices: []identity.Device{{ID: 1, Identity: fake.Public()}}}
	if err := l.Sign(1, fake); err != nil {
		t.Fatal(err)
	}
	raw, _ := l.MarshalBinary()
	p.mu.Lock()
	p.keys.lists["bob"] = raw
	p.mu.Unlock()

	if _, err := alice.SendDirect(ctx, "bob", []byte("blocked")); !errors.Is(err, e2ee.ErrIdentityChanged) {
		t.Fatalf("send after the swap: %v, want ErrIdentityChanged", err)
	}
	for {
		select {
		case ev := <-alice.Events():
			if ic, ok := ev.(IdentityChangedEvent); ok {
				if ic.User != "bob" {
					t.Fatalf("identity change of %q", ic.User)
				}
				goto announced
			}
		case <-ctx.Done():
			t.Fatal("no IdentityChangedEvent")
		}
	}
announced:
	if !alice.IdentityChanged("bob") {
		t.Fatal("IdentityChanged(bob) is false")
	}
	if err := alice.TrustIdentity("bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendDirect(ctx, "bob", []byte("to the fake")); !errors.Is(err, e2ee.ErrBadBundle) {
		t.Fatalf("bundle of the real bob for the fake identity: %v, want ErrBadBundle", err)
	}
}
