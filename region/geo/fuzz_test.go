package geo_test

import (
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/chatmesh/chatmesh/region/geo"
)

// FuzzClientAddr: any X-Forwarded-For is parsed without panicking; from an
// untrusted peer it never matters; from a trusted one the answer is the
// peer or an address written in the header.
func FuzzClientAddr(f *testing.F) {
	for _, s := range []string{"", "127.0.3.1", "a, b", ",,,", "[::1]:80, 10.0.0.1", "127.0.9.9, 127.0.9.8", "1.2.3.4%eth0", "::ffff:127.0.0.1"} {
		f.Add(s)
	}
	l, err := geo.Open(devDBFor(f), geo.StaticEdges{}, geo.Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.9.0/24")}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { l.Close() })
	f.Fuzz(func(t *testing.T, xff string) {
		for _, remote := range []string{"127.0.2.1:1", "127.0.9.1:1"} {
			req := httptest.NewRequest("GET", geo.Path, nil)
			req.RemoteAddr = remote
			req.Header.Set("X-Forwarded-For", xff)
			got := l.ClientAddr(req)
			if remote == "127.0.2.1:1" && got.String() != "127.0.2.1" {
				t.Fatalf("untrusted peer: %v", got)
			}
			if remote == "127.0.9.1:1" && got.String() != "127.0.9.1" && !inHeader(got, xff) {
				t.Fatalf("trusted peer: %v not from %q", got, xff)
			}
		}
	})
}

// inHeader reports whether a is one of the comma-separated entries of xff.
func inHeader(a netip.Addr, xff string) bool {
	for _, e := range strings.Split(xff, ",") {
		e = strings.TrimSpace(e)
		b, err := netip.ParseAddr(e)
		if err != nil {
			ap, err := netip.ParseAddrPort(e)
			if err != nil {
				continue
			}
			b = ap.Addr()
		}
		if b.Unmap().WithZone("") == a {
			return true
		}
	}
	return false
}
