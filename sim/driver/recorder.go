package driver

import (
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/sim/check"
)

// Second is one second of a run's timeline: what happened in it.
type Second struct {
	Sent      int64 `json:"sent"`
	Acked     int64 `json:"acked"`
	Delivered int64 `json:"delivered"`
}

// msgState follows one message of the run by its client message id.
type msgState struct {
	conv   string
	sender string
	sent   bool
	acked  bool
	failed bool
	seq    uint64 // from its ack, else from its first delivery
	got    int    // member devices that have it (first delivery each)
	// inferAck: the sender's client finished the message (it left the
	// outbox) while the driver was not listening (a move closed the
	// client); its ack is recorded from its first delivery.
	inferAck bool
	done     bool // sent and (failed, or acked and delivered to every member)
}

// recorder is the run's History and the bookkeeping over it. Every method
// is safe for concurrent use.
type recorder struct {
	mu      sync.Mutex
	h       check.History
	start   time.Time // traffic start (zero during setup)
	maxSec  int
	seconds []Second

	members  map[string]map[string]bool // conv -> member devices
	msgs     map[string]*msgState       // client msg id -> state
	last     map[[2]string]uint64       // (device, conv) -> highest seq delivered
	open     int                        // sent, not done
	sent     int64
	acked    int64
	failed   int64
	deliv    int64
	inferred int64
	errs     map[string]int64
	// chk, if set, is fed every event as it is recorded (under mu, so
	// in the History's order).
	chk *check.Checker
}

func newRecorder(maxSeconds int, chk *check.Checker) *recorder {
	return &recorder{
		chk:     chk,
		h:       check.History{Members: map[string][]string{}},
		maxSec:  maxSeconds,
		members: map[string]map[string]bool{},
		msgs:    map[string]*msgState{},
		last:    map[[2]string]uint64{},
		errs:    map[string]int64{},
	}
}

// setMembers records conv's member devices (before traffic starts).
func (r *recorder) setMembers(conv string, devices []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ds := slices.Clone(devices)
	slices.Sort(ds)
	r.h.Members[conv] = ds
	set := map[string]bool{}
	for _, d := range ds {
		set[d] = true
	}
	r.members[conv] = set
	if r.chk != nil {
		r.chk.AddMembers(conv, ds...)
	}
}

// startTraffic marks the start of the timeline.
func (r *recorder) startTraffic(at time.Time) {
	r.mu.Lock()
	r.start = at
	r.mu.Unlock()
}

// second returns the timeline bucket of at (nil before traffic starts or
// beyond the bound); r.mu is held.
func (r *recorder) second(at time.Time) *Second {
	if r.start.IsZero() {
		return nil
	}
	i := max(int(at.Sub(r.start)/time.Second), 0)
	if i >= r.maxSec {
		return nil
	}
	for len(r.seconds) <= i {
		r.seconds = append(r.seconds, Second{})
	}
	return &r.seconds[i]
}

func (r *recorder) state(id string) *msgState {
	m := r.msgs[id]
	if m == nil {
		m = &msgState{}
		r.msgs[id] = m
	}
	return m
}

// settle updates m's completion; r.mu is held.
func (r *recorder) settle(m *msgState) {
	if m.done || !m.sent {
		return
	}
	if m.failed || m.acked && m.got >= len(r.members[m.conv]) {
		m.done = true
		r.open--
	}
}

func (r *recorder) recordSent(s check.Sent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Sent = append(r.h.Sent, s)
	if r.chk != nil {
		r.chk.Sent(s)
	}
	r.sent++
	if b := r.second(s.At); b != nil {
		b.Sent++
	}
	m := r.state(s.MsgID)
	m.conv, m.sender, m.sent = s.Conv, s.Device, true
	r.open++
	r.settle(m)
}

func (r *recorder) recordAcked(a check.Acked) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ackLocked(a)
}

func (r *recorder) ackLocked(a check.Acked) {
	r.h.Acked = append(r.h.Acked, a)
	if r.chk != nil {
		r.chk.Acked(a)
	}
	if b := r.second(a.At); b != nil {
		b.Acked++
	}
	m := r.state(a.MsgID)
	if !m.acked {
		r.acked++
		m.acked, m.inferAck = true, false
		m.seq = a.Seq
		if m.conv == "" {
			m.conv, m.sender = a.Conv, a.Device
		}
	}
	r.settle(m)
}

func (r *recorder) recordFailed(device, conv, id, kind string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[kind]++
	m := r.state(id)
	if m.conv == "" {
		m.conv, m.sender = conv, device
	}
	if !m.failed {
		m.failed = true
		r.failed++
	}
	r.settle(m)
}

func (r *recorder) recordDelivered(d check.Delivered) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Delivered = append(r.h.Delivered, d)
	if r.chk != nil {
		r.chk.Delivered(d)
	}
	r.deliv++
	if b := r.second(d.At); b != nil {
		b.Delivered++
	}
	key := [2]string{d.Device, d.Conv}
	first := d.Seq > r.last[key]
	if first {
		r.last[key] = d.Seq
	}
	if d.MsgID == "" {
		return
	}
	m := r.state(d.MsgID)
	if m.conv == "" {
		m.conv = d.Conv
	}
	if m.seq == 0 {
		m.seq = d.Seq
	}
	if first && r.members[d.Conv][d.Device] {
		m.got++
	}
	if m.inferAck && !m.acked {
		r.inferred++
		r.ackLocked(check.Acked{At: d.At, Device: m.sender, Conv: m.conv, MsgID: d.MsgID, Seq: d.Seq})
		return
	}
	r.settle(m)
}

// unfinished returns the messages device sent that are neither acked nor
// failed yet.
func (r *recorder) unfinished(device string) map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]bool{}
	for id, m := range r.msgs {
		if m.sender == device && m.sent && !m.acked && !m.failed {
			out[id] = true
		}
	}
	return out
}

// inferAcks marks messages whose client finished them while the driver
// could not see the ack (see msgState.inferAck); one already delivered
// gets its ack now.
func (r *recorder) inferAcks(ids []string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		m := r.msgs[id]
		if m == nil || m.acked || m.failed {
			continue
		}
		if m.seq != 0 {
			r.inferred++
			r.ackLocked(check.Acked{At: at, Device: m.sender, Conv: m.conv, MsgID: id, Seq: m.seq})
			continue
		}
		m.inferAck = true
	}
}

func (r *recorder) addErr(kind string, n int64) {
	if n == 0 {
		return
	}
	r.mu.Lock()
	r.errs[kind] += n
	r.mu.Unlock()
}

// pending is the number of sent messages not yet acked and delivered to
// every member device (or failed).
func (r *recorder) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.open
}

func (r *recorder) addFault(f check.Fault) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Faults = append(r.h.Faults, f)
	return len(r.h.Faults) - 1
}

func (r *recorder) endFault(i int, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= 0 && i < len(r.h.Faults) {
		r.h.Faults[i].End = at
	}
}

func (r *recorder) addDirOp(op check.DirOp) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h.Dir = append(r.h.Dir, op)
	if r.chk != nil {
		r.chk.DirOp(op)
	}
}

// snapshot copies the history: the append-only slices are cut to their
// length (capacity = length, so neither side's appends reach the other),
// Faults (whose End changes) and Members are copied.
func (r *recorder) snapshot() *check.History {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := &check.History{
		Members:   maps.Clone(r.h.Members),
		Sent:      r.h.Sent[:len(r.h.Sent):len(r.h.Sent)],
		Acked:     r.h.Acked[:len(r.h.Acked):len(r.h.Acked)],
		Delivered: r.h.Delivered[:len(r.h.Delivered):len(r.h.Delivered)],
		Dir:       r.h.Dir[:len(r.h.Dir):len(r.h.Dir)],
		Faults:    slices.Clone(r.h.Faults),
	}
	return h
}

// stats fills the counts of s from the bookkeeping.
func (r *recorder) stats(s *Stats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.Sent, s.Acked, s.Failed, s.Delivered, s.AcksInferred = r.sent, r.acked, r.failed, r.deliv, r.inferred
	for _, m := range r.msgs {
		if !m.sent || m.failed {
			continue
		}
		if !m.acked {
			s.Unacked++
			continue
		}
		s.MissingDeliveries += int64(max(len(r.members[m.conv])-m.got, 0))
	}
	s.PerSecond = slices.Clone(r.seconds)
	s.Errors = maps.Clone(r.errs)
}
