package directory

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/internal/netproxy"
	"github.com/hashicorp/raft"
)

// pairProxies puts a netproxy on every ordered voter pair's raft and HTTP
// paths: voter `from` reaches address `to` through proxies[from][to].
// Voters are wired through Config.Dial; the peer list stays the same on
// every voter.
type pairProxies struct {
	t       *testing.T
	mu      sync.Mutex
	proxies map[string]map[string]*netproxy.Proxy // from voter id → upstream addr → proxy
}

// wire is a cluster tweak: it gives the voter a Dial through its own
// proxies (created on its first start, kept across restarts).
func (pp *pairProxies) wire(cfg *Config) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	from := cfg.ID
	if pp.proxies[from] == nil {
		pp.proxies[from] = map[string]*netproxy.Proxy{}
		for _, p := range cfg.Peers {
			if p.ID == from {
				continue
			}
			for _, addr := range []string{p.RaftAddr, p.HTTPAddr} {
				px, err := netproxy.Listen(addr)
				if err != nil {
					pp.t.Fatalf("proxy %s→%s: %v", from, addr, err)
				}
				pp.t.Cleanup(func() { px.Close() })
				pp.proxies[from][addr] = px
			}
		}
	}
	cfg.Dial = netproxy.DialVia(mapValues(pp.proxies[from])...)
}

func mapValues(m map[string]*netproxy.Proxy) []*netproxy.Proxy {
	out := make([]*netproxy.Proxy, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	return out
}

// isolate partitions (or heals) every path from and to voter id.
func (pp *pairProxies) isolate(id string, peers []Peer, on bool) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	var self Peer
	for _, p := range peers {
		if p.ID == id {
			self = p
		}
	}
	for from, m := range pp.proxies {
		for addr, px := range m {
			if from == id || addr == self.RaftAddr || addr == self.HTTPAddr {
				px.Partition(on)
			}
		}
	}
}

// TestDirectoryDialPartition: every voter reaches the others only through
// Config.Dial (a proxy per ordered pair and path). With voter C — the
// leader — cut off both ways, A and B elect a leader among themselves and
// commit, while C can neither commit nor read linearizably (and its local
// copy misses A and B's write); healed, C catches up, its uncommitted
// write is gone, and writes through C commit again. On the old code
// (raft's own TCP transport, the default HTTP client) the voters bypass
// the proxies and C is never cut off.
func TestDirectoryDialPartition(t *testing.T) {
	pp := &pairProxies{t: t, proxies: map[string]map[string]*netproxy.Proxy{}}
	c := newClusterWith(t, 3, "", pp.wire)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const ci = 2
	cID := c.peers[ci].ID

	if err := c.node(0).PutRegion(ctx, Region{Name: "fra", Healthy: true}); err != nil {
		t.Fatal(err)
	}
	// Make C the leader, so that cutting it off forces an election.
	eventually(t, cID+" leads", func() bool {
		if c.node(ci).IsLeader() {
			return true
		}
		l := c.leader()
		_ = c.node(l).raft.LeadershipTransferToServer(raft.ServerID(cID), raft.ServerAddress(c.peers[ci].RaftAddr)).Error()
		return c.node(ci).IsLeader()
	})
	if _, err := casRetry(ctx, c.node(ci), "before", "fra", 0); err != nil {
		t.Fatalf("write through %s before the partition: %v", cID, err)
	}
	// C leads: it replicates to A and B through its raft proxies.
	for addr, px := range pp.proxies[cID] {
		if (addr == c.peers[0].RaftAddr || addr == c.peers[1].RaftAddr) && px.Stats().Accepted == 0 {
			t.Fatalf("the leader %s reached %s without its proxy", cID, addr)
		}
	}

	pp.isolate(cID, c.peers, true)
	// A and B elect a leader among themselves and commit.
	eventually(t, "A or B leads", func() bool { return c.node(0).IsLeader() || c.node(1).IsLeader() })
	if _, err := casRetry(ctx, c.node(0), "during", "fra", 0); err != nil {
		t.Fatalf("write through A during the partition: %v", err)
	}
	if _, _, err := c.node(1).ConvLinearizable(ctx, "during"); err != nil {
		t.Fatalf("linearizable read on B during the partition: %v", err)
	}
	// C can neither commit nor read linearizably.
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := c.node(ci).SetConvHome(wctx, "from-c", "fra", 0)
	wcancel()
	if err == nil {
		t.Fatal("a write through the cut-off voter committed")
	}
	if !errors.Is(err, ErrNoLeader) && !errors.Is(err, ErrUncertain) {
		t.Fatalf("write through the cut-off voter: %v, want ErrNoLeader or ErrUncertain", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
	err = c.node(ci).Sync(rctx)
	rcancel()
	if err == nil {
		t.Fatal("a linearizable read on the cut-off voter succeeded")
	}
	if _, ok := c.node(ci).Conv("during"); ok {
		t.Fatal("the cut-off voter applied a write made during the partition")
	}

	// Heal: C catches up, and its uncommitted write never applies.
	pp.isolate(cID, c.peers, false)
	eventually(t, cID+" catches up", func() bool {
		_, ok := c.node(ci).Conv("during")
		return ok
	})
	if _, err := casRetry(ctx, c.node(ci), "after", "fra", 0); err != nil {
		t.Fatalf("write through %s after healing: %v", cID, err)
	}
	for i := range 3 {
		if err := c.node(i).Sync(ctx); err != nil {
			t.Fatalf("sync %s: %v", c.peers[i].ID, err)
		}
		d := c.node(i)
		for _, conv := range []string{"before", "during", "after"} {
			if _, ok := d.Conv(conv); !ok {
				t.Fatalf("%s misses %s", d.ID(), conv)
			}
		}
		if h, ok := d.Conv("from-c"); ok {
			t.Fatalf("%s holds the cut-off voter's uncommitted write: %+v", d.ID(), h)
		}
	}
}

// TestStreamLayerDefaultsAndRefusals: without Config.Dial the voters dial
// directly; an unspecified raft address is refused.
func TestStreamLayerDefaultsAndRefusals(t *testing.T) {
	if _, err := listenStream(context.Background(), "0.0.0.0:0", nil); err == nil {
		t.Fatal("listenStream accepted an unspecified address")
	}
	s, err := listenStream(context.Background(), "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := s.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := s.Dial(raft.ServerAddress(s.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	// A Dial that refuses is what raft sees.
	refuse := errors.New("refused by test")
	s2, err := listenStream(context.Background(), "127.0.0.1:0", func(context.Context, string, string) (net.Conn, error) { return nil, refuse })
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Dial("127.0.0.1:1", time.Second); !errors.Is(err, refuse) {
		t.Fatalf("dial: %v, want the Dial's error", err)
	}
}
