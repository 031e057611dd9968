package core

import "testing"

func TestLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7490": true, "127.0.2.1:7492": true, "[::1]:1": true, "localhost:80": true, "localhost": true,
		"[::ffff:127.0.0.1]:1": true,
		"0.0.0.0:7490":         false, "[::]:7490": false, ":7490": false, "10.0.0.5:7490": false, "example.com:80": false, "": false,
	} {
		if got := LoopbackOnly(addr); got != want {
			t.Errorf("LoopbackOnly(%q) = %v, want %v", addr, got, want)
		}
	}
}
