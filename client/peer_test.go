package client

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// testPeer is a scripted, in-memory chatmesh edge+region speaking the real
// wire protocol (WebSocket, Noise XX, pb frames) on loopback. It exists to
// drive the client through situations the real stack produces rarely and
// unpredictably — a lost SendAck, a skipped live push, a page boundary, a
// transient rejection — and to check exactly what the client put on the
// wire. It sequences gaplessly and deduplicates on (conv, device,
// client_msg_id) like the real sequencer.
type testPeer struct {
	t      *testing.T
	srv    *httptest.Server
	static noiseconn.Keypair

	mu         sync.Mutex
	devices    map[string]core.DeviceKey // noise static -> device
	nextDev    map[string]uint32
	convs      map[string][]*pb.Message
	members    map[string][]string
	dedupe     map[string]uint64
	acks       map[string]uint64 // "conv|device" -> highest DeliveryAck
	sends      map[string]int    // client_msg_id -> times received
	sessions   map[*peerSession]struct{}
	pageSize   int
	dropReply  int            // drop the next n SendAck replies (and close the session)
	rejectN    int            // answer the next n sends with UNAVAILABLE without storing
	skipPush   map[uint64]int // seq -> do not push live
	mutePings  bool           // leave pings unanswered (a half-open connection)
	pings      int
	ackFrames  map[core.DeviceKey]int
	ignoreAcks bool                         // lose acks (as if the session died before they were processed)
	keys       peerKeys                     // end-to-end key directory (e2ee_peer_test.go)
	modifies   []*pb.ModifyMembersRequest   // every modify_members received, in order
	dropModify int                          // close the session instead of answering the next n modify_members
	presence   map[string]*pb.PresenceEvent // presence_subscribe answers: the known users' state
}

type peerSession struct {
	nc  *noiseconn.Conn
	dev core.DeviceKey
	mu  sync.Mutex
}

func newTestPeer(t *testing.T) *testPeer {
	kp, err := noiseconn.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPeer{t: t, static: kp, devices: map[string]core.DeviceKey{}, nextDev: map[string]uint32{},
		convs: map[string][]*pb.Message{}, members: map[string][]string{}, dedupe: map[string]uint64{},
		acks: map[string]uint64{}, sends: map[string]int{}, sessions: map[*peerSession]struct{}{},
		pageSize: 3, skipPush: map[uint64]int{}, ackFrames: map[core.DeviceKey]int{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		p.dropAll()
		p.srv.Close()
	})
	return p
}

func (p *testPeer) url() string { return "ws" + strings.TrimPrefix(p.srv.URL, "http") }

type peerWS struct{ c *websocket.Conn }

func (w peerWS) ReadMessage(ctx context.Context) ([]byte, error) {
	_, b, err := w.c.Read(ctx)
	return b, err
}
func (w peerWS) WriteMessage(ctx context.Context, b []byte) error {
	return w.c.Write(ctx, websocket.MessageBinary, b)
}
func (w peerWS) Close() error { return w.c.CloseNow() }

func (p *testPeer) serve(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	ctx := r.Context()
	hello, _ := proto.Marshal(&pb.ServerHello{ProtocolVersion: 1, EdgeId: "peer", Region: "test"})
	nc, err := noiseconn.Server(ctx, peerWS{c}, noiseconn.ServerConfig{Static: p.static, Payload: hello})
	if err != nil {
		c.CloseNow()
		return
	}
	var ch pb.ClientHello
	if err := proto.Unmarshal(nc.PeerPayload(), &ch); err != nil {
		nc.Close()
		return
	}
	s := &peerSession{nc: nc}
	p.mu.Lock()
	dev, known := p.devices[string(nc.PeerStatic())]
	if ch.GetDevice() != nil && (!known || core.KeyOf(ch.GetDevice()) != dev) {
		p.mu.Unlock()
		c.Close(websocket.StatusCode(closeCodeBase+int(pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)), "unknown device")
		return
	}
	s.dev = dev
	p.sessions[s] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.sessions, s)
		p.mu.Unlock()
		nc.Close()
	}()
	for {
		b, err := nc.Recv(ctx)
		if err != nil {
			return
		}
		var f pb.ClientFrame
		if err := proto.Unmarshal(b, &f); err != nil {
			return
		}
		if !p.handle(s, &f) {
			return
		}
	}
}

func (p *testPeer) write(s *peerSession, f *pb.ServerFrame) {
	b, _ := proto.Marshal(f)
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.nc.Send(context.Background(), b)
}

func (p *testPeer) reply(s *peerSession, id uint64, r *pb.Response) {
	r.ReqId = id
	p.write(s, &pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: r}})
}

// handle processes one frame; false closes the session.
func (p *testPeer) handle(s *peerSession, f *pb.ClientFrame) bool {
	p.mu.Lock()
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_Register:
		u := b.Register.GetUserId()
		p.nextDev[u]++
		key := core.DeviceKey{User: u, Device: p.nextDev[u]}
		p.devices[string(s.nc.PeerStatic())] = key
		p.mu.Unlock()
		p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Register{Register: &pb.RegisterResponse{Device: key.Addr()}}})
		return true
	case *pb.ClientFrame_Send:
		req := b.Send
		p.sends[req.GetClientMsgId()]++
		if p.rejectN > 0 {
			p.rejectN--
			p.mu.Unlock()
			p.reply(s, f.GetReqId(), &pb.Response{Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, Detail: "try later"}})
			return true
		}
		conv := req.GetConvId()
		if a, bb, ok := core.ParseDirect(conv); ok && p.members[conv] == nil {
			p.members[conv] = []string{a, bb}
		}
		if !slices.Contains(p.members[conv], s.dev.User) {
			p.mu.Unlock()
			p.reply(s, f.GetReqId(), &pb.Response{Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_NOT_MEMBER, Detail: "no"}})
			return true
		}
		key := conv + "|" + s.dev.String() + "|" + req.GetClientMsgId()
		seq, dup := p.dedupe[key]
		var m *pb.Message
		if !dup {
			seq = uint64(len(p.convs[conv])) + 1
			m = &pb.Message{ConvId: conv, Seq: seq, MsgId: fmt.Sprintf("m%d", seq), Sender: s.dev.Addr(),
				ClientMsgId: req.GetClientMsgId(), SentAtMs: 1000 + int64(seq), Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: req.GetEnvelope()}
			p.convs[conv] = append(p.convs[conv], m)
			p.dedupe[key] = seq
		}
		drop := p.dropReply > 0
		if drop {
			p.dropReply--
		}
		var targets []*peerSession
		if m != nil && p.skipPush[seq] == 0 {
			for o := range p.sessions {
				if o != s && slices.Contains(p.members[conv], o.dev.User) {
					targets = append(targets, o)
				}
			}
		}
		if p.skipPush[seq] > 0 {
			p.skipPush[seq]--
		}
		p.mu.Unlock()
		for _, o := range targets {
			p.write(o, &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: m}})
		}
		if drop {
			return false // the ack is lost with the connection
		}
		p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Send{Send: &pb.SendAck{ConvId: conv, ClientMsgId: req.GetClientMsgId(), Seq: seq, MsgId: fmt.Sprintf("m%d", seq)}}})
		return true
	case *pb.ClientFrame_Ack:
		if p.ignoreAcks {
			p.mu.Unlock()
			return true
		}
		k := b.Ack.GetConvId() + "|" + s.dev.String()
		p.acks[k] = max(p.acks[k], b.Ack.GetSeq())
		p.ackFrames[s.dev]++
		p.mu.Unlock()
		if f.GetReqId() != 0 {
			p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}})
		}
		return true
	case *pb.ClientFrame_Sync:
		after := map[string]uint64{}
		for _, c := range b.Sync.GetCursors() {
			after[c.GetConvId()] = c.GetAfterSeq()
		}
		var out []*pb.Message
		more := false
		convs := make([]string, 0, len(p.convs))
		for c := range p.convs {
			convs = append(convs, c)
		}
		slices.Sort(convs)
		for _, c := range convs {
			if !slices.Contains(p.members[c], s.dev.User) {
				continue
			}
			for _, m := range p.convs[c][min(after[c], uint64(len(p.convs[c]))):] {
				if len(out) == p.pageSize {
					more = true
					break
				}
				out = append(out, m)
			}
		}
		p.mu.Unlock()
		p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Sync{Sync: &pb.SyncResponse{Messages: out, More: more}}})
		return true
	case *pb.ClientFrame_UploadPrekeys, *pb.ClientFrame_FetchBundle, *pb.ClientFrame_PublishDeviceList,
		*pb.ClientFrame_FetchDeviceList, *pb.ClientFrame_LookupUser:
		r := p.handleKeys(s.dev, f)
		p.mu.Unlock()
		p.reply(s, f.GetReqId(), r)
		return true
	case *pb.ClientFrame_ModifyMembers:
		// Recorded, applied once per (device, client_msg_id) as the region
		// would, and answered with the group's members.
		req := b.ModifyMembers
		p.modifies = append(p.modifies, req)
		key := req.GetConvId() + "|" + s.dev.String() + "|" + req.GetClientMsgId()
		if _, dup := p.dedupe[key]; !dup {
			conv := req.GetConvId()
			p.dedupe[key] = uint64(len(p.convs[conv])) + 1
			m := &pb.Message{ConvId: conv, Seq: p.dedupe[key], Sender: s.dev.Addr(), ClientMsgId: req.GetClientMsgId(),
				Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP, Membership: &pb.MembershipChange{Op: req.GetOp(), Actor: s.dev.User, Users: req.GetUsers(), Title: req.GetTitle()}}
			p.convs[conv] = append(p.convs[conv], m)
		}
		drop := p.dropModify > 0
		if drop {
			p.dropModify--
		}
		info := &pb.ConversationInfo{ConvId: req.GetConvId(), Members: p.members[req.GetConvId()], HeadSeq: uint64(len(p.convs[req.GetConvId()]))}
		p.mu.Unlock()
		if drop {
			return false
		}
		p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Conversation{Conversation: info}})
		return true
	case *pb.ClientFrame_PresenceSubscribe:
		snap := &pb.PresenceSnapshot{}
		for _, u := range b.PresenceSubscribe.GetUsers() {
			if ev := p.presence[u]; ev != nil {
				snap.Users = append(snap.Users, proto.Clone(ev).(*pb.PresenceEvent))
			}
		}
		p.mu.Unlock()
		p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Presence{Presence: snap}})
		return true
	case *pb.ClientFrame_Ping:
		p.pings++
		mute := p.mutePings
		p.mu.Unlock()
		if mute {
			return true
		}
		p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Pong{Pong: &pb.Pong{ClientTimeMs: b.Ping.GetClientTimeMs()}}})
		return true
	default:
		p.mu.Unlock()
		if f.GetReqId() != 0 {
			p.reply(s, f.GetReqId(), &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}})
		}
		return true
	}
}

// dropAll closes every session (an edge restart).
func (p *testPeer) dropAll() {
	p.mu.Lock()
	ss := make([]*peerSession, 0, len(p.sessions))
	for s := range p.sessions {
		ss = append(ss, s)
	}
	p.mu.Unlock()
	for _, s := range ss {
		s.nc.Close()
	}
}

func (p *testPeer) ackOf(conv string, dev core.DeviceKey) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acks[conv+"|"+dev.String()]
}

// push delivers an arbitrary entry to every session of user (for
// reordering and duplication tests).
func (p *testPeer) push(user string, m *pb.Message) {
	p.mu.Lock()
	var targets []*peerSession
	for s := range p.sessions {
		if s.dev.User == user {
			targets = append(targets, s)
		}
	}
	p.mu.Unlock()
	for _, s := range targets {
		p.write(s, &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: m}})
	}
}
