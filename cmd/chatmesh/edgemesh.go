package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/region/geo"
)

// edgeMeshFlags are the flags that make `chatmesh edge` a member of a mesh
// (issue 7): it announces itself in the region directory (so that every
// edge's locator offers it) and, with a GeoIP City database, serves
// GET /v1/locate from a cached copy of the directory's edges.
type edgeMeshFlags struct {
	dirAddr, dirToken  string
	publicWS, publicWT string
	geoDB              string
	trusted            prefixList
	refresh            time.Duration
}

func addEdgeMeshFlags(fs *flag.FlagSet) *edgeMeshFlags {
	m := &edgeMeshFlags{}
	fs.StringVar(&m.dirAddr, "directory-addr", os.Getenv("CHATMESH_DIRECTORY_ADDR"), "a directory voter's HTTP address, http://host:port (env CHATMESH_DIRECTORY_ADDR): the edge announces itself there")
	fs.StringVar(&m.dirToken, "directory-token", os.Getenv("CHATMESH_DIRECTORY_TOKEN"), "the directory voters' token (env CHATMESH_DIRECTORY_TOKEN)")
	fs.StringVar(&m.publicWS, "public-ws", "", "the WebSocket URL clients dial, path included, e.g. wss://fra-1.example.com/v1/ws (default: the --ws listener's URL)")
	fs.StringVar(&m.publicWT, "public-wt", "", "the WebTransport URL clients dial, e.g. https://fra-1.example.com:7443/v1/wt (default: the --wt listener's URL)")
	fs.StringVar(&m.geoDB, "geoip-db", "", "a GeoLite2/GeoIP2 City database file: serve GET /v1/locate (needs --directory-addr)")
	fs.Var(&m.trusted, "trusted-proxy", "CIDR (or address) of a proxy whose X-Forwarded-For the locator believes; repeatable or comma-separated")
	fs.DurationVar(&m.refresh, "locate-refresh", geo.DefaultCacheRefresh, "how often the locator re-reads the directory's edges")
	return m
}

// active reports whether the edge announces itself in a directory.
func (m *edgeMeshFlags) active() bool { return m.dirAddr != "" }

// check validates the flags against the listen addresses: the mesh flags
// need --directory-addr, --trusted-proxy needs --geoip-db, and an edge
// listening on every interface must say which URL clients dial.
func (m *edgeMeshFlags) check(fs *flag.FlagSet, wsAddr, wtAddr string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !m.active() {
		var extra []string
		for _, n := range []string{"directory-token", "public-ws", "public-wt", "geoip-db", "trusted-proxy", "locate-refresh"} {
			if set[n] {
				extra = append(extra, "--"+n)
			}
		}
		if len(extra) > 0 {
			return fmt.Errorf("edge: %s only apply with --directory-addr (or CHATMESH_DIRECTORY_ADDR)", strings.Join(extra, ", "))
		}
		return nil
	}
	if !strings.Contains(m.dirAddr, "://") {
		m.dirAddr = "http://" + m.dirAddr
	}
	if u, err := url.Parse(m.dirAddr); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("edge: --directory-addr %q: want http://host:port", m.dirAddr)
	}
	if len(m.trusted) > 0 && m.geoDB == "" {
		return errors.New("edge: --trusted-proxy only applies to the locator: add --geoip-db")
	}
	if m.refresh <= 0 {
		return fmt.Errorf("edge: --locate-refresh %v: want a positive duration", m.refresh)
	}
	for _, u := range []struct {
		flag, val string
		schemes   []string
	}{
		{"public-ws", m.publicWS, []string{"ws", "wss"}},
		{"public-wt", m.publicWT, []string{"https"}},
	} {
		if u.val == "" {
			continue
		}
		p, err := url.Parse(u.val)
		if err != nil || p.Host == "" || !slices.Contains(u.schemes, p.Scheme) {
			return fmt.Errorf("edge: --%s %q: want a %s:// URL with a host", u.flag, u.val, strings.Join(u.schemes, ":// or "))
		}
	}
	if m.publicWT != "" && wtAddr == "-" {
		return errors.New("edge: --public-wt with --wt - (WebTransport disabled)")
	}
	// A listener on every interface has no URL a client could dial.
	for _, l := range []struct{ flag, addr, public string }{{"ws", wsAddr, m.publicWS}, {"wt", wtAddr, m.publicWT}} {
		if l.addr == "-" || l.public != "" {
			continue
		}
		host, _, err := net.SplitHostPort(l.addr)
		if err != nil {
			continue // the listener reports it
		}
		if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
			return fmt.Errorf("edge: --%s %s listens on every interface: give --public-%s, the URL clients dial", l.flag, l.addr, l.flag)
		}
	}
	return nil
}

// client is the directory client of the edge.
func (m *edgeMeshFlags) client() *directory.AdminClient {
	return &directory.AdminClient{URL: m.dirAddr, Token: m.dirToken, HTTP: &http.Client{}}
}

// prefixList is a repeatable, comma-separated list of CIDRs or addresses.
type prefixList []netip.Prefix

func (l *prefixList) String() string {
	s := make([]string, len(*l))
	for i, p := range *l {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func (l *prefixList) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			a, aerr := netip.ParseAddr(item)
			if aerr != nil {
				return fmt.Errorf("%q is neither a CIDR nor an address", item)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		*l = append(*l, p.Masked())
	}
	return nil
}

// edgeLocator is the locator of a `chatmesh edge`: a geo.Locator over a
// cached copy of the directory's edges, refreshed in the background.
type edgeLocator struct {
	*geo.Locator
	cache  *geo.CachedEdges
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// openLocator opens the City database and starts refreshing the cache of
// the directory's edges; nil without --geoip-db.
func (m *edgeMeshFlags) openLocator(logger *slog.Logger) (*edgeLocator, error) {
	if m.geoDB == "" {
		return nil, nil
	}
	el := &edgeLocator{cache: geo.NewCachedEdges(m.client(), geo.CacheConfig{Refresh: m.refresh, Logger: logger})}
	var err error
	if el.Locator, err = geo.Open(m.geoDB, el.cache, geo.Config{TrustedProxies: m.trusted, Logger: logger}); err != nil {
		return nil, fmt.Errorf("edge: --geoip-db: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	el.cancel = cancel
	el.wg.Go(func() { el.cache.Run(ctx) })
	return el, nil
}

// close stops the refreshing and releases the database.
func (el *edgeLocator) close() error {
	el.cancel()
	el.wg.Wait()
	return el.Locator.Close()
}

// Announcement backoff and the bound on marking the edge unhealthy.
const (
	announceFirstBackoff = 500 * time.Millisecond
	announceMaxBackoff   = 30 * time.Second
	announceTimeout      = 15 * time.Second // one PutEdge
	leaveTimeout         = 5 * time.Second  // SetEdgeHealth(false) at shutdown
)

// announcer puts the edge in the directory (PutEdge, healthy) in the
// background, retrying with backoff until it succeeds, and marks it
// unhealthy when the edge stops.
type announcer struct {
	client *directory.AdminClient
	region string
	edge   directory.Edge
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startAnnounce starts announcing e as an edge of region. The edge serves
// meanwhile: a directory that cannot be reached only delays the locators
// offering it.
func startAnnounce(client *directory.AdminClient, region string, e directory.Edge, logger *slog.Logger) *announcer {
	a := &announcer{client: client, region: region, edge: e, log: logger.With("component", "announce", "edge", e.ID, "region", region)}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Go(func() { a.run(ctx) })
	return a
}

func (a *announcer) run(ctx context.Context) {
	backoff := announceFirstBackoff
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, announceTimeout)
		err := a.client.PutEdge(actx, a.region, a.edge)
		cancel()
		if err == nil {
			a.log.Info("edge announced in the directory", "ws", a.edge.WS, "wt", a.edge.WT, "attempts", attempt)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, directory.ErrBadCommand) {
			// The directory refuses this edge (a field too long, not hex,
			// the region full): retrying cannot help.
			a.log.Error("the directory refuses this edge; it is not announced (fix the flags and restart)", "err", err)
			return
		}
		// Jitter spreads the retries of many edges after a directory outage.
		wait := backoff/2 + rand.N(backoff/2+1)
		a.log.Warn("announcing the edge in the directory failed; retrying (the edge serves meanwhile)",
			"err", err, "attempt", attempt, "retry_in", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, announceMaxBackoff)
	}
}

// leave stops announcing and marks the edge unhealthy, bounded by
// leaveTimeout, so that locators stop offering it. An edge the directory
// never stored (the announcement had not got through) is not an error.
func (a *announcer) leave() {
	a.cancel()
	a.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	switch err := a.client.SetEdgeHealth(ctx, a.region, a.edge.ID, false); {
	case err == nil:
		a.log.Info("edge marked unhealthy in the directory")
	case errors.Is(err, directory.ErrUnknownEdge), errors.Is(err, directory.ErrUnknownRegion):
		a.log.Info("edge was not in the directory; nothing to mark")
	default:
		a.log.Warn("could not mark the edge unhealthy in the directory; locators offer it until an operator does (chatmesh directory edge-health)", "err", err)
	}
}

// locateURL is the locator's URL on the WebSocket listener.
func locateURL(wsURL string) string {
	u, err := url.Parse(wsURL)
	if err != nil {
		return ""
	}
	if u.Scheme == "wss" {
		u.Scheme = "https"
	} else {
		u.Scheme = "http"
	}
	u.Path = geo.Path
	return u.String()
}
