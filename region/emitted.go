package region

import (
	"encoding/binary"
	"hash/maphash"
	"sync"

	"github.com/chatmesh/chatmesh/core/pb"
)

// maxEmitted bounds the entries emittedSet remembers: 2^18 entries of 8
// bytes (plus the map's overhead, about 8 MB in all), a few tens of
// seconds of a busy region's messages — a client's resend comes within
// its resend timeout, seconds after the original.
const maxEmitted = 1 << 18

// emittedKey is a 64-bit hash of (conversation, seq). A collision (about
// n/2^64 per lookup) could only suppress the re-push of a resend whose
// original push failed; sync repairs that.
type emittedKey uint64

// emittedSet remembers the user entries whose deliveries this process has
// produced, newest maxEmitted, so that a client's resend of a stored
// message (same client_msg_id, a new request) is answered with the
// original ack without pushing the entry to the members again.
//
// Only produced deliveries count: when a batch is retried after its
// entries were stored but before its outputs reached the bus (a produce
// error, a crash and restart), the entries dedupe and their deliveries
// are emitted again, which is how the sequencer recovers them. So a
// resend that reaches another process (a restart, a partition moved, a
// new home region) or an entry forgotten by the bound may still be pushed
// once more; clients dedupe by (conv_id, seq) in any case. The zero value
// is ready; safe for concurrent use.
type emittedSet struct {
	mu   sync.Mutex
	seed maphash.Seed
	set  map[emittedKey]struct{}
	ring []emittedKey
	next int
}

// key hashes (conv, seq); e.mu held.
func (e *emittedSet) key(conv string, seq uint64) emittedKey {
	if e.set == nil {
		e.seed = maphash.MakeSeed()
		e.set = make(map[emittedKey]struct{})
	}
	var h maphash.Hash
	h.SetSeed(e.seed)
	h.WriteString(conv)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	h.Write(b[:])
	return emittedKey(h.Sum64())
}

func (e *emittedSet) has(conv string, seq uint64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.set[e.key(conv, seq)]
	return ok
}

// addFans records the user-entry deliveries of a batch whose outputs were produced.
func (e *emittedSet) addFans(fans []fanIntent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range fans {
		if f.m == nil || f.m.GetKind() != pb.MessageKind_MESSAGE_KIND_USER {
			continue
		}
		k := e.key(f.m.GetConvId(), f.m.GetSeq())
		if _, ok := e.set[k]; ok {
			continue
		}
		if len(e.ring) < maxEmitted {
			e.ring = append(e.ring, k)
		} else {
			delete(e.set, e.ring[e.next])
			e.ring[e.next] = k
			e.next = (e.next + 1) % maxEmitted
		}
		e.set[k] = struct{}{}
	}
}

// fanned reports whether the batch already holds a delivery of (conv, seq)
// (a resend in the same batch as its original).
func (b *batch) fanned(conv string, seq uint64) bool {
	for _, f := range b.fan {
		if f.m != nil && f.m.GetSeq() == seq && f.m.GetConvId() == conv {
			return true
		}
	}
	return false
}
