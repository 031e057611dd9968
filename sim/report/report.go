package report

import (
	"math"
	"slices"
	"time"

	"github.com/chatmesh/chatmesh/sim/check"
)

// Report is a simulation's outcome for people and for CI: JSON, and the
// input of WriteSVG.
type Report struct {
	// Seed reproduces the run (the caller fills it in; Build leaves it).
	Seed uint64 `json:"seed"`
	// Start and End bound the run: the earliest and latest event of the
	// history.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Faults is the fault schedule as it ran.
	Faults []check.Fault `json:"faults"`
	// Invariants is the checker's verdict.
	Invariants check.Result `json:"invariants"`
	// RTO is one entry per region-loss fault (Options.RegionLoss), in
	// fault order; RTOAll pools every recovered conversation of them all.
	RTO    []RTO       `json:"rto"`
	RTOAll Percentiles `json:"rto_all"`
	// AckLatency is Acked.At − Sent.At of each message's first ack;
	// DeliveryLatency is Delivered.At − Sent.At of each delivery of a sent
	// message (the sender's own devices included). Each is split by
	// whether the message's life (send to ack, or send to delivery)
	// overlapped a fault.
	AckLatency      Split `json:"ack_latency"`
	DeliveryLatency Split `json:"delivery_latency"`
	// Throughput is the run in buckets of Options.Bucket.
	Throughput []Bucket `json:"throughput"`
	// BucketMs is the bucket width in milliseconds.
	BucketMs float64 `json:"bucket_ms"`
}

// Percentiles summarise durations, in milliseconds (nearest rank).
type Percentiles struct {
	N      int     `json:"n"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

// Split is latency during faults and outside them, and over the whole run.
type Split struct {
	All     Percentiles `json:"all"`
	During  Percentiles `json:"during_faults"`
	Outside Percentiles `json:"outside_faults"`
}

// Bucket is one slice of the run's time line.
type Bucket struct {
	// OffsetMs is the bucket's start, in milliseconds after Report.Start.
	OffsetMs float64 `json:"offset_ms"`
	Sent     int     `json:"sent"`
	// Acked counts first acks arriving in the bucket; AckP99Ms is the p99
	// ack latency of those (0 when none).
	Acked      int     `json:"acked"`
	AckP99Ms   float64 `json:"ack_p99_ms"`
	Deliveries int     `json:"deliveries"`
}

// RTO is the recovery of the conversations a region-loss fault took
// their writer from (see the package documentation for the definition).
type RTO struct {
	Kind   string    `json:"kind"`
	Target string    `json:"target"`
	Start  time.Time `json:"start"`
	// Conversations is how many conversations were written by Target just
	// before Start. Recovered of them had a message acked after Start
	// from another writer (another region, or a higher epoch) or from
	// Target again after the fault ended. NoTraffic had nothing to write
	// after Start (no message sent after it, none pending at it, or only
	// messages Target wrote before it was lost): nothing to measure.
	// NeverRecovered had a message never acked and no recovering ack.
	Conversations  int         `json:"conversations"`
	Recovered      int         `json:"recovered"`
	NeverRecovered int         `json:"never_recovered"`
	NoTraffic      int         `json:"no_traffic"`
	Times          Percentiles `json:"times"`
	// Times and SamplesMs cover the Recovered conversations only:
	// SamplesMs is each one's time, in milliseconds (a soak aggregates
	// them over runs).
	SamplesMs []float64 `json:"samples_ms,omitempty"`
}

// Options tune Build. The zero value works.
type Options struct {
	// Bucket is the width of a throughput bucket (default 1 s).
	Bucket time.Duration
	// RegionLoss lists the fault kinds whose Target is a region that is
	// lost to its conversations, for RTO (default kill-region,
	// partition-region, partition-directory).
	RegionLoss []string
}

// DefaultRegionLoss is Options.RegionLoss's default.
var DefaultRegionLoss = []string{"kill-region", "partition-region", "partition-directory"}

type msgKey struct{ conv, dev, id string }

type writer struct {
	epoch  uint64
	region string
}

// Build computes a Report from a history and the checker's result.
func Build(h *check.History, res check.Result, opts Options) Report {
	if opts.Bucket <= 0 {
		opts.Bucket = time.Second
	}
	if opts.RegionLoss == nil {
		opts.RegionLoss = DefaultRegionLoss
	}
	r := Report{Faults: h.Faults, Invariants: res, BucketMs: ms(opts.Bucket)}
	r.Start, r.End = bounds(h)
	if r.Start.IsZero() {
		return r
	}

	sent := make(map[msgKey]time.Time, len(h.Sent))
	for _, s := range h.Sent {
		if _, ok := sent[msgKey{s.Conv, s.Device, s.MsgID}]; !ok {
			sent[msgKey{s.Conv, s.Device, s.MsgID}] = s.At
		}
	}
	// First acks.
	firstAck := make(map[msgKey]check.Acked, len(h.Acked))
	for _, a := range h.Acked {
		k := msgKey{a.Conv, a.Device, a.MsgID}
		if prev, ok := firstAck[k]; !ok || a.At.Before(prev.At) {
			firstAck[k] = a
		}
	}
	faulty := func(from, to time.Time) bool {
		for _, f := range h.Faults {
			end := f.End
			if end.IsZero() {
				end = r.End
			}
			if !from.After(end) && !to.Before(f.Start) {
				return true
			}
		}
		return false
	}

	nb := int(r.End.Sub(r.Start)/opts.Bucket) + 1
	r.Throughput = make([]Bucket, nb)
	for i := range r.Throughput {
		r.Throughput[i].OffsetMs = ms(time.Duration(i) * opts.Bucket)
	}
	bucket := func(t time.Time) *Bucket {
		i := int(t.Sub(r.Start) / opts.Bucket)
		return &r.Throughput[min(max(i, 0), nb-1)]
	}
	perBucket := make([][]time.Duration, nb)

	var ackAll, ackIn, ackOut []time.Duration
	for _, s := range h.Sent {
		bucket(s.At).Sent++
	}
	for k, a := range firstAck {
		s, ok := sent[k]
		if !ok {
			continue // not a message the driver sent (a key-distribution entry)
		}
		d := a.At.Sub(s)
		ackAll = append(ackAll, d)
		if faulty(s, a.At) {
			ackIn = append(ackIn, d)
		} else {
			ackOut = append(ackOut, d)
		}
		b := bucket(a.At)
		b.Acked++
		i := int(a.At.Sub(r.Start) / opts.Bucket)
		perBucket[min(max(i, 0), nb-1)] = append(perBucket[min(max(i, 0), nb-1)], d)
	}
	for i, ds := range perBucket {
		if len(ds) > 0 {
			r.Throughput[i].AckP99Ms = percentiles(ds).P99Ms
		}
	}
	r.AckLatency = Split{All: percentiles(ackAll), During: percentiles(ackIn), Outside: percentiles(ackOut)}

	var delAll, delIn, delOut []time.Duration
	for _, d := range h.Delivered {
		bucket(d.At).Deliveries++
		s, ok := sent[msgKey{d.Conv, d.From, d.MsgID}]
		if !ok {
			continue
		}
		lat := d.At.Sub(s)
		delAll = append(delAll, lat)
		if faulty(s, d.At) {
			delIn = append(delIn, lat)
		} else {
			delOut = append(delOut, lat)
		}
	}
	r.DeliveryLatency = Split{All: percentiles(delAll), During: percentiles(delIn), Outside: percentiles(delOut)}

	r.RTO, r.RTOAll = rtos(h, firstAck, opts.RegionLoss)
	return r
}

// rtos measures each region-loss fault's recovery.
func rtos(h *check.History, firstAck map[msgKey]check.Acked, kinds []string) ([]RTO, Percentiles) {
	type seqKey struct {
		conv string
		seq  uint64
	}
	// Who wrote each (conv, seq), and the deliveries in time order.
	wrote := map[seqKey]writer{}
	byTime := slices.Clone(h.Delivered)
	slices.SortStableFunc(byTime, func(a, b check.Delivered) int { return a.At.Compare(b.At) })
	for _, d := range byTime {
		if _, ok := wrote[seqKey{d.Conv, d.Seq}]; !ok && d.Region != "" {
			wrote[seqKey{d.Conv, d.Seq}] = writer{d.Epoch, d.Region}
		}
	}
	// First acks per conversation in time order.
	acks := map[string][]check.Acked{}
	for _, a := range firstAck {
		acks[a.Conv] = append(acks[a.Conv], a)
	}
	for _, as := range acks {
		slices.SortFunc(as, func(a, b check.Acked) int { return a.At.Compare(b.At) })
	}

	// demand reports whether conv had a message to write after t: one
	// sent after t, or sent before and not acked by t.
	sentBy := map[string][]msgKey{}
	sentAt := map[msgKey]time.Time{}
	for _, s := range h.Sent {
		k := msgKey{s.Conv, s.Device, s.MsgID}
		if _, ok := sentAt[k]; !ok {
			sentAt[k] = s.At
			sentBy[s.Conv] = append(sentBy[s.Conv], k)
		}
	}
	demand := func(conv string, t time.Time) bool {
		for _, k := range sentBy[conv] {
			a, acked := firstAck[k]
			if !sentAt[k].Before(t) || !acked || !a.At.Before(t) {
				return true
			}
		}
		return false
	}

	// unacked reports whether conv has a message sent and never acked.
	unacked := func(conv string) bool {
		for _, k := range sentBy[conv] {
			if _, acked := firstAck[k]; !acked {
				return true
			}
		}
		return false
	}

	var out []RTO
	var all []time.Duration
	for _, f := range h.Faults {
		if !slices.Contains(kinds, f.Kind) {
			continue
		}
		// The writer of each conversation just before the fault: that of
		// the highest seq delivered before it started.
		last := map[string]uint64{}
		for _, d := range byTime {
			if !d.At.Before(f.Start) {
				break
			}
			if d.Seq > last[d.Conv] {
				last[d.Conv] = d.Seq
			}
		}
		rto := RTO{Kind: f.Kind, Target: f.Target, Start: f.Start}
		var times []time.Duration
		convs := make([]string, 0, len(last))
		for c := range last {
			convs = append(convs, c)
		}
		slices.Sort(convs)
		for _, conv := range convs {
			w, ok := wrote[seqKey{conv, last[conv]}]
			if !ok || w.region != f.Target {
				continue
			}
			rto.Conversations++
			if !demand(conv, f.Start) {
				rto.NoTraffic++
				continue
			}
			// The first ack at or after Start that shows the conversation
			// writing again: from another writer, or from the lost one
			// after the fault ended (it came back without a failover).
			// Acks from the lost writer while the fault lasted (in flight
			// at a kill, or before its lease ran out) show nothing; a
			// conversation whose only such messages were those had nothing
			// left to write once it was lost.
			recovered, waiting := false, false
			as := acks[conv]
			i, _ := slices.BinarySearchFunc(as, f.Start, func(a check.Acked, t time.Time) int { return a.At.Compare(t) })
			for _, a := range as[i:] {
				nw, ok := wrote[seqKey{conv, a.Seq}]
				if !ok {
					waiting = true // acked, but who wrote it is unknown
					continue
				}
				if nw.region != f.Target || nw.epoch > w.epoch || !f.End.IsZero() && !a.At.Before(f.End) {
					times = append(times, a.At.Sub(f.Start))
					recovered = true
					break
				}
			}
			switch {
			case recovered:
				rto.Recovered++
			case waiting || unacked(conv):
				rto.NeverRecovered++
			default:
				rto.NoTraffic++
			}
		}
		rto.Times = percentiles(times)
		for _, t := range times {
			rto.SamplesMs = append(rto.SamplesMs, float64(t.Microseconds())/1000)
		}
		all = append(all, times...)
		out = append(out, rto)
	}
	return out, percentiles(all)
}

func bounds(h *check.History) (start, end time.Time) {
	see := func(t time.Time) {
		if t.IsZero() {
			return
		}
		if start.IsZero() || t.Before(start) {
			start = t
		}
		if t.After(end) {
			end = t
		}
	}
	for _, s := range h.Sent {
		see(s.At)
	}
	for _, a := range h.Acked {
		see(a.At)
	}
	for _, d := range h.Delivered {
		see(d.At)
	}
	for _, f := range h.Faults {
		see(f.Start)
		see(f.End)
	}
	return start, end
}

func percentiles(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return Percentiles{
		N: len(s), P50Ms: ms(rank(0.50)), P99Ms: ms(rank(0.99)), P999Ms: ms(rank(0.999)), MaxMs: ms(s[len(s)-1]),
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
