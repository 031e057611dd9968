package safety

import "testing"

func FuzzVerifyScanned(f *testing.F) {
	a, b := Compute(alice, bob), Compute(bob, alice)
	f.Add(b.Scannable())
	f.Add(a.Scannable())
	f.Fuzz(func(t *testing.T, code []byte) {
		if a.VerifyScanned(code) == nil && string(code) != string(b.Scannable()) {
			t.Fatal("accepted a code that is not the peer's")
		}
	})
}
