package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/internal/netproxy"
	"github.com/chatmesh/chatmesh/sim/check"
)

// Sentinel errors of the mesh harness.
var (
	// ErrUnknownRegion names a region the mesh does not run.
	ErrUnknownRegion = errors.New("sim: unknown region")
	// ErrNotSupported is a fault the configuration cannot inject (a broker
	// kill on a real Kafka cluster given by MeshConfig.Kafka).
	ErrNotSupported = errors.New("sim: fault not supported in this configuration")
	// ErrStopped is returned by every method after Stop.
	ErrStopped = errors.New("sim: mesh stopped")
	// ErrNoLeader is returned by KillLeader when no voter names a leader.
	ErrNoLeader = errors.New("sim: no directory leader")
)

// MeshRegion is one region of the mesh: its name (also its directory
// voter id and topic namespace), its own loopback address and its place.
type MeshRegion struct {
	Name string
	// Host is the loopback address every listener of the region binds
	// (region API, directory raft and HTTP, edge WebSocket, the proxies of
	// its outgoing paths), e.g. "127.0.1.1". The embedded broker listens
	// on 127.0.0.1 (kfake binds nothing else).
	Host      string
	Lat, Long float64
}

// DefaultMeshRegions returns the first n (1..3) of the dev mesh's regions:
// eu-central on 127.0.1.1 (Frankfurt), us-east on 127.0.2.1 (Virginia),
// ap-southeast on 127.0.3.1 (Singapore).
func DefaultMeshRegions(n int) []MeshRegion {
	all := []MeshRegion{
		{Name: "eu-central", Host: "127.0.1.1", Lat: 50.11, Long: 8.68},
		{Name: "us-east", Host: "127.0.2.1", Lat: 39.04, Long: -77.49},
		{Name: "ap-southeast", Host: "127.0.3.1", Lat: 1.35, Long: 103.82},
	}
	return all[:max(0, min(n, len(all)))]
}

// MeshConfig configures StartMesh. Binary and PostgresDSN are required.
type MeshConfig struct {
	// Binary is the chatmesh executable to run.
	Binary string
	// Regions of the mesh; default DefaultMeshRegions(3).
	Regions []MeshRegion
	// DataDir holds every process's data (per region: broker/, region/,
	// edge/) and logs/ (one stderr log per process, appended across
	// restarts). Restarts reuse it. Default: a new temporary directory,
	// removed by Stop.
	DataDir string
	// PostgresDSN is the shared store (standing in for CockroachDB), a
	// TCP DSN (URL or key=value form): each region reaches it through a
	// proxy of its own.
	PostgresDSN string
	// PGSchema is the store's schema, shared by every region. Default
	// "sim_" + random hex (created by the regions; left behind by Stop).
	PGSchema string
	// Kafka, if set, gives a real Kafka cluster per region (bootstrap
	// brokers, every broker listed: each one gets a proxy per remote
	// region), in Regions order; no `chatmesh broker` runs and KillBroker
	// is not supported. Default: an embedded broker process per region.
	Kafka [][]string
	// DirectoryToken is the voters' shared secret. Default: random.
	DirectoryToken string
	// Partitions is the ingress partition count of each region. Default 4.
	Partitions int
	// Latency is the one-way latency every inter-region path (links and
	// directory) has outside faults. Default 0.
	Latency time.Duration
	// StartTimeout bounds every wait for a process to be ready (the
	// first start waits for all regions' quorum). Default 3 minutes.
	StartTimeout time.Duration
	// StopGrace is how long Stop waits for a clean exit after SIGTERM
	// before SIGKILL. Default 20 s.
	StopGrace time.Duration
	// EdgeArgs are extra flags for every edge process (the simulator's
	// registration token and per-IP limits: every client is on loopback).
	EdgeArgs []string
	// RegionArgs are extra flags for every region process.
	RegionArgs []string
	// LogLevel of the child processes. Default "warn".
	LogLevel string
	// Logger receives the harness's own events (starts, kills, faults).
	// Default: discard.
	Logger *slog.Logger
	// Now is the clock of the fault records. Default time.Now.
	Now func() time.Time
}

// RegionEndpoints is how to reach one region of a running mesh.
type RegionEndpoints struct {
	Name string `json:"name"`
	// EdgeWS is the edge's WebSocket URL and EdgeKey its Noise static
	// public key (hex), as the edge printed them (stable across restarts:
	// the key is kept under the edge's data directory).
	EdgeWS  string `json:"edge_ws"`
	EdgeKey string `json:"edge_key"`
	// DirectoryHTTP is the region's directory voter (http://host:port);
	// every request needs "Authorization: Bearer " + Mesh.DirectoryToken().
	DirectoryHTTP string `json:"directory_http"`
	// RegionAPI is the region's internal API for edges (http://host:port).
	RegionAPI string `json:"region_api"`
	// Brokers are the region's Kafka brokers (real addresses).
	Brokers []string `json:"brokers"`
}

// pathKind is what an inter-region proxy carries.
type pathKind string

const (
	pathLink  pathKind = "link"           // from's link worker → to's Kafka broker
	pathRaft  pathKind = "directory-raft" // from's voter → to's voter, raft
	pathDirHT pathKind = "directory-http" // from's voter → to's voter, forwarding HTTP
)

// meshPath is one proxied inter-region path, in the direction of its
// connections (from dials to).
type meshPath struct {
	kind     pathKind
	from, to string
	px       *netproxy.Proxy
}

type meshRegion struct {
	spec                                   MeshRegion
	dir                                    string
	brokers                                []string
	embedded                               bool
	apiAddr, raftAddr, dirHTTPAddr, wsAddr string
	storeDSN                               string // through the region's store proxy

	// guarded by Mesh.mu
	broker, region, edge *childProc
	ends                 RegionEndpoints
}

// Mesh is a multi-region chatmesh running as OS processes, with a fault
// proxy on every inter-region path. See the package documentation.
type Mesh struct {
	cfg     MeshConfig
	log     *slog.Logger
	tmpDir  bool
	regions []*meshRegion
	byName  map[string]*meshRegion
	paths   []*meshPath
	store   map[string]*netproxy.Proxy // region → its proxy to PostgreSQL
	http    *http.Client

	opMu sync.Mutex // one process operation (kill, restart, stop) at a time

	mu      sync.Mutex
	faults  []check.Fault
	active  map[FaultID]activeFault
	stopped bool
}

// StartMesh starts the mesh: per region a broker (unless MeshConfig.Kafka),
// a region process and an edge, and the proxies between regions. It
// returns once every edge is serving. On error everything started is
// stopped.
func StartMesh(ctx context.Context, cfg MeshConfig) (_ *Mesh, err error) {
	if cfg.Binary == "" {
		return nil, errors.New("sim: MeshConfig.Binary is required")
	}
	if cfg.PostgresDSN == "" {
		return nil, errors.New("sim: MeshConfig.PostgresDSN is required (the shared store)")
	}
	if len(cfg.Regions) == 0 {
		cfg.Regions = DefaultMeshRegions(3)
	}
	if cfg.Kafka != nil && len(cfg.Kafka) != len(cfg.Regions) {
		return nil, fmt.Errorf("sim: MeshConfig.Kafka names %d clusters for %d regions", len(cfg.Kafka), len(cfg.Regions))
	}
	if cfg.PGSchema == "" {
		cfg.PGSchema = "sim_" + randHex(6)
	}
	if cfg.DirectoryToken == "" {
		cfg.DirectoryToken = randHex(16)
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = 4
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 3 * time.Minute
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 20 * time.Second
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Mesh{cfg: cfg, log: cfg.Logger.With("component", "sim-mesh"), byName: map[string]*meshRegion{},
		store: map[string]*netproxy.Proxy{}, active: map[FaultID]activeFault{},
		http: &http.Client{Timeout: 5 * time.Second}}
	if m.cfg.DataDir == "" {
		if m.cfg.DataDir, err = os.MkdirTemp("", "chatmesh-sim-mesh-*"); err != nil {
			return nil, fmt.Errorf("sim: data dir: %w", err)
		}
		m.tmpDir = true
	}
	defer func() {
		if err != nil {
			m.Stop()
		}
	}()
	if err := os.MkdirAll(filepath.Join(m.cfg.DataDir, "logs"), 0o700); err != nil {
		return nil, fmt.Errorf("sim: data dir: %w", err)
	}
	for i, spec := range cfg.Regions {
		if spec.Name == "" || strings.ContainsAny(spec.Name, "=,; ") || m.byName[spec.Name] != nil {
			return nil, fmt.Errorf("sim: region name %q: empty, repeated or with =,; or space", spec.Name)
		}
		if ip := net.ParseIP(spec.Host); ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("sim: region %s: host %q is not a loopback address", spec.Name, spec.Host)
		}
		r := &meshRegion{spec: spec, dir: filepath.Join(m.cfg.DataDir, spec.Name)}
		for _, a := range []*string{&r.apiAddr, &r.raftAddr, &r.dirHTTPAddr, &r.wsAddr} {
			if *a, err = pickAddr(spec.Host); err != nil {
				return nil, err
			}
		}
		if cfg.Kafka != nil {
			r.brokers = slices.Clone(cfg.Kafka[i])
		} else {
			r.embedded = true
			b, err := pickAddr("127.0.0.1")
			if err != nil {
				return nil, err
			}
			r.brokers = []string{b}
		}
		m.regions = append(m.regions, r)
		m.byName[spec.Name] = r
	}
	if err := m.startProxies(); err != nil {
		return nil, err
	}

	sctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	for _, r := range m.regions {
		if r.embedded {
			if err := m.startBroker(sctx, r); err != nil {
				return nil, err
			}
		}
	}
	// The region processes start together: each waits for a quorum of
	// voters before it announces itself.
	for _, r := range m.regions {
		if err := m.spawnRegion(r); err != nil {
			return nil, err
		}
	}
	for _, r := range m.regions {
		if err := m.waitRegion(sctx, r); err != nil {
			return nil, err
		}
	}
	for _, r := range m.regions {
		if err := m.startEdge(sctx, r); err != nil {
			return nil, err
		}
	}
	m.log.Info("mesh running", "regions", len(m.regions), "data", m.cfg.DataDir, "schema", cfg.PGSchema)
	return m, nil
}

// startProxies creates the store proxy of every region and a proxy on
// every ordered pair's link (per remote broker) and directory paths.
func (m *Mesh) startProxies() error {
	host, port, err := dsnHostPort(m.cfg.PostgresDSN)
	if err != nil {
		return err
	}
	for _, r := range m.regions {
		px, err := netproxy.ListenConfig(netproxy.Config{Upstream: net.JoinHostPort(host, port), ListenAddr: r.spec.Host + ":0"})
		if err != nil {
			return fmt.Errorf("sim: store proxy of %s: %w", r.spec.Name, err)
		}
		m.store[r.spec.Name] = px
		if r.storeDSN, err = dsnVia(m.cfg.PostgresDSN, px.Addr()); err != nil {
			return err
		}
	}
	for _, a := range m.regions {
		for _, b := range m.regions {
			if a == b {
				continue
			}
			add := func(kind pathKind, upstream string) error {
				px, err := netproxy.ListenConfig(netproxy.Config{Upstream: upstream, ListenAddr: a.spec.Host + ":0",
					Up: m.cfg.Latency, Down: m.cfg.Latency})
				if err != nil {
					return fmt.Errorf("sim: %s proxy %s→%s: %w", kind, a.spec.Name, b.spec.Name, err)
				}
				m.paths = append(m.paths, &meshPath{kind: kind, from: a.spec.Name, to: b.spec.Name, px: px})
				return nil
			}
			for _, br := range b.brokers {
				if err := add(pathLink, br); err != nil {
					return err
				}
			}
			if err := add(pathRaft, b.raftAddr); err != nil {
				return err
			}
			if err := add(pathDirHT, b.dirHTTPAddr); err != nil {
				return err
			}
		}
	}
	return nil
}

func (m *Mesh) logPath(r *meshRegion, what string) string {
	return filepath.Join(m.cfg.DataDir, "logs", r.spec.Name+"-"+what+".log")
}

// startBroker starts r's `chatmesh broker` and waits for its BROKER line.
func (m *Mesh) startBroker(ctx context.Context, r *meshRegion) error {
	p, err := startChild("broker "+r.spec.Name, m.cfg.Binary, m.logPath(r, "broker"), []string{"broker",
		"--listen", r.brokers[0], "--data", filepath.Join(r.dir, "broker"), "--log", m.cfg.LogLevel})
	if err != nil {
		return err
	}
	m.mu.Lock()
	r.broker = p
	m.mu.Unlock()
	if _, err := p.waitLine(ctx, "BROKER "); err != nil {
		p.kill()
		return err
	}
	m.log.Info("broker up", "region", r.spec.Name, "addr", r.brokers[0])
	return nil
}

// regionArgs is r's `chatmesh region` command line.
func (m *Mesh) regionArgs(r *meshRegion) []string {
	var peers []string
	for _, o := range m.regions {
		peers = append(peers, o.spec.Name+"="+o.raftAddr+"="+o.dirHTTPAddr)
	}
	args := []string{"region", "--region", r.spec.Name, "--kafka", strings.Join(r.brokers, ","),
		"--pg", r.storeDSN, "--pg-schema", m.cfg.PGSchema, "--namespace", r.spec.Name,
		"--listen", r.apiAddr, "--partitions", fmt.Sprint(m.cfg.Partitions), "--data", filepath.Join(r.dir, "region"),
		"--log", m.cfg.LogLevel, "--directory-peers", strings.Join(peers, ","), "--directory-token", m.cfg.DirectoryToken,
		"--lat", fmt.Sprint(r.spec.Lat), "--long", fmt.Sprint(r.spec.Long), "--link-health-every", "1s"}
	args = append(args, m.cfg.RegionArgs...)
	for _, o := range m.regions {
		if o != r {
			args = append(args, "--link", o.spec.Name+"="+strings.Join(o.brokers, ","), "--link-namespace", o.spec.Name+"="+o.spec.Name)
		}
	}
	for _, p := range m.paths {
		if p.from != r.spec.Name {
			continue
		}
		flag := "--directory-via"
		if p.kind == pathLink {
			flag = "--link-via"
		}
		args = append(args, flag, p.px.Upstream()+"="+p.px.Addr())
	}
	return args
}

// spawnRegion starts r's region process without waiting for it.
func (m *Mesh) spawnRegion(r *meshRegion) error {
	p, err := startChild("region "+r.spec.Name, m.cfg.Binary, m.logPath(r, "region"), m.regionArgs(r))
	if err != nil {
		return err
	}
	m.mu.Lock()
	r.region = p
	m.mu.Unlock()
	return nil
}

// waitRegion waits for r's region process to print its REGION line.
func (m *Mesh) waitRegion(ctx context.Context, r *meshRegion) error {
	m.mu.Lock()
	p := r.region
	m.mu.Unlock()
	if _, err := p.waitLine(ctx, "REGION "); err != nil {
		p.kill()
		return err
	}
	m.log.Info("region up", "region", r.spec.Name, "api", r.apiAddr)
	return nil
}

// startEdge starts r's edge and waits for its ENDPOINTS line.
func (m *Mesh) startEdge(ctx context.Context, r *meshRegion) error {
	p, err := startChild("edge "+r.spec.Name, m.cfg.Binary, m.logPath(r, "edge"), append([]string{"edge",
		"--region", r.spec.Name, "--region-url", "http://" + r.apiAddr, "--kafka", strings.Join(r.brokers, ","),
		"--namespace", r.spec.Name, "--edge-id", r.spec.Name + "-edge", "--data", filepath.Join(r.dir, "edge"),
		"--ws", r.wsAddr, "--wt", "-", "--log", m.cfg.LogLevel,
		"--directory-addr", "http://" + r.dirHTTPAddr, "--directory-token", m.cfg.DirectoryToken}, m.cfg.EdgeArgs...))
	if err != nil {
		return err
	}
	m.mu.Lock()
	r.edge = p
	m.mu.Unlock()
	line, err := p.waitLine(ctx, "ENDPOINTS ")
	if err != nil {
		p.kill()
		return err
	}
	var ends struct {
		WS      string `json:"ws"`
		EdgeKey string `json:"edge_key"`
	}
	if err := json.Unmarshal([]byte(line), &ends); err != nil || ends.WS == "" || ends.EdgeKey == "" {
		p.kill()
		return fmt.Errorf("sim: edge %s: ENDPOINTS %s: %v", r.spec.Name, line, err)
	}
	m.mu.Lock()
	r.ends = RegionEndpoints{Name: r.spec.Name, EdgeWS: ends.WS, EdgeKey: ends.EdgeKey,
		DirectoryHTTP: "http://" + r.dirHTTPAddr, RegionAPI: "http://" + r.apiAddr, Brokers: slices.Clone(r.brokers)}
	m.mu.Unlock()
	m.log.Info("edge up", "region", r.spec.Name, "ws", ends.WS)
	return nil
}

// Regions returns the region names in configuration order.
func (m *Mesh) Regions() []string {
	out := make([]string, len(m.regions))
	for i, r := range m.regions {
		out[i] = r.spec.Name
	}
	return out
}

// Endpoints returns how to reach region name.
func (m *Mesh) Endpoints(name string) (RegionEndpoints, error) {
	r, ok := m.byName[name]
	if !ok {
		return RegionEndpoints{}, fmt.Errorf("%w: %q", ErrUnknownRegion, name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := r.ends
	e.Brokers = slices.Clone(e.Brokers)
	return e, nil
}

// DirectoryToken is the voters' shared secret (Bearer token).
func (m *Mesh) DirectoryToken() string { return m.cfg.DirectoryToken }

// DirectoryAddrs returns every voter's HTTP base URL, in region order.
func (m *Mesh) DirectoryAddrs() []string {
	out := make([]string, len(m.regions))
	for i, r := range m.regions {
		out[i] = "http://" + r.dirHTTPAddr
	}
	return out
}

// PGSchema is the store's schema (shared by every region).
func (m *Mesh) PGSchema() string { return m.cfg.PGSchema }

// DataDir is where the processes keep their data and logs/.
func (m *Mesh) DataDir() string { return m.cfg.DataDir }

// LogFiles returns the processes' stderr logs (one per region and process
// kind, appended across restarts).
func (m *Mesh) LogFiles() []string {
	var out []string
	for _, r := range m.regions {
		for _, what := range []string{"broker", "region", "edge"} {
			if p := m.logPath(r, what); fileExists(p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// LogTail returns the last n bytes of every process log, each headed by
// its file name: what a failing test prints.
func (m *Mesh) LogTail(n int) string {
	var b strings.Builder
	for _, p := range m.LogFiles() {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(data) > n {
			data = data[len(data)-n:]
		}
		fmt.Fprintf(&b, "--- %s (last %d bytes)\n%s\n", filepath.Base(p), len(data), data)
	}
	return b.String()
}

// Leader asks the voters (in region order, each bounded by 5 s) who leads
// the directory and returns that region's name.
func (m *Mesh) Leader(ctx context.Context) (string, error) {
	var errs []error
	for _, r := range m.regions {
		var st struct {
			Leader string `json:"leader"`
		}
		if err := m.getJSON(ctx, "http://"+r.dirHTTPAddr+"/directory/v1/status", &st); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, ok := m.byName[st.Leader]; ok {
			return st.Leader, nil
		}
		errs = append(errs, fmt.Errorf("%s knows no leader", r.spec.Name))
	}
	return "", fmt.Errorf("%w: %w", ErrNoLeader, errors.Join(errs...))
}

func (m *Mesh) getJSON(ctx context.Context, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+m.cfg.DirectoryToken)
	resp, err := m.http.Do(req)
	if err != nil {
		return fmt.Errorf("sim: GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("sim: GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("sim: GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("sim: GET %s: %w", u, err)
	}
	return nil
}

// Stop heals every fault, stops the edges, then the regions, then the
// brokers (SIGTERM, SIGKILL after StopGrace), closes the proxies and, when
// the data directory was temporary, removes it. Idempotent.
func (m *Mesh) Stop() {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.stopped = true
	now := m.cfg.Now()
	for id := range m.active {
		m.faults[id].End = now
	}
	clear(m.active)
	var edges, regions, brokers []*childProc
	for _, r := range m.regions {
		for _, x := range []struct {
			p   *childProc
			dst *[]*childProc
		}{{r.edge, &edges}, {r.region, &regions}, {r.broker, &brokers}} {
			if x.p != nil {
				*x.dst = append(*x.dst, x.p)
			}
		}
	}
	m.mu.Unlock()
	for _, group := range [][]*childProc{edges, regions, brokers} {
		var wg sync.WaitGroup
		for _, p := range group {
			wg.Go(func() { p.stop(m.cfg.StopGrace) })
		}
		wg.Wait()
	}
	for _, p := range m.paths {
		p.px.Close()
	}
	for _, px := range m.store {
		px.Close()
	}
	if m.tmpDir {
		_ = os.RemoveAll(m.cfg.DataDir)
	}
	m.log.Info("mesh stopped")
}

// pickAddr returns host:port with a port that was free on host. Ports come
// from below the kernel's ephemeral range (32768-60999 on Linux), so a
// process's outgoing connection cannot take a port a region restarted
// later binds again.
func pickAddr(host string) (string, error) {
	for range 1000 {
		port := 20000 + mrand.IntN(12000)
		addr := net.JoinHostPort(host, fmt.Sprint(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		return addr, nil
	}
	return "", fmt.Errorf("sim: no free port on %s", host)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// dsnHostPort returns the TCP host and port of a PostgreSQL DSN (URL or
// key=value form; default port 5432).
func dsnHostPort(dsn string) (string, string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", "", fmt.Errorf("sim: PostgresDSN: %w", err)
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = "5432"
		}
		if host == "" || strings.Contains(u.Host, ",") {
			return "", "", errors.New("sim: PostgresDSN must name one TCP host (each region reaches it through a proxy)")
		}
		return host, port, nil
	}
	kv := parseKV(dsn)
	host, port := kv["host"], kv["port"]
	if port == "" {
		port = "5432"
	}
	if host == "" || strings.HasPrefix(host, "/") || strings.Contains(host, ",") {
		return "", "", errors.New("sim: PostgresDSN must name one TCP host= (each region reaches it through a proxy)")
	}
	return host, port, nil
}

// dsnVia returns dsn with its host and port replaced by via (host:port).
func dsnVia(dsn, via string) (string, error) {
	host, port, err := net.SplitHostPort(via)
	if err != nil {
		return "", fmt.Errorf("sim: proxy address %q: %w", via, err)
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("sim: PostgresDSN: %w", err)
		}
		u.Host = via
		return u.String(), nil
	}
	var out []string
	for _, f := range strings.Fields(dsn) {
		k, _, _ := strings.Cut(f, "=")
		if k != "host" && k != "port" && k != "hostaddr" {
			out = append(out, f)
		}
	}
	return strings.Join(append(out, "host="+host, "port="+port), " "), nil
}

// parseKV parses a key=value DSN (no quoted values with spaces).
func parseKV(dsn string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(dsn) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = strings.Trim(v, "'")
		}
	}
	return out
}

// PathStats is one proxy's counters: an inter-region path (Kind "link",
// "directory-raft" or "directory-http", From dials To) or a region's path
// to the store (Kind "store", To "").
type PathStats struct {
	Kind     string `json:"kind"`
	From     string `json:"from"`
	To       string `json:"to"`
	Upstream string `json:"upstream"`
	netproxy.Stats
}

// PathStats returns the counters of every proxy, inter-region paths first
// (in creation order), then the store paths in region order.
func (m *Mesh) PathStats() []PathStats {
	var out []PathStats
	for _, p := range m.paths {
		out = append(out, PathStats{Kind: string(p.kind), From: p.from, To: p.to, Upstream: p.px.Upstream(), Stats: p.px.Stats()})
	}
	for _, r := range m.regions {
		px := m.store[r.spec.Name]
		out = append(out, PathStats{Kind: "store", From: r.spec.Name, Upstream: px.Upstream(), Stats: px.Stats()})
	}
	return out
}
