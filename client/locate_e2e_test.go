package client_test

import (
	"context"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region/geo"
)

// laterEdges is an EdgeSource whose list is set after the stack is up.
type laterEdges struct {
	mu    sync.Mutex
	edges []geo.Edge
}

func (l *laterEdges) Edges(context.Context) ([]geo.Edge, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]geo.Edge(nil), l.edges...), nil
}

// TestE2ELocateWebTransport: the stack's edge serves the locator; its
// answer names the edge by its WebTransport URL only, with the self-signed
// certificate's hash and the Noise key. A client configured with nothing
// but the locator URL registers and connects over WebTransport, pinning
// both from the answer.
func TestE2ELocateWebTransport(t *testing.T) {
	db := filepath.Join(t.TempDir(), "city.mmdb")
	if err := geo.GenerateCityDB(db, geo.DevCities()); err != nil {
		t.Fatal(err)
	}
	src := &laterEdges{}
	loc, err := geo.Open(db, src, geo.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loc.Close() })
	ends := startStackWith(t, func(c *stack.Config) {
		c.EdgeConfig = func(ec *edge.Config) { ec.Locate, ec.LocateClientAddr = loc.Handler(), loc.ClientAddr }
	})
	src.mu.Lock()
	src.edges = []geo.Edge{{Region: ends.Region, WT: ends.WT, CertHash: ends.CertHash, NoiseKey: ends.EdgeKey, Lat: 50.11, Long: 8.68, Healthy: true}}
	src.mu.Unlock()
	u, err := url.Parse(ends.WS)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Open(context.Background(), client.Config{Sealer: client.InsecurePlaintextSealer{}, StateDir: t.TempDir(),
		LocateURL: "http://" + u.Host + edge.LocatePath, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Register(e2eCtx(t), "alice"); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, c, "connected", func(e client.Event) bool { _, ok := e.(client.ConnectedEvent); return ok })
	if got := ev.(client.ConnectedEvent).Edge; got != ends.WT {
		t.Fatalf("connected to %s, want %s", got, ends.WT)
	}
	if _, err := c.Ping(e2eCtx(t)); err != nil {
		t.Fatal(err)
	}
}
