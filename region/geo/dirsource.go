package geo

import (
	"context"

	"github.com/chatmesh/chatmesh/region/directory"
)

// RegionLister is what DirectoryEdges reads the mesh from. A
// *directory.Directory satisfies it (its local applied copy: no network, no
// raft round trip per Locate).
type RegionLister interface {
	Regions() []directory.Region
}

// DirectoryEdges is an EdgeSource over the region directory: every edge of
// every healthy region, placed at its region's coordinates, with its own
// health flag (Locate leaves the unhealthy ones out). Edges of a region
// marked unhealthy are not listed at all. It reads the directory on every
// call, so a health change is seen by the next Locate.
type DirectoryEdges struct {
	Dir RegionLister
}

// Edges lists the edges of the healthy regions, in the directory's order
// (regions by name, edges by ID).
func (s DirectoryEdges) Edges(context.Context) ([]Edge, error) {
	return edgesOf(s.Dir.Regions()), nil
}

// edgesOf maps directory regions to candidate edges: every edge of every
// healthy region, at its region's coordinates, with its own health flag.
func edgesOf(regions []directory.Region) []Edge {
	var out []Edge
	for _, r := range regions {
		if !r.Healthy {
			continue
		}
		for _, e := range r.Edges {
			out = append(out, Edge{
				Region:   r.Name,
				WS:       e.WS,
				WT:       e.WT,
				NoiseKey: e.NoiseKeyHex,
				CertHash: e.CertHash,
				Lat:      r.Lat,
				Long:     r.Long,
				Healthy:  e.Healthy,
			})
		}
	}
	return out
}
