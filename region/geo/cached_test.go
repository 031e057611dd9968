package geo_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/region/geo"
)

// fetcher is a RegionFetcher whose answer the test sets.
type fetcher struct {
	mu      sync.Mutex
	regions []directory.Region
	err     error
	calls   int
	lin     bool // any call asked for a linearizable read
}

func (f *fetcher) set(regions []directory.Region, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.regions, f.err = regions, err
}

func (f *fetcher) Regions(ctx context.Context, linearizable bool) ([]directory.Region, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.lin = f.lin || linearizable
	if f.err != nil {
		return nil, f.err
	}
	// A fresh copy, as a decoded HTTP reply would be.
	out := make([]directory.Region, len(f.regions))
	for i, r := range f.regions {
		r.Edges = append([]directory.Edge(nil), r.Edges...)
		out[i] = r
	}
	return out, nil
}

func (f *fetcher) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func meshRegions() []directory.Region {
	return []directory.Region{
		{Name: "eu-central", Lat: 50.11, Long: 8.68, Healthy: true, Edges: []directory.Edge{
			{ID: "fra-1", WS: "ws://127.0.1.1/v1/ws", NoiseKeyHex: key(1), Healthy: true}}},
		{Name: "us-east", Lat: 39.04, Long: -77.49, Healthy: true, Edges: []directory.Edge{
			{ID: "iad-1", WS: "ws://127.0.2.1/v1/ws", WT: "https://127.0.2.1/v1/wt", CertHash: key(9), NoiseKeyHex: key(2), Healthy: true}}},
	}
}

// TestCachedEdgesServesLastGoodCopy: no copy → the locate fails with the
// geo error (503); a good read → answers from it; the directory down →
// still the last good copy; a later read replaces it.
func TestCachedEdgesServesLastGoodCopy(t *testing.T) {
	ctx := context.Background()
	down := errors.New("connection refused")
	f := &fetcher{err: down}
	c := geo.NewCachedEdges(f, geo.CacheConfig{})
	l := newLocator(t, c, geo.Config{})
	virginia := netip.MustParseAddr("127.0.2.9")

	if _, err := c.Edges(ctx); !errors.Is(err, geo.ErrNoCopy) {
		t.Fatalf("before any read: %v, want ErrNoCopy", err)
	}
	if err := c.Refresh(ctx); !errors.Is(err, down) {
		t.Fatalf("Refresh: %v, want the fetch error", err)
	}
	if _, err := c.Edges(ctx); !errors.Is(err, geo.ErrNoCopy) || !errors.Is(err, down) {
		t.Fatalf("after a failed first read: %v, want ErrNoCopy wrapping the cause", err)
	}
	if _, err := l.Locate(ctx, virginia); !errors.Is(err, geo.ErrEdges) || !errors.Is(err, geo.ErrNoCopy) {
		t.Fatalf("Locate without a copy: %v, want ErrEdges", err)
	}
	if code, _ := get(t, l.Handler(), "127.0.2.9:1"); code != http.StatusServiceUnavailable {
		t.Fatalf("GET without a copy: %d, want 503", code)
	}
	if _, ok := c.CopiedAt(); ok {
		t.Fatal("CopiedAt reports a copy")
	}

	f.set(meshRegions(), nil)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	want := []geo.Edge{
		{Region: "eu-central", WS: "ws://127.0.1.1/v1/ws", NoiseKey: key(1), Lat: 50.11, Long: 8.68, Healthy: true},
		{Region: "us-east", WS: "ws://127.0.2.1/v1/ws", WT: "https://127.0.2.1/v1/wt", CertHash: key(9), NoiseKey: key(2), Lat: 39.04, Long: -77.49, Healthy: true},
	}
	got, err := c.Edges(ctx)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("edges: %+v %v\nwant %+v", got, err, want)
	}
	got[0].Region = "changed by the caller"
	if again, _ := c.Edges(ctx); again[0].Region != "eu-central" {
		t.Fatal("the caller changed the cached copy")
	}
	locate := func() []string {
		t.Helper()
		a, err := l.Locate(ctx, virginia)
		if err != nil {
			t.Fatal(err)
		}
		return regions(a)
	}
	if got := locate(); !reflect.DeepEqual(got, []string{"us-east", "eu-central"}) {
		t.Fatalf("from Virginia: %v", got)
	}

	// The directory goes away: the last good copy is served.
	f.set(nil, down)
	if err := c.Refresh(ctx); !errors.Is(err, down) {
		t.Fatalf("Refresh: %v", err)
	}
	if got := locate(); !reflect.DeepEqual(got, []string{"us-east", "eu-central"}) {
		t.Fatalf("directory down: %v, want the last good copy", got)
	}

	// Back, with us-east's edge marked unhealthy: the next read drops it.
	rs := meshRegions()
	rs[1].Edges[0].Healthy = false
	f.set(rs, nil)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := locate(); !reflect.DeepEqual(got, []string{"eu-central"}) {
		t.Fatalf("after iad-1 unhealthy: %v", got)
	}
	if f.lin {
		t.Error("the cache asked for linearizable reads (they fail without a raft leader)")
	}
}

// blocking never answers until its context ends.
type blocking struct{}

func (blocking) Regions(ctx context.Context, _ bool) ([]directory.Region, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestCachedEdgesReadTimeout: a directory that hangs costs one Timeout,
// not the caller's whole context.
func TestCachedEdgesReadTimeout(t *testing.T) {
	c := geo.NewCachedEdges(blocking{}, geo.CacheConfig{Timeout: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Refresh(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Refresh: %v, want a deadline", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Refresh waited for the caller's context")
	}
}

// TestCachedEdgesRun: Run keeps reading until the directory answers, then
// picks up changes, and returns when its context ends.
func TestCachedEdgesRun(t *testing.T) {
	f := &fetcher{err: errors.New("not yet")}
	c := geo.NewCachedEdges(f, geo.CacheConfig{Refresh: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for range 2000 { // bounded: 20 s
			if cond() {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("Run: %s never happened", what)
	}
	waitFor("two failed reads", func() bool { return f.count() >= 2 })
	f.set(meshRegions(), nil)
	waitFor("a copy", func() bool { _, ok := c.CopiedAt(); return ok })
	rs := meshRegions()[:1]
	f.set(rs, nil)
	waitFor("the change", func() bool { e, _ := c.Edges(ctx); return len(e) == 1 })

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// TestCachedEdgesOverAdminClient: the cache reads a real voter through
// directory.AdminClient (with the voters' token), and keeps serving the
// edges after the voter is gone.
func TestCachedEdgesOverAdminClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := directory.Peer{ID: "d0", RaftAddr: loopbackAddr(t), HTTPAddr: loopbackAddr(t)}
	d, err := directory.Open(ctx, directory.Config{ID: "d0", Dir: t.TempDir(), Peers: []directory.Peer{p}, Token: "s3cret",
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, r := range meshRegions() {
		if err := d.PutRegion(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := (&directory.AdminClient{URL: "http://" + p.HTTPAddr, Token: "wrong"}).PutEdge(ctx, "eu-central",
		directory.Edge{ID: "evil", WS: "ws://evil", NoiseKeyHex: key(7), Healthy: true}); !errors.Is(err, directory.ErrUnauthorized) {
		t.Fatalf("PutEdge with a wrong token: %v", err)
	}
	c := geo.NewCachedEdges(&directory.AdminClient{URL: "http://" + p.HTTPAddr, Token: "s3cret"}, geo.CacheConfig{})
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	l := newLocator(t, c, geo.Config{})
	a, err := l.Locate(ctx, netip.MustParseAddr("127.0.1.3"))
	if err != nil || !reflect.DeepEqual(regions(a), []string{"eu-central", "us-east"}) || a.Edges[1].CertHash != key(9) {
		t.Fatalf("locate: %+v %v", a, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err == nil {
		t.Fatal("Refresh succeeded with the voter closed")
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, geo.Path, nil)
	req.RemoteAddr = "127.0.2.3:1"
	l.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("locate with the voter closed: %d %s", rec.Code, rec.Body)
	}
}
