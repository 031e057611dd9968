package pebblestore

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

// FuzzDecode feeds arbitrary bytes to every value decoder: none may panic,
// and whatever decodes must re-encode to the same bytes (the encodings are
// canonical).
func FuzzDecode(f *testing.F) {
	f.Add(encodeUser(core.User{ID: "a", HomeRegion: "r", CreatedAtMs: 5}))
	f.Add(encodeDevice(core.Device{NoiseStatic: make([]byte, 32), IdentityKey: make([]byte, 32), LinkedBy: 1}))
	f.Add(encodeConv(core.Conversation{ID: "g:x", Title: "t", Epoch: 2, Head: 9}))
	f.Add(encodeCursor(3, 2))
	f.Add(encodeRoute(core.Route{Edge: "e", Session: 7, SinceMs: 1}))
	f.Add(encodeRoute(core.Route{Edge: "e", Session: 7, SinceMs: 1, Region: "eu-central"}))
	f.Add(encodeMember(core.Member{JoinedSeq: 4, Admin: true}))
	f.Add(encodeMember(core.Member{JoinedSeq: 5, Invited: true}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		dev := core.DeviceKey{User: "u", Device: 1}
		if v, err := decodeSeq(b); err == nil && string(encodeSeq(v)) != string(b) {
			t.Fatalf("seq not canonical: %x", b)
		}
		if d, r, err := decodeCursor(b); err == nil && string(encodeCursor(d, r)) != string(b) {
			t.Fatalf("cursor not canonical: %x", b)
		}
		if r, err := decodeRoute(dev, b); err == nil && string(encodeRoute(r)) != string(b) {
			t.Fatalf("route not canonical: %x", b)
		}
		if m, err := decodeMember("u", b); err == nil && string(encodeMember(m)) != string(b) {
			t.Fatalf("member not canonical: %x", b)
		}
		_, _ = decodeUser("u", b)
		_, _ = decodeDevice(dev, b)
		_, _ = decodeDevRef(b)
		_, _ = decodeConv("g:x", b)
		_, _ = decodeMs(b)
	})
}
