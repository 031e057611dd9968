package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/region/geo"
)

// lateEdges is an EdgeSource whose list is set once the stack's edge is
// up (its URL and key are known only then).
type lateEdges struct {
	mu    sync.Mutex
	edges []geo.Edge
}

func (l *lateEdges) set(e []geo.Edge) { l.mu.Lock(); l.edges = e; l.mu.Unlock() }

func (l *lateEdges) Edges(context.Context) ([]geo.Edge, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]geo.Edge(nil), l.edges...), nil
}

// TestChatCLIThroughLocate: with only --locate (no --edge, no
// --server-key) two devices register, send and receive. The stack's edge
// serves the locator; its answer puts a dead edge first (nearest to
// 127.0.0.1, in Frankfurt) and the live one second, with the key the CLI
// then pins.
func TestChatCLIThroughLocate(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db := filepath.Join(t.TempDir(), "city.mmdb")
	if err := geo.GenerateCityDB(db, geo.DevCities()); err != nil {
		t.Fatal(err)
	}
	src := &lateEdges{}
	loc, err := geo.Open(db, src, geo.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer loc.Close()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir(), WTAddr: "-", EdgeConfig: func(c *edge.Config) {
		c.Locate, c.LocateClientAddr = loc.Handler(), loc.ClientAddr
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String() + "/v1/ws"
	ln.Close()
	src.set([]geo.Edge{
		{Region: "eu-central", WS: dead, NoiseKey: strings.Repeat("11", 32), Lat: 50.11, Long: 8.68, Healthy: true},
		{Region: ends.Region, WS: ends.WS, NoiseKey: ends.EdgeKey, Lat: 39.04, Long: -77.49, Healthy: true},
	})
	u, err := url.Parse(ends.WS)
	if err != nil {
		t.Fatal(err)
	}
	locateURL := "http://" + u.Host + geo.Path

	run := func(state string, args ...string) string {
		t.Helper()
		full := append([]string{"--state", state, "--locate", locateURL, "--timeout", "20s"}, args...)
		var out, errb bytes.Buffer
		if err := runChat(ctx, full, strings.NewReader(""), &out, &errb); err != nil {
			t.Fatalf("chat %v: %v (stderr %s)", args, err, errb.String())
		}
		return out.String()
	}
	alice, bob := t.TempDir(), t.TempDir()
	if out := run(alice, "register", "alice"); out != "registered alice.1\n" {
		t.Fatalf("register alice: %q", out)
	}
	run(bob, "register", "bob")
	if out := run(alice, "send", "@bob", "found", "you"); out != "sent d:alice:bob seq 1\n" {
		t.Fatalf("send: %q", out)
	}
	if out := run(bob, "receive"); !strings.Contains(out, "alice.1: found you") {
		t.Fatalf("receive: %q", out)
	}
	if st := s.Edge.Stats(); st.LocateRequests == 0 {
		t.Fatal("the edge served no locate request")
	}
}

func TestChatNeedsEdgeOrLocate(t *testing.T) {
	t.Setenv("CHATMESH_EDGE", "")
	t.Setenv("CHATMESH_LOCATE", "")
	var out, errb bytes.Buffer
	err := runChat(context.Background(), []string{"--state", t.TempDir(), "register", "alice"}, strings.NewReader(""), &out, &errb)
	if !errors.Is(err, errNoEdge) {
		t.Fatalf("err %v, want %v", err, errNoEdge)
	}
}
