package client

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/region/geo"
)

// A locator for the tests: the real geo.Locator over a generated dev City
// database (127.0.0.1 is in Frankfurt) and an edge list the test changes.

type edgeSource struct {
	mu    sync.Mutex
	calls int
	lists [][]geo.Edge // the n-th call gets lists[min(n, len-1)]
}

func (s *edgeSource) Edges(context.Context) ([]geo.Edge, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lists[min(s.calls, len(s.lists)-1)]
	s.calls++
	return l, nil
}

func (s *edgeSource) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Places, nearest to 127.0.0.1 (Frankfurt) first.
var (
	frankfurt = [2]float64{50.11, 8.68}
	virginia  = [2]float64{39.04, -77.49}
	singapore = [2]float64{1.35, 103.82}
)

func geoEdge(region, ws string, key []byte, at [2]float64) geo.Edge {
	return geo.Edge{Region: region, WS: ws, NoiseKey: hex.EncodeToString(key), Lat: at[0], Long: at[1], Healthy: true}
}

// startLocator serves a geo.Locator over src and returns its URL.
func startLocator(t *testing.T, src geo.EdgeSource, ttl time.Duration) string {
	t.Helper()
	db := filepath.Join(t.TempDir(), "city.mmdb")
	if err := geo.GenerateCityDB(db, geo.DevCities()); err != nil {
		t.Fatal(err)
	}
	l, err := geo.Open(db, src, geo.Config{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(l.Handler())
	t.Cleanup(func() { srv.Close(); l.Close() })
	return srv.URL + geo.Path
}

// deadURL is a WebSocket URL where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "ws://" + addr + "/v1/ws"
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	return newTestPeer(t).static.Public
}

// locatingClient opens a client that finds its edges through locateURL
// only (no Edges, no ServerKey).
func locatingClient(t *testing.T, dir, locateURL string) *Client {
	t.Helper()
	c, err := Open(context.Background(), Config{Sealer: InsecurePlaintextSealer{}, StateDir: dir, LocateURL: locateURL,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// nextConnected returns the edge of the next ConnectedEvent.
func nextConnected(t *testing.T, c *Client) string {
	t.Helper()
	ctx := testCtx(t)
	for {
		select {
		case ev := <-c.Events():
			if e, ok := ev.(ConnectedEvent); ok {
				return e.Edge
			}
		case <-ctx.Done():
			t.Fatalf("not connected (run error %v)", c.Err())
		}
	}
}

// TestLocatedListFailsOverToALiveEdge: the nearest located edge is dead
// and the next one answers with another Noise key than the answer names;
// registration and the session both end up at the third edge, and the
// impostor never sees the device (the answer's key is pinned).
func TestLocatedListFailsOverToALiveEdge(t *testing.T) {
	live, impostor := newTestPeer(t), newTestPeer(t)
	src := &edgeSource{lists: [][]geo.Edge{{
		geoEdge("us-east", impostor.url(), live.static.Public, virginia), // the key of another edge
		geoEdge("ap-southeast", live.url(), live.static.Public, singapore),
		geoEdge("eu-central", deadURL(t), randomKey(t), frankfurt),
	}}}
	c := locatingClient(t, t.TempDir(), startLocator(t, src, time.Hour))
	if _, err := c.Register(testCtx(t), "alice"); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if got := nextConnected(t, c); got != live.url() {
		t.Fatalf("connected to %s, want %s", got, live.url())
	}
	if _, err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	impostor.mu.Lock()
	n := len(impostor.devices)
	impostor.mu.Unlock()
	if n != 0 {
		t.Fatalf("the edge with the wrong key registered %d devices", n)
	}
	if src.count() != 2 { // one for Register, one for the connection loop
		t.Fatalf("%d locate requests, want 2", src.count())
	}
}

// TestRelocatesWhenEveryEdgeFailed: every edge of the first answer is
// dead; the client locates again and connects to the live edge of the
// second answer.
func TestRelocatesWhenEveryEdgeFailed(t *testing.T) {
	p := newTestPeer(t)
	dir := t.TempDir()
	reg := openClient(t, p, dir)
	if _, err := reg.Register(testCtx(t), "alice"); err != nil {
		t.Fatal(err)
	}
	reg.Close()

	src := &edgeSource{lists: [][]geo.Edge{
		{geoEdge("eu-central", deadURL(t), randomKey(t), frankfurt), geoEdge("us-east", deadURL(t), randomKey(t), virginia)},
		{geoEdge("ap-southeast", p.url(), p.static.Public, singapore)},
	}}
	c := locatingClient(t, dir, startLocator(t, src, time.Hour))
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if got := nextConnected(t, c); got != p.url() {
		t.Fatalf("connected to %s, want %s", got, p.url())
	}
	if src.count() != 2 {
		t.Fatalf("%d locate requests, want 2 (the first list, then again after both its edges failed)", src.count())
	}
}

// TestRelocatesWhenTheAnswerExpired: a reconnect after a healthy session
// within the TTL goes back to the first edge of the list it has; after the
// TTL it locates again (and goes where the new answer says). The clock of
// the connection loop is skewed, nothing waits.
func TestRelocatesWhenTheAnswerExpired(t *testing.T) {
	p1, p2 := newTestPeer(t), newTestPeer(t)
	dir := t.TempDir()
	reg := openClient(t, p1, dir)
	dev, err := reg.Register(testCtx(t), "alice")
	if err != nil {
		t.Fatal(err)
	}
	p2.mu.Lock() // the same device at the second test edge (each has its own registry)
	p2.devices[string(reg.NoisePublicKey())] = dev
	p2.mu.Unlock()
	reg.Close()

	src := &edgeSource{lists: [][]geo.Edge{
		{geoEdge("eu-central", p1.url(), p1.static.Public, frankfurt)},
		{geoEdge("eu-central", p2.url(), p2.static.Public, frankfurt)},
	}}
	c := locatingClient(t, dir, startLocator(t, src, time.Hour))
	var skew atomic.Int64
	c.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if got := nextConnected(t, c); got != p1.url() {
		t.Fatalf("connected to %s, want %s", got, p1.url())
	}
	// The session counts as healthy (up 31 s), and the answer is still
	// fresh: back to p1 without locating.
	skew.Store(int64(31 * time.Second))
	if _, err := c.Ping(testCtx(t)); err != nil { // the peer has the session now
		t.Fatal(err)
	}
	p1.dropAll()
	if got := nextConnected(t, c); got != p1.url() || src.count() != 1 {
		t.Fatalf("reconnected to %s after %d locates; want %s after 1", got, src.count(), p1.url())
	}
	skew.Store(int64(2 * time.Hour))
	if _, err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	p1.dropAll() // the answer expired: locate again
	if got := nextConnected(t, c); got != p2.url() || src.count() != 2 {
		t.Fatalf("reconnected to %s after %d locates; want %s after 2", got, src.count(), p2.url())
	}
}

// TestLocateDecodesTheLocatorsAnswer: what geo.Locator serves, Locate reads.
func TestLocateDecodesTheLocatorsAnswer(t *testing.T) {
	k1, k2 := randomKey(t), randomKey(t)
	e2 := geoEdge("us-east", "wss://us.example:443/v1/ws", k2, virginia)
	e2.WT = "https://us.example:443/v1/wt"
	e2.CertHash = hex.EncodeToString(k1) // any 32 bytes
	src := &edgeSource{lists: [][]geo.Edge{{e2, geoEdge("eu-central", "ws://127.0.1.1:7000/v1/ws", k1, frankfurt)}}}
	loc, err := Locate(testCtx(t), startLocator(t, src, 90*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if loc.TTL != 90*time.Second || len(loc.Edges) != 2 {
		t.Fatalf("located %+v", loc)
	}
	a, b := loc.Edges[0], loc.Edges[1]
	if a.Region != "eu-central" || a.WS != "ws://127.0.1.1:7000/v1/ws" || a.WT != "" || string(a.NoiseKey) != string(k1) || a.CertHash != nil ||
		b.Region != "us-east" || b.WT != "https://us.example:443/v1/wt" || string(b.NoiseKey) != string(k2) || string(b.CertHash) != string(k1) {
		t.Fatalf("located %+v", loc)
	}
}

// TestLocateRejectsBadAnswers: each answer is refused with ErrLocate and
// an error that says why.
func TestLocateRejectsBadAnswers(t *testing.T) {
	key := strings.Repeat("ab", 32)
	edge := func(fields string) string {
		return `{"region":"eu","ws":"ws://127.0.0.1:1/v1/ws","noise_key":"` + key + `"` + fields + `}`
	}
	answer := func(edges ...string) string { return `{"edges":[` + strings.Join(edges, ",") + `],"ttl_s":60}` }
	many := make([]string, MaxLocatedEdges+1)
	for i := range many {
		many[i] = edge("")
	}
	type reply struct {
		status int
		ctype  string
		header map[string]string
		body   string
	}
	ok := func(body string) reply { return reply{status: 200, ctype: "application/json", body: body} }
	cases := []struct {
		name  string
		reply reply
		want  string
	}{
		{"oversized", ok(answer(edge("")) + strings.Repeat(" ", MaxLocateBytes)), "larger than"},
		{"not json", ok("<html>"), "malformed answer"},
		{"trailing data", ok(answer(edge("")) + `{}`), "data after"},
		{"no edges", ok(`{"ttl_s":60}`), `"edges" and "ttl_s" are required`},
		{"no ttl", ok(`{"edges":[` + edge("") + `]}`), `"edges" and "ttl_s" are required`},
		{"edges not a list", ok(`{"edges":{},"ttl_s":60}`), "malformed answer"},
		{"empty list", ok(answer()), "no healthy edge"},
		{"too many edges", ok(answer(many...)), "more than 64"},
		{"negative ttl", ok(`{"edges":[` + edge("") + `],"ttl_s":-1}`), "ttl_s -1"},
		{"huge ttl", ok(`{"edges":[` + edge("") + `],"ttl_s":86401}`), "ttl_s 86401"},
		{"fractional ttl", ok(`{"edges":[` + edge("") + `],"ttl_s":1.5}`), "malformed answer"},
		{"short key", ok(answer(`{"ws":"ws://h:1","noise_key":"abcd"}`)), "noise_key is not 32 bytes"},
		{"bad cert hash", ok(answer(edge(`,"cert_hash":"zz"`))), "cert_hash"},
		{"no url", ok(answer(`{"noise_key":"` + key + `"}`)), "neither ws nor wt"},
		{"http ws url", ok(answer(`{"ws":"http://h:1","noise_key":"` + key + `"}`)), "scheme"},
		{"ws as wt", ok(answer(`{"wt":"ws://h:1","noise_key":"` + key + `"}`)), "wt: scheme"},
		{"no host", ok(answer(`{"ws":"ws:///v1/ws","noise_key":"` + key + `"}`)), "without a host"},
		{"user info", ok(answer(`{"ws":"ws://u:p@h:1","noise_key":"` + key + `"}`)), "user info"},
		{"control chars in region", ok(answer(`{"region":"eu\u001b[2J","ws":"ws://h:1","noise_key":"` + key + `"}`)), "region name"},
		{"wrong content type", reply{status: 200, ctype: "text/html", body: answer(edge(""))}, "content type"},
		{"unavailable", reply{status: 503, ctype: "application/json", body: `{"error":"edge list unavailable"}`}, "503 Service Unavailable: edge list unavailable"},
		{"limited", reply{status: 429, ctype: "application/json", header: map[string]string{"Retry-After": "7"}, body: `{"error":"slow down"}`}, "retry after 7s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", tc.reply.ctype)
				for k, v := range tc.reply.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.reply.status)
				fmt.Fprint(w, tc.reply.body)
			}))
			defer srv.Close()
			_, err := Locate(testCtx(t), srv.URL+"/v1/locate", nil)
			if !errors.Is(err, ErrLocate) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrLocate containing %q", err, tc.want)
			}
			var le *LocateError
			if tc.name == "limited" && (!errors.As(err, &le) || le.Status != 429 || le.RetryAfter != 7*time.Second || le.Detail != "slow down") {
				t.Fatalf("limited: %#v", le)
			}
		})
	}
	// A valid answer passes through the same server code (the cases above
	// fail for their own reason).
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprint(w, `{"edges":[`+edge(`,"cert_hash":"`+key+`","future_field":[1,2]`)+`],"ttl_s":0,"client":{"ip":"127.0.0.1"}}`)
	}))
	defer srv.Close()
	loc, err := Locate(testCtx(t), srv.URL, nil)
	if err != nil || len(loc.Edges) != 1 || len(loc.Edges[0].CertHash) != 32 || loc.TTL != 0 {
		t.Fatalf("valid answer: %+v, %v", loc, err)
	}
}

// TestLocateURLMustBeHTTPS: plain http only to loopback, also after a
// redirect; nothing is fetched otherwise.
func TestLocateURLMustBeHTTPS(t *testing.T) {
	for _, u := range []string{"http://locate.example/v1/locate", "http://10.0.0.1/v1/locate", "ftp://127.0.0.1/x", "https:///v1/locate", "http://u:p@127.0.0.1/"} {
		if _, err := Locate(testCtx(t), u, nil); !errors.Is(err, ErrLocate) {
			t.Errorf("%s: err %v, want ErrLocate", u, err)
		}
	}
	redirect := httptest.NewServer(http.RedirectHandler("http://locate.example/v1/locate", http.StatusFound))
	defer redirect.Close()
	if _, err := Locate(testCtx(t), redirect.URL, nil); !errors.Is(err, ErrLocate) || !strings.Contains(err.Error(), "plain http") {
		t.Fatalf("redirect to plain http: %v", err)
	}
}
