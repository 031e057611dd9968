package identity

import (
	"bytes"
	"testing"
)

func FuzzParsePublic(f *testing.F) {
	p, _ := Generate(nil)
	raw, _ := p.Public().MarshalBinary()
	f.Add(raw)
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := ParsePublic(b)
		if err != nil {
			return
		}
		again, err := pub.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("not canonical: %v", err)
		}
		if pub.Verify() != nil {
			t.Fatal("parsed public fails Verify")
		}
	})
}

func FuzzParsePrivate(f *testing.F) {
	p, _ := Generate(nil)
	raw, _ := p.MarshalBinary()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		priv, err := ParsePrivate(b)
		if err != nil {
			return
		}
		if priv.Public().Verify() != nil {
			t.Fatal("parsed private key yields an unbound public key")
		}
	})
}

func FuzzParseDeviceList(f *testing.F) {
	p, _ := Generate(nil)
	l := &DeviceList{UserID: "alice", Version: 3, Devices: []Device{{ID: 1, Identity: p.Public()}}}
	_ = l.Sign(1, p)
	raw, _ := l.MarshalBinary()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseDeviceList(b)
		if err != nil {
			return
		}
		again, err := got.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("not canonical: %v", err)
		}
		_ = got.VerifyUpdate(nil)
		_ = got.VerifyUpdate(l)
	})
}
