package pqxdh_test

import (
	"fmt"

	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/pqxdh"
	"github.com/chatmesh/chatmesh/crypto/prekey"
)

// Example shows one session from bundle to reply. Error handling is
// shortened; every error must be checked in real code.
func Example() {
	// Bob's device publishes prekeys (the region stores the public parts).
	bob, _ := identity.Generate(nil)
	spk, _ := prekey.NewSignedPrekey(bob, 1, nil)
	kem, _ := prekey.NewKEMPrekey(bob, 1)
	otps, _ := prekey.NewOneTimePrekeys(1, 10, nil)
	keys := &pqxdh.MemoryKeys{}
	keys.AddSignedPrekey(spk)
	keys.AddKEMPrekey(kem)
	_ = keys.AddOneTimePrekeys(otps)
	bundle := &prekey.Bundle{Identity: bob.Public(), SignedPrekey: spk.SignedPrekey, KEM: &kem.KEMPrekey, OneTime: &otps[0].OneTimePrekey}

	// Alice, with Bob's identity from his verified device list.
	alice, _ := identity.Generate(nil)
	out, err := pqxdh.Initiate(alice, bob.Public(), bundle, pqxdh.Config{})
	if err != nil {
		panic(err)
	}
	ad := []byte("d:alice:bob")
	msg, _ := out.Seal([]byte("hello"), ad)

	// Bob, possibly much later.
	acc, err := pqxdh.Accept(bob, keys, msg, ad, pqxdh.Config{})
	if err != nil {
		panic(err)
	}
	fmt.Println(string(acc.Plaintext), acc.Peer.Equal(alice.Public()))

	reply, _ := acc.Session.Encrypt([]byte("hi"), ad)
	pt, _ := out.Session.Decrypt(reply, ad)
	fmt.Println(string(pt))
	// Output:
	// hello true
	// hi
}
