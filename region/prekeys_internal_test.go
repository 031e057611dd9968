package region

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
)

func TestLowPush(t *testing.T) {
	for _, c := range []struct {
		low  int
		want []int // remaining counts in [0, low+5) that push
	}{
		{20, []int{0, 5, 10, 15, 19}},
		{1, []int{0}},
		{3, []int{0, 1, 2}},
		{8, []int{0, 2, 4, 6, 7}},
	} {
		var got []int
		for r := 0; r < c.low+5; r++ {
			if lowPush(r, c.low) {
				got = append(got, r)
			}
		}
		if len(got) != len(c.want) {
			t.Fatalf("low %d: pushes at %v, want %v", c.low, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("low %d: pushes at %v, want %v", c.low, got, c.want)
			}
		}
	}
}

// storedBundle returns what the region stores for a fresh device: each
// part's crypto/prekey encoding.
func storedBundle(tb testing.TB, withOneTime bool) (core.PrekeyBundle, identity.Public) {
	tb.Helper()
	id, err := identity.Generate(nil)
	if err != nil {
		tb.Fatal(err)
	}
	spk, _ := prekey.NewSignedPrekey(id, 7, nil)
	kem, err := prekey.NewKEMPrekey(id, 8)
	if err != nil {
		tb.Fatal(err)
	}
	otk, _ := prekey.NewOneTimePrekeys(9, 1, nil)
	var sb core.PrekeyBundle
	sb.Identity, _ = id.Public().MarshalBinary()
	sb.SignedPrekey, _ = spk.SignedPrekey.AppendBinary(nil)
	sb.KEMPrekey, _ = kem.KEMPrekey.AppendBinary(nil)
	if withOneTime {
		enc, _ := otk[0].OneTimePrekey.AppendBinary(nil)
		sb.OneTime = &core.OneTimeKey{ID: 9, Key: enc}
	}
	return sb, id.Public()
}

func TestAssembleBundle(t *testing.T) {
	sb, pub := storedBundle(t, true)
	b, err := assembleBundle(sb)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Identity.Equal(pub) || b.SignedPrekey.ID != 7 || b.KEM.ID != 8 || b.OneTime == nil || b.OneTime.ID != 9 {
		t.Fatalf("assembled %+v", b)
	}
	sb.OneTime.ID = 10 // the row's id disagrees with the encoding's
	if _, err := assembleBundle(sb); err == nil {
		t.Fatal("id mismatch accepted")
	}
	sb, _ = storedBundle(t, false)
	if b, err := assembleBundle(sb); err != nil || b.OneTime != nil {
		t.Fatalf("without one-time key: %v %v", b, err)
	}
	other, _ := storedBundle(t, false)
	sb.SignedPrekey = other.SignedPrekey // signed by another identity
	if _, err := assembleBundle(sb); err == nil {
		t.Fatal("a bundle whose signed prekey belongs to another identity was assembled")
	}
}

// BenchmarkAssembleBundle: the region's CPU cost per fetch_bundle on top of
// the store (parse the stored parts, verify every signature, encode).
func BenchmarkAssembleBundle(b *testing.B) {
	sb, _ := storedBundle(b, true)
	b.ReportAllocs()
	for b.Loop() {
		bd, err := assembleBundle(sb)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := bd.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
}
