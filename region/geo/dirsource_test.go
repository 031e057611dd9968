package geo_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/region/geo"
)

type regionList []directory.Region

func (l regionList) Regions() []directory.Region { return l }

func TestDirectoryEdgesMapping(t *testing.T) {
	src := geo.DirectoryEdges{Dir: regionList{
		{Name: "eu-central", Lat: 50.11, Long: 8.68, Healthy: true, Edges: []directory.Edge{
			{ID: "fra-1", WS: "ws://127.0.1.1/v1/ws", WT: "https://127.0.1.1/v1/wt", CertHash: "ab", NoiseKeyHex: key(1), Healthy: true},
			{ID: "fra-2", WS: "ws://127.0.1.2/v1/ws", NoiseKeyHex: key(4), Healthy: false},
		}},
		{Name: "us-east", Lat: 39.04, Long: -77.49, Healthy: false, Edges: []directory.Edge{
			{ID: "iad-1", WS: "ws://127.0.2.1/v1/ws", NoiseKeyHex: key(2), Healthy: true},
		}},
		{Name: "ap-southeast", Lat: 1.35, Long: 103.82, Healthy: true},
	}}
	got, err := src.Edges(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []geo.Edge{
		{Region: "eu-central", WS: "ws://127.0.1.1/v1/ws", WT: "https://127.0.1.1/v1/wt", NoiseKey: key(1), CertHash: "ab", Lat: 50.11, Long: 8.68, Healthy: true},
		{Region: "eu-central", WS: "ws://127.0.1.2/v1/ws", NoiseKey: key(4), Lat: 50.11, Long: 8.68, Healthy: false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("edges:\n%+v\nwant\n%+v", got, want)
	}
}

func loopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestLocateFromDirectory: a Locator over a real (one-voter) directory
// offers the edges the directory holds, nearest first, and drops an edge or
// a region as soon as the directory marks it unhealthy.
func TestLocateFromDirectory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := directory.Peer{ID: "d0", RaftAddr: loopbackAddr(t), HTTPAddr: loopbackAddr(t)}
	d, err := directory.Open(ctx, directory.Config{ID: "d0", Dir: t.TempDir(), Peers: []directory.Peer{p},
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, r := range []directory.Region{
		{Name: "eu-central", Lat: 50.11, Long: 8.68, Healthy: true},
		{Name: "us-east", Lat: 39.04, Long: -77.49, Healthy: true},
		{Name: "ap-southeast", Lat: 1.35, Long: 103.82, Healthy: true},
	} {
		if err := d.PutRegion(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range []struct {
		region string
		edge   directory.Edge
	}{
		{"eu-central", directory.Edge{ID: "fra-1", WS: "ws://127.0.1.1/v1/ws", NoiseKeyHex: key(1), Healthy: true}},
		{"us-east", directory.Edge{ID: "iad-1", WS: "ws://127.0.2.1/v1/ws", NoiseKeyHex: key(2), Healthy: true}},
		{"ap-southeast", directory.Edge{ID: "sin-1", WS: "ws://127.0.3.1/v1/ws", NoiseKeyHex: key(3), Healthy: true}},
	} {
		if err := d.PutEdge(ctx, e.region, e.edge); err != nil {
			t.Fatal(err)
		}
	}
	l := newLocator(t, geo.DirectoryEdges{Dir: d}, geo.Config{})
	singapore := netip.MustParseAddr("127.0.3.7")
	locate := func() []string {
		t.Helper()
		a, err := l.Locate(ctx, singapore)
		if err != nil {
			t.Fatal(err)
		}
		return regions(a)
	}
	if got, want := locate(), []string{"ap-southeast", "eu-central", "us-east"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("regions = %v, want %v", got, want)
	}
	if err := d.SetEdgeHealth(ctx, "ap-southeast", "sin-1", false); err != nil {
		t.Fatal(err)
	}
	if got, want := locate(), []string{"eu-central", "us-east"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after sin-1 unhealthy: %v, want %v", got, want)
	}
	if err := d.SetRegionHealth(ctx, "eu-central", false); err != nil {
		t.Fatal(err)
	}
	if got, want := locate(), []string{"us-east"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after eu-central unhealthy: %v, want %v", got, want)
	}
}
