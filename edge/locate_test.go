package edge_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/region/geo"
)

// locateEdges: one edge per simulated region of geo.DevCities.
func locateEdges() geo.StaticEdges {
	k := func(c string) string { return strings.Repeat(c, 64) }
	return geo.StaticEdges{
		{Region: "eu-central", WS: "ws://127.0.1.1:7000/v1/ws", NoiseKey: k("1"), Lat: 50.11, Long: 8.68, Healthy: true},
		{Region: "us-east", WS: "ws://127.0.2.1:7000/v1/ws", NoiseKey: k("2"), Lat: 39.04, Long: -77.49, Healthy: true},
		{Region: "ap-southeast", WS: "ws://127.0.3.1:7000/v1/ws", NoiseKey: k("3"), Lat: 1.35, Long: 103.82, Healthy: true},
		{Region: "down", WS: "ws://127.0.4.1:7000/v1/ws", NoiseKey: k("4"), Lat: 50.11, Long: 8.68, Healthy: false},
	}
}

// newDevLocator opens a locator over a freshly generated dev City database.
func newDevLocator(t *testing.T, cfg geo.Config) *geo.Locator {
	t.Helper()
	path := filepath.Join(t.TempDir(), "city.mmdb")
	if err := geo.GenerateCityDB(path, geo.DevCities()); err != nil {
		t.Fatal(err)
	}
	l, err := geo.Open(path, locateEdges(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// locateFrom is an HTTP client whose connections come from src (any
// 127.0.0.0/8 address reaches the loopback listener on Linux). It keeps
// connections alive, so a flood below runs over one connection.
func locateFrom(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

type locateReply struct {
	status     int
	retryAfter string
	answer     geo.Answer
}

func locateGet(t *testing.T, hc *http.Client, url, method string, xff ...string) locateReply {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range xff {
		req.Header.Add("X-Forwarded-For", h)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := locateReply{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &r.answer); err != nil {
			t.Fatalf("locate answer %q: %v", b, err)
		}
	}
	return r
}

func locateURL(v *env) string {
	return "http" + strings.TrimPrefix(strings.TrimSuffix(v.e.WSURL(), edge.WSPath), "ws") + edge.LocatePath
}

func firstRegion(r locateReply) string {
	if len(r.answer.Edges) == 0 {
		return ""
	}
	return r.answer.Edges[0].Region
}

func TestLocatePathIsTheLocatorsPath(t *testing.T) {
	if edge.LocatePath != geo.Path {
		t.Fatalf("edge.LocatePath %q, geo.Path %q", edge.LocatePath, geo.Path)
	}
}

// TestEdgeServesLocate: an edge with a locator over the generated dev City
// database answers GET /v1/locate beside its WebSocket endpoint; each
// simulated city gets its own region first, the unhealthy edge is left
// out, and an X-Forwarded-For from a peer that is not a trusted proxy is
// not believed.
func TestEdgeServesLocate(t *testing.T) {
	loc := newDevLocator(t, geo.Config{TTL: 30 * time.Second})
	v := newEnv(t, func(c *edge.Config) {
		c.WTAddr = ""
		c.Locate, c.LocateClientAddr = loc.Handler(), loc.ClientAddr
	})
	url := locateURL(v)
	for src, want := range map[string]string{"127.0.1.7": "eu-central", "127.0.2.7": "us-east", "127.0.3.7": "ap-southeast"} {
		r := locateGet(t, locateFrom(src), url, http.MethodGet)
		if r.status != http.StatusOK || firstRegion(r) != want || r.answer.Client.IP != src || r.answer.TTLS != 30 {
			t.Fatalf("from %s: status %d, answer %+v; want %s first", src, r.status, r.answer, want)
		}
		if len(r.answer.Edges) != 3 {
			t.Fatalf("from %s: %d edges, want the 3 healthy ones", src, len(r.answer.Edges))
		}
	}
	// Spoofed: the peer 127.0.1.9 (Frankfurt) claims to be in Singapore.
	r := locateGet(t, locateFrom("127.0.1.9"), url, http.MethodGet, "127.0.3.200")
	if r.status != http.StatusOK || r.answer.Client.IP != "127.0.1.9" || firstRegion(r) != "eu-central" {
		t.Fatalf("spoofed X-Forwarded-For believed: %+v", r.answer)
	}
	if r := locateGet(t, locateFrom("127.0.1.9"), url, http.MethodPost); r.status != http.StatusMethodNotAllowed {
		t.Fatalf("POST: status %d, want 405", r.status)
	}
	// The WebSocket endpoint on the same listener still works.
	c, _ := v.registered("ws", "alice")
	c.ping()
	if st := v.e.Stats(); st.LocateRequests != 5 || st.LocateLimited != 0 {
		t.Fatalf("stats: %d locate requests, %d limited; want 5, 0", st.LocateRequests, st.LocateLimited)
	}
}

func TestLocateWithoutHandlerIsNotFound(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.WTAddr = "" })
	if r := locateGet(t, locateFrom("127.0.0.1"), locateURL(v), http.MethodGet); r.status != http.StatusNotFound {
		t.Fatalf("status %d, want 404", r.status)
	}
}

// TestLocateFloodIsLimited: one client's locate requests, over one
// kept-alive connection and whatever X-Forwarded-For it sends, are cut at
// its budget with 429 and Retry-After, without reaching the locator;
// another client is unaffected. Behind a trusted proxy each forwarded
// client has a budget of its own, and its location is believed.
func TestLocateFloodIsLimited(t *testing.T) {
	const burst = 5
	loc := newDevLocator(t, geo.Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}})
	var calls atomic.Int64
	v := newEnv(t, func(c *edge.Config) {
		c.WTAddr = ""
		c.Locate = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			loc.Handler().ServeHTTP(w, r)
		})
		c.LocateClientAddr = loc.ClientAddr
		c.Admission.LocateBurst = burst
		c.Admission.LocatePerSecond = 0.001 // no refill during the test
	})
	url := locateURL(v)
	attacker := locateFrom("127.0.0.2")
	for i := range burst + 3 {
		// A different spoofed client each time: not believed, same budget.
		r := locateGet(t, attacker, url, http.MethodGet, "127.0.3."+strconv.Itoa(i+1))
		switch {
		case i < burst && r.status != http.StatusOK:
			t.Fatalf("request %d: status %d, want 200", i, r.status)
		case i >= burst && r.status != http.StatusTooManyRequests:
			t.Fatalf("request %d: status %d, want 429", i, r.status)
		case i >= burst:
			if s, err := strconv.Atoi(r.retryAfter); err != nil || s < 1 {
				t.Fatalf("request %d: Retry-After %q", i, r.retryAfter)
			}
		}
	}
	if n := calls.Load(); n != burst {
		t.Fatalf("locator called %d times, want %d", n, burst)
	}
	if r := locateGet(t, locateFrom("127.0.0.3"), url, http.MethodGet); r.status != http.StatusOK {
		t.Fatalf("another client: status %d, want 200", r.status)
	}

	// Through the trusted proxy 127.0.0.4: the forwarded client is located
	// and charged; another forwarded client has its own budget.
	proxy := locateFrom("127.0.0.4")
	for i := range burst + 1 {
		r := locateGet(t, proxy, url, http.MethodGet, "127.0.3.77")
		if i < burst && (r.status != http.StatusOK || firstRegion(r) != "ap-southeast" || r.answer.Client.IP != "127.0.3.77") {
			t.Fatalf("via proxy %d: status %d, answer %+v", i, r.status, r.answer)
		}
		if i == burst && r.status != http.StatusTooManyRequests {
			t.Fatalf("via proxy, over budget: status %d, want 429", r.status)
		}
	}
	if r := locateGet(t, proxy, url, http.MethodGet, "127.0.2.77"); r.status != http.StatusOK || firstRegion(r) != "us-east" {
		t.Fatalf("second client via proxy: status %d, answer %+v", r.status, r.answer)
	}
	if st := v.e.Stats(); st.LocateLimited != 4 {
		t.Fatalf("LocateLimited %d, want 4", st.LocateLimited)
	}
}
