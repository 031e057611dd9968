package benchload

import (
	"encoding/binary"
	"math/bits"
	"slices"
	"sync"
	"time"
)

// Body layout. Every body the bench sends starts with this header; the
// rest is random filler.
//
//	[0:8)   intended send time, unix nanoseconds (open loop: the schedule's
//	        time, not the time the generator got to it)
//	[8:12)  sender index
//	[12:16) conversation index
//	[16:24) counter per (sender, conversation), from 1 in each round
//	[24:28) round
const (
	headerLen   = 28
	minBodySize = 32
)

func putHeader(b []byte, at time.Time, sender, conv uint32, counter uint64, round uint32) {
	binary.BigEndian.PutUint64(b[0:8], uint64(at.UnixNano()))
	binary.BigEndian.PutUint32(b[8:12], sender)
	binary.BigEndian.PutUint32(b[12:16], conv)
	binary.BigEndian.PutUint64(b[16:24], counter)
	binary.BigEndian.PutUint32(b[24:28], round)
}

type header struct {
	at      time.Time
	sender  uint32
	conv    uint32
	counter uint64
	round   uint32
}

func parseHeader(b []byte) (header, bool) {
	if len(b) < headerLen {
		return header{}, false
	}
	return header{
		at:      time.Unix(0, int64(binary.BigEndian.Uint64(b[0:8]))),
		sender:  binary.BigEndian.Uint32(b[8:12]),
		conv:    binary.BigEndian.Uint32(b[12:16]),
		counter: binary.BigEndian.Uint64(b[16:24]),
		round:   binary.BigEndian.Uint32(b[24:28]),
	}, true
}

// bitset is a growable set of small non-negative integers.
type bitset []uint64

func (s *bitset) add(i uint64) (had bool) {
	w := int(i / 64)
	if w >= len(*s) {
		*s = append(*s, make([]uint64, w+1-len(*s))...)
	}
	m := uint64(1) << (i % 64)
	had = (*s)[w]&m != 0
	(*s)[w] |= m
	return had
}

// missing counts the members of s that are not in got.
func (s bitset) missing(got bitset) int64 {
	var n int64
	for w, x := range s {
		if w < len(got) {
			x &^= got[w]
		}
		n += int64(bits.OnesCount64(x))
	}
	return n
}

func (s bitset) count() int64 { return s.missing(nil) }

// checker checks one round of traffic: every acknowledged message reaches
// every expected receiver exactly once and in order — by the body's
// (sender, conversation, counter) and by the server's seq where it has
// one. Receivers and senders each have their own state and lock, so the
// connections' reader goroutines do not contend.
type checker struct {
	round   uint32
	members [][]int // conversation index → member indexes
	recv    []*recvState
	send    []*sendState
	start   time.Time
}

type streamKey struct{ conv, sender uint32 }

type stream struct {
	got bitset
	max uint64
}

type recvState struct {
	mu                    sync.Mutex
	streams               map[streamKey]*stream
	seqs                  map[string]*stream // by destination
	lat                   []int32            // delivery latency, µs
	deliveries, self      int64
	dups, reorders, stale int64
	seqDups, seqReorders  int64
	last                  time.Time
}

type sendState struct {
	mu                             sync.Mutex
	counters                       map[uint32]uint64
	acked                          map[uint32]*bitset // conversation → counters acknowledged
	lat                            []int32            // ack latency, µs
	lag                            []int32            // generator lag behind schedule, µs
	sent, ackedN, failed, rejected int64
	last                           time.Time
	pending                        int64
}

func newChecker(round uint32, users int, members [][]int) *checker {
	c := &checker{round: round, members: members, recv: make([]*recvState, users), send: make([]*sendState, users), start: time.Now()}
	for i := range users {
		c.recv[i] = &recvState{streams: map[streamKey]*stream{}, seqs: map[string]*stream{}}
		c.send[i] = &sendState{counters: map[uint32]uint64{}, acked: map[uint32]*bitset{}}
	}
	return c
}

// next returns the sender's next counter in conversation conv and counts
// the message as sent.
func (c *checker) next(sender int, conv uint32) uint64 {
	s := c.send[sender]
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counters[conv]++
	s.sent++
	s.pending++
	return s.counters[conv]
}

func (c *checker) lag(sender int, d time.Duration) {
	s := c.send[sender]
	s.mu.Lock()
	s.lag = append(s.lag, int32(min(d.Microseconds(), 1<<31-1)))
	s.mu.Unlock()
}

// unsent takes back a message that could not be written.
func (c *checker) unsent(sender int) {
	s := c.send[sender]
	s.mu.Lock()
	s.failed++
	s.pending--
	s.mu.Unlock()
}

func (c *checker) acked(sender int, conv uint32, counter uint64, at time.Time, err error) {
	s := c.send[sender]
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending--
	switch {
	case err == nil:
		b := s.acked[conv]
		if b == nil {
			b = &bitset{}
			s.acked[conv] = b
		}
		b.add(counter)
		s.ackedN++
		s.lat = append(s.lat, int32(min(now.Sub(at).Microseconds(), 1<<31-1)))
		s.last = now
	case isRejected(err):
		s.rejected++
	default:
		s.failed++
	}
}

func (c *checker) onPush(recv int, p Push) {
	h, ok := parseHeader(p.Body)
	r := c.recv[recv]
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.Seq != 0 {
		s := r.seqs[p.Dest]
		if s == nil {
			s = &stream{}
			r.seqs[p.Dest] = s
		}
		switch {
		case s.got.add(p.Seq):
			r.seqDups++
		case p.Seq < s.max:
			r.seqReorders++
		}
		s.max = max(s.max, p.Seq)
	}
	if !ok || h.round != c.round {
		r.stale++
		return
	}
	if int(h.sender) == recv {
		r.self++
		return
	}
	k := streamKey{h.conv, h.sender}
	s := r.streams[k]
	if s == nil {
		s = &stream{}
		r.streams[k] = s
	}
	switch {
	case s.got.add(h.counter):
		r.dups++
		return
	case h.counter < s.max:
		r.reorders++
	}
	s.max = max(s.max, h.counter)
	r.deliveries++
	r.lat = append(r.lat, int32(min(p.At.Sub(h.at).Microseconds(), 1<<31-1)))
	r.last = p.At
}

// progress returns the acknowledged messages' expected deliveries and
// the deliveries so far, and how many sends await an answer.
func (c *checker) progress() (expected, delivered, pending int64) {
	for i, s := range c.send {
		s.mu.Lock()
		for conv, b := range s.acked {
			n := b.count()
			for _, m := range c.members[conv] {
				if m != i {
					expected += n
				}
			}
		}
		pending += s.pending
		s.mu.Unlock()
	}
	for _, r := range c.recv {
		r.mu.Lock()
		delivered += r.deliveries
		r.mu.Unlock()
	}
	return expected, delivered, pending
}

// roundCounts are a round's counters so far (progress lines).
type roundCounts struct{ sent, acked, failed, rejected, pending, delivered int64 }

func (c *checker) counts() roundCounts {
	var rc roundCounts
	for _, s := range c.send {
		s.mu.Lock()
		rc.sent += s.sent
		rc.acked += s.ackedN
		rc.failed += s.failed
		rc.rejected += s.rejected
		rc.pending += s.pending
		s.mu.Unlock()
	}
	for _, r := range c.recv {
		r.mu.Lock()
		rc.delivered += r.deliveries
		r.mu.Unlock()
	}
	return rc
}

// Checks are the exactly-once and order findings of a run.
type Checks struct {
	// Missing: acknowledged messages that did not reach an expected
	// receiver (one per receiver).
	Missing int64 `json:"missing"`
	// Duplicates and Reorders by the body's (sender, conversation,
	// counter) at each receiver.
	Duplicates int64 `json:"duplicates"`
	Reorders   int64 `json:"reorders"`
	// SeqDuplicates and SeqReorders by the server's seq per
	// (conversation, receiving device); 0 where the server has no seq.
	SeqDuplicates int64 `json:"seq_duplicates"`
	SeqReorders   int64 `json:"seq_reorders"`
	// Stale: deliveries of an earlier round (a sweep's stragglers).
	Stale int64 `json:"stale,omitempty"`
}

// OK reports whether nothing was missing, duplicated or reordered.
func (k Checks) OK() bool {
	return k.Missing == 0 && k.Duplicates == 0 && k.Reorders == 0 && k.SeqDuplicates == 0 && k.SeqReorders == 0
}

// result summarizes the round. Call it once the senders are done.
func (c *checker) result(sendTime time.Duration) Traffic {
	var t Traffic
	var ackLat, delLat, lag []int32
	last := c.start.Add(sendTime)
	for i, s := range c.send {
		s.mu.Lock()
		t.Sent += s.sent
		t.Acked += s.ackedN
		t.Failed += s.failed
		t.Rejected += s.rejected
		t.Unanswered += s.pending
		ackLat = append(ackLat, s.lat...)
		lag = append(lag, s.lag...)
		if s.last.After(last) {
			last = s.last
		}
		for conv, b := range s.acked {
			for _, m := range c.members[conv] {
				if m == i {
					continue
				}
				r := c.recv[m]
				r.mu.Lock()
				var got bitset
				if st := r.streams[streamKey{conv, uint32(i)}]; st != nil {
					got = st.got
				}
				t.Checks.Missing += b.missing(got)
				t.ExpectedDeliveries += b.count()
				r.mu.Unlock()
			}
		}
		s.mu.Unlock()
	}
	for _, r := range c.recv {
		r.mu.Lock()
		t.Deliveries += r.deliveries
		t.SelfDeliveries += r.self
		t.Checks.Duplicates += r.dups
		t.Checks.Reorders += r.reorders
		t.Checks.SeqDuplicates += r.seqDups
		t.Checks.SeqReorders += r.seqReorders
		t.Checks.Stale += r.stale
		delLat = append(delLat, r.lat...)
		if r.last.After(last) {
			last = r.last
		}
		r.mu.Unlock()
	}
	span := last.Sub(c.start).Seconds()
	if span > 0 {
		t.AckedPerS = float64(t.Acked) / span
		t.DeliveredPerS = float64(t.Deliveries) / span
	}
	t.SendS = sendTime.Seconds()
	t.AckLatency = percentiles(ackLat)
	t.DeliveryLatency = percentiles(delLat)
	t.SendLag = percentiles(lag)
	return t
}

// Percentiles summarizes a latency distribution in milliseconds.
type Percentiles struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

func percentiles(us []int32) Percentiles {
	if len(us) == 0 {
		return Percentiles{}
	}
	slices.Sort(us)
	at := func(q float64) float64 { return float64(us[int(q*float64(len(us)-1))]) / 1000 }
	return Percentiles{N: len(us), P50: at(0.50), P99: at(0.99), P999: at(0.999), Max: at(1)}
}
