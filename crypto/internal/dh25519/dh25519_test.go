package dh25519

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
		var d DH
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
	var d DH
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
