package safety

import (
	"bytes"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

const (
	// Iterations of SHA-512 per fingerprint (as Signal's NumericFingerprintGenerator).
	Iterations = 5200
	// FingerprintVersion is hashed first and leads the scannable form.
	FingerprintVersion = 0

	// ScannableSize is the length of the scannable byte form:
	// version(1) || local fingerprint(32) || remote fingerprint(32).
	ScannableSize = 1 + 32 + 32

	scannableVersion = 1
	digitsPerParty   = 30
)

// Errors.
var (
	ErrMalformed = errors.New("safety: malformed scannable code")
	ErrMismatch  = errors.New("safety: fingerprints do not match")
)

// Party is one side of a conversation: a stable identifier (the user id)
// and its identity key (the encoded crypto/identity.Public, or whatever
// byte string identifies the keys being verified).
type Party struct {
	UserID      string
	IdentityKey []byte
}

// fingerprint is Signal's NumericFingerprintGenerator hash: start from
// version(2, big endian) || identity key || user id, then Iterations times
// hash = SHA-512(hash || identity key).
func fingerprint(p Party) []byte {
	buf := make([]byte, 0, 2+len(p.IdentityKey)+len(p.UserID)+sha512.Size)
	buf = binary.BigEndian.AppendUint16(buf, FingerprintVersion)
	buf = append(buf, p.IdentityKey...)
	buf = append(buf, p.UserID...)
	h := sha512.New()
	var sum []byte
	for range Iterations {
		h.Reset()
		h.Write(buf)
		h.Write(p.IdentityKey)
		sum = h.Sum(sum[:0])
		buf = append(buf[:0], sum...)
	}
	return sum
}

// digits renders the first 30 bytes of a fingerprint as 30 digits: six
// 5-byte big-endian chunks, each mod 100000, zero-padded to 5 digits.
func digits(fp []byte) string {
	var sb strings.Builder
	for i := 0; i < 6; i++ {
		c := fp[i*5 : i*5+5]
		n := uint64(c[0])<<32 | uint64(c[1])<<24 | uint64(c[2])<<16 | uint64(c[3])<<8 | uint64(c[4])
		fmt.Fprintf(&sb, "%05d", n%100000)
	}
	return sb.String()
}

// Number is the safety number of a conversation between two parties.
type Number struct {
	local, remote []byte // full fingerprints
	digits        string // 60 digits
}

// Compute returns the safety number as seen by local. Both parties get the
// same digits: the two 30-digit halves are sorted before concatenation.
func Compute(local, remote Party) Number {
	lf, rf := fingerprint(local), fingerprint(remote)
	// Scannable form carries 32 bytes of each fingerprint, as Signal's v1.
	ld, rd := digits(lf), digits(rf)
	if ld > rd {
		ld, rd = rd, ld
	}
	return Number{local: lf[:32], remote: rf[:32], digits: ld + rd}
}

// Digits returns the 60 digits without spaces.
func (n Number) Digits() string { return n.digits }

// String returns the 60 digits in 12 groups of 5, separated by spaces.
func (n Number) String() string {
	var sb strings.Builder
	for i := 0; i < len(n.digits); i += 5 {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(n.digits[i : i+5])
	}
	return sb.String()
}

// Scannable returns the byte form to show as a QR code:
// version(1) || local fingerprint(32) || remote fingerprint(32).
func (n Number) Scannable() []byte {
	b := make([]byte, 0, ScannableSize)
	b = append(b, scannableVersion)
	b = append(b, n.local...)
	return append(b, n.remote...)
}

// VerifyScanned checks a code scanned from the other party's screen: their
// local fingerprint must be our remote one and vice versa. It returns
// ErrMismatch if either identity differs (a key substitution) and
// ErrMalformed for a code that is not a scannable code.
func (n Number) VerifyScanned(code []byte) error {
	if len(code) != ScannableSize {
		return fmt.Errorf("%w: %d bytes", ErrMalformed, len(code))
	}
	if code[0] != scannableVersion {
		return fmt.Errorf("%w: version %d", ErrMalformed, code[0])
	}
	theirLocal, theirRemote := code[1:33], code[33:]
	if subtle.ConstantTimeCompare(theirLocal, n.remote)&subtle.ConstantTimeCompare(theirRemote, n.local) != 1 {
		return ErrMismatch
	}
	return nil
}

// Equal reports whether two numbers are the same from the same side.
func (n Number) Equal(m Number) bool {
	return n.digits == m.digits && bytes.Equal(n.local, m.local) && bytes.Equal(n.remote, m.remote)
}
