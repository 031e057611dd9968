package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/netproxy"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// interRegion is the one-way latency the proxies add between regions.
const interRegion = 40 * time.Millisecond

// realMesh is the three dev regions on real servers: a Kafka cluster per
// region (CHATMESH_MESH_KAFKA), PostgreSQL as the one shared store
// (CHATMESH_PG_DSN, a fresh schema), and every link worker's connections
// to the remote cluster through a netproxy adding oneWay each way.
type realMesh struct {
	*stack.Mesh
	mu      sync.Mutex
	proxies map[string]*netproxy.Proxy // "from→to"
}

func startRealMesh(t *testing.T, oneWay time.Duration) *realMesh {
	t.Helper()
	testenv.SkipShort(t, "a three-region mesh on real servers")
	dsn := testenv.PostgresDSN(t)
	clusters := testenv.MeshKafka(t, 3)
	ns := uniq("t")
	rm := &realMesh{proxies: map[string]*netproxy.Proxy{}}
	rm.Mesh = startMesh(t, func(c *stack.MeshConfig) {
		c.PostgresDSN, c.PGSchema = dsn, ns
		for i := range c.Regions {
			// Topics of this run only (reruns share the clusters).
			c.Regions[i].KafkaBrokers, c.Regions[i].Namespace = clusters[i], ns
		}
		tuned := c.EdgeConfig
		c.EdgeConfig = func(region string, e *edge.Config) {
			tuned(region, e)
			e.ID = ns + "-edge-" + region // edge topics are not namespaced
		}
		c.LinkBus = func(from, to string, brokers []string) (core.Bus, error) {
			var ps []*netproxy.Proxy
			for _, b := range brokers {
				p, err := netproxy.ListenConfig(netproxy.Config{Upstream: b, Up: oneWay, Down: oneWay})
				if err != nil {
					return nil, err
				}
				t.Cleanup(func() { p.Close() }) // runs after the mesh's shutdown
				ps = append(ps, p)
			}
			rm.mu.Lock()
			rm.proxies[from+"→"+to] = ps[0]
			rm.mu.Unlock()
			return kafkabus.New(kafkabus.Config{Brokers: brokers, ClientID: "chatmesh-link-" + from + "-" + to,
				Logger: c.Logger, Dial: netproxy.DialVia(ps...)})
		}
	})
	return rm
}

func (rm *realMesh) proxy(from, to string) *netproxy.Proxy {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	return rm.proxies[from+"→"+to]
}

// The mesh on real servers (issue 7, shown item 3): the assertions of
// TestMeshThreeRegions with 40 ms one way between regions, then delivery
// latency in one region and across regions.
func TestMeshRealServers(t *testing.T) {
	rm := startRealMesh(t, interRegion)
	t.Run("three-regions", func(t *testing.T) { checkMeshThreeRegions(t, rm.Mesh) })
	t.Run("latency", func(t *testing.T) { measureMeshLatency(t, rm) })
	// Every cross-region byte went through a proxy.
	for _, from := range stack.DevRegions() {
		for _, to := range stack.DevRegions() {
			if from.Name == to.Name {
				continue
			}
			p := rm.proxy(from.Name, to.Name)
			if p == nil {
				t.Fatalf("no proxy for the link %s→%s", from.Name, to.Name)
			}
			if s := p.Stats(); s.Accepted == 0 || s.BytesUp == 0 {
				t.Errorf("link %s→%s: nothing crossed its proxy: %+v", from.Name, to.Name, s)
			}
		}
	}
}

// latencyCase is one path measured: sender and recipient regions and the
// conversations' home.
type latencyCase struct {
	name           string
	from, to, home string
	crossings      int // inter-region hops on the delivery path
	pairs          []latencyPair
	lat            []time.Duration
}

type latencyPair struct {
	sender, recipient *tclient
	conv              string
}

// measureMeshLatency measures send → hand-over latency at the recipient
// along each path: 10 conversations at once, each sending 20 messages one
// after another (the next once the last was delivered and acked: the
// client keeps one message per conversation in flight, so this measures
// latency, not queueing), 200 per path; it reports p50 and p99. It
// asserts only that each inter-region crossing costs at least the proxy's
// one-way latency (the proxy is in the path): no upper bounds.
func measureMeshLatency(t *testing.T, rm *realMesh) {
	const (
		pairs   = 10
		perPair = 20
		warmup  = 3
	)
	eu, us, ap := rm.Node("eu-central"), rm.Node("us-east"), rm.Node("ap-southeast")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	user := func(node *stack.MeshNode, tag string) *tclient {
		c := newClient(t, []string{node.Ends.WS}, uniq(tag))
		c.start(t)
		return c
	}
	cases := []*latencyCase{
		{name: "in-region", from: eu.Spec.Name, to: eu.Spec.Name, home: eu.Spec.Name},
		{name: "cross-region, home=sender", from: eu.Spec.Name, to: us.Spec.Name, home: eu.Spec.Name, crossings: 1},
		{name: "cross-region, home=recipient", from: eu.Spec.Name, to: us.Spec.Name, home: us.Spec.Name, crossings: 1},
		{name: "cross-region, home=third", from: eu.Spec.Name, to: us.Spec.Name, home: ap.Spec.Name, crossings: 2},
	}
	senders := make([]*tclient, pairs) // one sender per pair, shared by the paths
	for i := range senders {
		senders[i] = user(eu, "lat-s")
	}
	for _, c := range cases {
		for i := range pairs {
			p := latencyPair{sender: senders[i], recipient: user(rm.Node(c.to), "lat-r")}
			p.conv = core.DirectConvID(p.sender.name, p.recipient.name)
			// The initiator's home is the conversation's home (the
			// recipient's for home=recipient); home=third is moved there
			// by the operator.
			initiator, peer := p.sender, p.recipient
			if c.home == c.to && c.from != c.to {
				initiator, peer = p.recipient, p.sender
			}
			if _, err := initiator.SendDirect(ctx, peer.name, []byte("hello")); err != nil {
				t.Fatal(err)
			}
			if err := initiator.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			h, ok, err := eu.Directory.ConvLinearizable(ctx, p.conv)
			if err != nil || !ok {
				t.Fatalf("%s: home of %s: %+v %v %v", c.name, p.conv, h, ok, err)
			}
			if h.Region != c.home {
				if _, err := eu.Directory.SetConvHome(ctx, p.conv, c.home, h.Epoch); err != nil {
					t.Fatalf("%s: move %s to %s: %v", c.name, p.conv, c.home, err)
				}
			}
			// Warm-up: sessions, claims and caches on every hop.
			for j := range warmup {
				if _, err := p.sender.Send(ctx, p.conv, []byte(fmt.Sprintf("warm %d", j))); err != nil {
					t.Fatal(err)
				}
			}
			c.pairs = append(c.pairs, p)
		}
		for _, p := range c.pairs {
			waitFor(t, 2*time.Minute, c.name+": warm-up delivered", func() bool { return len(p.recipient.seqs(p.conv)) >= 1+warmup })
			if err := p.sender.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			if h, _, _ := eu.Directory.ConvLinearizable(ctx, p.conv); h.Region != c.home {
				t.Fatalf("%s: conversation homed in %s, want %s", c.name, h.Region, c.home)
			}
		}
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var mu sync.Mutex
		var wg sync.WaitGroup
		errc := make(chan error, pairs)
		for _, p := range c.pairs {
			wg.Go(func() {
				lat, err := sendOneByOne(ctx, p, perPair)
				if err != nil {
					errc <- fmt.Errorf("%s: %s: %w", c.name, p.conv, err)
					return
				}
				mu.Lock()
				c.lat = append(c.lat, lat...)
				mu.Unlock()
			})
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Fatal(err)
		}
		slices.Sort(c.lat)
	}
	var table strings.Builder
	for _, c := range cases {
		fmt.Fprintf(&table, "\n  %-30s %-10s → %-10s home %-12s p50 %6.1f ms  p99 %6.1f ms", c.name, c.from, c.to, c.home,
			ms(percentile(c.lat, 50)), ms(percentile(c.lat, 99)))
	}
	t.Logf("mesh delivery latency (send → hand-over), %d messages per path (%d conversations × %d), %v one way between regions:%s",
		pairs*perPair, pairs, perPair, interRegion, table.String())
	for _, c := range cases {
		if bound := time.Duration(c.crossings) * interRegion; c.lat[0] < bound {
			t.Errorf("%s: fastest delivery %v crosses %d region boundaries of %v each: a proxy is not in the path",
				c.name, c.lat[0], c.crossings, interRegion)
		}
	}
}

// sendOneByOne sends n messages on p.conv, each after the previous one was
// handed to the recipient and acked to the sender, and returns each one's
// latency from the Send call to the hand-over at the recipient.
func sendOneByOne(ctx context.Context, p latencyPair, n int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	for i := range n {
		body := fmt.Sprintf("lat %d", i)
		sent := time.Now()
		id, err := p.sender.Send(ctx, p.conv, []byte(body))
		if err != nil {
			return nil, err
		}
		for {
			at, got := p.recipient.handedAt(p.conv, body)
			p.sender.rec.mu.Lock()
			_, acked := p.sender.rec.acks[id]
			p.sender.rec.mu.Unlock()
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("message %d (sent %v ago): delivered %v, acked %v: %w", i, time.Since(sent).Round(time.Millisecond), got, acked, err)
			}
			if got && acked {
				out = append(out, at.Sub(sent))
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return out, nil
}

// handedAt returns when the entry of conv with body was handed to the app.
func (tc *tclient) handedAt(conv, body string) (time.Time, bool) {
	tc.rec.mu.Lock()
	defer tc.rec.mu.Unlock()
	bodies := tc.rec.bodies[conv]
	for i := len(bodies) - 1; i >= 0; i-- {
		if bodies[i] == body {
			return tc.rec.at[conv][i], true
		}
	}
	return time.Time{}, false
}

// percentile returns the p-th percentile (nearest rank) of sorted d.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[max((len(d)*p+99)/100-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
