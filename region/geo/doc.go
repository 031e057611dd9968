// Package geo tells a client which edges to use: its IP address is looked up
// in a GeoIP2 City database, and the healthy edges come back nearest first by
// great-circle (haversine) distance, with their region, URLs, Noise key and
// a TTL. It is the locator behind GET /v1/locate (issue 7, geo-routing).
//
// # Databases
//
// Production opens a MaxMind GeoLite2-City or GeoIP2-City file (Open; any
// database the geoip2 reader answers City() for; others give ErrNotCityDB).
// For development, GenerateCityDB writes a City database with
// github.com/maxmind/mmdbwriter: type "GeoLite2-City" (the reader refuses
// types it does not know), reserved networks included (127/8, 10/8, ...).
// DevCities describes the simulated regions of `dev`:
//
//	127.0.0.0/24  Frankfurt          50.11,   8.68  (plain loopback)
//	127.0.1.0/24  Frankfurt          50.11,   8.68
//	127.0.2.0/24  Ashburn, Virginia  39.04, -77.49
//	127.0.3.0/24  Singapore           1.35, 103.82
//
// # Ordering
//
// Locate asks the EdgeSource for the candidate edges on every call and keeps
// the healthy ones whose coordinates are in range, that have a WS or WT URL
// and whose NoiseKey is NoiseKeyLen bytes of hex and CertHash (optional)
// 32 bytes of hex (the others are left out, the malformed ones logged). They are ordered by distance from the client;
// ties, and every edge when the client's location is unknown (address not
// in the database, no coordinates, unparsable peer), follow the default
// order: Region, then WS, WT, NoiseKey, compared byte-wise. At most
// Config.MaxEdges (default 16) are returned.
//
// # GET /v1/locate
//
// Handler serves the Answer as JSON (200):
//
//	{
//	  "client": {"ip": "127.0.1.5", "city": "Frankfurt", "lat": 50.11, "long": 8.68},
//	  "edges": [
//	    {"region": "eu-central", "ws": "ws://…", "wt": "https://…",
//	     "noise_key": "<64 hex>", "lat": 50.11, "long": 8.68, "distance_km": 0}
//	  ],
//	  "ttl_s": 60
//	}
//
// client.city is "" and client.lat/long and every distance_km are null when
// the location is unknown; ws or wt is omitted when the edge has none;
// "cert_hash" (hex SHA-256 of a self-signed WebTransport certificate) is
// there only when the edge has one.
// "edges" may be empty (no healthy edge): the client should retry after
// ttl_s. Cache-Control is "private, max-age=<ttl_s>". Any method but GET is
// 405 with Allow: GET; the body is never read; an EdgeSource failure is 503
// with {"error": "..."}.
//
// # Trusting X-Forwarded-For
//
// The client is the TCP peer (RemoteAddr). Only when that peer is inside
// Config.TrustedProxies is X-Forwarded-For read: all such headers in order,
// split on commas, walked from the right; trusted proxies are skipped and
// the first untrusted hop is the client (entries to its left are whatever
// the client sent, and are ignored). A malformed entry stops the walk at
// the last well-formed hop; a chain of trusted proxies ends at its left-most
// entry or after 16 entries. With no trusted proxies configured (the zero
// Config) the header is never read.
//
// # Edge sources
//
// StaticEdges is a fixed list. DirectoryEdges reads the region directory
// (region/directory) through RegionLister, which *directory.Directory
// satisfies with its local applied copy: every edge of every healthy
// region, at its region's coordinates, with the edge's own health flag;
// the edges of a region marked unhealthy are not listed. It reads on every
// Locate, so a health change in the directory is seen by the next request.
// CachedEdges is for a process that is not a voter (`chatmesh edge`): it
// reads GET /directory/v1/regions through a RegionFetcher
// (*directory.AdminClient) every CacheConfig.Refresh (default 5 s; faster
// until the first read succeeds), maps it like DirectoryEdges, and answers
// every Locate from that copy. A failed read keeps the last good copy,
// served for as long as the directory is unreachable; only before the
// first good read does it fail (ErrNoCopy, so Locate's ErrEdges, a 503).
//
// # Concurrency and life cycle
//
// A Locator is safe for concurrent use; it starts no goroutines. Close
// releases the database. CachedEdges starts none either: its owner runs
// CachedEdges.Run in a goroutine and cancels and waits for it. The EdgeSource is called from request goroutines
// concurrently and must honour the context if it blocks.
//
// # Not wired yet
//
//   - Wired: every edge of `chatmesh dev` serves Handler at Path
//     (edge.Config.Locate, LocateClientAddr = ClientAddr for its
//     per-client budget) over DirectoryEdges and a generated database;
//     `chatmesh edge --geoip-db FILE --directory-addr URL` serves it over
//     CachedEdges (--trusted-proxy sets TrustedProxies), and announces
//     the edge itself with PutEdge.
//   - CachedEdges reads through one voter; while it is down the last
//     copy is served (no fail-over to another voter).
//   - Nothing marks edges unhealthy automatically yet (issue 8); operators
//     use `chatmesh directory edge-health` / `region-health`.
//   - The database is opened once; reloading a newer GeoLite2 file needs a
//     new Locator.
package geo
