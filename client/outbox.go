package client

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// Outbox is the durable queue of messages the device has accepted from the
// app but the server has not acknowledged yet. Each entry is one file
// <state>/outbox/<16 hex digits>.msg holding a marshalled pb.SendRequest and
// a crc32c trailer, written via temp file + fsync + rename + dir fsync before
// Add returns. The file name's number fixes the order; an entry is deleted
// when the server acks it (or rejects it for good).
//
// Besides persistence, Outbox schedules resends: it tracks which entries are
// in flight on the current session and which wait for a backoff. Order per
// conversation: entries of one conversation are sent in outbox order, at
// most window at a time, and never past an entry that waits for a retry.
//
// Outbox is safe for concurrent use.
type Outbox struct {
	dir     string
	mu      sync.Mutex
	next    uint64
	entries []*outboxEntry // ascending n
	changed chan struct{}  // cap 1: signalled on add, release, remove
	empty   chan struct{}  // closed while the outbox is empty; replaced when it fills
}

type outboxEntry struct {
	n         uint64
	req       *pb.SendRequest
	inflight  bool
	attempts  int
	notBefore time.Time
}

// OutboxEntry is a read-only view of one pending message.
type OutboxEntry struct {
	Conv        string
	ClientMsgID string
	Attempts    int
}

// OpenOutbox loads (creating) the outbox in dir. Entry files that fail
// their checksum were torn by a crash before Add returned and are removed.
func OpenOutbox(dir string) (*Outbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("client: outbox: %w", err)
	}
	ob := &Outbox{dir: dir, next: 1, changed: make(chan struct{}, 1), empty: make(chan struct{})}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("client: outbox: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") { // leftover temp file
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		num, ok := strings.CutSuffix(name, ".msg")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(num, 16, 64)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("client: outbox: %w", err)
		}
		req, ok := decodeOutboxFile(b)
		if !ok {
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		ob.entries = append(ob.entries, &outboxEntry{n: n, req: req})
		ob.next = max(ob.next, n+1)
	}
	sort.Slice(ob.entries, func(i, j int) bool { return ob.entries[i].n < ob.entries[j].n })
	if len(ob.entries) == 0 {
		close(ob.empty)
	}
	return ob, nil
}

func decodeOutboxFile(b []byte) (*pb.SendRequest, bool) {
	if len(b) < 4 {
		return nil, false
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, false
	}
	req := new(pb.SendRequest)
	if proto.Unmarshal(body, req) != nil {
		return nil, false
	}
	return req, true
}

// Add durably appends req; when it returns nil the message survives a crash.
func (ob *Outbox) Add(req *pb.SendRequest) error {
	body, err := proto.Marshal(req)
	if err != nil {
		return fmt.Errorf("client: outbox: encode: %w", err)
	}
	body = binary.BigEndian.AppendUint32(body, crc32.Checksum(body, crcTable))
	ob.mu.Lock()
	n := ob.next
	ob.next++
	ob.mu.Unlock()
	// Numbers are taken under the lock, files written outside it: two
	// concurrent Adds may finish in either order, but each gets its own
	// number, and the entry is inserted in number order below.
	if err := writeFileAtomic(ob.dir, fmt.Sprintf("%016x.msg", n), body); err != nil {
		return fmt.Errorf("client: outbox: %w", err)
	}
	ob.mu.Lock()
	i := sort.Search(len(ob.entries), func(i int) bool { return ob.entries[i].n > n })
	ob.entries = append(ob.entries, nil)
	copy(ob.entries[i+1:], ob.entries[i:])
	ob.entries[i] = &outboxEntry{n: n, req: req}
	if len(ob.entries) == 1 {
		ob.empty = make(chan struct{})
	}
	ob.mu.Unlock()
	ob.signal()
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
// retry. It also returns the earliest future retry time (zero if none).
func (ob *Outbox) sendable(now time.Time, window, limit int) (pick []*pb.SendRequest, wake time.Time) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	inflight := map[string]int{}
	blocked := map[string]bool{}
	for _, e := range ob.entries {
		if e.inflight {
			inflight[e.req.GetConvId()]++
		}
	}
	for _, e := range ob.entries {
		conv := e.req.GetConvId()
		if e.inflight || blocked[conv] {
			continue
		}
		if e.notBefore.After(now) {
			blocked[conv] = true
			if wake.IsZero() || e.notBefore.Before(wake) {
				wake = e.notBefore
			}
			continue
		}
		if len(pick) >= limit {
			break
		}
		if inflight[conv] >= window {
			blocked[conv] = true
			continue
		}
		inflight[conv]++
		e.inflight = true
		e.attempts++
		pick = append(pick, e.req)
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
	ob.mu.Lock()
	idx := -1
	for i, e := range ob.entries {
		if e.req.GetClientMsgId() == clientMsgID {
			idx = i
			break
		}
	}
	if idx < 0 {
		ob.mu.Unlock()
		return false, nil
	}
	e := ob.entries[idx]
	ob.entries = append(ob.entries[:idx], ob.entries[idx+1:]...)
	if len(ob.entries) == 0 {
		close(ob.empty)
	}
	ob.mu.Unlock()
	ob.signal()
	// A crash before the unlink reaches the disk resurrects the entry; the
	// resend is deduplicated by the server and acked with the same seq.
	if err := os.Remove(filepath.Join(ob.dir, fmt.Sprintf("%016x.msg", e.n))); err != nil && !os.IsNotExist(err) {
		return true, fmt.Errorf("client: outbox: %w", err)
	}
	return true, nil
}
