package noiseconn

import (
	"github.com/flynn/noise"

	"github.com/chatmesh/chatmesh/crypto/internal/dh25519"
)

// newSuite returns the cipher suite of one handshake, on crypto/internal/
// dh25519's DH function (noise.DH25519's bytes, half its scalar
// multiplications: X25519 was a third of the edge's CPU in a reconnect
// storm and half the load generator's).
func newSuite() noise.CipherSuite {
	return noise.NewCipherSuite(dh25519.New(), noise.CipherChaChaPoly, noise.HashBLAKE2s)
}
