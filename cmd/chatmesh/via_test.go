package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestViaFlag: --directory-via / --link-via parse ADDR=VIA pairs, refuse
// malformed or repeated ones and mesh-less use, and their dial function
// sends a listed address to its VIA and any other directly.
func TestViaFlag(t *testing.T) {
	v := viaFlag{}
	for _, tc := range []struct {
		in string
		ok bool
	}{ // in order: the second names an address given by the first
		{"127.0.0.1:1=127.0.0.1:2", true},
		{"127.0.0.1:1=127.0.0.1:3", false}, // twice
		{"127.0.0.1:4", false},
		{"127.0.0.1:4=", false},
		{"127.0.0.1:0=127.0.0.1:5", false},
		{"h:6=:7", false},
	} {
		if err := v.Set(tc.in); (err == nil) != tc.ok {
			t.Errorf("Set(%q): %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
	if (viaFlag{}).dial() != nil {
		t.Fatal("an empty flag gave a dial function")
	}

	// Two listeners: "real" is where ADDR points, "proxy" is VIA.
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	proxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	v = viaFlag{real.Addr().String(): proxy.Addr().String()}
	dial := v.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	accepted := func(ln net.Listener) bool {
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
		c, err := ln.Accept()
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	c, err := dial(ctx, "tcp", real.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if !accepted(proxy) {
		t.Fatal("ADDR was not dialed via VIA")
	}
	c, err = dial(ctx, "tcp", other.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if !accepted(other) {
		t.Fatal("an unlisted address was not dialed directly")
	}

	// Mesh-only flags without --directory-peers are refused.
	for _, f := range []string{"--directory-via", "--link-via"} {
		var out, errb bytes.Buffer
		err := runRegion(context.Background(), []string{"--kafka", "127.0.0.1:1", "--data", t.TempDir(), "--listen", "127.0.0.1:0",
			f, "127.0.0.1:1=127.0.0.1:2"}, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), "add --directory-peers") {
			t.Fatalf("%s without a mesh: %v", f, err)
		}
	}
}
