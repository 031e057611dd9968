// Package wire is the bounds-checked byte reader shared by the crypto
// tree's decoders (crypto/identity, crypto/prekey). It never panics on
// short or hostile input: the first short read records an error wrapping
// the package's own malformed sentinel, and every later read returns zero
// values, so a decoder reads all fields and checks Err once.
package wire

import (
	"encoding/binary"
	"fmt"
)

// Reader is a cursor over B. Set Malformed to the caller's sentinel error.
type Reader struct {
	B         []byte // what is left to read
	Err       error  // the first error, wrapping Malformed
	Malformed error
}

// Take returns the next n bytes (aliasing B), or nil after an error.
func (r *Reader) Take(n int) []byte {
	if r.Err != nil {
		return nil
	}
	if n < 0 || len(r.B) < n {
		r.Err = fmt.Errorf("%w: truncated", r.Malformed)
		return nil
	}
	out := r.B[:n]
	r.B = r.B[n:]
	return out
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if b := r.Take(1); b != nil {
		return b[0]
	}
	return 0
}

// U16 reads a big-endian uint16.
func (r *Reader) U16() uint16 {
	if b := r.Take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

// U32 reads a big-endian uint32.
func (r *Reader) U32() uint32 {
	if b := r.Take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// U64 reads a big-endian uint64.
func (r *Reader) U64() uint64 {
	if b := r.Take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}
