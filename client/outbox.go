package client

import (
	"encoding/binary"
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

	mu       sync.Mutex
	next     uint64
	entries  []*outboxEntry // ascending n
	batch    *outboxBatch   // records queued for the next group commit
	flushing bool
	changed  chan struct{} // cap 1: signalled on add, release, remove
	empty    chan struct{} // closed while the outbox is empty; replaced when it fills
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
			e := &outboxEntry{n: binary.BigEndian.Uint64(payload), req: req}
			live[req.GetClientMsgId()] = e
			ob.next = max(ob.next, e.n+1)
		case recOutboxDone:
			delete(live, string(payload))
		}
	}
	var compact []byte
	for _, e := range live {
		ob.entries = append(ob.entries, e)
	}
	sort.Slice(ob.entries, func(i, j int) bool { return ob.entries[i].n < ob.entries[j].n })
	for _, e := range ob.entries {
		rec, err := outboxAddRecord(e)
		if err != nil {
			return nil, err
		}
		compact = append(compact, rec...)
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
	if len(ob.entries) == 0 {
		close(ob.empty)
	}
	return ob, nil
}

func outboxAddRecord(e *outboxEntry) ([]byte, error) {
	body, err := proto.Marshal(e.req)
	if err != nil {
		return nil, fmt.Errorf("client: outbox: encode: %w", err)
	}
	payload := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(body)), e.n)
	return appendRecord(nil, recOutboxAdd, append(payload, body...)), nil
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

// Add durably appends req; when it returns nil the message survives a crash.
func (ob *Outbox) Add(req *pb.SendRequest) error {
	ob.mu.Lock()
	e := &outboxEntry{n: ob.next, req: req}
	rec, err := outboxAddRecord(e)
	if err != nil {
		ob.mu.Unlock()
		return err
	}
	ob.next++
	if ob.batch == nil {
		ob.batch = &outboxBatch{done: make(chan struct{})}
	}
	b := ob.batch
	b.buf = append(b.buf, rec...)
	b.entries = append(b.entries, e)
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
			ob.mu.Lock()
			if len(ob.entries) == 0 {
				ob.empty = make(chan struct{})
			}
			ob.entries = append(ob.entries, b.entries...) // numbers only grow
			ob.mu.Unlock()
		}
		ob.fmu.Unlock()
		b.err = err
		close(b.done)
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
	return len(ob.entries)
}

// Pending lists the pending entries in order.
func (ob *Outbox) Pending() []OutboxEntry {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	out := make([]OutboxEntry, len(ob.entries))
	for i, e := range ob.entries {
		out[i] = OutboxEntry{Conv: e.req.GetConvId(), ClientMsgID: e.req.GetClientMsgId(), Attempts: e.attempts}
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
	inflight := map[string]int{}
	blocked := map[string]bool{}
	prev := map[string]string{}   // conversation -> the last entry seen
	oldest := map[string]uint64{} // conversation -> the lowest pick number in flight so far
	for _, e := range ob.entries {
		if e.inflight {
			inflight[e.req.GetConvId()]++
		}
	}
	for _, e := range ob.entries {
		conv := e.req.GetConvId()
		after := prev[conv]
		prev[conv] = e.req.GetClientMsgId()
		barrier := isKeyDistribution(e.req)
		if e.inflight {
			if o, ok := oldest[conv]; !ok || e.pick < o {
				oldest[conv] = e.pick
			}
			if barrier {
				blocked[conv] = true // nothing overtakes a key distribution
			}
			continue
		}
		if blocked[conv] {
			continue
		}
		if e.notBefore.After(now) {
			blocked[conv] = true
			if wake.IsZero() || e.notBefore.Before(wake) {
				wake = e.notBefore
			}
			continue
		}
		if o, ok := oldest[conv]; ok && e.waitPicks > 0 && o <= e.waitPicks {
			blocked[conv] = true // its predecessor's answer is still to come
			continue
		}
		if len(pick) >= limit {
			break
		}
		w := window
		if c, ok := ob.cwnd[conv]; ok && c < w {
			w = c
		}
		if inflight[conv] >= w || (barrier && inflight[conv] > 0) {
			blocked[conv] = true
			continue
		}
		if barrier {
			// Sent alone, and acked before anything after it is sent, so
			// the message that needs the key is sequenced after it even
			// when a send is rejected transiently and retried.
			blocked[conv] = true
		}
		inflight[conv]++
		ob.picks++
		e.inflight, e.pick, e.waitPicks = true, ob.picks, 0
		if _, ok := oldest[conv]; !ok {
			oldest[conv] = e.pick
		}
		e.attempts++
		pick = append(pick, &pb.SendRequest{
			ConvId: conv, ClientMsgId: e.req.GetClientMsgId(), Envelope: e.req.GetEnvelope(), AfterClientMsgId: after,
		})
	}
	return pick, wake
}

// release returns an in-flight entry to the queue, to be sent again no
// earlier than notBefore.
func (ob *Outbox) release(clientMsgID string, notBefore time.Time) {
	ob.mu.Lock()
	for _, e := range ob.entries {
		if e.req.GetClientMsgId() == clientMsgID {
			e.inflight = false
			e.notBefore = notBefore
			break
		}
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
	for _, e := range ob.entries {
		if e.req.GetClientMsgId() == clientMsgID {
			e.inflight, e.waitPicks = false, ob.picks
			e.notBefore = time.Time{}
			e.attempts = max(e.attempts-1, 0)
			break
		}
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
	}
	ob.mu.Unlock()
}

// resetInflight marks every entry not in flight (the session ended: whatever
// was in flight must be sent again on the next one). Backoffs stay.
func (ob *Outbox) resetInflight() {
	ob.mu.Lock()
	for _, e := range ob.entries {
		e.inflight = false
	}
	ob.mu.Unlock()
	ob.signal()
}

// has reports whether an entry with the client message id is pending.
func (ob *Outbox) has(clientMsgID string) bool {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return slices.ContainsFunc(ob.entries, func(e *outboxEntry) bool { return e.req.GetClientMsgId() == clientMsgID })
}

// attempts returns how often the entry has been put on the wire.
func (ob *Outbox) attempts(clientMsgID string) int {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	for _, e := range ob.entries {
		if e.req.GetClientMsgId() == clientMsgID {
			return e.attempts
		}
	}
	return 0
}

// Remove deletes the entry with the given client message id (acked or
// failed for good). It reports whether it was present.
func (ob *Outbox) Remove(clientMsgID string) (bool, error) {
	ob.fmu.Lock()
	defer ob.fmu.Unlock()
	ob.mu.Lock()
	idx := slices.IndexFunc(ob.entries, func(e *outboxEntry) bool { return e.req.GetClientMsgId() == clientMsgID })
	if idx < 0 {
		ob.mu.Unlock()
		return false, nil
	}
	ob.entries = slices.Delete(ob.entries, idx, idx+1)
	empty := len(ob.entries) == 0
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
