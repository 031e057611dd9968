package core

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Registration proofs (see RegisterRequest in the proto and PROTOCOL.md).
const (
	// RegisterProofContext is the domain separator of
	// RegisterRequest.identity_proof: the Ed25519 signature by identity_key
	// over RegisterProofContext || user_id || noise_static.
	RegisterProofContext = "chatmesh-register-v1"
	// PowContext is the domain separator of the registration proof of work:
	// SHA-256(PowContext || noise_static || user_id || pow_nonce) must start
	// with ServerHello.register_pow_bits zero bits.
	PowContext = "chatmesh-pow-v1"
	// MaxPowBits is the most leading zero bits an edge may ask for (about
	// 2^28 hashes, minutes of a phone's CPU); clients refuse more.
	MaxPowBits = 28
	// MaxPowNonceLen bounds RegisterRequest.pow_nonce.
	MaxPowNonceLen = 32
)

// RegisterProofMessage is the byte string RegisterRequest.identity_proof
// signs: "chatmesh-register-v1" || user_id || noise_static. noise_static has
// a fixed length (32 bytes) and comes last, so the split is unambiguous.
func RegisterProofMessage(user string, noiseStatic []byte) []byte {
	m := make([]byte, 0, len(RegisterProofContext)+len(user)+len(noiseStatic))
	m = append(m, RegisterProofContext...)
	m = append(m, user...)
	return append(m, noiseStatic...)
}

// PowDigest is SHA-256(PowContext || noiseStatic || user || nonce).
// noiseStatic is fixed at 32 bytes; user and nonce are only compared by
// their digest, so a different split of the same bytes is the same work.
func PowDigest(noiseStatic []byte, user string, nonce []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(PowContext))
	h.Write(noiseStatic)
	h.Write([]byte(user))
	h.Write(nonce)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// leadingZeroBits counts the leading zero bits of d.
func leadingZeroBits(d []byte) int {
	n := 0
	for _, b := range d {
		if b != 0 {
			return n + bits.LeadingZeros8(b)
		}
		n += 8
	}
	return n
}

// CheckPow reports whether nonce is a proof of work of at least want bits
// for (noiseStatic, user). want == 0 accepts anything; a nonce longer than
// MaxPowNonceLen never passes.
func CheckPow(want uint32, noiseStatic []byte, user string, nonce []byte) bool {
	if want == 0 {
		return true
	}
	if len(nonce) > MaxPowNonceLen || want > 8*sha256.Size {
		return false
	}
	d := PowDigest(noiseStatic, user, nonce)
	return leadingZeroBits(d[:]) >= int(want)
}

// SolvePow finds a nonce (an 8-byte big-endian counter) that passes
// CheckPow(want, noiseStatic, user, nonce). It is deterministic; on average
// it hashes 2^want times. It stops with ctx's error, and refuses want above
// MaxPowBits with ErrInvalidArgument.
func SolvePow(ctx context.Context, want uint32, noiseStatic []byte, user string) ([]byte, error) {
	if want > MaxPowBits {
		return nil, fmt.Errorf("proof of work of %d bits (at most %d): %w", want, MaxPowBits, ErrInvalidArgument)
	}
	nonce := make([]byte, 8)
	for i := uint64(0); ; i++ {
		if i&0xffff == 0 {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("proof of work: %w", err)
			}
		}
		binary.BigEndian.PutUint64(nonce, i)
		if CheckPow(want, noiseStatic, user, nonce) {
			return nonce, nil
		}
	}
}
