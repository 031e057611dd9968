package stack

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/region/geo"
	"github.com/chatmesh/chatmesh/region/kafkabus"
	"github.com/chatmesh/chatmesh/region/pebblestore"
	"github.com/chatmesh/chatmesh/region/pgstore"
)

// MeshRegion describes one region of an in-process mesh.
type MeshRegion struct {
	Name      string
	Lat, Long float64
	// Host is the loopback address the region's edge and directory voter
	// bind (e.g. 127.0.1.1), so the generated GeoIP database places the
	// region's clients (dev: 127.0.N.0/24 per city).
	Host string
	// WSPort and WTPort of the edge; 0 picks free ports.
	WSPort, WTPort int
	// RaftPort and DirPort of the directory voter (raft TCP and its HTTP
	// endpoint). They must stay the same across restarts (raft keeps the
	// peer addresses in its log); 0 picks free ports (tests with a fresh
	// data directory).
	RaftPort, DirPort int
	// KafkaBrokers of the region's own cluster; empty runs an embedded
	// broker under DataDir/<name>/kafka.
	KafkaBrokers []string
	// Namespace prefixes the region's topics (several regions on one
	// cluster in tests); default "" (each region has its own cluster).
	Namespace string
}

// DevRegions are the three regions of `chatmesh dev`, placed where
// geo.DevCities puts 127.0.1/2/3.0/24.
func DevRegions() []MeshRegion {
	return []MeshRegion{
		{Name: "eu-central", Lat: 50.11, Long: 8.68, Host: "127.0.1.1"},
		{Name: "us-east", Lat: 39.04, Long: -77.49, Host: "127.0.2.1"},
		{Name: "ap-southeast", Lat: 1.35, Long: 103.82, Host: "127.0.3.1"},
	}
}

// MeshConfig describes an in-process mesh: one shared store (the one
// logical store of the mesh: Pebble under DataDir, or PostgreSQL standing
// in for CockroachDB), and per region a bus, a directory voter, a
// sequencer, an edge and a link worker towards every other region.
type MeshConfig struct {
	DataDir     string
	Regions     []MeshRegion
	PostgresDSN string
	PGSchema    string
	// WTDisabled turns WebTransport off on every edge.
	WTDisabled bool
	// GeoDB is a GeoIP2/GeoLite2 City database; empty generates one for
	// geo.DevCities under DataDir/geo.
	GeoDB string
	// LocateAddr, if set, also serves the locator on its own listener.
	LocateAddr    string
	MaxConnsPerIP int
	Logger        *slog.Logger
	EdgeConfig    func(region string, c *edge.Config)
	RegionConfig  func(c *region.Config)
	// DirectoryConfig adjusts every voter's configuration (timeouts).
	DirectoryConfig func(c *directory.Config)
	// ManualFailover turns the failure detector and the regions' leases
	// off: a region that stops is failed only by an operator
	// (fail_region). Default: every region heartbeats and holds a lease,
	// and the directory fails a region silent for FailAfter.
	ManualFailover bool
	// LinkBus, if set, returns the client a link worker uses to produce
	// to region `to`'s cluster (tests put a latency proxy in between);
	// nil: a kafkabus client of to's brokers.
	LinkBus func(from, to string, brokers []string) (core.Bus, error)
}

// MeshNode is one running region of a Mesh.
type MeshNode struct {
	Spec      MeshRegion
	Names     region.Names
	Brokers   []string
	Bus       core.Bus
	EdgeBus   core.Bus
	Directory *directory.Directory
	Region    *region.Region
	Edge      *edge.Edge
	Links     map[string]*region.Link // by destination region
	// Lease is the region's directory lease (nil with ManualFailover).
	Lease *region.Lease
	Ends  Endpoints

	embedded    *kafkabus.Embedded
	linkBus     []core.Bus
	leaseCancel context.CancelFunc
}

// StopLease stops the region's heartbeats (a test's region loss: the
// directory fails the region FailAfter later) and waits for nothing: the
// lease simply runs out.
func (n *MeshNode) StopLease() {
	if n.leaseCancel != nil {
		n.leaseCancel()
	}
}

// Mesh is a running multi-region mesh in one process.
type Mesh struct {
	Store   core.Store
	Nodes   []*MeshNode
	Locator *geo.Locator
	// LocateURL is the locator on its own listener (MeshConfig.LocateAddr).
	LocateURL string

	cfg      MeshConfig
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	locSrv   *http.Server
	once     sync.Once
	shutErr  error
	storeDir string
}

// Node returns the node of a region, or nil.
func (m *Mesh) Node(name string) *MeshNode {
	for _, n := range m.Nodes {
		if n.Spec.Name == name {
			return n
		}
	}
	return nil
}

// freePort returns a port free on host right now.
func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// NewDirectoryLease is the lease of a region whose directory voter runs
// in the same process: heartbeats through it, its copy waited on, and
// restore_region to rejoin after a failover.
func NewDirectoryLease(name string, d *directory.Directory, logger *slog.Logger) (*region.Lease, error) {
	return region.NewLease(region.LeaseConfig{Region: name, Heartbeat: d.Heartbeat, WaitApplied: d.WaitApplied,
		Rejoin: d.Rejoin, Logger: logger})
}

// StartMesh brings a mesh up: store, brokers, voters (waiting for a
// leader), regions registered in the directory, sequencers, edges, links.
func StartMesh(ctx context.Context, cfg MeshConfig) (_ *Mesh, err error) {
	if cfg.DataDir == "" || len(cfg.Regions) == 0 {
		return nil, errors.New("stack: mesh needs DataDir and Regions")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	m := &Mesh{cfg: cfg}
	defer func() {
		if err != nil {
			m.Shutdown(context.Background())
		}
	}()
	for i := range cfg.Regions {
		r := &cfg.Regions[i]
		if r.Host == "" {
			r.Host = "127.0.0.1"
		}
		for _, p := range []*int{&r.RaftPort, &r.DirPort} {
			if *p == 0 {
				if *p, err = freePort(r.Host); err != nil {
					return nil, fmt.Errorf("stack: mesh: %w", err)
				}
			}
		}
		if r.KafkaBrokers == nil {
			if err := kafkabus.CheckEmbeddedData(filepath.Join(cfg.DataDir, r.Name, "kafka")); err != nil {
				return nil, fmt.Errorf("stack: region %s: embedded kafka: %w", r.Name, err)
			}
		}
	}

	// The shared store.
	if cfg.PostgresDSN != "" {
		st, err := pgstore.Open(ctx, cfg.PostgresDSN, pgstore.Options{Logger: cfg.Logger, Schema: cfg.PGSchema})
		if err != nil {
			return nil, fmt.Errorf("stack: store: %w", err)
		}
		m.Store = st
	} else {
		st, err := pebblestore.Open(filepath.Join(cfg.DataDir, "pebble"), pebblestore.Options{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("stack: store: %w", err)
		}
		m.Store = st
	}

	// Brokers and directory voters.
	var peers []directory.Peer
	for _, r := range cfg.Regions {
		peers = append(peers, directory.Peer{ID: r.Name,
			RaftAddr: net.JoinHostPort(r.Host, fmt.Sprint(r.RaftPort)),
			HTTPAddr: net.JoinHostPort(r.Host, fmt.Sprint(r.DirPort))})
	}
	for _, r := range cfg.Regions {
		n := &MeshNode{Spec: r, Names: region.NamesFor(r.Namespace), Links: map[string]*region.Link{}}
		m.Nodes = append(m.Nodes, n)
		n.Brokers = r.KafkaBrokers
		n.Ends.Kafka = "external"
		if len(n.Brokers) == 0 {
			n.embedded, err = kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{DataDir: filepath.Join(cfg.DataDir, r.Name, "kafka"), Logger: cfg.Logger})
			if err != nil {
				return nil, fmt.Errorf("stack: region %s: embedded kafka: %w", r.Name, err)
			}
			n.Brokers, n.Ends.Kafka = n.embedded.Addrs(), "embedded"
		}
		if n.Bus, err = kafkabus.New(kafkabus.Config{Brokers: n.Brokers, ClientID: "chatmesh-region-" + r.Name, Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("stack: region %s: kafka: %w", r.Name, err)
		}
		if n.EdgeBus, err = kafkabus.New(kafkabus.Config{Brokers: n.Brokers, ClientID: "chatmesh-edge-" + r.Name, Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("stack: region %s: kafka: %w", r.Name, err)
		}
		dc := directory.Config{ID: r.Name, Dir: filepath.Join(cfg.DataDir, r.Name, "directory"), Peers: peers, Logger: cfg.Logger,
			DetectFailures: !cfg.ManualFailover}
		if cfg.DirectoryConfig != nil {
			cfg.DirectoryConfig(&dc)
		}
		if n.Directory, err = directory.Open(ctx, dc); err != nil {
			return nil, fmt.Errorf("stack: region %s: directory: %w", r.Name, err)
		}
	}
	// Every region announces itself (a write through the leader: this
	// also waits for the first election).
	for _, n := range m.Nodes {
		r := n.Spec
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.Directory.PutRegion(wctx, directory.Region{Name: r.Name, Lat: r.Lat, Long: r.Long, Healthy: true})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("stack: region %s: announce in the directory: %w", r.Name, err)
		}
	}
	// Wait until every voter has applied every announcement, so no
	// sequencer starts without knowing the other regions.
	for _, n := range m.Nodes {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.Directory.Sync(wctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("stack: region %s: directory sync: %w", n.Spec.Name, err)
		}
	}

	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	// Leases: every region heartbeats from now on (the failure detector
	// judges it from its announcement).
	if !cfg.ManualFailover {
		for _, n := range m.Nodes {
			if n.Lease, err = NewDirectoryLease(n.Spec.Name, n.Directory, cfg.Logger); err != nil {
				return nil, err
			}
			lctx, lcancel := context.WithCancel(runCtx)
			n.leaseCancel = lcancel
			m.wg.Add(1)
			go func() { defer m.wg.Done(); n.Lease.Run(lctx) }()
		}
	}

	// Sequencers.
	for _, n := range m.Nodes {
		rcfg := region.Config{Name: n.Spec.Name, Logger: cfg.Logger, IngressPartitions: DevPartitions,
			IngressTopic: n.Names.Ingress, PresenceTopic: n.Names.Presence, SequencerGroup: n.Names.SequencerGroup,
			DeadLetterTopic: n.Names.DeadLetter, LinkPrefix: n.Names.LinkPrefix,
			Placement: region.DirectoryPlacement{D: n.Directory}, Lease: n.Lease}
		if cfg.RegionConfig != nil {
			cfg.RegionConfig(&rcfg)
		}
		if n.Region, err = region.New(rcfg, m.Store, n.Bus); err != nil {
			return nil, err
		}
		if err := n.Region.Start(ctx); err != nil {
			return nil, fmt.Errorf("stack: region %s: %w", n.Spec.Name, err)
		}
	}

	// Links: one worker per ordered pair of regions.
	for _, from := range m.Nodes {
		for _, to := range m.Nodes {
			if from == to {
				continue
			}
			var remote core.Bus
			if cfg.LinkBus != nil {
				remote, err = cfg.LinkBus(from.Spec.Name, to.Spec.Name, to.Brokers)
			} else {
				remote, err = kafkabus.New(kafkabus.Config{Brokers: to.Brokers, ClientID: "chatmesh-link-" + from.Spec.Name + "-" + to.Spec.Name, Logger: cfg.Logger})
			}
			if err != nil {
				return nil, fmt.Errorf("stack: link %s→%s: %w", from.Spec.Name, to.Spec.Name, err)
			}
			from.linkBus = append(from.linkBus, remote)
			l, err := region.NewLink(region.LinkConfig{From: from.Spec.Name, To: to.Spec.Name, Local: from.Bus,
				Topic: from.Names.LinkPrefix + to.Spec.Name, Group: from.Names.LinkPrefix + to.Spec.Name + ".worker",
				Remote: remote, RemoteNames: to.Names, Logger: cfg.Logger})
			if err != nil {
				return nil, err
			}
			from.Links[to.Spec.Name] = l
			m.wg.Add(1)
			go func() { defer m.wg.Done(); l.Run(runCtx) }()
		}
	}

	// The locator.
	dbPath := cfg.GeoDB
	if dbPath == "" {
		dbPath = filepath.Join(cfg.DataDir, "geo", "dev-city.mmdb")
		if err := os.MkdirAll(filepath.Dir(dbPath), 0o700); err != nil {
			return nil, fmt.Errorf("stack: %w", err)
		}
		if err := geo.GenerateCityDB(dbPath, geo.DevCities()); err != nil {
			return nil, fmt.Errorf("stack: geo database: %w", err)
		}
	}
	if m.Locator, err = geo.Open(dbPath, geo.DirectoryEdges{Dir: m.Nodes[0].Directory}, geo.Config{Logger: cfg.Logger}); err != nil {
		return nil, fmt.Errorf("stack: locator: %w", err)
	}
	// Edges.
	for _, n := range m.Nodes {
		r := n.Spec
		dir := filepath.Join(cfg.DataDir, r.Name)
		key, err := LoadOrCreateEdgeKey(filepath.Join(dir, "edge.key"))
		if err != nil {
			return nil, err
		}
		edgeID := "edge-" + r.Name
		if r.Namespace != "" { // edge topics are not namespaced: keep ids unique per cluster
			edgeID = r.Namespace + "-edge-" + r.Name
		}
		// Ready: the edge stops serving while its region cannot sequence
		// (no lease, sequencer stopped), so clients move to another
		// region's edge (edge.Config.Ready).
		ecfg := edge.Config{ID: edgeID, Region: r.Name, Static: key, Logger: cfg.Logger,
			WSAddr:       net.JoinHostPort(r.Host, fmt.Sprint(r.WSPort)),
			IngressTopic: n.Names.Ingress, PresenceTopic: n.Names.Presence, Ready: n.Region.API().Ready}
		var certHash []byte
		if !cfg.WTDisabled {
			var tc *tls.Config
			tc, certHash, err = LoadOrCreateCert(filepath.Join(dir, "edge-cert.pem"), time.Now())
			if err != nil {
				return nil, err
			}
			ecfg.WTAddr, ecfg.TLSConfig = net.JoinHostPort(r.Host, fmt.Sprint(r.WTPort)), tc
		}
		if cfg.MaxConnsPerIP > 0 {
			ecfg.MaxConnsPerIP = cfg.MaxConnsPerIP
		}
		// Every edge serves the locator (GET /v1/locate).
		ecfg.Locate, ecfg.LocateClientAddr = m.Locator.Handler(), m.Locator.ClientAddr
		if cfg.EdgeConfig != nil {
			cfg.EdgeConfig(r.Name, &ecfg)
		}
		if n.Edge, err = edge.New(ecfg, n.Region.API(), n.EdgeBus); err != nil {
			return nil, fmt.Errorf("stack: region %s: edge: %w", r.Name, err)
		}
		if err := n.Edge.Start(ctx); err != nil {
			return nil, fmt.Errorf("stack: region %s: edge: %w", r.Name, err)
		}
		edgeID = ecfg.ID // as EdgeConfig left it
		n.Ends = Endpoints{Region: r.Name, EdgeID: edgeID, WS: n.Edge.WSURL(), EdgeKey: hex.EncodeToString(key.Public),
			Kafka: n.Ends.Kafka, Store: "shared"}
		if ecfg.WTAddr != "" {
			n.Ends.WT, n.Ends.CertHash = n.Edge.WTURL(), hex.EncodeToString(certHash)
		}
		// The edge's public URLs, key and certificate hash for the locator.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = n.Directory.PutEdge(wctx, r.Name, directory.Edge{ID: edgeID, WS: n.Ends.WS, WT: n.Ends.WT, CertHash: n.Ends.CertHash,
			NoiseKeyHex: n.Ends.EdgeKey, Healthy: true})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("stack: region %s: announce the edge: %w", r.Name, err)
		}
	}

	// Every voter has applied every announcement before anyone asks.
	for _, n := range m.Nodes {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.Directory.Sync(wctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("stack: region %s: directory sync: %w", n.Spec.Name, err)
		}
	}
	if cfg.LocateAddr != "" {
		ln, err := net.Listen("tcp", cfg.LocateAddr)
		if err != nil {
			return nil, fmt.Errorf("stack: locator: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle(geo.Path, m.Locator.Handler())
		m.locSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute}
		m.LocateURL = "http://" + ln.Addr().String() + geo.Path
		m.wg.Add(1)
		go func() { defer m.wg.Done(); _ = m.locSrv.Serve(ln) }()
	}
	return m, nil
}

// Endpoints lists every region's endpoints.
func (m *Mesh) Endpoints() []Endpoints {
	out := make([]Endpoints, 0, len(m.Nodes))
	for _, n := range m.Nodes {
		out = append(out, n.Ends)
	}
	return out
}

// WriteEndpoints writes every region's endpoints to DataDir/endpoints.json.
func (m *Mesh) WriteEndpoints() (string, error) {
	b, err := json.MarshalIndent(struct {
		Regions []Endpoints `json:"regions"`
		Locate  string      `json:"locate,omitempty"`
	}{m.Endpoints(), m.LocateURL}, "", "  ")
	if err != nil {
		return "", err
	}
	p := filepath.Join(m.cfg.DataDir, "endpoints.json")
	return p, os.WriteFile(p, append(b, '\n'), 0o644)
}

// Failed reports the first edge listener that died.
func (m *Mesh) Failed() <-chan error {
	ch := make(chan error, 1)
	for _, n := range m.Nodes {
		if n.Edge == nil {
			continue
		}
		go func(e *edge.Edge) {
			if err, ok := <-e.Failed(); ok {
				select {
				case ch <- err:
				default:
				}
			}
		}(n.Edge)
	}
	return ch
}

// Shutdown stops everything: edges, links, sequencers, voters, buses,
// brokers, the store. Idempotent.
func (m *Mesh) Shutdown(ctx context.Context) error {
	m.once.Do(func() {
		var errs []error
		for _, n := range m.Nodes {
			if n.Edge != nil {
				errs = append(errs, n.Edge.Shutdown(ctx))
			}
		}
		if m.locSrv != nil {
			errs = append(errs, m.locSrv.Close())
		}
		// Sequencers first, so their last outputs are in the link topics
		// while the link workers still run (the workers carry them on at
		// the next start otherwise).
		for _, n := range m.Nodes {
			if n.Region != nil {
				errs = append(errs, n.Region.Shutdown(ctx))
			}
		}
		if m.cancel != nil {
			m.cancel()
		}
		m.wg.Wait()
		for _, n := range m.Nodes {
			for _, b := range n.linkBus {
				errs = append(errs, b.Close())
			}
			if n.EdgeBus != nil {
				errs = append(errs, n.EdgeBus.Close())
			}
			if n.Bus != nil {
				errs = append(errs, n.Bus.Close())
			}
			if n.Directory != nil {
				errs = append(errs, n.Directory.Close())
			}
			if n.embedded != nil {
				errs = append(errs, n.embedded.Close())
			}
		}
		if m.Locator != nil {
			errs = append(errs, m.Locator.Close())
		}
		if m.Store != nil {
			errs = append(errs, m.Store.Close())
		}
		m.shutErr = errors.Join(errs...)
	})
	return m.shutErr
}
