package geo

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// DatabaseType is the metadata type written by GenerateCityDB. The geoip2
// reader accepts only database types it knows, so a generated database
// names itself as a GeoLite2 City database.
const DatabaseType = "GeoLite2-City"

// ErrInvalidCity reports a City that GenerateCityDB cannot write.
var ErrInvalidCity = errors.New("geo: invalid city")

// City is one location of a generated City database: every address inside
// Networks resolves to Name at (Lat, Long), in degrees.
type City struct {
	Name     string
	Lat      float64
	Long     float64
	Networks []netip.Prefix
}

// DevCities returns the cities of the simulated regions used by `dev`:
//
//	127.0.1.0/24  Frankfurt         (50.11,   8.68)
//	127.0.2.0/24  Ashburn, Virginia (39.04, -77.49)
//	127.0.3.0/24  Singapore         ( 1.35, 103.82)
//	127.0.0.0/24  Frankfurt — the default for plain loopback (127.0.0.1)
//
// The slice is new on each call; callers may change it.
func DevCities() []City {
	return []City{
		{Name: "Frankfurt", Lat: 50.11, Long: 8.68, Networks: []netip.Prefix{
			netip.MustParsePrefix("127.0.0.0/24"),
			netip.MustParsePrefix("127.0.1.0/24"),
		}},
		{Name: "Ashburn", Lat: 39.04, Long: -77.49, Networks: []netip.Prefix{
			netip.MustParsePrefix("127.0.2.0/24"),
		}},
		{Name: "Singapore", Lat: 1.35, Long: 103.82, Networks: []netip.Prefix{
			netip.MustParsePrefix("127.0.3.0/24"),
		}},
	}
}

// validCoord reports whether lat/long are finite degrees in range.
func validCoord(lat, long float64) bool {
	return !math.IsNaN(lat) && !math.IsNaN(long) &&
		lat >= -90 && lat <= 90 && long >= -180 && long <= 180
}

// GenerateCityDB writes a GeoIP2 City database (type DatabaseType) to path
// mapping each city's networks to its English name and location. Reserved
// networks (127/8, 10/8, 2001:db8::/32, ...) are allowed, so the dev
// loopback regions can be described. If networks overlap, the later city
// wins. The file is written beside path and renamed into place, so a reader
// never sees half a database.
func GenerateCityDB(path string, cities []City) error {
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            DatabaseType,
		Description:             map[string]string{"en": "chatmesh generated City database"},
		Languages:               []string{"en"},
		IncludeReservedNetworks: true,
		IPVersion:               6,
		RecordSize:              28,
	})
	if err != nil {
		return fmt.Errorf("geo: new mmdb tree: %w", err)
	}
	for _, c := range cities {
		if c.Name == "" || !validCoord(c.Lat, c.Long) {
			return fmt.Errorf("%w: %q at (%v, %v)", ErrInvalidCity, c.Name, c.Lat, c.Long)
		}
		rec := mmdbtype.Map{
			"city": mmdbtype.Map{
				"names": mmdbtype.Map{"en": mmdbtype.String(c.Name)},
			},
			"location": mmdbtype.Map{
				"latitude":        mmdbtype.Float64(c.Lat),
				"longitude":       mmdbtype.Float64(c.Long),
				"accuracy_radius": mmdbtype.Uint16(100),
			},
		}
		for _, p := range c.Networks {
			if !p.IsValid() {
				return fmt.Errorf("%w: %q has an invalid network", ErrInvalidCity, c.Name)
			}
			p = p.Masked()
			ipnet := &net.IPNet{
				IP:   p.Addr().AsSlice(),
				Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
			}
			if err := tree.Insert(ipnet, rec); err != nil {
				return fmt.Errorf("geo: insert %s for %q: %w", p, c.Name, err)
			}
		}
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".citydb-*")
	if err != nil {
		return fmt.Errorf("geo: create %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("geo: chmod %s: %w", path, err)
	}
	if _, err := tree.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("geo: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("geo: close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("geo: rename into %s: %w", path, err)
	}
	return nil
}
