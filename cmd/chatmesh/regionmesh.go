package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// meshFlags are the flags that make `chatmesh region` a member of a mesh
// (issue 7): its directory voter, its place, and a link worker towards
// every other region's Kafka cluster. Without --directory-peers the region
// runs alone, exactly as before.
type meshFlags struct {
	dirID, dirPeers, dirDir, dirToken string
	lat, long                         float64
	links                             linkFlag
	dirVia, linkVia                   viaFlag
	linkNS                            linkFlag
	linkEndpoint                      string
	linkTLS                           bool
	linkCA                            string
	linkSASL                          kafkabus.SASL
	announceTimeout                   time.Duration
	linkHealthEvery                   time.Duration
	// failover (issue 8)
	manualFailover bool
	failAfter      time.Duration
	rejoinAfter    time.Duration
}

func addMeshFlags(fs *flag.FlagSet) *meshFlags {
	m := &meshFlags{links: linkFlag{}, linkNS: linkFlag{}, dirVia: viaFlag{}, linkVia: viaFlag{}}
	fs.StringVar(&m.dirID, "directory-id", "", "this region's directory voter id (default: --region)")
	fs.StringVar(&m.dirPeers, "directory-peers", "", "every directory voter, identical on every region: name=raftHost:port=httpHost:port,... (turns on the mesh)")
	fs.StringVar(&m.dirDir, "directory-dir", "", "directory voter data (raft log, snapshots); default <--data>/directory")
	fs.StringVar(&m.dirToken, "directory-token", os.Getenv("CHATMESH_DIRECTORY_TOKEN"), "shared secret of the directory's HTTP endpoints (env CHATMESH_DIRECTORY_TOKEN)")
	fs.Float64Var(&m.lat, "lat", 0, "latitude of the region (the locator orders edges by distance)")
	fs.Float64Var(&m.long, "long", 0, "longitude of the region")
	fs.Var(m.links, "link", "REGION=broker1:9092,broker2:9092: the Kafka cluster of another region, for the link worker towards it; repeat for every other region")
	fs.Var(m.linkNS, "link-namespace", "REGION=NS: the --namespace of another region's topics on its cluster (default: this region's --namespace; only when regions share a cluster, as in tests)")
	fs.StringVar(&m.linkEndpoint, "link-endpoint", "", "this region's Kafka brokers as the other regions reach them, published in the directory (default: --kafka)")
	fs.BoolVar(&m.linkTLS, "link-tls", false, "connect to remote clusters with TLS, verified against the system roots (implied by --link-tls-ca)")
	fs.StringVar(&m.linkCA, "link-tls-ca", "", "PEM file of the CA that signed the remote clusters' certificates (turns TLS on)")
	fs.StringVar(&m.linkSASL.Mechanism, "link-sasl-mechanism", "", "SASL towards remote clusters: plain, scram-sha-256 or scram-sha-512 (empty: none)")
	fs.StringVar(&m.linkSASL.User, "link-sasl-user", "", "SASL user towards remote clusters")
	fs.StringVar(&m.linkSASL.Password, "link-sasl-password", os.Getenv("CHATMESH_LINK_SASL_PASSWORD"), "SASL password towards remote clusters (env CHATMESH_LINK_SASL_PASSWORD; prefer the env)")
	fs.DurationVar(&m.announceTimeout, "directory-wait", 5*time.Minute, "how long to wait for a directory quorum (the other voters) when starting")
	fs.DurationVar(&m.linkHealthEvery, "link-health-every", 10*time.Second, "how often link health is checked and logged")
	fs.Var(m.dirVia, "directory-via", "ADDR=VIA: this voter reaches another voter's raft or HTTP address ADDR by dialing VIA (a proxy); repeatable; the peer list stays identical (region simulator)")
	fs.Var(m.linkVia, "link-via", "ADDR=VIA: the link workers reach remote broker ADDR (as --link and Kafka metadata name it) by dialing VIA (a proxy); repeatable (region simulator)")
	m.addFailoverFlags(fs)
	return m
}

// addFailoverFlags adds the flags of automatic failover: every region
// heartbeats to the directory and sequences only under its lease; the
// directory's leader fails a region silent for --fail-after.
func (m *meshFlags) addFailoverFlags(fs *flag.FlagSet) {
	fs.BoolVar(&m.manualFailover, "manual-failover", false, "no failure detector and no lease: a region is failed only by an operator (chatmesh directory fail-region); every voter must agree")
	fs.DurationVar(&m.failAfter, "fail-after", directory.DefaultFailAfter, "the directory fails a region that has not heartbeaten for this long (the region's lease is below it); give every voter the same value")
	fs.DurationVar(&m.rejoinAfter, "rejoin-after", 10*time.Second, "a region the directory failed rejoins (restore_region) after holding its lease this long; negative: only an operator restores it")
}

// active reports whether the region runs as a mesh member.
func (m *meshFlags) active() bool { return m.dirPeers != "" }

// check refuses mesh flags without --directory-peers (they would be
// silently ignored) and validates the rest.
func (m *meshFlags) check(fs *flag.FlagSet) error {
	if !m.active() {
		var set []string
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "directory-id", "directory-dir", "directory-token", "lat", "long", "link", "link-namespace", "link-endpoint",
				"link-tls", "link-tls-ca", "link-sasl-mechanism", "link-sasl-user", "link-sasl-password", "directory-wait", "link-health-every",
				"manual-failover", "fail-after", "rejoin-after", "directory-via", "link-via":
				set = append(set, "--"+f.Name)
			}
		})
		if len(set) > 0 {
			return fmt.Errorf("region: %s only apply to a mesh member: add --directory-peers", strings.Join(set, ", "))
		}
		return nil
	}
	if m.lat < -90 || m.lat > 90 || m.long < -180 || m.long > 180 {
		return fmt.Errorf("region: --lat %v --long %v is not a place on Earth", m.lat, m.long)
	}
	if m.linkSASL.Mechanism != "" && m.linkSASL.Password == "" {
		return errors.New("region: --link-sasl-mechanism needs a password (CHATMESH_LINK_SASL_PASSWORD or --link-sasl-password)")
	}
	return nil
}

// linkFlag is a repeatable REGION=VALUE flag.
type linkFlag map[string]string

func (l linkFlag) String() string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "=" + l[k])
	}
	return b.String()
}

func (l linkFlag) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	name, val = strings.TrimSpace(name), strings.TrimSpace(val)
	if !ok || name == "" {
		return fmt.Errorf("want REGION=VALUE, got %q", v)
	}
	if _, dup := l[name]; dup {
		return fmt.Errorf("region %s given twice", name)
	}
	l[name] = val
	return nil
}

// splitBrokers splits a comma-separated broker list, dropping blanks.
func splitBrokers(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// parsePeers parses --directory-peers: name=raftHost:port=httpHost:port,...
func parsePeers(s string) ([]directory.Peer, error) {
	var out []directory.Peer
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		parts := strings.Split(item, "=")
		if len(parts) != 3 {
			return nil, fmt.Errorf("--directory-peers: %q: want name=raftHost:port=httpHost:port", item)
		}
		p := directory.Peer{ID: strings.TrimSpace(parts[0]), RaftAddr: strings.TrimSpace(parts[1]), HTTPAddr: strings.TrimSpace(parts[2])}
		for _, a := range []string{p.RaftAddr, p.HTTPAddr} {
			host, port, err := net.SplitHostPort(a)
			if err != nil || host == "" || port == "" || port == "0" {
				return nil, fmt.Errorf("--directory-peers: %s: %q must be a concrete host:port", p.ID, a)
			}
			if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
				return nil, fmt.Errorf("--directory-peers: %s: %q must be a concrete address, not %s", p.ID, a, host)
			}
		}
		if p.ID == "" || seen[p.ID] {
			return nil, fmt.Errorf("--directory-peers: empty or repeated voter name in %q", item)
		}
		seen[p.ID] = true
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("--directory-peers: no voters")
	}
	return out, nil
}

// linkTLSConfig is the TLS configuration of the remote clusters, or nil.
func (m *meshFlags) linkTLSConfig() (*tls.Config, error) {
	if m.linkCA == "" && !m.linkTLS {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if m.linkCA != "" {
		pem, err := os.ReadFile(m.linkCA)
		if err != nil {
			return nil, fmt.Errorf("region: --link-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("region: --link-tls-ca %s: no PEM certificate in it", m.linkCA)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// meshMember is the mesh side of a running region process: the directory
// voter and the link workers.
type meshMember struct {
	name   string
	prefix string // local outbound link topics
	dir    *directory.Directory
	links  map[string]*region.Link
	remote []core.Bus
	// lease is the region's directory lease (nil with --manual-failover);
	// it runs from the announcement until close.
	lease       *region.Lease
	leaseCancel context.CancelFunc
	leaseDone   chan struct{}
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	log         *slog.Logger
}

// openMesh opens the directory voter and announces the region in it. It
// returns once the local copy has applied every region known to the
// leader, and refuses to start when a region the directory knows has no
// --link.
func openMesh(ctx context.Context, m *meshFlags, name, kafka, data string, logger *slog.Logger, stdout io.Writer) (_ *meshMember, err error) {
	peers, err := parsePeers(m.dirPeers)
	if err != nil {
		return nil, fmt.Errorf("region: %w", err)
	}
	id := m.dirID
	if id == "" {
		id = name
	}
	if _, ok := m.links[name]; ok {
		return nil, fmt.Errorf("region: --link %s names this region itself", name)
	}
	dirDir := m.dirDir
	if dirDir == "" {
		dirDir = filepath.Join(data, "directory")
	}
	// The token guards every directory HTTP endpoint (forwarding between
	// voters included); Open refuses a non-loopback address without one.
	dc := directory.Config{ID: id, Dir: dirDir, Peers: peers, Logger: logger, Token: m.dirToken, Dial: m.dirVia.dial()}
	dc.DetectFailures, dc.FailAfter = !m.manualFailover, m.failAfter
	mm := &meshMember{name: name, links: map[string]*region.Link{}, log: logger.With("component", "mesh", "region", name)}
	if mm.dir, err = directory.Open(ctx, dc); err != nil {
		return nil, fmt.Errorf("region: directory: %w", err)
	}
	defer func() {
		if err != nil {
			mm.close()
		}
	}()
	self := slices.IndexFunc(peers, func(p directory.Peer) bool { return p.ID == id })
	fmt.Fprintf(stdout, "  directory voter %q: raft %s, http %s, %d voters\n", id, peers[self].RaftAddr, peers[self].HTTPAddr, len(peers))

	endpoint := m.linkEndpoint
	if endpoint == "" {
		endpoint = kafka
	}
	// Announce: a write through the leader, so this waits for a quorum of
	// voters (the other regions starting). Keep what the directory already
	// holds for the region's edges.
	wctx, cancel := context.WithTimeout(ctx, m.announceTimeout)
	defer cancel()
	r := directory.Region{Name: name, Lat: m.lat, Long: m.long, Healthy: true, LinkEndpoint: endpoint}
	if old, ok := mm.dir.Region(name); ok {
		r.EdgeURLs, r.NoiseKeyHex = old.EdgeURLs, old.NoiseKeyHex
	}
	for attempt := 0; ; attempt++ {
		err = mm.dir.PutRegion(wctx, r)
		if err == nil {
			err = mm.dir.Sync(wctx)
		}
		if err == nil {
			break
		}
		if wctx.Err() != nil {
			return nil, fmt.Errorf("region: announce %s in the directory (is a quorum of %d voters running?): %w", name, len(peers)/2+1, err)
		}
		if attempt%10 == 0 {
			mm.log.Info("waiting for a directory quorum", "voters", len(peers), "err", err)
		}
		select {
		case <-wctx.Done():
		case <-time.After(time.Second):
		}
	}
	if !m.manualFailover {
		// Heartbeats start with the announcement: the failure detector
		// judges the region from then on.
		mm.lease, err = region.NewLease(region.LeaseConfig{Region: name, Heartbeat: mm.dir.Heartbeat, WaitApplied: mm.dir.WaitApplied,
			Rejoin: mm.dir.Rejoin, RejoinAfter: m.rejoinAfter, Logger: logger})
		if err != nil {
			return nil, err
		}
		lctx, lcancel := context.WithCancel(context.Background())
		mm.leaseCancel, mm.leaseDone = lcancel, make(chan struct{})
		go func() { defer close(mm.leaseDone); mm.lease.Run(lctx) }()
		if r, ok := mm.dir.Region(name); ok && !r.Healthy {
			fmt.Fprintf(stdout, "  the directory holds %s failed: it forwards what it holds to the current homes and rejoins after %v of heartbeats\n", name, m.rejoinAfter)
		}
		fmt.Fprintf(stdout, "  failover: heartbeats to the directory; fail after %v of silence\n", m.failAfter)
	}
	if missing := mm.missingLinks(m.links); len(missing) > 0 {
		return nil, fmt.Errorf("region: the directory knows region(s) %s but no --link names their Kafka cluster (add --link %s=broker:9092,...)",
			strings.Join(missing, ", "), missing[0])
	}
	for l := range m.links {
		if _, ok := mm.dir.Region(l); !ok {
			mm.log.Warn("--link names a region the directory does not know yet (it has not started); its link runs anyway", "link", l)
		}
	}
	return mm, nil
}

// missingLinks lists the other regions in the directory without a link.
func (mm *meshMember) missingLinks(links linkFlag) []string {
	var out []string
	for _, r := range mm.dir.Regions() {
		if _, ok := links[r.Name]; !ok && r.Name != mm.name {
			out = append(out, r.Name)
		}
	}
	sort.Strings(out)
	return out
}

// startLinks starts one link worker per --link, towards the remote
// cluster with the configured TLS and SASL, and a watcher that logs link
// health and regions that join the directory without a link.
func (mm *meshMember) startLinks(m *meshFlags, local core.Bus, names region.Names, namespace string, stdout io.Writer) error {
	tc, err := m.linkTLSConfig()
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	mm.cancel = cancel
	mm.prefix = names.LinkPrefix
	targets := make([]string, 0, len(m.links))
	for to := range m.links {
		targets = append(targets, to)
	}
	sort.Strings(targets)
	for _, to := range targets {
		brokers := splitBrokers(m.links[to])
		if len(brokers) == 0 {
			return fmt.Errorf("region: --link %s= names no brokers", to)
		}
		remote, err := kafkabus.New(kafkabus.Config{Brokers: brokers, ClientID: "chatmesh-link-" + mm.name + "-" + to,
			Logger: mm.log, TLS: tc, SASL: m.linkSASL, Dial: m.linkVia.dial()})
		if err != nil {
			return fmt.Errorf("region: link %s→%s: %w", mm.name, to, err)
		}
		mm.remote = append(mm.remote, remote)
		ns, ok := m.linkNS[to]
		if !ok {
			ns = namespace
		}
		l, err := region.NewLink(region.LinkConfig{From: mm.name, To: to, Local: local,
			Topic: names.LinkPrefix + to, Group: names.LinkPrefix + to + ".worker",
			Remote: remote, RemoteNames: region.NamesFor(ns), Logger: mm.log})
		if err != nil {
			return err
		}
		mm.links[to] = l
		mm.wg.Go(func() { l.Run(runCtx) })
		sec := "plaintext"
		if tc != nil {
			sec = "TLS"
		}
		if m.linkSASL.Mechanism != "" {
			sec += ", SASL " + strings.ToLower(m.linkSASL.Mechanism) + " as " + m.linkSASL.User
		}
		fmt.Fprintf(stdout, "  link %s → %s: topic %s → %s (%s)\n", mm.name, to, names.LinkPrefix+to, strings.Join(brokers, ","), sec)
	}
	mm.wg.Go(func() { mm.watch(runCtx, m) })
	return nil
}

// watch logs, every m.linkHealthEvery, each link that is not consuming
// (at error, with its restart count and why), each recovery, and every
// region the directory learns about for which this region has no link:
// records for it wait in the local link topic until the region is
// restarted with a --link for it.
func (mm *meshMember) watch(ctx context.Context, m *meshFlags) {
	changes := mm.dir.Watch(ctx)
	tick := time.NewTicker(m.linkHealthEvery)
	defer tick.Stop()
	down := map[string]bool{}
	reported := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				return
			}
			for _, r := range mm.missingLinks(m.links) {
				if !reported[r] {
					reported[r] = true
					mm.log.Error("a region joined the directory but this region has no --link to it; records for it wait in the local link topic until a restart with --link",
						"missing", r, "topic", mm.prefix+r)
				}
			}
		case <-tick.C:
			for to, l := range mm.links {
				st := l.Stats()
				if err := l.Health(); err != nil {
					down[to] = true
					mm.log.Error("link unhealthy", "to", to, "err", err, "restarts", st.Restarts, "forwarded", st.Forwarded)
				} else if down[to] {
					delete(down, to)
					mm.log.Info("link healthy again", "to", to, "restarts", st.Restarts, "lag_ms", st.LagMs)
				}
			}
		}
	}
}

// stopLinks stops the link workers and the health watcher (idempotent).
// What they had not forwarded stays in the local link topics.
func (mm *meshMember) stopLinks() {
	if mm.cancel != nil {
		mm.cancel()
	}
	mm.wg.Wait()
}

// LinkReport is what a link worker did, printed by `chatmesh region` when
// it stops ("LINK {json}").
type LinkReport struct {
	From string `json:"from"`
	To   string `json:"to"`
	region.LinkStats
}

// report stops the links and prints each one's counters.
func (mm *meshMember) report(stdout io.Writer) {
	mm.stopLinks()
	targets := make([]string, 0, len(mm.links))
	for to := range mm.links {
		targets = append(targets, to)
	}
	sort.Strings(targets)
	for _, to := range targets {
		st := mm.links[to].Stats()
		b, _ := json.Marshal(LinkReport{From: mm.name, To: to, LinkStats: st})
		fmt.Fprintf(stdout, "  link %s → %s: forwarded %d records in %d batches, dropped %d, malformed %d, restarts %d\n",
			mm.name, to, st.Forwarded, st.Batches, st.Dropped, st.Malformed, st.Restarts)
		fmt.Fprintf(stdout, "LINK %s\n", b)
	}
}

// close stops the links, closes the remote clients and the voter.
func (mm *meshMember) close() error {
	mm.stopLinks()
	if mm.leaseCancel != nil {
		mm.leaseCancel()
		<-mm.leaseDone
	}
	var errs []error
	for _, b := range mm.remote {
		errs = append(errs, b.Close())
	}
	if mm.dir != nil {
		errs = append(errs, mm.dir.Close())
	}
	return errors.Join(errs...)
}
