package e2ee

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/vectors"
)

// TestVectorsAssociatedData ties the sealer's associated data and inner
// payload framing to the end-to-end test vectors (E2E.md §9), so the
// vectors describe what this client really sends.
func TestVectorsAssociatedData(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "crypto", "vectors", "testdata", "e2e-vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v vectors.Vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
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
