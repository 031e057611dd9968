package noiseconn

import (
	"bytes"
	"testing"

	"github.com/flynn/noise"
)

// TestHandshakeWithDH25519Peer: a handshake state on this DH function
// and one on noise.DH25519 agree (both patterns, both roles), so peers
// built on either interoperate.
func TestHandshakeWithDH25519Peer(t *testing.T) {
	ref := noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashBLAKE2s)
	for _, pattern := range []noise.HandshakePattern{noise.HandshakeIK, noise.HandshakeXX} {
		for _, newInitiator := range []bool{true, false} {
			is, _ := GenerateKeypair(nil)
			rs, _ := GenerateKeypair(nil)
			isuite, rsuite := ref, newSuite()
			if newInitiator {
				isuite, rsuite = newSuite(), ref
			}
			icfg := noise.Config{CipherSuite: isuite, Pattern: pattern, Initiator: true,
				StaticKeypair: noise.DHKey{Private: is.Private, Public: is.Public}}
			if pattern.Name == "IK" {
				icfg.PeerStatic = rs.Public
			}
			init, err := noise.NewHandshakeState(icfg)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := noise.NewHandshakeState(noise.Config{CipherSuite: rsuite, Pattern: pattern,
				StaticKeypair: noise.DHKey{Private: rs.Private, Public: rs.Public}})
			if err != nil {
				t.Fatal(err)
			}
			from, to := init, resp
			for n := range pattern.Messages {
				msg, _, _, err := from.WriteMessage(nil, []byte("hello"))
				if err != nil {
					t.Fatalf("%s message %d: %v", pattern.Name, n, err)
				}
				// Decrypting the payload checks that both sides computed
				// the same DH results.
				if _, _, _, err := to.ReadMessage(nil, msg); err != nil {
					t.Fatalf("%s (this DH initiates: %v) message %d: %v", pattern.Name, newInitiator, n, err)
				}
				from, to = to, from
			}
			if !bytes.Equal(init.PeerStatic(), rs.Public) || !bytes.Equal(resp.PeerStatic(), is.Public) {
				t.Fatalf("%s: the peers did not learn each other's static keys", pattern.Name)
			}
			if !bytes.Equal(init.ChannelBinding(), resp.ChannelBinding()) {
				t.Fatalf("%s (this DH initiates: %v): the handshake hashes differ", pattern.Name, newInitiator)
			}
		}
	}
}
