package region

import (
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// pendingReceipt is a receipt a batch owes users (the senders of the
// entries a cursor move covers; sorted).
type pendingReceipt struct {
	users []string
	r     *pb.Receipt
}

// Bounds of one coalesced receipt frame: a Receipt is at most a few
// hundred bytes (ids are bounded), so a frame stays far below any
// client's frame limit.
const (
	maxReceiptsPerFrame = 256
	maxReceiptFrameSize = 32 << 10
)

// receiptKey is what a later receipt of the same batch supersedes: the
// same reader device's receipt of the same kind in the same conversation.
type receiptKey struct {
	conv string
	from core.DeviceKey
	kind pb.ReceiptKind
}

// flushReceipts turns the batch's pending receipts into fan-out frames,
// coalesced per target user: each user gets the batch's receipts for it
// in one frame — one per (conversation, reader device, kind) with the
// highest seq — a lone Receipt frame when there is one and Receipts
// frames of at most maxReceiptsPerFrame (and maxReceiptFrameSize bytes)
// otherwise. In a busy group every member's delivery ack of a sender's
// message would otherwise be one frame to each of the sender's devices:
// the batch bounds the receipt frames a sender gets to one per batch
// (more only past the frame bounds), however many members ack. Receipts
// are cumulative, so keeping only the highest seq per reader loses
// nothing.
func (r *Region) flushReceipts(b *batch) {
	if len(b.receipts) == 0 {
		return
	}
	type perUser struct {
		list []*pb.Receipt
		idx  map[receiptKey]int
	}
	byUser := map[string]*perUser{}
	var users []string
	for _, pr := range b.receipts {
		k := receiptKey{conv: pr.r.GetConvId(), from: core.KeyOf(pr.r.GetFrom()), kind: pr.r.GetKind()}
		for _, u := range pr.users {
			g := byUser[u]
			if g == nil {
				g = &perUser{idx: map[receiptKey]int{}}
				byUser[u] = g
				users = append(users, u)
			}
			if i, ok := g.idx[k]; ok {
				if pr.r.GetSeq() > g.list[i].GetSeq() {
					g.list[i] = pr.r
				}
				r.stats.receiptsCoalesced.Add(1)
				continue
			}
			g.idx[k] = len(g.list)
			g.list = append(g.list, pr.r)
		}
	}
	b.receipts = nil
	slices.Sort(users)
	for _, u := range users {
		list := byUser[u].list
		for len(list) > 0 {
			n, size := 0, 0
			for n < len(list) && n < maxReceiptsPerFrame {
				sz := proto.Size(list[n]) + 4
				if n > 0 && size+sz > maxReceiptFrameSize {
					break
				}
				size += sz
				n++
			}
			chunk := list[:n]
			list = list[n:]
			frame := &pb.ServerFrame{Body: &pb.ServerFrame_Receipt{Receipt: chunk[0]}}
			if n > 1 {
				frame = &pb.ServerFrame{Body: &pb.ServerFrame_Receipts{Receipts: &pb.Receipts{Receipts: chunk}}}
				r.stats.receiptsCoalesced.Add(uint64(n - 1))
			}
			b.fanFrame([]string{u}, frame, &r.stats.receipts)
		}
	}
}
