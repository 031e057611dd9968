package edge_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
	"github.com/chatmesh/chatmesh/edge"
)

// frozen makes the edge's clock stand still, so token buckets never
// refill during a test (no timing in the assertions).
func frozen(c *edge.Config) {
	at := time.Now()
	c.Now = func() time.Time { return at }
}

// connectFrom dials the edge over WebSocket from the local address ip
// (127.0.0.x: a different client IP on loopback) and runs the handshake.
func (v *env) connectFrom(ip string, key noiseconn.Keypair, dev *pb.DeviceAddr) *client {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	ws, _, err := websocket.Dial(ctx, v.e.WSURL(), &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		v.t.Fatal(err)
	}
	ws.SetReadLimit(1 << 20)
	v.t.Cleanup(func() { _ = ws.CloseNow() })
	nc, err := noiseconn.Client(ctx, wsClientConn{ws}, noiseconn.ClientConfig{Static: key, Payload: clientHello(dev), ServerStatic: v.e.PublicKey()})
	if err != nil {
		v.t.Fatal(err)
	}
	return &client{t: v.t, key: key, nc: nc, ws: ws}
}

func registerFrame(user string, nonce []byte, token string) *pb.ClientFrame {
	return &pb.ClientFrame{Body: &pb.ClientFrame_Register{Register: &pb.RegisterRequest{
		UserId: user, IdentityKey: make([]byte, 32), PowNonce: nonce, RegistrationToken: token}}}
}

func wantErr(t *testing.T, what string, r *pb.Response, code pb.ErrorCode) {
	t.Helper()
	if got := r.GetError().GetCode(); got != code {
		t.Fatalf("%s: %v (%q), want %v", what, got, r.GetError().GetDetail(), code)
	}
}

// TestRegistrationPerIPLimit: an IP may start RegisterBurst registrations,
// the next is RATE_LIMITED with retry_after_ms and never reaches the
// region; another IP, a configured token and already registered devices
// are unaffected; an unknown token is FORBIDDEN.
func TestRegistrationPerIPLimit(t *testing.T) {
	const limit = 3
	v := newEnv(t, func(c *edge.Config) {
		frozen(c)
		c.Admission.RegisterBurst = limit
		c.Admission.RegistrationTokens = []string{"invite-123"}
	})
	old, oldDev := v.registered("ws", "old") // charged too: limit-1 left
	for i := 1; i < limit; i++ {
		c := v.connectFrom("127.0.0.1", newKey(t), nil)
		if r := c.call(registerFrame(fmt.Sprintf("u%d", i), nil, "")); r.GetError() != nil {
			t.Fatalf("registration %d of %d: %v", i+1, limit, r.GetError())
		}
	}
	over := v.connectFrom("127.0.0.1", newKey(t), nil)
	r := over.call(registerFrame("u-over", nil, ""))
	wantErr(t, "registration limit+1", r, pb.ErrorCode_ERROR_CODE_RATE_LIMITED)
	if r.GetError().GetRetryAfterMs() == 0 {
		t.Fatal("RATE_LIMITED without retry_after_ms")
	}
	if _, err := v.be.Authenticate(context.Background(), over.key.Public); err == nil {
		t.Fatal("refused registration reached the region")
	}
	wantErr(t, "unknown token", over.call(registerFrame("u-over", nil, "guess")), pb.ErrorCode_ERROR_CODE_FORBIDDEN)
	if r := over.call(registerFrame("u-over", nil, "invite-123")); r.GetError() != nil {
		t.Fatalf("token registration over the limit: %v", r.GetError())
	}
	// Another IP has its own budget.
	if r := v.connectFrom("127.0.0.2", newKey(t), nil).call(registerFrame("u-other-ip", nil, "")); r.GetError() != nil {
		t.Fatalf("registration from another IP: %v", r.GetError())
	}
	// Registered devices are unaffected, and re-registering one is not a
	// new registration.
	old.ping()
	again := v.connect("ws", old.key, oldDev.Addr())
	if r := again.call(registerFrame("old", nil, "")); r.GetError() != nil {
		t.Fatalf("idempotent re-register of a device: %v", r.GetError())
	}
	if st := v.e.AdmissionStats(); st.RegisterLimited != 1 || st.RegisterBadToken != 1 || st.RegisterTokens != 1 {
		t.Fatalf("admission stats %+v", st)
	}
}

// TestRegistrationProofOfWork: with RegisterPowBits the ServerHello asks
// for it; a registration without a nonce or with a wrong one is FORBIDDEN,
// a solved one passes, and a token skips it.
func TestRegistrationProofOfWork(t *testing.T) {
	const bits = 12
	v := newEnv(t, func(c *edge.Config) {
		c.Admission.RegisterPowBits = bits
		c.Admission.RegistrationTokens = []string{"invite-123"}
	})
	c := v.connectFrom("127.0.0.1", newKey(t), nil)
	if got := v.connect("ws", newKey(t), nil).hello.GetRegisterPowBits(); got != bits {
		t.Fatalf("ServerHello.register_pow_bits %d, want %d", got, bits)
	}
	wantErr(t, "no proof of work", c.call(registerFrame("powuser", nil, "")), pb.ErrorCode_ERROR_CODE_FORBIDDEN)
	// A nonce solved for another user or another key does not pass.
	wrong, err := core.SolvePow(context.Background(), bits, c.key.Public, "someone-else")
	if err != nil {
		t.Fatal(err)
	}
	if !core.CheckPow(bits, c.key.Public, "powuser", wrong) {
		wantErr(t, "nonce for another user", c.call(registerFrame("powuser", wrong, "")), pb.ErrorCode_ERROR_CODE_FORBIDDEN)
	}
	nonce, err := core.SolvePow(context.Background(), bits, c.key.Public, "powuser")
	if err != nil {
		t.Fatal(err)
	}
	if r := c.call(registerFrame("powuser", nonce, "")); r.GetError() != nil {
		t.Fatalf("solved proof of work: %v", r.GetError())
	}
	if r := v.connectFrom("127.0.0.1", newKey(t), nil).call(registerFrame("tokenuser", nil, "invite-123")); r.GetError() != nil {
		t.Fatalf("token instead of proof of work: %v", r.GetError())
	}
	if st := v.e.AdmissionStats(); st.RegisterPowFail < 1 {
		t.Fatalf("admission stats %+v", st)
	}
}

// TestPresenceSubscribeChargedByCost: replacing a 500-user subscription
// set costs 500 read tokens (a route and a last-seen lookup per user), so
// with the default read burst of 2000 only 4 of 10 back-to-back
// re-subscriptions pass (one write token each used to let 10 of 10 pass);
// the session's messages are unaffected.
func TestPresenceSubscribeChargedByCost(t *testing.T) {
	v := newEnv(t, frozen)
	c, _ := v.registered("ws", "watcher")
	users := make([]string, edge.MaxPresenceSubscriptions)
	for i := range users {
		users[i] = fmt.Sprintf("p%d", i)
	}
	passed := 0
	for range 10 {
		r := c.call(&pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: users}}})
		switch code := r.GetError().GetCode(); code {
		case pb.ErrorCode_ERROR_CODE_OK:
			passed++
		case pb.ErrorCode_ERROR_CODE_RATE_LIMITED:
			if r.GetError().GetRetryAfterMs() == 0 {
				t.Fatal("RATE_LIMITED without retry_after_ms")
			}
		default:
			t.Fatalf("subscribe: %v", r.GetError())
		}
	}
	if passed != 2000/edge.MaxPresenceSubscriptions {
		t.Fatalf("%d of 10 full re-subscriptions passed, want %d", passed, 2000/edge.MaxPresenceSubscriptions)
	}
	c.ping()
}

// TestPerIPAggregateBudget: every session from one IP shares the IP's
// message budget, so many accounts cannot multiply their per-session
// allowance; a client from another IP is unaffected and the edge stays
// healthy.
func TestPerIPAggregateBudget(t *testing.T) {
	const ipBurst = 10
	v := newEnv(t, func(c *edge.Config) {
		frozen(c)
		c.Admission.IPMessageBurst = ipBurst
		c.Admission.RegisterBurst = 100
	})
	var sessions []*client
	for i := range 4 {
		c := v.connectFrom("127.0.0.3", newKey(t), nil)
		if r := c.call(registerFrame(fmt.Sprintf("tenant%d", i), nil, "")); r.GetError() != nil { // 1 token each
			t.Fatalf("register: %v", r.GetError())
		}
		sessions = append(sessions, c)
	}
	passed, limited := 0, 0
	for range 5 {
		for _, c := range sessions {
			r := c.call(&pb.ClientFrame{Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{}}})
			switch r.GetError().GetCode() {
			case pb.ErrorCode_ERROR_CODE_OK:
				passed++
			case pb.ErrorCode_ERROR_CODE_RATE_LIMITED:
				limited++
			default:
				t.Fatalf("ping: %v", r.GetError())
			}
		}
	}
	// 4 registrations + 6 pings use the IP's 10 tokens; every session is
	// far below its own burst of 100.
	if passed != ipBurst-4 || limited != 20-(ipBurst-4) {
		t.Fatalf("%d pings passed, %d limited; want %d and %d", passed, limited, ipBurst-4, 20-(ipBurst-4))
	}
	if st := v.e.AdmissionStats(); st.IPLimited != uint64(limited) {
		t.Fatalf("IPLimited %d, want %d", st.IPLimited, limited)
	}
	other, _ := v.registered("ws", "neighbour") // 127.0.0.1: 1 of its 10 tokens
	for range ipBurst - 1 {
		other.ping()
	}
}

// TestPresenceSubscribeLimitEdges: a set of exactly MaxPresenceSubscriptions
// users is accepted; one more, or ten times as many, is INVALID_ARGUMENT
// (and charged nothing: a following full set still passes), and the
// session keeps working.
func TestPresenceSubscribeLimitEdges(t *testing.T) {
	v := newEnv(t, frozen)
	c, _ := v.registered("ws", "watcher")
	set := func(n int) []string {
		users := make([]string, n)
		for i := range users {
			users[i] = fmt.Sprintf("p%d", i)
		}
		return users
	}
	sub := func(n int) *pb.Response {
		return c.call(&pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: set(n)}}})
	}
	for _, n := range []int{edge.MaxPresenceSubscriptions + 1, 10 * edge.MaxPresenceSubscriptions} {
		if code := sub(n).GetError().GetCode(); code != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT {
			t.Fatalf("%d users: %v, want INVALID_ARGUMENT", n, code)
		}
	}
	if r := sub(edge.MaxPresenceSubscriptions); r.GetError() != nil {
		t.Fatalf("exactly %d users: %v", edge.MaxPresenceSubscriptions, r.GetError())
	}
	// The same for group lists: 10x a full group is GROUP_FULL, not
	// RATE_LIMITED (its cost would exceed the message burst).
	big := set(10 * core.MaxGroupMembers)
	for _, f := range []*pb.ClientFrame{
		{Body: &pb.ClientFrame_CreateGroup{CreateGroup: &pb.CreateGroupRequest{ConvId: core.GroupID("watcher", "big"), Members: big}}},
		{Body: &pb.ClientFrame_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_ADD, Users: big, ClientMsgId: "k"}}},
	} {
		if code := c.call(f).GetError().GetCode(); code != pb.ErrorCode_ERROR_CODE_GROUP_FULL {
			t.Fatalf("%T with %d users: %v, want GROUP_FULL", f.GetBody(), len(big), code)
		}
	}
	c.ping()
}
