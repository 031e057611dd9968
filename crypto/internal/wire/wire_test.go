package wire

import (
	"errors"
	"testing"
)

var errBad = errors.New("bad")

func TestReader(t *testing.T) {
	r := Reader{B: []byte{1, 0, 2, 0, 0, 0, 3, 9}, Malformed: errBad}
	if r.Byte() != 1 || r.U16() != 2 || r.U32() != 3 || r.Err != nil || len(r.B) != 1 {
		t.Fatalf("reads: %+v", r)
	}
	if r.U64() != 0 || !errors.Is(r.Err, errBad) {
		t.Fatalf("short read: %v", r.Err)
	}
	if r.Byte() != 0 || r.Take(0) != nil {
		t.Fatal("reads after an error must return zero values")
	}
	if (&Reader{Malformed: errBad}).Take(-1) != nil {
		t.Fatal("negative length")
	}
}
