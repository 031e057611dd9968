package region

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region/kafkabus"
	"github.com/chatmesh/chatmesh/region/pebblestore"
)

// fuzzRegion is a real region (embedded broker, Pebble) that is not
// consuming: the fuzz targets call its handlers directly.
func fuzzRegion(f *testing.F) *Region {
	ctx := context.Background()
	emb, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { emb.Close() })
	bus, err := kafkabus.New(kafkabus.Config{Brokers: emb.Addrs()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { bus.Close() })
	st, err := pebblestore.Open(f.TempDir(), pebblestore.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	r, err := New(Config{}, st, bus)
	if err != nil {
		f.Fatal(err)
	}
	for _, topic := range []string{EdgeTopic("e"), DefaultPresenceTopic} {
		if err := bus.EnsureTopic(ctx, topic, 1); err != nil {
			f.Fatal(err)
		}
	}
	api := r.API()
	for _, u := range []string{"alice", "bob"} {
		static := bytes.Repeat([]byte(u[:1]), 32)
		priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte(u[:1]), ed25519.SeedSize))
		req := &pb.RegisterRequest{UserId: u, IdentityKey: priv.Public().(ed25519.PublicKey),
			IdentityProof: ed25519.Sign(priv, core.RegisterProofMessage(u, static))}
		if _, err := api.Register(ctx, static, req); err != nil {
			f.Fatal(err)
		}
	}
	return r
}

// FuzzIngress feeds arbitrary ingress records to the sequencer: it must
// never panic, and must answer or drop every record without asking for a
// retry (a retry of a bad record would stall its partition forever).
func FuzzIngress(f *testing.F) {
	r := fuzzRegion(f)
	origin := &pb.Origin{EdgeId: "e", SessionId: 1, ReqId: 1, Device: core.DeviceKey{User: "alice", Device: 1}.Addr()}
	g := core.GroupID("alice", "f")
	seeds := []*pb.IngressRecord{
		{Origin: origin, Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{ConvId: "d:alice:bob", ClientMsgId: "1", Envelope: &pb.Envelope{Ciphertext: []byte("x")}}}},
		{Origin: origin, Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{ConvId: g, Members: []string{"bob"}}}},
		{Origin: origin, Op: &pb.IngressRecord_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{ConvId: g, Op: pb.MembershipOp_MEMBERSHIP_OP_REMOVE, Users: []string{"bob"}, ClientMsgId: "rm"}}},
		{Origin: origin, Op: &pb.IngressRecord_Ack{Ack: &pb.DeliveryAck{ConvId: "d:alice:bob", Seq: 99}}},
		{Origin: origin, Op: &pb.IngressRecord_Read{Read: &pb.ReadMarker{ConvId: "d:alice:bob", Seq: 1}}},
		{Origin: origin, Op: &pb.IngressRecord_Typing{Typing: &pb.TypingRequest{ConvId: g, Typing: true}}},
		{Origin: origin, Op: &pb.IngressRecord_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{ConvId: g, Op: pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, Users: []string{"bob"}, ClientMsgId: "p"}}},
		{Origin: origin, Op: &pb.IngressRecord_ModifyMembers{ModifyMembers: &pb.ModifyMembersRequest{ConvId: g, Op: pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE, Title: "t", ClientMsgId: "t"}}},
		{Origin: &pb.Origin{}, Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{ConvId: "d:alice:bob"}}},
	}
	for _, s := range seeds {
		b, _ := proto.Marshal(s)
		f.Add(b)
	}
	f.Add([]byte{0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := r.handleIngress(context.Background(), core.BusRecord{Value: b}); err != nil {
			t.Fatalf("record %x asks for a retry: %v", b, err)
		}
	})
}

// FuzzBackendCall feeds arbitrary bodies to the edge RPC handler: it must
// answer every one (never panic) with 200 and a decodable reply, or 400.
func FuzzBackendCall(f *testing.F) {
	r := fuzzRegion(f)
	h := r.API().Handler("")
	seeds := []*pb.BackendCall{
		{Call: &pb.BackendCall_Authenticate{Authenticate: bytes.Repeat([]byte("a"), 32)}},
		{Call: &pb.BackendCall_Query{Query: &pb.BackendQuery{Device: core.DeviceKey{User: "alice", Device: 1}.Addr(), Frame: &pb.ClientFrame{Body: &pb.ClientFrame_Sync{Sync: &pb.SyncRequest{}}}}}},
		{Call: &pb.BackendCall_SessionOpened{SessionOpened: &pb.BackendRoute{Device: core.DeviceKey{User: "bob", Device: 1}.Addr(), EdgeId: "e", SessionId: 3}}},
		{Call: &pb.BackendCall_Register{Register: &pb.BackendRegister{NoiseStatic: []byte("short"), Request: &pb.RegisterRequest{UserId: "alice"}}}},
	}
	for _, s := range seeds {
		b, _ := proto.Marshal(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, BackendPath, bytes.NewReader(b)))
		switch rec.Code {
		case http.StatusOK:
			var reply pb.BackendReply
			if err := proto.Unmarshal(rec.Body.Bytes(), &reply); err != nil {
				t.Fatalf("undecodable reply: %v", err)
			}
		case http.StatusBadRequest:
		default:
			t.Fatalf("status %d", rec.Code)
		}
	})
}
