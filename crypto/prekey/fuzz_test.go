package prekey

import (
	"bytes"
	"testing"
)

func FuzzParseBundle(f *testing.F) {
	k := newKeys(f)
	raw, _ := k.bundle().MarshalBinary()
	f.Add(raw)
	b := k.bundle()
	b.KEM, b.OneTime = nil, nil
	raw, _ = b.MarshalBinary()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseBundle(data)
		if err != nil {
			return
		}
		again, err := got.MarshalBinary()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("not canonical: %v", err)
		}
		_ = got.Verify()
	})
}

func FuzzParseUpload(f *testing.F) {
	k := newKeys(f)
	u := &Upload{SignedPrekey: &k.spk.SignedPrekey, KEM: &k.kem.KEMPrekey, OneTime: []OneTimePrekey{k.otps[0].OneTimePrekey}}
	raw, _ := u.MarshalBinary()
	f.Add(raw)
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseUpload(data)
		if err != nil {
			return
		}
		again, err := got.MarshalBinary()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("not canonical: %v", err)
		}
		_ = got.Verify(k.id.Public())
	})
}

func FuzzParsePairs(f *testing.F) {
	k := newKeys(f)
	for _, m := range []interface{ MarshalBinary() ([]byte, error) }{k.spk, k.kem, &k.otps[0]} {
		raw, _ := m.MarshalBinary()
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if p, err := ParseSignedPrekeyPair(data); err == nil {
			if again, _ := p.MarshalBinary(); !bytes.Equal(again, data) {
				t.Fatal("signed prekey pair not canonical")
			}
		}
		if p, err := ParseKEMPrekeyPair(data); err == nil {
			if again, _ := p.MarshalBinary(); !bytes.Equal(again, data) {
				t.Fatal("kem pair not canonical")
			}
		}
		if p, err := ParseOneTimePrekeyPair(data); err == nil {
			if again, _ := p.MarshalBinary(); !bytes.Equal(again, data) {
				t.Fatal("one-time pair not canonical")
			}
		}
	})
}
