package noiseconn

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/flynn/noise"
	"golang.org/x/crypto/curve25519"
)

// TestX25519MatchesDH25519: the DH function gives noise.DH25519's key
// pairs for the same random bytes and its DH results (RFC 7748 X25519),
// with the ephemeral key, with a static key cached from an earlier DH,
// and with another static key (a cache miss); and refuses what it
// refuses.
func TestX25519MatchesDH25519(t *testing.T) {
	for i := range 50 {
		seed := make([]byte, 64)
		if _, err := rand.Read(seed); err != nil {
			t.Fatal(err)
		}
		var d x25519
		mine, err := d.GenerateKeypair(bytes.NewReader(seed))
		if err != nil {
			t.Fatal(err)
		}
		ref, err := noise.DH25519.GenerateKeypair(bytes.NewReader(seed))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mine.Private, ref.Private) || !bytes.Equal(mine.Public, ref.Public) {
			t.Fatalf("key pair %d differs from noise.DH25519's", i)
		}
		peer, _ := noise.DH25519.GenerateKeypair(rand.Reader)
		static, _ := noise.DH25519.GenerateKeypair(rand.Reader)
		other, _ := noise.DH25519.GenerateKeypair(rand.Reader)
		for _, priv := range [][]byte{mine.Private, static.Private, static.Private, other.Private, mine.Private} {
			got, err := d.DH(priv, peer.Public)
			if err != nil {
				t.Fatal(err)
			}
			want, err := curve25519.X25519(priv, peer.Public)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("round %d: DH differs from X25519", i)
			}
		}
	}
	var d x25519
	k, _ := d.GenerateKeypair(nil)
	if _, err := d.DH(k.Private, make([]byte, 32)); err == nil {
		t.Fatal("DH with a low-order (all-zero) public key succeeded")
	}
	if _, err := d.DH(k.Private, make([]byte, 31)); err == nil {
		t.Fatal("DH with a 31-byte public key succeeded")
	}
	if _, err := d.DH(make([]byte, 31), k.Public); err == nil {
		t.Fatal("DH with a 31-byte private key succeeded")
	}
	if _, err := d.GenerateKeypair(bytes.NewReader(make([]byte, 31))); err == nil {
		t.Fatal("a key pair from 31 random bytes")
	}
}

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
