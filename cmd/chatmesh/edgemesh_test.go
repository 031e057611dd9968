package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
)

// TestEdgeMeshFlags: the edge's mesh flags are refused without
// --directory-addr (they would be ignored), and malformed ones before
// anything starts.
func TestEdgeMeshFlags(t *testing.T) {
	t.Setenv("CHATMESH_DIRECTORY_ADDR", "")
	t.Setenv("CHATMESH_DIRECTORY_TOKEN", "")
	base := []string{"--kafka", "127.0.0.1:1", "--region-url", "http://127.0.0.1:1", "--data", t.TempDir(), "--ws", "127.0.0.1:0", "--wt", "-"}
	dir := []string{"--directory-addr", "127.0.0.1:1"}
	cases := map[string]struct {
		args []string
		want string
	}{
		"token without directory":     {[]string{"--directory-token", "x"}, "only apply with --directory-addr"},
		"geoip without directory":     {[]string{"--geoip-db", "x.mmdb"}, "only apply with --directory-addr"},
		"public-ws without directory": {[]string{"--public-ws", "wss://e/v1/ws"}, "only apply with --directory-addr"},
		"proxy without geoip":         {append([]string{"--trusted-proxy", "10.0.0.0/8"}, dir...), "add --geoip-db"},
		"bad proxy":                   {append([]string{"--trusted-proxy", "nope"}, dir...), "neither a CIDR nor an address"},
		"bad directory":               {[]string{"--directory-addr", "ftp://x"}, "want http://host:port"},
		"bad public-ws":               {append([]string{"--public-ws", "https://e/v1/ws"}, dir...), "--public-ws"},
		"bad public-wt":               {append([]string{"--public-wt", "ws://e/v1/wt", "--wt", "127.0.0.1:0"}, dir...), "--public-wt"},
		"public-wt without wt":        {append([]string{"--public-wt", "https://e/v1/wt"}, dir...), "WebTransport disabled"},
		"every interface":             {append([]string{"--ws", "0.0.0.0:0"}, dir...), "give --public-ws"},
		"every interface, wt":         {append([]string{"--wt", ":0", "--public-ws", "ws://e/v1/ws"}, dir...), "give --public-wt"},
		"refresh":                     {append([]string{"--locate-refresh", "0s"}, dir...), "positive duration"},
		"missing geoip file":          {append([]string{"--geoip-db", filepath.Join(t.TempDir(), "none.mmdb")}, dir...), "--geoip-db"},
	}
	for name, tc := range cases {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := runEdge(ctx, append(append([]string{}, base...), tc.args...), &out, &errb)
		cancel()
		if err == nil || !strings.Contains(err.Error()+errb.String(), tc.want) {
			t.Errorf("%s: %v (stderr %q), want %q", name, err, errb.String(), tc.want)
		}
		if strings.Contains(out.String(), "ENDPOINTS") {
			t.Errorf("%s: printed %q: it started", name, out.String())
		}
	}
	var l prefixList
	if err := l.Set("10.0.0.0/8, 192.0.2.7,::1"); err != nil || l.String() != "10.0.0.0/8,192.0.2.7/32,::1/128" {
		t.Fatalf("prefixList: %v %q", err, l.String())
	}
	if !l[1].Contains(netip.MustParseAddr("192.0.2.7")) {
		t.Fatal("an address is its own /32")
	}
	if got := locateURL("wss://e.example:443/v1/ws"); got != "https://e.example:443/v1/locate" {
		t.Fatalf("locateURL: %q", got)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEdgeAnnounce: an edge announces itself through a voter's HTTP
// endpoint with the voters' token, retrying (logged at warn) while the
// directory refuses it (its region is not there yet); leave marks it
// unhealthy. Against a directory that is gone, leave still returns.
func TestEdgeAnnounce(t *testing.T) {
	const token = "s3cret"
	ds, peers := startVoters(t, token)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	client := &directory.AdminClient{URL: "http://" + peers[1].HTTPAddr, Token: token}
	e := directory.Edge{ID: "syd-1", WS: "wss://syd-1.example/v1/ws", NoiseKeyHex: strings.Repeat("ab", 32), Healthy: true}

	a := startAnnounce(client, "au-southeast", e, logger)
	for i := 0; !strings.Contains(logs.String(), "retrying"); i++ {
		if i > 600 {
			t.Fatalf("no retry logged: %s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := ds[0].PutRegion(ctx, directory.Region{Name: "au-southeast", Lat: -33.87, Long: 151.21, Healthy: true}); err != nil {
		t.Fatal(err)
	}
	stored := func() (directory.Edge, bool) {
		if err := ds[2].Sync(ctx); err != nil {
			t.Fatal(err)
		}
		r, _ := ds[2].Region("au-southeast")
		if len(r.Edges) != 1 {
			return directory.Edge{}, false
		}
		return r.Edges[0], true
	}
	for i := 0; ; i++ {
		if got, ok := stored(); ok {
			if got != e {
				t.Fatalf("stored %+v, want %+v", got, e)
			}
			break
		}
		if i > 600 {
			t.Fatalf("never announced: %s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("failed announcements not logged at warn: %s", logs.String())
	}
	a.leave()
	if got, _ := stored(); got.Healthy {
		t.Fatalf("after leave: %+v, want unhealthy", got)
	}

	// The directory unreachable: announcing retries, leave returns.
	gone := &directory.AdminClient{URL: "http://" + loopback(t), Token: token}
	b := startAnnounce(gone, "au-southeast", e, slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() { b.leave(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("leave hangs with the directory gone")
	}
}
