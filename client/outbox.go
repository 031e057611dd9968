package client

import (
	"cmp"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// Outbox is the durable queue of messages the device has accepted from the
// app but the server has not acknowledged yet. It is one append-only log,
// <state>/outbox/outbox.log, in the Store's record format: an "add" record
// (entry number + marshalled pb.SendRequest) per message and a "done"
// record (client message id) when the server acked or rejected it for good.
//
// Add returns only after its record is fsync'd. Concurrent Adds share one
// fsync (group commit): the first caller becomes the flusher and writes
// every record queued meanwhile in one write + fsync. Done records are not
// fsync'd: a crash may resurrect an acked entry, whose resend the server
// deduplicates and acks with the original seq. On open the log is replayed
// (a torn tail is cut) and rewritten with only the live entries; while
// running it is truncated whenever it holds no live entry and exceeds 1 MiB.
//
// Besides persistence, Outbox schedules resends: it tracks which entries are
// in flight on the current session and which wait for a backoff. Order per
// conversation: entries of one conversation are sent in outbox order, at
// most window at a time, and never past an entry that waits for a retry.
//
// Outbox is safe for concurrent use. Lock order: fmu before mu.
type Outbox struct {
	dir  string
	path string

	fmu  sync.Mutex // serializes file writes; held while a batch is inserted
	f    *os.File
	size int64

	mu   sync.Mutex
	next uint64
	// entries is every entry in ascending n, with removed ones among them
	// until the next compaction (Remove keeps it amortized O(1)); live
	// counts the others. byID and convs index the live ones: the
	// scheduler's work per call is per conversation, not per entry, so a
	// device back with thousands of queued messages settles them in
	// linear time (BenchmarkOutboxSettle).
	entries []*outboxEntry
	live    int
	byID    map[string]*outboxEntry
	convs   map[string]*outboxConv
	// ready holds the conversations sendable must look at, each once in
	// readyQ: every change to a conversation's entries or window puts it
	// back (markReady), and sendable drops one only when it can send
	// nothing until such a change (a backoff ends with time alone, so a
	// conversation waiting for one stays). readyQ is a heap by a lower
	// bound of the oldest entry each could send (its first entry's
	// number; entries only leave a conversation's head), so sendable
	// looks at conversations oldest first and stops once it has its
	// limit of picks older than the rest could offer.
	ready  map[string]struct{}
	readyQ readyHeap
	window int // sendable's window at its last call: a change readies all
	// held counts the entries and their bytes (marshalled requests) that
	// are pending or queued for the next group commit; Add refuses what
	// would take either past maxN / maxBytes (0: no limit).
	heldN, heldBytes int
	maxN, maxBytes   int
	batch            *outboxBatch // records queued for the next group commit
	flushing         bool
	changed          chan struct{} // cap 1: signalled on add, release, remove
	empty            chan struct{} // closed while the outbox is empty; replaced when it fills
	// cwnd is the congestion window of conversations whose sends were
	// refused transiently (RATE_LIMITED, UNAVAILABLE, a timeout): 1
	// after a refusal, doubled by each SendAck up to the configured
	// window (then dropped). Without it a whole window of sends would be
	// refused round after round, each message backing off on its own.
	cwnd  map[string]int
	picks uint64 // entries picked so far
}

type outboxBatch struct {
	buf     []byte
	entries []*outboxEntry
	ids     map[string]struct{} // client message ids of entries
	done    chan struct{}
	err     error
}

// Outbox log record types.
const (
	recOutboxAdd  byte = 1 // payload: u64 entry number, marshalled pb.SendRequest
	recOutboxDone byte = 2 // payload: client message id
)

// outboxTruncateAt is the size beyond which an empty outbox log is truncated.
const outboxTruncateAt = 1 << 20

type outboxEntry struct {
	n         uint64
	req       *pb.SendRequest
	inflight  bool
	attempts  int
	notBefore time.Time
	// pick numbers this entry's latest pick (Outbox.picks). waitPicks,
	// set when it was refused OUT_OF_ORDER: it is not sent again while an
	// earlier entry of its conversation picked no later than that is
	// still in flight (the predecessor's answer decides whether the
	// resend can pass); entries picked since do not hold it back.
	pick, waitPicks uint64
	removed         bool
	size            int    // marshalled request bytes
	rec             []byte // OpenOutbox only: the add record's payload
}

// outboxConv is one conversation's live entries, ascending n, and how
// many of them are in flight.
type outboxConv struct {
	q        []*outboxEntry
	inflight int
}

// OutboxEntry is a read-only view of one pending message.
type OutboxEntry struct {
	Conv        string
	ClientMsgID string
	Attempts    int
}

// OpenOutbox loads (creating) the outbox in dir.
func OpenOutbox(dir string) (*Outbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("client: outbox: %w", err)
	}
	ob := &Outbox{dir: dir, path: filepath.Join(dir, "outbox.log"), next: 1,
		byID: map[string]*outboxEntry{}, convs: map[string]*outboxConv{}, ready: map[string]struct{}{},
		changed: make(chan struct{}, 1), empty: make(chan struct{})}
	data, err := os.ReadFile(ob.path)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("client: outbox: %w", err)
	}
	live := map[string]*outboxEntry{}
	for off := 0; ; {
		typ, payload, n, ok := decodeRecord(data[off:])
		if !ok {
			break // end, or a torn tail from a crash during an add
		}
		off += n
		switch typ {
		case recOutboxAdd:
			if len(payload) < 8 {
				continue
			}
			req := new(pb.SendRequest)
			if proto.Unmarshal(payload[8:], req) != nil {
				continue
			}
			e := &outboxEntry{n: binary.BigEndian.Uint64(payload), req: req, size: len(payload) - 8}
			e.rec = payload // for the compacted log; dropped below
			live[req.GetClientMsgId()] = e
			ob.next = max(ob.next, e.n+1)
		case recOutboxDone:
			delete(live, string(payload))
		}
	}
	var compact []byte
	loaded := make([]*outboxEntry, 0, len(live))
	for _, e := range live {
		loaded = append(loaded, e)
	}
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].n < loaded[j].n })
	ob.insertLocked(loaded)
	for _, e := range loaded {
		ob.heldN++
		ob.heldBytes += e.size
		compact = appendRecord(compact, recOutboxAdd, e.rec)
		e.rec = nil
	}
	if len(compact) != len(data) {
		if err := writeFileAtomic(dir, "outbox.log", compact); err != nil {
			return nil, fmt.Errorf("client: outbox: compact: %w", err)
		}
	}
	ob.f, err = os.OpenFile(ob.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("client: outbox: %w", err)
	}
	ob.size = int64(len(compact))
	if ob.live == 0 {
		close(ob.empty)
	}
	return ob, nil
}

// outboxAddRecord appends the add record of entry n, whose marshalled
// request is body, to dst.
func outboxAddRecord(dst []byte, n uint64, body []byte) []byte {
	payload := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(body)), n)
	return appendRecord(dst, recOutboxAdd, append(payload, body...))
}

// Close closes the log file. The outbox must not be used afterwards.
func (ob *Outbox) Close() error {
	ob.fmu.Lock()
	defer ob.fmu.Unlock()
	if ob.f == nil {
		return nil
	}
	err := ob.f.Close()
	ob.f = nil
	return err
}

// ErrOutboxFull: Add (and so Client.Send) refused messages because the
// outbox holds its limit of pending messages or bytes (Config.MaxOutbox,
// MaxOutboxBytes). Nothing was added; retry once sends were acked.
var ErrOutboxFull = errors.New("client: outbox full")

// setLimits bounds the pending entries and their bytes (0: no limit).
// Entries already pending stay, even beyond a new limit.
func (ob *Outbox) setLimits(n, bytes int) {
	ob.mu.Lock()
	ob.maxN, ob.maxBytes = n, bytes
	ob.mu.Unlock()
}

// Add durably appends reqs, all or none; when it returns nil they survive
// a crash. It fails with ErrOutboxFull, adding nothing, when they would
// take the outbox past its limits, and with ErrBadArgument when they could
// never fit them or a client message id is already pending.
func (ob *Outbox) Add(reqs ...*pb.SendRequest) error {
	if len(reqs) == 0 {
		return nil
	}
	bodies := make([][]byte, len(reqs))
	size := 0
	for i, req := range reqs {
		body, err := proto.Marshal(req)
		if err != nil {
			return fmt.Errorf("client: outbox: encode: %w", err)
		}
		bodies[i] = body
		size += len(body)
	}
	ob.mu.Lock()
	if (ob.maxN > 0 && len(reqs) > ob.maxN) || (ob.maxBytes > 0 && size > ob.maxBytes) {
		ob.mu.Unlock()
		return fmt.Errorf("%w: %d outbox entries of %d bytes can never fit the limits of %d messages and %d bytes",
			ErrBadArgument, len(reqs), size, ob.maxN, ob.maxBytes)
	}
	for i, req := range reqs {
		id := req.GetClientMsgId()
		_, queued := ob.batch.idSet()[id]
		if ob.byID[id] != nil || queued || slices.ContainsFunc(reqs[:i], func(r *pb.SendRequest) bool { return r.GetClientMsgId() == id }) {
			ob.mu.Unlock()
			return fmt.Errorf("%w: client message id %q is already in the outbox", ErrBadArgument, id)
		}
	}
	if (ob.maxN > 0 && ob.heldN+len(reqs) > ob.maxN) || (ob.maxBytes > 0 && ob.heldBytes+size > ob.maxBytes) {
		n, b := ob.heldN, ob.heldBytes
		ob.mu.Unlock()
		return fmt.Errorf("%w: %d messages of %d bytes pending, limits %d messages and %d bytes; %d more of %d bytes refused",
			ErrOutboxFull, n, b, ob.maxN, ob.maxBytes, len(reqs), size)
	}
	ob.heldN += len(reqs)
	ob.heldBytes += size
	if ob.batch == nil {
		ob.batch = &outboxBatch{ids: map[string]struct{}{}, done: make(chan struct{})}
	}
	b := ob.batch
	for i, req := range reqs {
		e := &outboxEntry{n: ob.next, req: req, size: len(bodies[i])}
		ob.next++
		b.buf = outboxAddRecord(b.buf, e.n, bodies[i])
		b.entries = append(b.entries, e)
		b.ids[req.GetClientMsgId()] = struct{}{}
	}
	leader := !ob.flushing
	ob.flushing = true
	ob.mu.Unlock()
	if leader {
		ob.flush()
	}
	<-b.done
	if b.err == nil {
		ob.signal()
	}
	return b.err
}

// idSet is the batch's ids; nil for no batch.
func (b *outboxBatch) idSet() map[string]struct{} {
	if b == nil {
		return nil
	}
	return b.ids
}

// flush writes queued batches, one write + fsync each, until none is left.
func (ob *Outbox) flush() {
	for {
		ob.mu.Lock()
		b := ob.batch
		ob.batch = nil
		if b == nil {
			ob.flushing = false
			ob.mu.Unlock()
			return
		}
		ob.mu.Unlock()

		ob.fmu.Lock()
		err := ob.writeLocked(b.buf, true)
		if err == nil {
			ob.insert(b.entries...)
		} else {
			ob.mu.Lock()
			for _, e := range b.entries {
				ob.heldN--
				ob.heldBytes -= e.size
			}
			ob.mu.Unlock()
		}
		ob.fmu.Unlock()
		b.err = err
		close(b.done)
	}
}

// insert adds entries (numbered above every entry present) to the
// schedule.
func (ob *Outbox) insert(es ...*outboxEntry) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if ob.live == 0 && len(es) > 0 {
		ob.empty = make(chan struct{})
	}
	ob.insertLocked(es)
}

// insertLocked (mu held) indexes es, ascending n above every entry present.
// A second entry with an id already present replaces the first, as a
// reopen would (the log's last add of an id wins).
func (ob *Outbox) insertLocked(es []*outboxEntry) {
	for _, e := range es {
		id := e.req.GetClientMsgId()
		if old := ob.byID[id]; old != nil {
			ob.removeLocked(old)
		}
		ob.byID[id] = e
		c := ob.convs[e.req.GetConvId()]
		if c == nil {
			c = &outboxConv{}
			ob.convs[e.req.GetConvId()] = c
		}
		c.q = append(c.q, e)
		ob.markReady(e.req.GetConvId())
		ob.entries = append(ob.entries, e)
		ob.live++
	}
}

// markReady (mu held) has sendable look at conv again.
func (ob *Outbox) markReady(conv string) {
	if _, ok := ob.ready[conv]; ok {
		return
	}
	c := ob.convs[conv]
	if c == nil || len(c.q) == 0 {
		return
	}
	ob.ready[conv] = struct{}{}
	heap.Push(&ob.readyQ, readyItem{n: c.q[0].n, conv: conv})
}

// readyItem is a conversation in Outbox.readyQ: n is at most the number
// of the oldest entry it could send.
type readyItem struct {
	n    uint64
	conv string
}

// readyHeap is a min-heap of readyItem by n (container/heap).
type readyHeap []readyItem

func (h readyHeap) Len() int           { return len(h) }
func (h readyHeap) Less(i, j int) bool { return h[i].n < h[j].n }
func (h readyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *readyHeap) Push(x any)        { *h = append(*h, x.(readyItem)) }
func (h *readyHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// removeLocked (mu held) takes e out of the schedule.
func (ob *Outbox) removeLocked(e *outboxEntry) {
	conv := e.req.GetConvId()
	c := ob.convs[conv]
	ob.setInflight(e, false)
	if len(c.q) > 0 && c.q[0] == e {
		c.q[0] = nil
		c.q = c.q[1:] // acks come in order: the common case
	} else if i := slices.Index(c.q, e); i >= 0 {
		c.q = slices.Delete(c.q, i, i+1)
	}
	if len(c.q) == 0 {
		delete(ob.convs, conv) // its item in readyQ is dropped when popped
	} else {
		ob.markReady(conv)
	}
	delete(ob.byID, e.req.GetClientMsgId())
	e.removed = true
	ob.live--
	ob.heldN--
	ob.heldBytes -= e.size
	if dead := len(ob.entries) - ob.live; dead > 64 && dead > ob.live {
		ob.entries = slices.DeleteFunc(ob.entries, func(e *outboxEntry) bool { return e.removed })
	}
}

// setInflight (mu held) marks e in flight or not, keeping its
// conversation's count.
func (ob *Outbox) setInflight(e *outboxEntry, v bool) {
	if e.inflight == v {
		return
	}
	e.inflight = v
	if c := ob.convs[e.req.GetConvId()]; c != nil {
		if v {
			c.inflight++
		} else {
			c.inflight--
			ob.markReady(e.req.GetConvId())
		}
	}
}

// writeLocked appends buf to the log (fmu held); on a failed write it cuts
// the log back to its previous size.
func (ob *Outbox) writeLocked(buf []byte, sync bool) error {
	if ob.f == nil {
		return fmt.Errorf("client: outbox: %w", ErrClosed)
	}
	_, err := ob.f.Write(buf)
	if err == nil && sync {
		err = ob.f.Sync()
	}
	if err != nil {
		_ = ob.f.Truncate(ob.size)
		return fmt.Errorf("client: outbox: %w", err)
	}
	ob.size += int64(len(buf))
	return nil
}

func (ob *Outbox) signal() {
	select {
	case ob.changed <- struct{}{}:
	default:
	}
}

// Changed is signalled (coalesced) whenever the outbox changes.
func (ob *Outbox) Changed() <-chan struct{} { return ob.changed }

// Len returns the number of pending entries.
func (ob *Outbox) Len() int {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.live
}

// Pending lists the pending entries in order.
func (ob *Outbox) Pending() []OutboxEntry {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	out := make([]OutboxEntry, 0, ob.live)
	for _, e := range ob.entries {
		if !e.removed {
			out = append(out, OutboxEntry{Conv: e.req.GetConvId(), ClientMsgID: e.req.GetClientMsgId(), Attempts: e.attempts})
		}
	}
	return out
}

// Empty returns a channel that is closed while the outbox is empty.
func (ob *Outbox) Empty() <-chan struct{} {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.empty
}

// sendable picks the entries to put on the wire now and marks them in
// flight. Per conversation at most window entries are in flight, and no
// entry is picked while an earlier entry of its conversation waits for a
// retry. Each pick names its predecessor (after_client_msg_id,
// PROTOCOL.md §7.1.2): the previous entry of its conversation still in
// the outbox, whose outcome is not known, so the region sequences the
// pick only after it. It also returns the earliest future retry time
// (zero if none).
func (ob *Outbox) sendable(now time.Time, window, limit int) (pick []*pb.SendRequest, wake time.Time) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if limit <= 0 {
		// No room: a send in flight signals once its slot is free.
		return nil, time.Time{}
	}
	if window != ob.window {
		ob.window = window
		for conv := range ob.convs {
			ob.markReady(conv)
		}
	}
	// Each conversation's candidates, in its order, are independent of the
	// others'; the picks are the oldest limit of them all.
	var (
		cand  []*outboxEntry
		again []readyItem // looked at and still ready: back into readyQ
	)
	for ob.readyQ.Len() > 0 {
		top := ob.readyQ[0]
		if len(cand) >= limit && top.n > cand[limit-1].n {
			break // nothing older than the picks is left to find
		}
		heap.Pop(&ob.readyQ)
		conv := top.conv
		c := ob.convs[conv]
		if c == nil {
			delete(ob.ready, conv)
			continue
		}
		if first := c.q[0].n; first > top.n {
			heap.Push(&ob.readyQ, readyItem{n: first, conv: conv}) // a tighter bound
			continue
		}
		w := window
		if cw, ok := ob.cwnd[conv]; ok && cw < w {
			w = cw
		}
		inflight := c.inflight
		var oldest uint64 // the lowest pick number in flight so far; 0: none
		taken := 0
		waiting := false // on a backoff: time alone ends it
	walk:
		for _, e := range c.q {
			barrier := isKeyDistribution(e.req)
			switch {
			case e.inflight:
				if oldest == 0 || e.pick < oldest {
					oldest = e.pick
				}
				if barrier {
					break walk // nothing overtakes a key distribution
				}
				continue
			case e.notBefore.After(now):
				if wake.IsZero() || e.notBefore.Before(wake) {
					wake = e.notBefore
				}
				waiting = true
				break walk
			case oldest != 0 && e.waitPicks > 0 && oldest <= e.waitPicks:
				break walk // its predecessor's answer is still to come
			case taken >= limit || inflight >= w || (barrier && inflight > 0):
				break walk
			}
			cand = append(cand, e)
			taken++
			inflight++
			if barrier {
				// Sent alone, and acked before anything after it is sent, so
				// the message that needs the key is sequenced after it even
				// when a send is rejected transiently and retried.
				break walk
			}
		}
		if taken == 0 && !waiting {
			delete(ob.ready, conv)
		} else {
			again = append(again, top)
		}
		if taken > 0 {
			slices.SortFunc(cand, func(a, b *outboxEntry) int { return cmp.Compare(a.n, b.n) })
			if len(cand) > limit {
				cand = cand[:limit]
			}
		}
	}
	for _, it := range again {
		heap.Push(&ob.readyQ, it)
	}
	for _, e := range cand {
		ob.picks++
		ob.setInflight(e, true)
		e.pick, e.waitPicks = ob.picks, 0
		e.attempts++
		pick = append(pick, &pb.SendRequest{
			ConvId: e.req.GetConvId(), ClientMsgId: e.req.GetClientMsgId(), Envelope: e.req.GetEnvelope(),
			AfterClientMsgId: ob.predecessor(e),
		})
	}
	return pick, wake
}

// predecessor (mu held) is the client message id of the live entry before
// e in its conversation, "" if none.
func (ob *Outbox) predecessor(e *outboxEntry) string {
	q := ob.convs[e.req.GetConvId()].q
	i := slices.Index(q, e) // within the window: a short scan
	if i <= 0 {
		return ""
	}
	return q[i-1].req.GetClientMsgId()
}

// release returns an in-flight entry to the queue, to be sent again no
// earlier than notBefore.
func (ob *Outbox) release(clientMsgID string, notBefore time.Time) {
	ob.mu.Lock()
	if e := ob.byID[clientMsgID]; e != nil {
		ob.setInflight(e, false)
		e.notBefore = notBefore
		ob.markReady(e.req.GetConvId())
	}
	ob.mu.Unlock()
	ob.signal()
}

// releaseOutOfOrder returns an entry refused OUT_OF_ORDER to the queue: it
// goes again as soon as no earlier entry of its conversation sent before
// the refusal is in flight,
// and the attempt is not counted (it says nothing about the entry itself,
// so it must not grow its backoff).
func (ob *Outbox) releaseOutOfOrder(clientMsgID string) {
	ob.mu.Lock()
	if e := ob.byID[clientMsgID]; e != nil {
		ob.setInflight(e, false)
		e.waitPicks = ob.picks
		e.notBefore = time.Time{}
		e.attempts = max(e.attempts-1, 0)
		ob.markReady(e.req.GetConvId())
	}
	ob.mu.Unlock()
	ob.signal()
}

// congested shrinks conv's window to one send in flight (a transient
// refusal); acked grows it back.
func (ob *Outbox) congested(conv string) {
	ob.mu.Lock()
	if ob.cwnd == nil {
		ob.cwnd = map[string]int{}
	}
	ob.cwnd[conv] = 1
	ob.mu.Unlock()
}

// acked doubles conv's shrunken window (a SendAck), up to window.
func (ob *Outbox) acked(conv string, window int) {
	ob.mu.Lock()
	if c, ok := ob.cwnd[conv]; ok {
		if c*2 >= window {
			delete(ob.cwnd, conv)
		} else {
			ob.cwnd[conv] = c * 2
		}
		if ob.convs[conv] != nil {
			ob.markReady(conv)
		}
	}
	ob.mu.Unlock()
}

// resetInflight marks every entry not in flight (the session ended: whatever
// was in flight must be sent again on the next one). Backoffs stay.
func (ob *Outbox) resetInflight() {
	ob.mu.Lock()
	for conv, c := range ob.convs {
		for _, e := range c.q {
			e.inflight = false
		}
		c.inflight = 0
		ob.markReady(conv)
	}
	ob.mu.Unlock()
	ob.signal()
}

// has reports whether an entry with the client message id is pending.
func (ob *Outbox) has(clientMsgID string) bool {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.byID[clientMsgID] != nil
}

// attempts returns how often the entry has been put on the wire.
func (ob *Outbox) attempts(clientMsgID string) int {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if e := ob.byID[clientMsgID]; e != nil {
		return e.attempts
	}
	return 0
}

// Remove deletes the entry with the given client message id (acked or
// failed for good). It reports whether it was present.
func (ob *Outbox) Remove(clientMsgID string) (bool, error) {
	ob.fmu.Lock()
	defer ob.fmu.Unlock()
	ob.mu.Lock()
	e := ob.byID[clientMsgID]
	if e == nil {
		ob.mu.Unlock()
		return false, nil
	}
	ob.removeLocked(e)
	empty := ob.live == 0
	if empty {
		close(ob.empty)
	}
	ob.mu.Unlock()
	ob.signal()
	// Every record on disk belongs to an entry in ob.entries or is done
	// (batches are inserted under fmu), so an empty outbox may drop the log.
	if empty && ob.size > outboxTruncateAt && ob.f != nil {
		if err := ob.f.Truncate(0); err == nil {
			ob.size = 0
			return true, ob.f.Sync()
		}
	}
	return true, ob.writeLocked(appendRecord(nil, recOutboxDone, []byte(clientMsgID)), false)
}
