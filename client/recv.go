package client

import (
	"github.com/chatmesh/chatmesh/core/pb"
)

// maxBuffered bounds the out-of-order entries held per conversation. Beyond
// it, far-ahead entries are dropped: the sync that a gap triggers fetches
// them again from the server.
const maxBuffered = 4096

// recvState is the pure receive state machine of one conversation: given
// the highest contiguous stored seq (head) and whatever arrives — live
// pushes and sync pages, in any order, with duplicates — it decides what to
// store next, what to drop and when there is a gap. It does no I/O.
type recvState struct {
	head    uint64                 // highest contiguous seq stored
	pending map[uint64]*pb.Message // seq > head+1, waiting for the gap to fill
}

// offerResult is what one offer decided.
type offerResult struct {
	Ready      []*pb.Message // contiguous from old head+1: store these, in order
	Duplicates int           // entries at or below the head, dropped
	Gap        bool          // something is missing below a buffered entry
}

// offer takes newly arrived entries of the conversation and advances the
// head past every entry that is now contiguous. The caller must store
// Ready; if storing fails it must call reset with the store's real head.
func (r *recvState) offer(msgs ...*pb.Message) offerResult {
	var res offerResult
	for _, m := range msgs {
		seq := m.GetSeq()
		switch {
		case seq <= r.head:
			res.Duplicates++
		case seq == r.head+1:
			res.Ready = append(res.Ready, m)
			r.head++
			for {
				next, ok := r.pending[r.head+1]
				if !ok {
					break
				}
				delete(r.pending, r.head+1)
				res.Ready = append(res.Ready, next)
				r.head++
			}
		default:
			if r.pending == nil {
				r.pending = map[uint64]*pb.Message{}
			}
			if _, dup := r.pending[seq]; dup {
				res.Duplicates++
			} else if len(r.pending) < maxBuffered {
				r.pending[seq] = m
			}
		}
	}
	// Drop buffered entries the head has passed (they arrived twice).
	for seq := range r.pending {
		if seq <= r.head {
			delete(r.pending, seq)
		}
	}
	res.Gap = len(r.pending) > 0
	return res
}

// reset sets the head to the store's truth after a failed store and drops
// buffered entries at or below it.
func (r *recvState) reset(head uint64) {
	r.head = head
	for seq := range r.pending {
		if seq <= head {
			delete(r.pending, seq)
		}
	}
}
