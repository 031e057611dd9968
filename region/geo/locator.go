package geo

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/oschwald/geoip2-golang/v2"
)

// Defaults for a zero Config.
const (
	DefaultTTL      = 60 * time.Second
	DefaultMaxEdges = 16
	// NoiseKeyLen is the length in bytes of an edge's Noise static public
	// key (X25519); Edge.NoiseKey is its lower- or upper-case hex.
	NoiseKeyLen = 32
)

// earthRadiusKM is the mean Earth radius (IUGG) used by the haversine.
const earthRadiusKM = 6371.0088

// Errors.
var (
	// ErrNotCityDB: the database opened is not a City (or Enterprise)
	// database.
	ErrNotCityDB = errors.New("geo: not a City database")
	// ErrEdges: the EdgeSource failed; the cause is wrapped beside it.
	ErrEdges = errors.New("geo: edge source failed")
)

// Edge is a candidate edge as the EdgeSource knows it.
type Edge struct {
	// Region names the region the edge serves (e.g. "eu-central").
	Region string `json:"region"`
	// WS and WT are the edge's WebSocket and WebTransport URLs; either may
	// be empty, not both.
	WS string `json:"ws,omitempty"`
	WT string `json:"wt,omitempty"`
	// NoiseKey is the hex of the edge's Noise static public key
	// (NoiseKeyLen bytes).
	NoiseKey string `json:"noise_key"`
	// CertHash, optional, is the hex SHA-256 of the edge's TLS leaf
	// certificate (a self-signed WebTransport certificate the client
	// pins, like the browser's serverCertificateHashes).
	CertHash string `json:"cert_hash,omitempty"`
	// Lat and Long place the edge, in degrees.
	Lat  float64 `json:"lat"`
	Long float64 `json:"long"`
	// Healthy edges only are offered to clients.
	Healthy bool `json:"-"`
}

// EdgeSource lists the candidate edges, healthy or not. It is called once
// per Locate, from many goroutines at once, and must not keep or change the
// slice it returns after returning it. A source that blocks must honour ctx.
type EdgeSource interface {
	Edges(ctx context.Context) ([]Edge, error)
}

// StaticEdges is an EdgeSource with a fixed list.
type StaticEdges []Edge

// Edges returns a copy of the list.
func (s StaticEdges) Edges(context.Context) ([]Edge, error) {
	return slices.Clone([]Edge(s)), nil
}

// Config tunes a Locator; its zero value works.
type Config struct {
	// TTL is how long a client may keep an Answer before locating again.
	// Zero means DefaultTTL.
	TTL time.Duration
	// MaxEdges caps the edges in an Answer (the nearest ones). Zero means
	// DefaultMaxEdges.
	MaxEdges int
	// TrustedProxies are the peers whose X-Forwarded-For the handler
	// believes. Empty: X-Forwarded-For is ignored.
	TrustedProxies []netip.Prefix
	// Logger; nil discards.
	Logger *slog.Logger
}

// Client is where the database puts a client. Lat and Long are nil when
// the address is not in the database or has no coordinates.
type Client struct {
	IP   string   `json:"ip"`
	City string   `json:"city"`
	Lat  *float64 `json:"lat"`
	Long *float64 `json:"long"`
}

// RankedEdge is an Edge in an Answer, with its great-circle distance from
// the client in kilometres (nil when the client's location is unknown).
type RankedEdge struct {
	Edge
	DistanceKM *float64 `json:"distance_km"`
}

// Answer is the result of Locate and the body of GET /v1/locate.
type Answer struct {
	Client Client       `json:"client"`
	Edges  []RankedEdge `json:"edges"`
	TTLS   int          `json:"ttl_s"`
}

// Locator answers "which edges should this client use": the healthy
// candidate edges, nearest first. It is safe for concurrent use; Close it
// when done.
type Locator struct {
	db       *geoip2.Reader
	src      EdgeSource
	ttl      time.Duration
	maxEdges int
	trusted  []netip.Prefix
	log      *slog.Logger
}

// Open opens the GeoIP2/GeoLite2 City database at path (a generated one from
// GenerateCityDB, or a MaxMind file) and returns a Locator over src.
func Open(path string, src EdgeSource, cfg Config) (*Locator, error) {
	db, err := geoip2.Open(path)
	if err != nil {
		return nil, fmt.Errorf("geo: open %s: %w", path, err)
	}
	// The reader knows which types answer City(); ask it once up front
	// rather than failing on every request.
	if _, err := db.City(netip.IPv4Unspecified()); err != nil {
		var ime geoip2.InvalidMethodError
		if errors.As(err, &ime) {
			db.Close()
			return nil, fmt.Errorf("%w: %s is %q", ErrNotCityDB, path, db.Metadata().DatabaseType)
		}
	}
	l := &Locator{
		db:       db,
		src:      src,
		ttl:      cmp.Or(cfg.TTL, DefaultTTL),
		maxEdges: cmp.Or(cfg.MaxEdges, DefaultMaxEdges),
		trusted:  slices.Clone(cfg.TrustedProxies),
		log:      cfg.Logger,
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l, nil
}

// Close releases the database.
func (l *Locator) Close() error {
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("geo: close database: %w", err)
	}
	return nil
}

// Where returns what the database says about addr. A lookup failure, an
// address not in the database, or coordinates out of range all give a
// Client with nil Lat/Long (the failure is logged at debug level).
func (l *Locator) Where(addr netip.Addr) Client {
	addr = addr.Unmap().WithZone("")
	c := Client{IP: addr.String()}
	if !addr.IsValid() {
		return c
	}
	rec, err := l.db.City(addr)
	if err != nil {
		l.log.Debug("geo: city lookup failed", "addr", addr, "err", err)
		return c
	}
	c.City = rec.City.Names.English
	loc := rec.Location
	if loc.HasCoordinates() && validCoord(*loc.Latitude, *loc.Longitude) {
		lat, long := *loc.Latitude, *loc.Longitude
		c.Lat, c.Long = &lat, &long
	}
	return c
}

// Locate returns the healthy edges for a client at addr, nearest first by
// great-circle distance, at most Config.MaxEdges of them. Edges at equal
// distance, and all edges when the client's location is unknown, come in
// the stable default order: by Region, then WS, WT and NoiseKey (byte-wise).
// Unhealthy edges, and edges with out-of-range coordinates, a NoiseKey
// that is not NoiseKeyLen bytes of hex or a CertHash that is neither empty
// nor 32 bytes of hex, are left out (the malformed ones logged).
// An EdgeSource failure is returned wrapped in ErrEdges.
func (l *Locator) Locate(ctx context.Context, addr netip.Addr) (Answer, error) {
	client := l.Where(addr)
	all, err := l.src.Edges(ctx)
	if err != nil {
		return Answer{}, fmt.Errorf("%w: %w", ErrEdges, err)
	}
	ranked := make([]RankedEdge, 0, len(all))
	for _, e := range all {
		if !e.Healthy {
			continue
		}
		if !validEdge(e) {
			l.log.Warn("geo: edge left out: bad coordinates, noise key or cert hash", "region", e.Region, "ws", e.WS, "wt", e.WT)
			continue
		}
		re := RankedEdge{Edge: e}
		if client.Lat != nil {
			d := haversineKM(*client.Lat, *client.Long, e.Lat, e.Long)
			re.DistanceKM = &d
		}
		ranked = append(ranked, re)
	}
	slices.SortStableFunc(ranked, compareRanked)
	if len(ranked) > l.maxEdges {
		ranked = ranked[:l.maxEdges]
	}
	return Answer{Client: client, Edges: ranked, TTLS: int(l.ttl / time.Second)}, nil
}

func validEdge(e Edge) bool {
	if !validCoord(e.Lat, e.Long) || (e.WS == "" && e.WT == "") {
		return false
	}
	if e.CertHash != "" {
		if h, err := hex.DecodeString(e.CertHash); err != nil || len(h) != certHashLen {
			return false
		}
	}
	k, err := hex.DecodeString(e.NoiseKey)
	return err == nil && len(k) == NoiseKeyLen
}

// certHashLen is the length in bytes of Edge.CertHash (SHA-256).
const certHashLen = 32

// compareRanked orders by distance (when known), then the default order.
func compareRanked(a, b RankedEdge) int {
	if a.DistanceKM != nil && b.DistanceKM != nil {
		if c := cmp.Compare(*a.DistanceKM, *b.DistanceKM); c != 0 {
			return c
		}
	}
	return cmp.Or(
		cmp.Compare(a.Region, b.Region),
		cmp.Compare(a.WS, b.WS),
		cmp.Compare(a.WT, b.WT),
		cmp.Compare(a.NoiseKey, b.NoiseKey),
	)
}

// haversineKM is the great-circle distance in kilometres between two points
// given in degrees.
func haversineKM(lat1, long1, lat2, long2 float64) float64 {
	const rad = math.Pi / 180
	dLat := (lat2 - lat1) * rad
	dLong := (long2 - long1) * rad
	s := math.Sin(dLat/2)*math.Sin(dLat/2) +
		math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLong/2)*math.Sin(dLong/2)
	return 2 * earthRadiusKM * math.Asin(math.Sqrt(math.Min(1, s)))
}
