package directory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// cluster is n in-process voters on loopback TCP, each with its own data dir.
type cluster struct {
	t     *testing.T
	peers []Peer
	dirs  []string
	mu    sync.Mutex
	nodes []*Directory // nil while a voter is down
	// tokens[i] is voter i's Config.Token (all "" by default).
	tokens []string
	// tweak, when set, adjusts every voter's Config before Open.
	tweak func(*Config)
}

// freeAddr returns a loopback address with a port that was free. Ports
// come from below the kernel's ephemeral range (32768-60999 here): a voter
// started first dials its peers from ephemeral ports, and one of them
// could take a later voter's port before it binds it.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if !portsHandedOut.add(port) {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	t.Fatal("no free port")
	return ""
}

// portSet remembers the ports freeAddr handed out in this process, so two
// voters never get the same one.
type portSet struct {
	mu sync.Mutex
	m  map[int]bool
}

var portsHandedOut = &portSet{m: map[int]bool{}}

func (s *portSet) add(p int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[p] {
		return false
	}
	s.m[p] = true
	return true
}

func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	return newClusterWithToken(t, n, "")
}

// newClusterWithToken starts n voters that all have token.
func newClusterWithToken(t *testing.T, n int, token string) *cluster {
	t.Helper()
	return newClusterWith(t, n, token, nil)
}

// newClusterWith starts n voters that all have token, each Config
// adjusted by tweak (may be nil).
func newClusterWith(t *testing.T, n int, token string, tweak func(*Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, nodes: make([]*Directory, n), tokens: make([]string, n), tweak: tweak}
	for i := range c.tokens {
		c.tokens[i] = token
	}
	base := t.TempDir()
	for i := range n {
		c.peers = append(c.peers, Peer{ID: fmt.Sprintf("r%d", i), RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t)})
		c.dirs = append(c.dirs, filepath.Join(base, fmt.Sprintf("r%d", i)))
	}
	for i := range n {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range n {
			c.kill(i)
		}
	})
	return c
}

func (c *cluster) start(i int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d *Directory
	var err error
	for range 50 { // the port may linger briefly after a restart
		cfg := Config{
			ID: c.peers[i].ID, Dir: c.dirs[i], Peers: c.peers, Token: c.tokens[i],
			// A lease long enough that a loaded machine (2 shared cores, -race)
			// does not depose a healthy leader mid-test.
			HeartbeatTimeout: 400 * time.Millisecond, ElectionTimeout: 400 * time.Millisecond,
			LeaderLeaseTimeout: 300 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
			ApplyTimeout: 2 * time.Second, SnapshotThreshold: 32, SnapshotInterval: 100 * time.Millisecond, TrailingLogs: 8,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		if c.tweak != nil {
			c.tweak(&cfg)
		}
		d, err = Open(ctx, cfg)
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("open %s: %v", c.peers[i].ID, err)
	}
	c.mu.Lock()
	c.nodes[i] = d
	c.mu.Unlock()
}

func (c *cluster) kill(i int) {
	c.mu.Lock()
	d := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	if d != nil {
		if err := d.Close(); err != nil {
			c.t.Errorf("close %s: %v", d.ID(), err)
		}
		if err := d.Close(); err != nil { // idempotent
			c.t.Errorf("second close %s: %v", d.ID(), err)
		}
	}
}

func (c *cluster) node(i int) *Directory {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// leader waits for a live voter that is leader and returns its index.
func (c *cluster) leader() int {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for i := range c.nodes {
			if d := c.node(i); d != nil && d.IsLeader() {
				return i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatal("no leader elected")
	return -1
}

// eventually polls cond until it holds or 15 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClusterFollowerWritesAndLeaderRestart(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	l := c.leader()
	f := (l + 1) % 3

	watch := c.node((l + 2) % 3).Watch(ctx)

	// Writes on a follower are forwarded to the leader and applied everywhere.
	fd := c.node(f)
	for _, r := range []string{"fra", "iad", "sin"} {
		if err := fd.PutRegion(ctx, Region{Name: r, Healthy: true, EdgeURLs: []string{"wss://" + r}}); err != nil {
			t.Fatalf("put region via follower: %v", err)
		}
	}
	if h, err := fd.SetUserHome(ctx, "alice", "fra", true); err != nil || h != "fra" {
		t.Fatalf("set user home: %q %v", h, err)
	}
	if h, err := fd.SetUserHome(ctx, "alice", "iad", true); !errors.Is(err, ErrExists) || h != "fra" {
		t.Fatalf("second register: %q %v, want fra and ErrExists", h, err)
	}
	if e, err := fd.SetConvHome(ctx, "c1", "fra", 0); err != nil || e != 1 {
		t.Fatalf("create conv: %d %v", e, err)
	}
	if _, err := fd.SetConvHome(ctx, "c1", "iad", 0); !errors.Is(err, core.ErrFenced) {
		t.Fatalf("second create: %v, want fenced", err)
	}
	if _, err := fd.SetUserHome(ctx, "bob", "nowhere", false); !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("unknown region: %v", err)
	}
	for i := range 3 {
		d := c.node(i)
		eventually(t, "replication to "+d.ID(), func() bool {
			h, ok := d.Conv("c1")
			u, _ := d.UserHome("alice")
			return ok && h == (ConvHome{Region: "fra", Epoch: 1}) && u == "fra" && len(d.Regions()) == 3
		})
	}
	// Sync on a follower makes a just-finished write visible there.
	if e, err := c.node(l).SetConvHome(ctx, "c1", "sin", 1); err != nil || e != 2 {
		t.Fatalf("move on leader: %d %v", e, err)
	}
	if h, ok, err := fd.ConvLinearizable(ctx, "c1"); err != nil || !ok || h.Epoch != 2 || h.Region != "sin" {
		t.Fatalf("linearizable read on follower: %+v %v %v", h, ok, err)
	}

	// The watcher saw the changes in order.
	var kinds []ChangeKind
	for len(kinds) < 6 {
		select {
		case ch := <-watch:
			kinds = append(kinds, ch.Kind)
		case <-ctx.Done():
			t.Fatalf("watch: got %v", kinds)
		}
	}
	want := []ChangeKind{ChangeRegion, ChangeRegion, ChangeRegion, ChangeUser, ChangeConv, ChangeConv}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("watch kinds = %v, want %v", kinds, want)
		}
	}

	// Kill the leader: a new one is elected and writes continue from a follower.
	c.kill(l)
	nl := c.leader()
	if nl == l {
		t.Fatal("dead voter still leader")
	}
	survivor := c.node((nl + 1) % 3)
	if survivor == nil {
		survivor = c.node(nl)
	}
	for i := range 100 { // enough to cross SnapshotThreshold: the restarted voter may catch up from a snapshot
		if _, err := casRetry(ctx, survivor, fmt.Sprintf("k%d", i), "iad", 0); err != nil {
			t.Fatalf("write %d after failover: %v", i, err)
		}
	}
	if e, err := casRetry(ctx, survivor, "c1", "fra", 2); err != nil || e != 3 {
		t.Fatalf("move after failover: %d %v", e, err)
	}

	// Restart the old leader from its data dir: it catches up.
	c.start(l)
	old := c.node(l)
	if h, ok := old.Conv("c1"); ok && h.Epoch < 2 {
		t.Fatalf("restarted voter went backwards: %+v", h)
	}
	eventually(t, "restarted voter catches up", func() bool {
		h, _ := old.Conv("c1")
		_, ok := old.Conv("k99")
		return h == (ConvHome{Region: "fra", Epoch: 3}) && ok
	})
	if h, err := old.SetUserHome(ctx, "bob", "sin", true); err != nil || h != "sin" {
		t.Fatalf("write through restarted voter: %q %v", h, err)
	}
	for i := range 3 {
		d := c.node(i)
		if err := d.Sync(ctx); err != nil {
			t.Fatalf("sync %s: %v", d.ID(), err)
		}
	}
	s0 := c.node(0).State()
	for i := 1; i < 3; i++ {
		si := c.node(i).State()
		if len(si.Convs) != len(s0.Convs) || len(si.Users) != len(s0.Users) || si.Convs["c1"] != s0.Convs["c1"] || si.Users["bob"] != "sin" {
			t.Fatalf("states differ after sync: r0 %d convs %d users, r%d %d convs %d users", len(s0.Convs), len(s0.Users), i, len(si.Convs), len(si.Users))
		}
	}
}

// casRetry is SetConvHome as the package doc tells a caller to use it: an
// ErrUncertain outcome is retried, and a retry fenced at exactly the epoch
// this write would have produced, with the home it would have set, means
// the earlier attempt applied. (A loaded machine can lose leadership in
// the middle of a commit.)
func casRetry(ctx context.Context, d *Directory, conv, region string, expect uint64) (uint64, error) {
	var err error
	for range 10 {
		var e uint64
		e, err = d.SetConvHome(ctx, conv, region, expect)
		var ee *EpochError
		switch {
		case err == nil:
			return e, nil
		case errors.Is(err, ErrUncertain):
			continue
		case errors.As(err, &ee) && ee.Stored == expect+1:
			h, ok, rerr := d.ConvLinearizable(ctx, conv)
			if rerr == nil && ok && h.Region == region {
				return h.Epoch, nil
			}
		}
		return 0, err
	}
	return 0, err
}

func TestWatchOverflowResyncs(t *testing.T) {
	d := &Directory{cfg: Config{WatchBuffer: 2}, closed: make(chan struct{}), watchers: map[*watcher]struct{}{}}
	ctx, cancel := context.WithCancel(context.Background())
	ch := d.Watch(ctx)
	for i := range 5 {
		d.broadcast(Change{Index: uint64(i + 1), Kind: ChangeConv})
	}
	got := []Change{<-ch}
	for len(ch) > 0 {
		got = append(got, <-ch)
	}
	// 1, 2 buffered; 3 overflows: drained, resync@3; 4 buffered; 5 overflows: drained, resync@5.
	if len(got) != 1 || got[0].Kind != ChangeResync || got[0].Index != 5 {
		t.Fatalf("got %+v, want one resync at 5", got)
	}
	cancel()
	if _, ok := <-ch; ok {
		t.Fatal("channel not closed after ctx end")
	}
}

func TestOpenRejectsBadConfig(t *testing.T) {
	ctx := context.Background()
	p := Peer{ID: "a", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"}
	for name, cfg := range map[string]Config{
		"not a peer":   {ID: "b", Dir: t.TempDir(), Peers: []Peer{p}},
		"peer no addr": {ID: "a", Dir: t.TempDir(), Peers: []Peer{{ID: "a"}}},
	} {
		if d, err := Open(ctx, cfg); err == nil {
			d.Close()
			t.Errorf("%s: Open succeeded", name)
		}
	}
}

func TestWriteOnClosedDirectory(t *testing.T) {
	c := newCluster(t, 1)
	c.leader()
	d := c.node(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.PutRegion(ctx, Region{Name: "fra", Healthy: true}); err != nil {
		t.Fatal(err)
	}
	w := d.Watch(ctx)
	c.kill(0)
	if err := d.PutRegion(ctx, Region{Name: "iad", Healthy: true}); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v, want ErrClosed", err)
	}
	if err := d.Sync(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("sync after close: %v, want ErrClosed", err)
	}
	if _, ok := <-w; ok {
		t.Fatal("watch channel not closed by Close")
	}
	if r, ok := d.Region("fra"); !ok || r.Name != "fra" {
		t.Fatal("local read after close lost state")
	}
}
