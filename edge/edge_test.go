package edge_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
	"github.com/chatmesh/chatmesh/edge"
)

func TestHandshakeBothTransports(t *testing.T) {
	v := newEnv(t, nil)
	if got := v.be.started; len(got) != 1 || got[0] != "e1" {
		t.Fatalf("EdgeStarted calls %v", got)
	}
	for _, kind := range []string{"ws", "wt", "ws-ik", "wt-ik"} {
		t.Run(kind, func(t *testing.T) {
			v.t = t
			v.ik = len(kind) > 2
			defer func() { v.ik = false }()
			c := v.connect(kind[:2], newKey(t), nil)
			if !bytes.Equal(c.nc.PeerStatic(), v.e.PublicKey()) {
				t.Fatal("edge static key differs")
			}
			h := c.hello
			if h.GetProtocolVersion() != 1 || h.GetEdgeId() != "e1" || h.GetRegion() != "r1" ||
				h.GetMaxFrameBytes() != core.MaxClientFrameBytes || h.GetMaxEnvelopeBytes() != core.MaxEnvelopeBytes ||
				h.GetMaxMessagesPerSecond() != 50 || h.GetRegisterPowBits() != 0 {
				t.Fatalf("server hello %v", h)
			}
			c.ping()
		})
	}
}

func TestRegisterThenAuthenticated(t *testing.T) {
	v := newEnv(t, nil)
	for _, kind := range []string{"ws", "wt"} {
		t.Run(kind, func(t *testing.T) {
			v.t = t
			key := newKey(t)
			c := v.connect(kind, key, nil)
			list := &pb.ClientFrame{Body: &pb.ClientFrame_ListConversations{ListConversations: &pb.ListConversationsRequest{}}}
			if r := c.call(list); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED {
				t.Fatalf("unregistered read: %v", r)
			}
			send := &pb.ClientFrame{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: "g:x", ClientMsgId: "m", Envelope: &pb.Envelope{}}}}
			if r := c.call(send); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED {
				t.Fatalf("unregistered write: %v", r)
			}
			user := "user" + kind
			r := c.call(&pb.ClientFrame{Body: &pb.ClientFrame_Register{Register: &pb.RegisterRequest{UserId: user, IdentityKey: make([]byte, 32)}}})
			dev := core.KeyOf(r.GetRegister().GetDevice())
			if r.GetError() != nil || dev != (core.DeviceKey{User: user, Device: 1}) {
				t.Fatalf("register: %v", r)
			}
			rt, ok := v.be.routeOf(dev)
			if !ok || rt.Edge != "e1" || rt.Session == 0 {
				t.Fatalf("SessionOpened not called properly: %+v", rt)
			}
			if r := c.call(list); r.GetConversations().GetConversations()[0].GetConvId() != "g:owned"+user {
				t.Fatalf("read after register: %v", r)
			}
			// Reconnecting with the same key authenticates at once, and
			// replaces the first session (REPLACED, no reconnect).
			v.ik = true // and with the one-round-trip handshake
			c2 := v.connect(kind, key, dev.Addr())
			v.ik = false
			if r := c2.call(list); r.GetError() != nil {
				t.Fatalf("authenticated read: %v", r)
			}
			rt2, _ := v.be.routeOf(dev)
			if rt2.Session == rt.Session {
				t.Fatal("second session reused the session id")
			}
			code, d := c.expectClosed()
			if d.GetCode() != pb.ErrorCode_ERROR_CODE_REPLACED || d.GetReconnect() || code != pb.ErrorCode_ERROR_CODE_REPLACED {
				t.Fatalf("replaced session: code %v, disconnect %v", code, d)
			}
			waitFor(t, func() bool {
				for _, r := range v.be.closedRoutes() {
					if r.Device == dev && r.Session == rt.Session {
						return true
					}
				}
				return false
			})
		})
	}
}

func TestClaimedDeviceMustMatchKey(t *testing.T) {
	v := newEnv(t, nil)
	_, dev := v.registered("ws", "alice")
	// A new key claiming alice's device is refused.
	c := v.connect("ws", newKey(t), dev.Addr())
	code, d := c.expectClosed()
	if code != pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED || d.GetCode() != pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED {
		t.Fatalf("code %v, disconnect %v", code, d)
	}
}

func TestSendBecomesIngressRecord(t *testing.T) {
	v := newEnv(t, nil)
	ingress := v.tail("ingress")
	for _, kind := range []string{"ws", "wt"} {
		t.Run(kind, func(t *testing.T) {
			v.t = t
			c, dev := v.registered(kind, "sender"+kind)
			rt, _ := v.be.routeOf(dev)
			produced := v.e.Stats().Produced
			// Invalid requests are answered at once and produce nothing.
			for _, bad := range []*pb.ClientFrame{
				{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: "nope", ClientMsgId: "m1", Envelope: &pb.Envelope{}}}},
				{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: "g:abc", ClientMsgId: "", Envelope: &pb.Envelope{}}}},
				{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: "g:abc", ClientMsgId: string(make([]byte, 65)), Envelope: &pb.Envelope{}}}},
				{Body: &pb.ClientFrame_Ack{Ack: &pb.DeliveryAck{ConvId: "d:b:a", Seq: 1}}},
				{Body: &pb.ClientFrame_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{ConvId: "g:abc", Op: pb.MembershipOp_MEMBERSHIP_OP_CREATE}}},
			} {
				if r := c.call(bad); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT {
					t.Fatalf("%v: %v", bad, r)
				}
			}
			members := make([]string, core.MaxGroupMembers)
			for i := range members {
				members[i] = "u" + string(rune('a'+i%26))
			}
			big := &pb.ClientFrame{Body: &pb.ClientFrame_CreateGroup{CreateGroup: &pb.CreateGroupRequest{ConvId: "g:big", Members: members}}}
			if r := c.call(big); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_GROUP_FULL {
				t.Fatalf("oversized group: %v", r)
			}
			conv := core.DirectConvID("sender"+kind, "zed")
			env := &pb.Envelope{Ciphertext: []byte("opaque"), PerDevice: []*pb.DeviceCiphertext{{Device: &pb.DeviceAddr{UserId: "zed", DeviceId: 1}, Ciphertext: []byte("x")}}}
			c.send(&pb.ClientFrame{ReqId: 77, Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: conv, ClientMsgId: "cm-1", Envelope: env}}})
			var rec core.BusRecord
			select {
			case rec = <-ingress:
			case <-time.After(10 * time.Second):
				t.Fatal("no ingress record")
			}
			var ir pb.IngressRecord
			if err := proto.Unmarshal(rec.Value, &ir); err != nil {
				t.Fatal(err)
			}
			o := ir.GetOrigin()
			if string(rec.Key) != conv || o.GetEdgeId() != "e1" || o.GetSessionId() != rt.Session || o.GetReqId() != 77 ||
				core.KeyOf(o.GetDevice()) != dev || ir.GetReceivedAtMs() == 0 {
				t.Fatalf("record key %q origin %v", rec.Key, o)
			}
			if !proto.Equal(ir.GetSend().GetEnvelope(), env) || ir.GetSend().GetClientMsgId() != "cm-1" {
				t.Fatalf("op %v", ir.GetOp())
			}
			// Frames are handled in order: once the ping after the send is
			// answered, the send's produce has returned, so the count says
			// whether anything besides it (a refused request) was produced.
			c.ping()
			if got := v.e.Stats().Produced; got != produced+1 {
				t.Fatalf("%d records produced for one valid send", got-produced)
			}
		})
	}
}

func TestEdgeRecordRouting(t *testing.T) {
	v := newEnv(t, nil)
	a1, dA1 := v.registered("ws", "alice")
	// alice's second device links; the double just numbers devices.
	a2, dA2 := v.registered("wt", "alice")
	b1, dB1 := v.registered("ws", "bob")
	rtA1, _ := v.be.routeOf(dA1)
	topic := edge.EdgeTopic("e1")

	// A reply to one session reaches that session only.
	ack := &pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: &pb.Response{ReqId: 9, Body: &pb.Response_Send{Send: &pb.SendAck{Seq: 1}}}}}
	v.produce(topic, "k", &pb.EdgeRecord{SessionId: rtA1.Session, Targets: []*pb.DeviceAddr{dA1.Addr()}, Frame: ack})
	if r := a1.recv().GetResponse(); r.GetReqId() != 9 || r.GetSend().GetSeq() != 1 {
		t.Fatalf("a1 got %v", r)
	}
	// A delivery to alice's two devices: each sees only its own per-device entry.
	msg := &pb.Message{ConvId: "g:grp", Seq: 5, Envelope: &pb.Envelope{
		Ciphertext: []byte("shared"),
		PerDevice: []*pb.DeviceCiphertext{
			{Device: dA1.Addr(), Ciphertext: []byte("for-a1")},
			{Device: dA2.Addr(), Ciphertext: []byte("for-a2")},
			{Device: dB1.Addr(), Ciphertext: []byte("for-b1")},
		}}}
	v.produce(topic, "k", &pb.EdgeRecord{Targets: []*pb.DeviceAddr{dA1.Addr(), dA2.Addr()},
		Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: msg}}})
	for _, x := range []struct {
		c    *client
		want string
	}{{a1, "for-a1"}, {a2, "for-a2"}} {
		d := x.c.recv().GetDelivery()
		pd := d.GetEnvelope().GetPerDevice()
		if d.GetSeq() != 5 || string(d.GetEnvelope().GetCiphertext()) != "shared" || len(pd) != 1 || string(pd[0].GetCiphertext()) != x.want {
			t.Fatalf("delivery %v, want only %s", d, x.want)
		}
	}
	// a2 and bob got nothing before this marker; a1 and a2 nothing after the delivery.
	marker := &pb.ServerFrame{Body: &pb.ServerFrame_Typing{Typing: &pb.TypingEvent{ConvId: "g:grp", Typing: true}}}
	v.produce(topic, "k", &pb.EdgeRecord{Targets: []*pb.DeviceAddr{dA1.Addr(), dA2.Addr(), dB1.Addr()}, Frame: marker})
	for name, c := range map[string]*client{"a1": a1, "a2": a2, "b1": b1} {
		if f := c.recv(); f.GetTyping() == nil {
			t.Fatalf("%s: first frame after the marker was produced is %v, want the marker", name, f)
		}
	}
	// A reply for a session that is gone is dropped without harm.
	v.produce(topic, "k", &pb.EdgeRecord{SessionId: 12345, Frame: ack})
	a1.ping()
}

// TestEdgeRecordBundle: the records of a bundle reach their sessions in
// the bundle's order, as if each were a record of its own; a bad record
// in a bundle (a bundle inside it, a frame that does not decode) is
// skipped alone, and a bundle with a frame of its own is skipped whole.
func TestEdgeRecordBundle(t *testing.T) {
	v := newEnv(t, nil)
	a1, dA1 := v.registered("ws", "alice")
	b1, dB1 := v.registered("ws", "bob")
	rtA1, _ := v.be.routeOf(dA1)
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	delivery := func(seq uint64) []byte {
		return enc(&pb.EdgeRecord{Targets: []*pb.DeviceAddr{dB1.Addr()}, Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: &pb.Message{ConvId: "g:grp", Seq: seq}}}})
	}
	reply := enc(&pb.EdgeRecord{SessionId: rtA1.Session, Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: &pb.Response{ReqId: 7}}}})
	badFrame := core.AppendEdgeRecord(nil, []core.DeviceKey{dB1}, []byte{0xff})
	var bundle []byte
	for _, r := range [][]byte{delivery(1), reply, core.AppendBundled(nil, delivery(99)), delivery(2), badFrame, delivery(3)} {
		bundle = core.AppendBundled(bundle, r)
	}
	produce := func(b []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := v.bus.Produce(ctx, core.BusRecord{Topic: edge.EdgeTopic("e1"), Key: []byte("k"), Value: b}); err != nil {
			t.Fatal(err)
		}
	}
	produce(bundle)
	produce(core.AppendBundled(delivery(100), delivery(101))) // a frame of its own and a bundle: skipped
	produce(delivery(4))
	for _, want := range []uint64{1, 2, 3, 4} {
		if d := b1.recv().GetDelivery(); d.GetSeq() != want {
			t.Fatalf("bob got %v, want seq %d", d, want)
		}
	}
	if r := a1.recv().GetResponse(); r.GetReqId() != 7 {
		t.Fatalf("alice got %v, want the reply", r)
	}
	if st := v.e.Stats(); st.EdgeBundles != 1 {
		t.Fatalf("EdgeBundles %d, want 1 (the bundle with a frame of its own is skipped before it counts)", st.EdgeBundles)
	}
}

func TestPresence(t *testing.T) {
	v := newEnv(t, nil)
	c, _ := v.registered("ws", "alice")
	v.be.mu.Lock()
	v.be.snapshot = &pb.PresenceSnapshot{Users: []*pb.PresenceEvent{{UserId: "bob", Online: false, LastSeenMs: 7}}}
	v.be.mu.Unlock()
	sub := &pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: []string{"bob"}}}}
	if r := c.call(sub); r.GetPresence().GetUsers()[0].GetLastSeenMs() != 7 {
		t.Fatalf("snapshot %v", r)
	}
	v.produce("presence", "carol", &pb.PresenceRecord{Event: &pb.PresenceEvent{UserId: "carol", Online: true}})
	v.produce("presence", "bob", &pb.PresenceRecord{Event: &pb.PresenceEvent{UserId: "bob", Online: true}})
	if p := c.recv().GetPresence(); p.GetUserId() != "bob" || !p.GetOnline() {
		t.Fatalf("presence %v (carol must not arrive)", p)
	}
	// Replacing the set with carol: bob's events stop.
	v.be.mu.Lock()
	v.be.snapshot = nil // permit everyone
	v.be.mu.Unlock()
	sub.GetPresenceSubscribe().Users = []string{"carol"}
	c.call(sub)
	v.produce("presence", "bob", &pb.PresenceRecord{Event: &pb.PresenceEvent{UserId: "bob", Online: false}})
	v.produce("presence", "carol", &pb.PresenceRecord{Event: &pb.PresenceEvent{UserId: "carol", Online: false}})
	if p := c.recv().GetPresence(); p.GetUserId() != "carol" {
		t.Fatalf("presence %v", p)
	}
}

func TestMalformedAndOversizedFrames(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.MaxFrameBytes = 1024 })
	for _, kind := range []string{"ws", "wt"} {
		t.Run(kind, func(t *testing.T) {
			v.t = t
			c, _ := v.registered(kind, "m"+kind)
			if c.hello.GetMaxFrameBytes() != 1024 {
				t.Fatal("server hello must announce the frame limit")
			}
			c.sendRaw([]byte{0xff, 0xff, 0xff}) // not a protobuf
			if r := c.recv().GetResponse(); r.GetReqId() != 0 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME {
				t.Fatalf("malformed: %v", r)
			}
			c.send(&pb.ClientFrame{ReqId: 3}) // no body
			if r := c.recv().GetResponse(); r.GetReqId() != 3 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME {
				t.Fatalf("empty: %v", r)
			}
			big, _ := proto.Marshal(&pb.ClientFrame{ReqId: 7, Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
				ConvId: "g:x", ClientMsgId: "m", Envelope: &pb.Envelope{Ciphertext: make([]byte, 2000)}}}})
			c.sendRaw(big)
			if r := c.recv().GetResponse(); r.GetReqId() != 7 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE {
				t.Fatalf("oversized: %v", r)
			}
			c.ping() // the session survived, nonces in step
		})
	}
}

func TestOverNoiseLimitDisconnects(t *testing.T) {
	v := newEnv(t, nil)
	c, _ := v.registered("ws", "huge")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Bypass the client's Noise layer: one WebSocket message above 65535 bytes.
	if err := c.ws.Write(ctx, websocket.MessageBinary, make([]byte, noiseconn.MaxMessage+100)); err != nil {
		t.Fatal(err)
	}
	code, d := c.expectClosed()
	if d.GetCode() != pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE || code != pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE {
		t.Fatalf("code %v, disconnect %v", code, d)
	}
}

func TestGarbageHandshake(t *testing.T) {
	v := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Run("ws", func(t *testing.T) {
		ws := v.dialWSRaw()
		if err := ws.Write(ctx, websocket.MessageBinary, []byte("GET / HTTP/1.1\r\n")); err != nil {
			t.Fatal(err)
		}
		_, _, err := ws.Read(ctx)
		if s := websocket.CloseStatus(err); s != edge.CloseCodeBase+websocket.StatusCode(pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED) {
			t.Fatalf("close status %d (%v)", s, err)
		}
	})
	t.Run("wt", func(t *testing.T) {
		v.t = t
		sess, str := v.dialWTRaw()
		if _, err := str.Write([]byte{0, 5, 1, 2, 3, 4, 5}); err != nil {
			t.Fatal(err)
		}
		if code := wtCode(t, sess); code != pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED {
			t.Fatalf("code %v", code)
		}
	})
	if v.e.Stats().HandshakeFailures < 2 {
		t.Fatalf("stats %+v", v.e.Stats())
	}
}

func TestConnectionLimitPerIP(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.MaxConnsPerIP = 2 })
	a := v.connect("ws", newKey(t), nil)
	b := v.connect("wt", newKey(t), nil)
	ws := v.dialWSRaw()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := ws.Read(ctx)
	if s := websocket.CloseStatus(err); s != edge.CloseCodeBase+websocket.StatusCode(pb.ErrorCode_ERROR_CODE_TOO_MANY_CONNECTIONS) {
		t.Fatalf("third connection: status %d (%v)", s, err)
	}
	sess, _ := v.dialWTRaw()
	if code := wtCode(t, sess); code != pb.ErrorCode_ERROR_CODE_TOO_MANY_CONNECTIONS {
		t.Fatalf("third connection over WebTransport: %v", code)
	}
	a.ping()
	b.ping()
	// Closing one frees a slot.
	_ = a.nc.Close()
	waitFor(t, func() bool { return v.e.Stats().Sessions == 1 })
	v.connect("ws", newKey(t), nil).ping()
}

func TestRateLimitPerDevice(t *testing.T) {
	// A frozen clock: no refill, so exactly Burst frames pass.
	frozen := time.Unix(1_800_000_000, 0)
	v := newEnv(t, func(c *edge.Config) {
		c.MessagesPerSecond, c.Burst = 5, 5
		c.Now = func() time.Time { return frozen }
	})
	flooder, fdev := v.registered("ws", "flood") // register used 1 token
	victim, _ := v.registered("wt", "victim")
	ingress := v.tail("ingress")
	const n = 40
	for i := range n {
		flooder.send(&pb.ClientFrame{ReqId: uint64(100 + i), Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
			ConvId: "g:room", ClientMsgId: "m" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Envelope: &pb.Envelope{}}}})
	}
	flooder.send(&pb.ClientFrame{Body: &pb.ClientFrame_Typing{Typing: &pb.TypingRequest{ConvId: "g:room", Typing: true}}})
	limited := 0
	for range n - 4 {
		r := flooder.recv().GetResponse()
		if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
			t.Fatalf("want RATE_LIMITED, got %v", r)
		}
		limited++
	}
	victim.ping() // unaffected
	for range 4 {
		select {
		case <-ingress:
		case <-time.After(10 * time.Second):
			t.Fatal("the 4 sends within budget were not produced")
		}
	}
	st := v.e.Stats()
	if st.RateLimited != n-4 || st.TypingDropped != 1 || st.Produced != 4 {
		t.Fatalf("stats %+v", st)
	}
	select {
	case r := <-ingress:
		t.Fatalf("over-budget frame produced: %q", r.Key)
	case <-time.After(200 * time.Millisecond):
	}
	// Reconnecting does not refill the device's bucket.
	again := v.connect("wt", flooder.key, fdev.Addr())
	ping := &pb.ClientFrame{Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{}}}
	if r := again.call(ping); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
		t.Fatalf("after reconnect: %v", r)
	}
}

func TestIdleTimeout(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.IdleTimeout = 300 * time.Millisecond })
	for _, kind := range []string{"ws", "wt"} {
		t.Run(kind, func(t *testing.T) {
			v.t = t
			c, _ := v.registered(kind, "idle"+kind)
			code, d := c.expectClosed()
			if d.GetCode() != pb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT || !d.GetReconnect() || code != pb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT {
				t.Fatalf("code %v, disconnect %v", code, d)
			}
		})
	}
}

func TestGracefulShutdown(t *testing.T) {
	v := newEnv(t, nil)
	ws, dWS := v.registered("ws", "alice")
	wt, dWT := v.registered("wt", "bob")
	anon := v.connect("ws", newKey(t), nil)
	anon.ping()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- v.e.Shutdown(ctx) }()
	for name, c := range map[string]*client{"ws": ws, "wt": wt, "anon": anon} {
		code, d := c.expectClosed()
		if name == "wt" && code == -1 {
			// The edge closes its QUIC listener when the sessions are
			// done; that may overtake the session's close capsule. The
			// Disconnect frame is the signal clients act on.
			code = pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN
		}
		if d.GetCode() != pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN || !d.GetReconnect() || code != pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN {
			t.Fatalf("%s: code %v, disconnect %v", name, code, d)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := v.e.Shutdown(ctx); err != nil {
		t.Fatal("second Shutdown:", err)
	}
	closed := map[core.DeviceKey]bool{}
	for _, r := range v.be.closedRoutes() {
		closed[r.Device] = true
	}
	if !closed[dWS] || !closed[dWT] || len(closed) != 2 {
		t.Fatalf("SessionClosed for %v", closed)
	}
	if st := v.e.Stats(); st.Sessions != 0 {
		t.Fatalf("sessions left: %+v", st)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached in 10 s")
}

func TestOriginPatterns(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.OriginPatterns = []string{"app.example"} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for origin, ok := range map[string]bool{"https://app.example": true, "https://evil.example": false} {
		c, resp, err := websocket.Dial(ctx, v.e.WSURL(), &websocket.DialOptions{HTTPHeader: map[string][]string{"Origin": {origin}}})
		if ok != (err == nil) {
			t.Fatalf("origin %s: err %v", origin, err)
		}
		if err == nil {
			_ = c.CloseNow()
		} else if resp == nil || resp.StatusCode != 403 {
			t.Fatalf("origin %s: response %v", origin, resp)
		}
	}
}

// A session whose device connected again on another edge is ended by the
// region (an EdgeRecord naming the session with Disconnect REPLACED): it
// gets the Disconnect and closes; other sessions are untouched.
func TestRegionEndsSessionReplacedElsewhere(t *testing.T) {
	v := newEnv(t, nil)
	a1, dA1 := v.registered("ws", "alice")
	b1, _ := v.registered("ws", "bob")
	rtA1, _ := v.be.routeOf(dA1)
	v.produce(edge.EdgeTopic("e1"), "k", &pb.EdgeRecord{SessionId: rtA1.Session, Targets: []*pb.DeviceAddr{dA1.Addr()},
		Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Disconnect{Disconnect: &pb.Disconnect{Code: pb.ErrorCode_ERROR_CODE_REPLACED, Detail: "elsewhere"}}}})
	code, d := a1.expectClosed()
	if code != pb.ErrorCode_ERROR_CODE_REPLACED || d.GetCode() != pb.ErrorCode_ERROR_CODE_REPLACED {
		t.Fatalf("replaced elsewhere: code %v, disconnect %v", code, d)
	}
	b1.ping()
}
