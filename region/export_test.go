package region

import "github.com/chatmesh/chatmesh/core/pb"

// Unbundle returns the records an edge handles for er: those of its
// bundle in order, or er itself (tests read edge topics record by record).
func Unbundle(er *pb.EdgeRecord) []*pb.EdgeRecord {
	if len(er.GetBundle()) == 0 {
		return []*pb.EdgeRecord{er}
	}
	return er.GetBundle()
}
