package region

import (
	"context"
	"math"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Reads are bounded three ways, so that no read can build a frame that
// does not fit one Noise transport message, and no burst of reads can
// take a region's memory with it:
//
//   - every page (sync, history, list_conversations) is bounded in count
//     and in encoded bytes: the page's own fields stay within
//     core.MaxPageBytes, so the whole ServerFrame{Response{...}} fits
//     core.MaxFramePlaintext (see pageFrameOverhead);
//   - the store reads at most one page's bytes per call
//     (core.Store.Messages / MessagesBefore stop at maxBytes), so a
//     history(limit 1000) over 64 KB entries reads ~64 KB, not 64 MB;
//   - a region process serves at most Config.MaxConcurrentReads reads at
//     once (default DefaultMaxConcurrentReads); a read that finds them all
//     busy waits up to Config.ReadWait (bounded by its context) and is then
//     answered UNAVAILABLE with retry_after_ms. The edge runs at most 8
//     reads of one session at a time (edge.maxConcurrentReads).
//
// The peak memory of reads is thus about MaxConcurrentReads pages: with
// 64 reads of at most ~64 KB each, decoded and re-encoded, a few tens of
// MB whatever the requests ask for.

// DefaultMaxConcurrentReads is the default bound on the reads one region
// process serves at once (Config.MaxConcurrentReads).
const DefaultMaxConcurrentReads = 64

// DefaultReadWait is how long a read waits for a free slot by default
// (Config.ReadWait) before it is answered UNAVAILABLE.
const DefaultReadWait = 2 * time.Second

// readRetryAfterMs is the retry_after_ms of a read refused for lack of a slot.
const readRetryAfterMs = 200

// unboundedBytes lifts the byte bound of a store read of one entry (the
// oversized-entry fallback of sync and history, which must return it
// whatever its size).
const unboundedBytes = math.MaxInt

// pageFrameOverhead bounds what a ServerFrame{Response{req_id, body}} adds
// around a page message of at most core.MaxPageBytes: the response field
// of the frame (tag + 3-byte length), req_id (tag + 10-byte varint) and the
// body field (2-byte tag + 3-byte length). It must leave the frame within
// core.MaxFramePlaintext; TestPageFrameBudget checks the arithmetic.
const pageFrameOverhead = 1 + 3 + 1 + 10 + 2 + 3

// fieldBytes is the encoded size of a length-delimited field (1-byte tag)
// holding n bytes: what one repeated entry adds to its page.
func fieldBytes(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// moreBytes is the encoded size of a page's `more = true`.
const moreBytes = 2

// acquireRead takes one of the process's read slots, waiting at most
// Config.ReadWait and never past ctx. The returned release must be called.
func (a *API) acquireRead(ctx context.Context) (release func(), ok bool) {
	g := a.r.reads
	select {
	case g <- struct{}{}:
		return func() { <-g }, true
	default:
	}
	t := time.NewTimer(a.r.cfg.ReadWait)
	defer t.Stop()
	select {
	case g <- struct{}{}:
		return func() { <-g }, true
	case <-t.C:
	case <-ctx.Done():
	}
	a.r.stats.readsRefused.Add(1)
	return nil, false
}

// busy is the answer to a read that found no free slot.
func busy(reqID uint64) *pb.Response {
	return &pb.Response{ReqId: reqID, Error: &pb.Error{
		Code:         pb.ErrorCode_ERROR_CODE_UNAVAILABLE,
		Detail:       "region busy: too many concurrent reads",
		RetryAfterMs: readRetryAfterMs,
	}}
}

// fitUp appends to page, in order, the entries of msgs (as dev may see
// them) while the page's bytes stay within budget; it returns the page,
// the bytes used and how many entries of msgs it took.
func fitUp(page, msgs []*pb.Message, dev core.DeviceKey, budget int) ([]*pb.Message, int, int) {
	used := 0
	for i, m := range msgs {
		m = core.ForDevice(m, dev)
		n := fieldBytes(proto.Size(m))
		if used+n > budget {
			return page, used, i
		}
		used += n
		page = append(page, m)
	}
	return page, used, len(msgs)
}

// fitDown keeps the newest entries of msgs (ascending) as dev may see
// them while their bytes stay within budget, and returns them ascending.
func fitDown(msgs []*pb.Message, dev core.DeviceKey, budget int) []*pb.Message {
	used := 0
	out := make([]*pb.Message, len(msgs))
	i := len(msgs)
	for i > 0 {
		m := core.ForDevice(msgs[i-1], dev)
		n := fieldBytes(proto.Size(m))
		if used+n > budget {
			break
		}
		used += n
		i--
		out[i] = m
	}
	return out[i:]
}

// withoutEnvelope stands in for an entry too large for any page, which
// only a store written before core.CheckStorable existed can hold: the
// entry keeps its place in the sequence (so a device's cursor can pass
// it) without its unreadable body.
func withoutEnvelope(m *pb.Message) *pb.Message {
	out := proto.Clone(m).(*pb.Message)
	out.Envelope = nil
	return out
}
