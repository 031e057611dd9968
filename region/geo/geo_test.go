package geo_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chatmesh/chatmesh/region/geo"
	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

func key(b byte) string { return strings.Repeat(string("0123456789abcdef"[b%16])+"0", 32) }

// devEdges: one edge per simulated region, placed at its city.
func devEdges() geo.StaticEdges {
	return geo.StaticEdges{
		{Region: "us-east", WS: "ws://127.0.2.1:8080/v1/ws", WT: "https://127.0.2.1:8443/v1/wt", NoiseKey: key(2), Lat: 39.04, Long: -77.49, Healthy: true},
		{Region: "ap-southeast", WS: "ws://127.0.3.1:8080/v1/ws", NoiseKey: key(3), Lat: 1.35, Long: 103.82, Healthy: true},
		{Region: "eu-central", WS: "ws://127.0.1.1:8080/v1/ws", NoiseKey: key(1), Lat: 50.11, Long: 8.68, Healthy: true},
	}
}

func devDB(t *testing.T) string { return devDBFor(t) }

func devDBFor(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev-city.mmdb")
	if err := geo.GenerateCityDB(path, geo.DevCities()); err != nil {
		t.Fatalf("GenerateCityDB: %v", err)
	}
	return path
}

func newLocator(t *testing.T, src geo.EdgeSource, cfg geo.Config) *geo.Locator {
	t.Helper()
	l, err := geo.Open(devDB(t), src, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func regions(a geo.Answer) []string {
	var out []string
	for _, e := range a.Edges {
		out = append(out, e.Region)
	}
	return out
}

func TestEachCityGetsItsOwnRegionFirst(t *testing.T) {
	l := newLocator(t, devEdges(), geo.Config{})
	for _, tc := range []struct {
		ip, city string
		want     []string
	}{
		// Frankfurt: Ashburn ~6,530 km, Singapore ~10,260 km.
		{"127.0.1.9", "Frankfurt", []string{"eu-central", "us-east", "ap-southeast"}},
		{"127.0.0.1", "Frankfurt", []string{"eu-central", "us-east", "ap-southeast"}},
		// Ashburn: Frankfurt ~6,530 km, Singapore ~15,570 km.
		{"127.0.2.200", "Ashburn", []string{"us-east", "eu-central", "ap-southeast"}},
		// Singapore: Frankfurt ~10,260 km, Ashburn ~15,570 km.
		{"127.0.3.4", "Singapore", []string{"ap-southeast", "eu-central", "us-east"}},
	} {
		a, err := l.Locate(context.Background(), netip.MustParseAddr(tc.ip))
		if err != nil {
			t.Fatalf("%s: %v", tc.ip, err)
		}
		if a.Client.City != tc.city || a.Client.Lat == nil || a.Client.Long == nil {
			t.Errorf("%s: client %+v, want city %s with coordinates", tc.ip, a.Client, tc.city)
		}
		if got := regions(a); strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: order %v, want %v", tc.ip, got, tc.want)
		}
		if a.Edges[0].DistanceKM == nil || *a.Edges[0].DistanceKM > 1 {
			t.Errorf("%s: nearest edge distance %v, want ~0 km", tc.ip, a.Edges[0].DistanceKM)
		}
		if a.TTLS != int(geo.DefaultTTL.Seconds()) {
			t.Errorf("ttl %d", a.TTLS)
		}
	}
	// The mapped form of an IPv4 address is the same client.
	a, _ := l.Locate(context.Background(), netip.MustParseAddr("::ffff:127.0.3.4"))
	if a.Client.City != "Singapore" || a.Client.IP != "127.0.3.4" {
		t.Errorf("mapped address: %+v", a.Client)
	}
}

func TestDistances(t *testing.T) {
	l := newLocator(t, devEdges(), geo.Config{})
	a, _ := l.Locate(context.Background(), netip.MustParseAddr("127.0.1.1"))
	// Frankfurt–Ashburn great circle is about 6,530 km.
	if d := *a.Edges[1].DistanceKM; d < 6400 || d > 6650 {
		t.Errorf("Frankfurt–Ashburn %v km", d)
	}
}

func TestUnhealthyAndInvalidEdgesLeftOut(t *testing.T) {
	edges := devEdges()
	edges[2].Healthy = false // eu-central down
	edges = append(edges,
		geo.Edge{Region: "bad-key", WS: "ws://x", NoiseKey: "zz", Lat: 50, Long: 8, Healthy: true},
		geo.Edge{Region: "bad-lat", WS: "ws://x", NoiseKey: key(5), Lat: 91, Long: 8, Healthy: true},
		geo.Edge{Region: "no-url", NoiseKey: key(6), Lat: 50, Long: 8, Healthy: true},
		geo.Edge{Region: "bad-cert-hash", WT: "https://x", NoiseKey: key(7), CertHash: "abcd", Lat: 50, Long: 8, Healthy: true},
	)
	l := newLocator(t, edges, geo.Config{})
	a, err := l.Locate(context.Background(), netip.MustParseAddr("127.0.1.1"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(regions(a), ","); got != "us-east,ap-southeast" {
		t.Errorf("Frankfurt client with eu-central down: %s", got)
	}
}

func TestUnknownAddressGetsDefaultOrder(t *testing.T) {
	l := newLocator(t, devEdges(), geo.Config{MaxEdges: 2})
	for _, ip := range []string{"192.0.2.1", "10.1.2.3", "2001:db8::1", "127.9.9.9"} {
		a, err := l.Locate(context.Background(), netip.MustParseAddr(ip))
		if err != nil {
			t.Fatal(err)
		}
		if a.Client.Lat != nil || a.Client.City != "" {
			t.Errorf("%s: located %+v", ip, a.Client)
		}
		// Default order: by region name; MaxEdges keeps the first two.
		if got := strings.Join(regions(a), ","); got != "ap-southeast,eu-central" {
			t.Errorf("%s: %s", ip, got)
		}
		if a.Edges[0].DistanceKM != nil {
			t.Errorf("%s: distance without a location", ip)
		}
	}
	// The zero Addr (unparsable peer) is the same.
	a, _ := l.Locate(context.Background(), netip.Addr{})
	if got := strings.Join(regions(a), ","); got != "ap-southeast,eu-central" {
		t.Errorf("zero addr: %s", got)
	}
}

type failing struct{}

func (failing) Edges(context.Context) ([]geo.Edge, error) { return nil, errors.New("directory down") }

func TestSourceFailure(t *testing.T) {
	l := newLocator(t, failing{}, geo.Config{})
	if _, err := l.Locate(context.Background(), netip.MustParseAddr("127.0.1.1")); !errors.Is(err, geo.ErrEdges) {
		t.Fatalf("Locate: %v, want ErrEdges", err)
	}
	rec := httptest.NewRecorder()
	l.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, geo.Path, nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("status %d", rec.Code)
	}
}

func get(t *testing.T, h http.Handler, remote string, xff ...string) (int, geo.Answer) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, geo.Path, nil)
	req.RemoteAddr = remote
	for _, v := range xff {
		req.Header.Add("X-Forwarded-For", v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var a geo.Answer
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
			t.Fatalf("body %q: %v", rec.Body.String(), err)
		}
	}
	return rec.Code, a
}

func TestForwardedForTrust(t *testing.T) {
	l := newLocator(t, devEdges(), geo.Config{TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("127.0.9.0/24"), netip.MustParsePrefix("::1/128"),
	}})
	h := l.Handler()
	for _, tc := range []struct {
		name, remote string
		xff          []string
		wantIP       string
	}{
		{"no xff", "127.0.2.5:4000", nil, "127.0.2.5"},
		{"untrusted peer: xff ignored", "127.0.2.5:4000", []string{"127.0.3.1"}, "127.0.2.5"},
		{"trusted peer: xff honoured", "127.0.9.1:4000", []string{"127.0.3.1"}, "127.0.3.1"},
		{"trusted v6 peer", "[::1]:4000", []string{"127.0.3.1"}, "127.0.3.1"},
		// The client forged the left entry; the proxy appended what it saw.
		{"right-most untrusted hop", "127.0.9.1:4000", []string{"127.0.1.7, 127.0.3.1"}, "127.0.3.1"},
		{"skips trusted proxies", "127.0.9.1:4000", []string{"127.0.2.8, 127.0.9.2", "127.0.9.3"}, "127.0.2.8"},
		{"port in entry", "127.0.9.1:4000", []string{"127.0.3.1:5555"}, "127.0.3.1"},
		{"bracketed v6 entry", "127.0.9.1:4000", []string{"[2001:db8::7]:443"}, "2001:db8::7"},
		{"all trusted: left-most", "127.0.9.1:4000", []string{"127.0.9.4, 127.0.9.5"}, "127.0.9.4"},
		{"malformed: stop at last good hop", "127.0.9.1:4000", []string{"127.0.3.1, garbage"}, "127.0.9.1"},
		{"malformed behind good hop", "127.0.9.1:4000", []string{"garbage, 127.0.3.1"}, "127.0.3.1"},
		{"empty header", "127.0.9.1:4000", []string{""}, "127.0.9.1"},
		{"only commas", "127.0.9.1:4000", []string{",,, ,"}, "127.0.9.1"},
		{"huge entry", "127.0.9.1:4000", []string{strings.Repeat("9", 100000)}, "127.0.9.1"},
		{"unparsable remote", "pipe", []string{"127.0.3.1"}, "invalid IP"},
	} {
		code, a := get(t, h, tc.remote, tc.xff...)
		if code != http.StatusOK {
			t.Errorf("%s: status %d", tc.name, code)
			continue
		}
		if a.Client.IP != tc.wantIP {
			t.Errorf("%s: client %q, want %q", tc.name, a.Client.IP, tc.wantIP)
		}
	}
	// Honoured XFF changes the answer, not just the reported IP.
	_, a := get(t, h, "127.0.9.1:1", "127.0.3.1")
	if a.Edges[0].Region != "ap-southeast" {
		t.Errorf("trusted xff from Singapore: %v", regions(a))
	}
	_, a = get(t, h, "127.0.2.1:1", "127.0.3.1")
	if a.Edges[0].Region != "us-east" {
		t.Errorf("untrusted xff: %v", regions(a))
	}
}

func TestLongTrustedChainIsBounded(t *testing.T) {
	l := newLocator(t, devEdges(), geo.Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.9.0/24")}})
	chain := "127.0.3.1" + strings.Repeat(", 127.0.9.9", 1000)
	code, a := get(t, l.Handler(), "127.0.9.1:1", chain)
	if code != http.StatusOK || a.Client.IP != "127.0.9.9" {
		t.Errorf("status %d client %q: want the walk to stop on a trusted hop", code, a.Client.IP)
	}
}

func TestHandlerShape(t *testing.T) {
	l := newLocator(t, devEdges(), geo.Config{})
	h := l.Handler()
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodHead, http.MethodDelete} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(m, geo.Path, strings.NewReader("x")))
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodGet {
			t.Errorf("%s: %d allow=%q", m, rec.Code, rec.Header().Get("Allow"))
		}
	}
	req := httptest.NewRequest(http.MethodGet, geo.Path, nil)
	req.RemoteAddr = "127.0.1.5:999"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" ||
		rec.Header().Get("Cache-Control") != "private, max-age=60" {
		t.Fatalf("%d %v", rec.Code, rec.Header())
	}
	var raw map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	client := raw["client"].(map[string]any)
	if client["ip"] != "127.0.1.5" || client["city"] != "Frankfurt" || client["lat"] != 50.11 || client["long"] != 8.68 {
		t.Errorf("client %v", client)
	}
	if raw["ttl_s"] != float64(60) {
		t.Errorf("ttl_s %v", raw["ttl_s"])
	}
	e0 := raw["edges"].([]any)[0].(map[string]any)
	for _, f := range []string{"region", "ws", "noise_key", "lat", "long", "distance_km"} {
		if _, ok := e0[f]; !ok {
			t.Errorf("edge lacks %q: %v", f, e0)
		}
	}
	if _, ok := e0["Healthy"]; ok {
		t.Errorf("health leaked: %v", e0)
	}
	if rec.Body.Len() > 2048 {
		t.Errorf("response %d bytes", rec.Body.Len())
	}
}

func TestOpenRejectsNonCityDB(t *testing.T) {
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "GeoLite2-ASN", IncludeReservedNetworks: true})
	if err != nil {
		t.Fatal(err)
	}
	_, n, _ := net.ParseCIDR("127.0.0.0/8")
	if err := tree.Insert(n, mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(64500)}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "asn.mmdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := geo.Open(path, devEdges(), geo.Config{}); !errors.Is(err, geo.ErrNotCityDB) {
		t.Fatalf("Open ASN db: %v, want ErrNotCityDB", err)
	}
}

func TestGenerateRejectsBadCity(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []geo.City{
		{Name: "", Lat: 1, Long: 1},
		{Name: "x", Lat: 100, Long: 1},
		{Name: "x", Lat: 1, Long: 1, Networks: []netip.Prefix{{}}},
	} {
		if err := geo.GenerateCityDB(filepath.Join(dir, "x.mmdb"), []geo.City{c}); !errors.Is(err, geo.ErrInvalidCity) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
