package check

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kind names one invariant; a Result counts violations per Kind.
type Kind string

// The invariants (see the package documentation for their exact meaning).
const (
	Lost            Kind = "lost"
	Duplicated      Kind = "duplicated"
	Reordered       Kind = "reordered"
	Gap             Kind = "gap"
	SecondWriter    Kind = "second_writer"
	EpochRegress    Kind = "epoch_regress"
	NonLinearizable Kind = "non_linearizable"
)

// Kinds lists every Kind in report order.
var Kinds = []Kind{Lost, Duplicated, Reordered, Gap, SecondWriter, EpochRegress, NonLinearizable}

// Tally counts the violations of one kind and keeps the first few,
// described for a person.
type Tally struct {
	Count    int      `json:"count"`
	Examples []string `json:"examples,omitempty"`
}

// Linearizability outcomes (Result.Linearizability).
const (
	LinOK      = "ok"      // porcupine found a linearization (or Dir is empty)
	LinIllegal = "illegal" // no linearization exists: a NonLinearizable violation
	LinUnknown = "unknown" // porcupine ran out of time (Options.LinTimeout)
)

// Result is what Check (or a Checker) found. It is JSON for the report.
type Result struct {
	// Final is false for a Checker snapshot taken while the run goes on:
	// Lost and Gap are then not checked (messages may still be in flight)
	// nor is the directory history.
	Final bool `json:"final"`
	// What was checked.
	Conversations int `json:"conversations"`
	Devices       int `json:"devices"`
	Sent          int `json:"sent"`
	// Acked is the number of distinct messages acknowledged; AckEvents
	// counts every acknowledgement (repeats included).
	Acked     int `json:"acked"`
	AckEvents int `json:"ack_events"`
	// Deliveries counts every Delivered event.
	Deliveries int `json:"deliveries"`
	// Required is the number of (message, member device) deliveries the
	// Lost check demands. In a snapshot, Pending of them have not
	// happened yet (in a final result they are Lost instead).
	Required int `json:"required"`
	Pending  int `json:"pending,omitempty"`
	// Unchecked counts conversations with sent messages but no member
	// devices (no Members entry, no span): Lost is vacuous for them, so a
	// caller should expect 0.
	Unchecked int `json:"unchecked_conversations"`
	// DirOps is the number of directory operations checked.
	DirOps int `json:"dir_ops"`
	// Linearizability is LinOK, LinIllegal or LinUnknown ("" in a
	// snapshot).
	Linearizability string `json:"linearizability,omitempty"`
	// Visualization is the path of porcupine's HTML visualization of the
	// directory history, when Options.VisualizePath asked for one and it
	// was written.
	Visualization string `json:"visualization,omitempty"`
	// Violations has an entry for every Kind (zero counts included).
	Violations map[Kind]*Tally `json:"violations"`
}

// Count returns the number of violations of kind k.
func (r Result) Count(k Kind) int {
	if t := r.Violations[k]; t != nil {
		return t.Count
	}
	return 0
}

// OK reports whether no invariant was violated and, for a final result,
// the directory history was shown linearizable (LinUnknown is not OK: an
// undecided history proves nothing).
func (r Result) OK() bool {
	for _, k := range Kinds {
		if r.Count(k) > 0 {
			return false
		}
	}
	return !r.Final || r.Linearizability == LinOK
}

// ErrViolation is wrapped by Result.Err.
var ErrViolation = errors.New("check: invariant violated")

// Err is nil when OK, else an error wrapping ErrViolation that names each
// violated invariant with its count and first example.
func (r Result) Err() error {
	if r.OK() {
		return nil
	}
	var parts []string
	for _, k := range Kinds {
		t := r.Violations[k]
		if t == nil || t.Count == 0 {
			continue
		}
		p := fmt.Sprintf("%d %s", t.Count, k)
		if len(t.Examples) > 0 {
			p += " (e.g. " + t.Examples[0] + ")"
		}
		parts = append(parts, p)
	}
	if r.Final && r.Linearizability != LinOK && r.Count(NonLinearizable) == 0 {
		parts = append(parts, "directory linearizability "+orNone(r.Linearizability))
	}
	return fmt.Errorf("%w: %s", ErrViolation, strings.Join(parts, "; "))
}

func orNone(s string) string {
	if s == "" {
		return "not checked"
	}
	return s
}

// Options tune a check. The zero value works.
type Options struct {
	// MaxExamples is how many violations of each kind are described
	// (default 20).
	MaxExamples int
	// LinTimeout bounds porcupine (default 30 s); past it the result is
	// LinUnknown.
	LinTimeout time.Duration
	// VisualizePath, when set, is where the final check writes porcupine's
	// HTML visualization of the directory history.
	VisualizePath string
}

func (o Options) withDefaults() Options {
	if o.MaxExamples <= 0 {
		o.MaxExamples = 20
	}
	if o.LinTimeout <= 0 {
		o.LinTimeout = 30 * time.Second
	}
	return o
}

// Check checks a whole recorded history after the run (see the package
// documentation for what each invariant demands of h).
func Check(h *History) Result { return CheckWith(h, Options{}) }

// CheckWith is Check with options.
func CheckWith(h *History, opts Options) Result {
	c := NewChecker(opts)
	for conv, devs := range h.Members {
		c.AddMembers(conv, devs...)
	}
	for _, s := range h.Spans {
		c.AddSpan(s)
	}
	for _, s := range h.Sent {
		c.Sent(s)
	}
	for _, a := range h.Acked {
		c.Acked(a)
	}
	for _, d := range h.Delivered {
		c.Delivered(d)
	}
	for _, op := range h.Dir {
		c.DirOp(op)
	}
	return c.Final()
}

// Checker checks a history fed to it event by event, so a run can look at
// its invariants while it goes on (Snapshot) and at the end (Final). The
// order in which events of different kinds are fed does not matter (a
// delivery may be fed before the ack of the same message); the order of
// one device's deliveries does (it is the order the device saw). It is
// safe for concurrent use.
//
// Memory: per distinct message about 450 bytes (its identity, seq and
// writer, map overhead included; the strings are shared with the caller's
// events, not copied); per delivery one bit in its device's seq set; per
// directory operation the DirOp itself. Each event costs O(1) map work;
// Snapshot and Final sort each conversation's seqs, O(n log n).
type Checker struct {
	mu       sync.Mutex
	opts     Options
	members  map[string][]string // conv → devices (as given)
	spans    map[devConv]MemberSpan
	convs    map[string]*convState
	devs     map[devConv]*devState
	msgs     map[msgKey]*msgState
	dir      []DirOp
	sent     int
	acks     int
	delivers int
	found    map[Kind]*Tally // violations found while feeding
	reported map[string]bool // violations already counted (one per key)
}

type devConv struct{ dev, conv string }

// msgKey names a user message: its conversation, sending device and
// client message id.
type msgKey struct{ conv, from, id string }

type msgState struct {
	seq       uint64 // first seq seen for it (ack or delivery); 0 = none yet
	sent      bool
	acked     bool
	delivered bool
}

// seqEntry is what is known about one (conv, seq): which entry it is and
// who wrote it.
type seqEntry struct {
	from, id string // identity (id "" = a system entry: membership, ...)
	how, who string // who told us, for examples: ("ack to" | "delivery to", device)
	epoch    uint64
	region   string
	writerBy string
}

type convState struct {
	seqs    map[uint64]*seqEntry
	writers map[uint64]string // epoch → the region that wrote at it
}

type devState struct {
	seen seqSet
	last uint64
}

// NewChecker returns an empty Checker.
func NewChecker(opts Options) *Checker {
	c := &Checker{
		opts:     opts.withDefaults(),
		members:  map[string][]string{},
		spans:    map[devConv]MemberSpan{},
		convs:    map[string]*convState{},
		devs:     map[devConv]*devState{},
		msgs:     map[msgKey]*msgState{},
		found:    map[Kind]*Tally{},
		reported: map[string]bool{},
	}
	return c
}

// AddMembers records member devices of conv (see History.Members).
func (c *Checker) AddMembers(conv string, devices ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range devices {
		if !slices.Contains(c.members[conv], d) {
			c.members[conv] = append(c.members[conv], d)
		}
	}
}

// AddSpan records a member span (see History.Spans).
func (c *Checker) AddSpan(s MemberSpan) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spans[devConv{s.Device, s.Conv}] = s
}

// Sent feeds one Sent event.
func (c *Checker) Sent(s Sent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent++
	c.msg(msgKey{s.Conv, s.Device, s.MsgID}).sent = true
}

// Acked feeds one Acked event.
func (c *Checker) Acked(a Acked) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.acks++
	m := c.msg(msgKey{a.Conv, a.Device, a.MsgID})
	if a.Seq == 0 {
		c.violate(Gap, "", "conv %s: message %s/%s acked with seq 0", a.Conv, a.Device, a.MsgID)
		return
	}
	m.acked = true
	// Two acks with different seqs: bind reports the message sequenced twice.
	c.bind(a.Conv, a.Seq, a.Device, a.MsgID, "ack to", a.Device, m)
}

// Delivered feeds one Delivered event; one device's deliveries must be fed
// in the order the device saw them.
func (c *Checker) Delivered(d Delivered) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.delivers++
	if d.Seq == 0 {
		c.violate(Gap, "", "conv %s: device %s received an entry with seq 0", d.Conv, d.Device)
		return
	}
	ds := c.devs[devConv{d.Device, d.Conv}]
	if ds == nil {
		ds = &devState{}
		c.devs[devConv{d.Device, d.Conv}] = ds
	}
	switch {
	case ds.seen.has(d.Seq):
		c.violate(Duplicated, "", "conv %s: device %s received seq %d twice (message %s/%s)", d.Conv, d.Device, d.Seq, d.From, d.MsgID)
	case d.Seq < ds.last:
		c.violate(Reordered, "", "conv %s: device %s received seq %d after seq %d", d.Conv, d.Device, d.Seq, ds.last)
	}
	ds.seen.add(d.Seq)
	ds.last = max(ds.last, d.Seq)

	var m *msgState
	if d.MsgID != "" {
		m = c.msg(msgKey{d.Conv, d.From, d.MsgID})
		m.delivered = true
	}
	e := c.bind(d.Conv, d.Seq, d.From, d.MsgID, "delivery to", d.Device, m)

	// The writer: one per (conv, seq), one region per (conv, epoch).
	if d.Epoch == 0 && d.Region == "" {
		return // not recorded
	}
	if e.writerBy == "" {
		e.epoch, e.region, e.writerBy = d.Epoch, d.Region, d.Device
	} else if e.epoch != d.Epoch || e.region != d.Region {
		c.violate(SecondWriter, fmt.Sprintf("seqw/%s/%d/%d/%s", d.Conv, d.Seq, d.Epoch, d.Region),
			"conv %s: seq %d written at epoch %d by %s (seen by %s) and at epoch %d by %s (seen by %s)",
			d.Conv, d.Seq, e.epoch, e.region, e.writerBy, d.Epoch, d.Region, d.Device)
	}
	cs := c.convs[d.Conv]
	if w, ok := cs.writers[d.Epoch]; !ok {
		cs.writers[d.Epoch] = d.Region
	} else if w != d.Region {
		c.violate(SecondWriter, fmt.Sprintf("epochw/%s/%d/%s", d.Conv, d.Epoch, d.Region),
			"conv %s: epoch %d has two writers, %s and %s (seq %d seen by %s)", d.Conv, d.Epoch, w, d.Region, d.Seq, d.Device)
	}
}

// DirOp feeds one directory operation.
func (c *Checker) DirOp(op DirOp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dir = append(c.dir, op)
}

func (c *Checker) msg(k msgKey) *msgState {
	m := c.msgs[k]
	if m == nil {
		m = &msgState{}
		c.msgs[k] = m
	}
	return m
}

// bind records that (conv, seq) is the entry (from, id), as told by an
// ack to or a delivery to (how) a device (who);
// a conflict with what is known is a violation: two entries at one seq
// (Reordered); else one message at two seqs (Duplicated).
func (c *Checker) bind(conv string, seq uint64, from, id, how, who string, m *msgState) *seqEntry {
	cs := c.convs[conv]
	if cs == nil {
		cs = &convState{seqs: map[uint64]*seqEntry{}, writers: map[uint64]string{}}
		c.convs[conv] = cs
	}
	e := cs.seqs[seq]
	switch {
	case e == nil:
		e = &seqEntry{from: from, id: id, how: how, who: who}
		cs.seqs[seq] = e
	case e.from != from || e.id != id:
		// Observers disagree on what seq is; that the message also sits
		// at another seq is the same disagreement, not a second copy.
		m = nil
		c.violate(Reordered, fmt.Sprintf("seq/%s/%d/%s/%s", conv, seq, from, id),
			"conv %s: seq %d is message %s/%s per %s %s but %s/%s per %s %s",
			conv, seq, e.from, idOrSystem(e.id), e.how, e.who, from, idOrSystem(id), how, who)
	}
	if m != nil {
		if m.seq == 0 {
			m.seq = seq
		} else if m.seq != seq {
			c.violate(Duplicated, fmt.Sprintf("msg/%s/%s/%s/%d", conv, from, id, seq),
				"conv %s: message %s/%s sequenced twice, at seq %d and seq %d (%s %s)", conv, from, id, m.seq, seq, how, who)
		}
	}
	return e
}

func idOrSystem(id string) string {
	if id == "" {
		return "(system entry)"
	}
	return id
}

// violate counts one violation; with a non-empty key, only once per key.
func (c *Checker) violate(k Kind, key string, format string, args ...any) {
	if key != "" {
		if c.reported[key] {
			return
		}
		c.reported[key] = true
	}
	addTally(c.found, k, c.opts.MaxExamples, fmt.Sprintf(format, args...))
}

func addTally(m map[Kind]*Tally, k Kind, maxEx int, ex string) {
	t := m[k]
	if t == nil {
		t = &Tally{}
		m[k] = t
	}
	t.Count++
	if len(t.Examples) < maxEx {
		t.Examples = append(t.Examples, ex)
	}
}

// Snapshot returns the violations found so far, without the checks that
// need the run to be over (Lost, Gap, linearizability); deliveries still
// missing are counted as Pending.
func (c *Checker) Snapshot() Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.result(false)
}

// Final returns the result of every check; call it once the run has
// drained (every client synced after the last fault healed).
func (c *Checker) Final() Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.result(true)
}

func (c *Checker) result(final bool) Result {
	r := Result{
		Final: final, Conversations: len(c.convs), Sent: c.sent, AckEvents: c.acks,
		Deliveries: c.delivers, Violations: map[Kind]*Tally{},
	}
	for k, t := range c.found {
		r.Violations[k] = &Tally{Count: t.Count, Examples: slices.Clone(t.Examples)}
	}
	devices := map[string]bool{}
	for dc := range c.devs {
		devices[dc.dev] = true
	}
	r.Devices = len(devices)
	for _, m := range c.msgs {
		if m.acked {
			r.Acked++
		}
	}
	add := func(k Kind, format string, args ...any) {
		addTally(r.Violations, k, c.opts.MaxExamples, fmt.Sprintf(format, args...))
	}

	convs := make([]string, 0, len(c.convs))
	for conv := range c.convs {
		convs = append(convs, conv)
	}
	slices.Sort(convs)
	for _, conv := range convs {
		cs := c.convs[conv]
		seqs := make([]uint64, 0, len(cs.seqs))
		for s := range cs.seqs {
			seqs = append(seqs, s)
		}
		slices.Sort(seqs)
		// Epochs never go down along the log.
		var prevSeq, prevEpoch uint64
		for _, s := range seqs {
			e := cs.seqs[s]
			if e.writerBy == "" {
				continue
			}
			if e.epoch < prevEpoch {
				add(EpochRegress, "conv %s: seq %d at epoch %d (%s) follows seq %d at epoch %d", conv, s, e.epoch, e.region, prevSeq, prevEpoch)
			}
			if e.epoch >= prevEpoch {
				prevSeq, prevEpoch = s, e.epoch
			}
		}
		if !final {
			continue
		}
		// Gapless: every seq up to the highest known is known.
		var next uint64 = 1
		for _, s := range seqs {
			if s > next {
				add(Gap, "conv %s: seqs %s never seen (known up to %d)", conv, span(next, s-1), seqs[len(seqs)-1])
				r.Violations[Gap].Count += int(s-next) - 1
			}
			next = s + 1
		}
	}

	c.checkLost(&r, add, final)
	if final {
		c.checkDir(&r, add)
	}
	for _, k := range Kinds {
		if r.Violations[k] == nil {
			r.Violations[k] = &Tally{}
		}
	}
	return r
}

func span(a, b uint64) string {
	if a == b {
		return fmt.Sprint(a)
	}
	return fmt.Sprintf("%d..%d", a, b)
}

// required is one device's duty in a conversation: the seqs from..to
// (to 0: no end).
type required struct {
	dev      string
	from, to uint64
}

// checkLost walks every (message, member device) pair due; a missing
// delivery is Lost in a final result, Pending in a snapshot.
func (c *Checker) checkLost(r *Result, add func(Kind, string, ...any), final bool) {
	duty := map[string][]required{}
	for conv, devs := range c.members {
		for _, d := range devs {
			if _, ok := c.spans[devConv{d, conv}]; !ok {
				duty[conv] = append(duty[conv], required{dev: d, from: 1})
			}
		}
	}
	for dc, s := range c.spans {
		duty[dc.conv] = append(duty[dc.conv], required{dev: dc.dev, from: s.From, to: s.To})
	}
	keys := make([]msgKey, 0, len(c.msgs))
	unchecked := map[string]bool{}
	for k, m := range c.msgs {
		if m.sent && len(duty[k.conv]) == 0 {
			unchecked[k.conv] = true
		}
		if m.sent && m.seq != 0 && (m.acked || m.delivered) {
			keys = append(keys, k)
		}
	}
	r.Unchecked = len(unchecked)
	// Sorted so the examples are the same from run to run.
	slices.SortFunc(keys, func(a, b msgKey) int {
		return cmpStrings(a.conv, b.conv, a.from, b.from, a.id, b.id)
	})
	for _, k := range keys {
		m := c.msgs[k]
		for _, d := range duty[k.conv] {
			if m.seq < d.from || (d.to != 0 && m.seq > d.to) {
				continue
			}
			r.Required++
			if ds := c.devs[devConv{d.dev, k.conv}]; ds == nil || !ds.seen.has(m.seq) {
				if !final {
					r.Pending++
					continue
				}
				add(Lost, "conv %s: message %s/%s (seq %d, %s) never delivered to %s", k.conv, k.from, k.id, m.seq, ackedOr(m), d.dev)
			}
		}
	}
}

func ackedOr(m *msgState) string {
	if m.acked {
		return "acked"
	}
	return "unacked but delivered elsewhere"
}

func cmpStrings(pairs ...string) int {
	for i := 0; i+1 < len(pairs); i += 2 {
		if c := strings.Compare(pairs[i], pairs[i+1]); c != 0 {
			return c
		}
	}
	return 0
}

// seqSet is a set of seqs: a bitmap for the dense range a conversation
// log has, a map beyond it (a bogus huge seq costs no memory).
type seqSet struct {
	bits []uint64
	far  map[uint64]struct{}
}

const denseSeqs = 1 << 24 // 2 MiB of bits at most per (device, conv)

func (s *seqSet) has(seq uint64) bool {
	if seq < denseSeqs {
		w := seq / 64
		return w < uint64(len(s.bits)) && s.bits[w]&(1<<(seq%64)) != 0
	}
	_, ok := s.far[seq]
	return ok
}

func (s *seqSet) add(seq uint64) {
	if seq < denseSeqs {
		w := seq / 64
		for uint64(len(s.bits)) <= w {
			s.bits = append(s.bits, 0)
		}
		s.bits[w] |= 1 << (seq % 64)
		return
	}
	if s.far == nil {
		s.far = map[uint64]struct{}{}
	}
	s.far[seq] = struct{}{}
}
