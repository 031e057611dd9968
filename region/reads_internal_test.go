package region

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// The budget arithmetic of core/ids.go and reads.go: a page within
// MaxPageBytes always fits a frame, and an empty page always has room for
// the largest entry with the longest head.
func TestPageFrameBudget(t *testing.T) {
	if core.MaxPageBytes+pageFrameOverhead > core.MaxFramePlaintext {
		t.Fatalf("MaxPageBytes %d + framing %d > MaxFramePlaintext %d", core.MaxPageBytes, pageFrameOverhead, core.MaxFramePlaintext)
	}
	longest := "d:" + strings.Repeat("a", core.MaxUserIDLen) + ":" + strings.Repeat("b", core.MaxUserIDLen)
	head := &pb.ConvCursor{ConvId: longest, AfterSeq: math.MaxUint64}
	if n := fieldBytes(core.MaxMessageBytes) + fieldBytes(proto.Size(head)) + moreBytes; n > core.MaxPageBytes {
		t.Fatalf("the largest entry with the longest head takes %d bytes > MaxPageBytes %d", n, core.MaxPageBytes)
	}
	// Measured, not computed: a page filled to the budget, framed with the
	// largest req_id, fits.
	page := &pb.SyncResponse{More: true, Heads: []*pb.ConvCursor{head}}
	ct := strings.Repeat("x", core.MaxPageBytes-moreBytes-fieldBytes(proto.Size(head))-200)
	page.Messages = []*pb.Message{{ConvId: longest, Seq: math.MaxUint64, Envelope: &pb.Envelope{Ciphertext: []byte(ct)}}}
	for proto.Size(page) < core.MaxPageBytes {
		page.Messages[0].Envelope.Ciphertext = append(page.Messages[0].Envelope.Ciphertext, 'x')
	}
	for proto.Size(page) > core.MaxPageBytes {
		page.Messages[0].Envelope.Ciphertext = page.Messages[0].Envelope.Ciphertext[1:]
	}
	f := &pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: &pb.Response{ReqId: math.MaxUint64, Body: &pb.Response_Sync{Sync: page}}}}
	if n := proto.Size(f); n > core.MaxFramePlaintext || n-proto.Size(page) > pageFrameOverhead {
		t.Fatalf("a %d-byte page makes a %d-byte frame (overhead %d, budgeted %d)", proto.Size(page), n, n-proto.Size(page), pageFrameOverhead)
	}
}
