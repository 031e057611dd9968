package e2ee

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/vectors"
)

func loadVectors(t *testing.T) *vectors.Vectors {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "crypto", "vectors", "testdata", "e2e-vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v vectors.Vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// TestVectorsAssociatedData ties the sealer's associated data and inner
// payload framing to the end-to-end test vectors (E2E.md §9), so the
// vectors describe what this client really sends.
func TestVectorsAssociatedData(t *testing.T) {
	v := loadVectors(t)
	if core.KindOf(v.DirectConv) != pb.ConversationKind_CONVERSATION_KIND_DIRECT || !core.GroupCreatedBy(v.GroupConv, v.Alice.UserID) {
		t.Fatalf("vector conversation ids %q, %q are not valid", v.DirectConv, v.GroupConv)
	}
	dev := map[string]core.DeviceKey{
		v.Alice.UserID: {User: v.Alice.UserID, Device: v.Alice.DeviceID},
		v.Bob.UserID:   {User: v.Bob.UserID, Device: v.Bob.DeviceID},
	}
	peer := map[string]string{v.Alice.UserID: v.Bob.UserID, v.Bob.UserID: v.Alice.UserID}
	for _, m := range v.Messages {
		conv := v.DirectConv
		want := byte(innerBody)
		if m.Index == v.Group.DistributionMessage {
			conv, want = v.GroupConv, innerDistribution
		}
		if got := pairAD(conv, dev[m.From], dev[peer[m.From]]); !bytes.Equal(got, m.AD) {
			t.Fatalf("message %d: pairAD %x, vector %x", m.Index, got, m.AD)
		}
		if m.Plaintext[0] != want {
			t.Fatalf("message %d: inner type %d, want %d", m.Index, m.Plaintext[0], want)
		}
	}
	if got := groupAD(v.GroupConv, dev[v.Alice.UserID]); !bytes.Equal(got, v.Group.AD) {
		t.Fatalf("groupAD %x, vector %x", got, v.Group.AD)
	}
}

// TestVectorsOpenWithSealer hands the vector ciphertexts, wrapped in the
// envelopes the server would deliver (E2E.md §9.3, §9.4), to a real Sealer
// holding Bob's keys from the vector file: the Go client's receive path
// opens every message Alice sent, in the recorded delivery order,
// including the late initial message (routed by its token) and the group
// messages whose sender key rides in the first group envelope.
func TestVectorsOpenWithSealer(t *testing.T) {
	v := loadVectors(t)
	ctx := context.Background()
	bobID, err := identity.ParsePrivate(append(append([]byte{1}, v.Bob.IdentitySeed...), v.Bob.IdentityDH...))
	if err != nil {
		t.Fatal(err)
	}
	alice := core.DeviceKey{User: v.Alice.UserID, Device: v.Alice.DeviceID}
	bob := core.DeviceKey{User: v.Bob.UserID, Device: v.Bob.DeviceID}
	d := newTestKeyDirectory()
	d.lists[v.Alice.UserID] = v.Alice.DeviceList
	d.lists[v.Bob.UserID] = v.Bob.DeviceList
	d.members[v.GroupConv] = []string{v.Alice.UserID, v.Bob.UserID}
	// The ratchet keys Bob draws while receiving are the vector's.
	var bobKeys []byte
	for _, k := range v.Bob.RatchetKeys {
		bobKeys = append(bobKeys, k...)
	}
	s, err := New(Config{Dir: t.TempDir(), Identity: bobID, Directory: dirConn{d, &bob}, ListTTL: -1,
		Self: func() (core.DeviceKey, bool) { return bob, true }, Rand: bytes.NewReader(bobKeys)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Bob's prekeys from the vectors, stored as the sealer stores its own.
	spk, err := prekey.NewSignedPrekey(bobID, v.Bob.SignedPrekey.ID, bytes.NewReader(v.Bob.SignedPrekey.Private))
	if err != nil {
		t.Fatal(err)
	}
	kpk, err := prekey.NewKEMPrekeyFromSeed(bobID, v.Bob.KEMPrekey.ID, v.Bob.KEMPrekey.Seed)
	if err != nil {
		t.Fatal(err)
	}
	otps, err := prekey.NewOneTimePrekeys(v.Bob.OneTimePrekey.ID, 1, bytes.NewReader(v.Bob.OneTimePrekey.Private))
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := spk.MarshalBinary()
	kb, _ := kpk.MarshalBinary()
	ob, _ := otps[0].MarshalBinary()
	s.kv.put(u32key("spk/", spk.ID), sb)
	s.kv.put(u32key("kpk/", kpk.ID), kb)
	s.kv.put(u32key("otp/", otps[0].ID), ob)
	if err := s.kv.commit(); err != nil {
		t.Fatal(err)
	}
	if s.keys, err = loadKeys(s.kv); err != nil {
		t.Fatal(err)
	}

	seq := map[string]uint64{}
	deliver := func(conv string, env *pb.Envelope) ([]byte, error) {
		seq[conv]++
		m := &pb.Message{ConvId: conv, Seq: seq[conv], MsgId: fmt.Sprintf("m%d", seq[conv]), Sender: alice.Addr(),
			ClientMsgId: fmt.Sprintf("c%d", seq[conv]), Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: env}
		return s.Open(ctx, core.ForDevice(m, bob))
	}
	opened := 0
	for _, dl := range v.Deliveries {
		m := v.Messages[dl.Index]
		if dl.To != v.Bob.UserID || m.Index == v.Group.DistributionMessage {
			continue
		}
		env := &pb.Envelope{ContentHint: ContentText, PerDevice: []*pb.DeviceCiphertext{{Device: bob.Addr(), Ciphertext: m.Wire}}}
		body, err := deliver(v.DirectConv, env)
		if err != nil {
			t.Fatalf("message %d: %v", m.Index, err)
		}
		if !bytes.Equal(body, m.Plaintext[1:]) {
			t.Fatalf("message %d opened %q, want %q", m.Index, body, m.Plaintext[1:])
		}
		opened++
	}
	g := v.Group
	for i, gi := range g.DeliveryOrder {
		env := &pb.Envelope{ContentHint: ContentText, Ciphertext: g.Messages[gi].Wire}
		if i == 0 { // the first group message carries the sender key
			env.PerDevice = []*pb.DeviceCiphertext{{Device: bob.Addr(), Ciphertext: v.Messages[g.DistributionMessage].Wire}}
		}
		body, err := deliver(v.GroupConv, env)
		if err != nil {
			t.Fatalf("group message %d: %v", gi, err)
		}
		if !bytes.Equal(body, g.Messages[gi].Plaintext) {
			t.Fatalf("group message %d opened %q", gi, body)
		}
		opened++
	}
	if opened != 4+len(g.Messages) {
		t.Fatalf("opened %d messages", opened)
	}
}
