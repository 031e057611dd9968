package pebblestore

import (
	"errors"
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

// TestMemberValueCompat: a member value written before roles existed (the
// joined seq alone) decodes as a plain member, and a plain member still
// encodes to exactly those bytes; the flags round-trip; a flags field of 0
// or with unknown bits is corrupt.
func TestMemberValueCompat(t *testing.T) {
	old := encodeSeq(300)
	m, err := decodeMember("u", old)
	if err != nil || m != (core.Member{User: "u", JoinedSeq: 300}) {
		t.Fatalf("pre-roles value: %+v, %v", m, err)
	}
	if got := encodeMember(m); string(got) != string(old) {
		t.Fatalf("plain member encodes to %x, want %x", got, old)
	}
	for _, want := range []core.Member{
		{User: "u", JoinedSeq: 7, Admin: true},
		{User: "u", JoinedSeq: 8, Invited: true},
	} {
		got, err := decodeMember("u", encodeMember(want))
		if err != nil || got != want {
			t.Fatalf("round trip of %+v: %+v, %v", want, got, err)
		}
	}
	for _, bad := range [][]byte{
		enc(nil).u(1).u(0).bytes(),
		enc(nil).u(1).u(4).bytes(),
		enc(nil).u(1).u(1).u(1).bytes(),
	} {
		if _, err := decodeMember("u", bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decodeMember(%x) = %v, want ErrCorrupt", bad, err)
		}
	}
}
