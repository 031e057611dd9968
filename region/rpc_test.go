package region_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
)

// The remote API must behave exactly like the in-process one, errors included.
func TestRemoteAPI(t *testing.T) {
	h := newHarness(t)
	srv := httptest.NewServer(h.api.Handler("s3cret"))
	defer srv.Close()
	ctx := context.Background()

	bad := &region.RemoteAPI{URL: srv.URL, Token: "wrong"}
	if _, err := bad.Authenticate(ctx, make([]byte, 32)); !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("wrong token: %v", err)
	}
	r := &region.RemoteAPI{URL: srv.URL, Token: "s3cret"}
	static := make([]byte, 32)
	rand.Read(static)
	if _, err := r.Authenticate(ctx, static); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("unregistered: %v", err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	proof := ed25519.Sign(priv, core.RegisterProofMessage("erin", static))
	reg, err := r.Register(ctx, static, &pb.RegisterRequest{UserId: "erin", IdentityKey: pub, IdentityProof: proof})
	if err != nil || reg.GetDevice().GetDeviceId() != 1 {
		t.Fatalf("register: %v %v", reg, err)
	}
	dev, err := r.Authenticate(ctx, static)
	if err != nil || dev != (core.DeviceKey{User: "erin", Device: 1}) {
		t.Fatalf("authenticate: %v %v", dev, err)
	}
	if err := r.SessionOpened(ctx, core.Route{Device: dev, Edge: "e9", Session: 7, SinceMs: 5}); err != nil {
		t.Fatal(err)
	}
	resp, err := r.Query(ctx, dev, &pb.ClientFrame{ReqId: 4, Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: []string{"erin"}}}})
	if err != nil || resp.GetReqId() != 4 || !resp.GetPresence().GetUsers()[0].GetOnline() {
		t.Fatalf("presence: %v %v", resp, err)
	}
	if err := r.SessionClosed(ctx, dev, 7); err != nil {
		t.Fatal(err)
	}
	resp, _ = r.Query(ctx, dev, &pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: []string{"erin"}}}})
	if p := resp.GetPresence().GetUsers()[0]; p.GetOnline() || p.GetLastSeenMs() == 0 {
		t.Fatalf("after close: %v", p)
	}
	if err := r.EdgeStarted(ctx, "e9"); err != nil {
		t.Fatal(err)
	}
	resp, _ = r.Query(ctx, dev, &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: "g:nope"}}})
	if resp.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
		t.Fatalf("history of missing conv: %v", resp)
	}
}

// TestCheckInternalListen: without a token the internal API may listen on
// loopback only; with one, anywhere.
func TestCheckInternalListen(t *testing.T) {
	for addr, open := range map[string]bool{
		"127.0.0.1:7490": true, "[::1]:7490": true, "localhost:7490": true, "127.0.0.9:0": true,
		":7490": false, "0.0.0.0:7490": false, "[::]:7490": false, "10.0.0.5:7490": false, "region.internal:7490": false,
	} {
		err := region.CheckInternalListen(addr, "")
		if open != (err == nil) {
			t.Errorf("%s without token: %v", addr, err)
		}
		if !open && !errors.Is(err, region.ErrOpenInternalAPI) {
			t.Errorf("%s: error %v does not wrap ErrOpenInternalAPI", addr, err)
		}
		if err := region.CheckInternalListen(addr, "s3cret"); err != nil {
			t.Errorf("%s with token: %v", addr, err)
		}
	}
}

// Info tells an edge in another process which region it talks to; a wrong
// token is refused, and a region without the endpoint says so.
func TestRemoteAPIInfo(t *testing.T) {
	h := newHarness(t)
	srv := httptest.NewServer(h.api.Handler("s3cret"))
	defer srv.Close()
	ctx := context.Background()
	info, err := (&region.RemoteAPI{URL: srv.URL, Token: "s3cret"}).Info(ctx)
	if err != nil || info.Region != "local" {
		t.Fatalf("info: %+v %v, want region local", info, err)
	}
	if _, err := (&region.RemoteAPI{URL: srv.URL, Token: "wrong"}).Info(ctx); !errors.Is(err, core.ErrForbidden) {
		t.Fatalf("wrong token: %v", err)
	}
	old := httptest.NewServer(http.NotFoundHandler())
	defer old.Close()
	if _, err := (&region.RemoteAPI{URL: old.URL}).Info(ctx); !errors.Is(err, region.ErrNoInfo) {
		t.Fatalf("region without the endpoint: %v", err)
	}
}

// GET ReadyPath says whether the region can sequence: ready while its
// sequencer consumes and it holds its lease — deposed or not (a deposed
// region forwards) — 503 with the reason once the lease has run out or the
// sequencer has stopped; the same token rule as the rest of the API.
func TestRemoteAPIReady(t *testing.T) {
	f := &fakeDirectory{}
	f.up.Store(true)
	f.healthy.Store(true)
	lease := newFakeLease(t, f, -1)
	h := newHarness(t, func(c *region.Config) { c.Lease = lease })
	srv := httptest.NewServer(h.api.Handler("s3cret"))
	defer srv.Close()
	ctx := context.Background()
	r := &region.RemoteAPI{URL: srv.URL, Token: "s3cret"}
	eventually(t, "ready with the lease held", func() bool { return r.Ready(ctx) == nil })
	if err := h.api.Ready(ctx); err != nil {
		t.Fatalf("in-process Ready: %v", err)
	}

	// Deposed (the directory failed it) but holding the lease: it
	// forwards what reaches it, so it stays ready.
	f.healthy.Store(false)
	eventually(t, "deposed", func() bool { return lease.Stats().Deposed })
	if err := r.Ready(ctx); err != nil {
		t.Fatalf("a deposed region holding its lease: %v, want ready", err)
	}

	// Cut off from the directory: not ready once the lease runs out.
	f.up.Store(false)
	eventually(t, "not ready without the lease", func() bool { return r.Ready(ctx) != nil })
	err := r.Ready(ctx)
	if !errors.Is(err, core.ErrUnavailable) || !strings.Contains(err.Error(), "no directory lease") {
		t.Fatalf("without the lease: %v, want unavailable naming the lease", err)
	}
	if err := h.api.Ready(ctx); !errors.Is(err, region.ErrLeaseLost) {
		t.Fatalf("in-process Ready without the lease: %v", err)
	}
	resp, err := http.Get(srv.URL + region.ReadyPath) // no token
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: status %d, want 401", resp.StatusCode)
	}
	if err := (&region.RemoteAPI{URL: srv.URL, Token: "wrong"}).Ready(ctx); !errors.Is(err, core.ErrForbidden) {
		t.Fatalf("wrong token: %v", err)
	}
	f.up.Store(true)
	eventually(t, "ready with the lease back", func() bool { return r.Ready(ctx) == nil })

	// A stopped sequencer is not ready either.
	if err := h.reg.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	err = r.Ready(ctx)
	if !errors.Is(err, core.ErrUnavailable) || !strings.Contains(err.Error(), "not consuming") {
		t.Fatalf("stopped sequencer: %v, want unavailable, not consuming", err)
	}

	// A region that predates the endpoint, and one that cannot be reached.
	old := httptest.NewServer(http.NotFoundHandler())
	defer old.Close()
	if err := (&region.RemoteAPI{URL: old.URL}).Ready(ctx); !errors.Is(err, region.ErrNoReadiness) {
		t.Fatalf("region without the endpoint: %v", err)
	}
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	if err := (&region.RemoteAPI{URL: gone.URL}).Ready(ctx); !errors.Is(err, core.ErrUnavailable) {
		t.Fatalf("unreachable region: %v", err)
	}
}
