package region

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatmesh/chatmesh/core"
)

// latencyBuckets are the buckets of the region's latency histograms, in
// seconds: 0.5 ms to 10 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// sizeBuckets are the buckets of records per batch and entries per commit
// (MaxBatch is 256).
var sizeBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}

// hists are the region's histograms, created with it. Each observation
// is a few atomic adds; the sequencer observes once per batch, and once
// per record only for the record's sequencing delay.
type hists struct {
	batchRecords   prometheus.Histogram // ingress records per consumed batch
	commitSeconds  prometheus.Histogram // one write batch's commit (the store's sync)
	commitEntries  prometheus.Histogram // entries per commit
	sequenceDelay  prometheus.Histogram // record timestamp (edge's produce) → sequenced and committed
	fanoutDuration prometheus.Histogram // commit → outputs produced (acks, deliveries, link records)
}

func newHists(region string) hists {
	cl := prometheus.Labels{"region": region}
	h := func(name, help string, b []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: cl, Buckets: b})
	}
	return hists{
		batchRecords: h("chatmesh_region_batch_records", "Ingress records per batch the sequencer consumed.", sizeBuckets),
		commitSeconds: h("chatmesh_region_commit_seconds",
			"Store commit of one write batch (group commit: one sync per consumed batch with at least one entry).", latencyBuckets),
		commitEntries: h("chatmesh_region_commit_entries", "Entries stored per commit.", sizeBuckets),
		sequenceDelay: h("chatmesh_region_sequence_seconds",
			"Stage edge → sequenced: from an ingress record's Kafka timestamp (taken by the edge, or the link worker for a forwarded record, when it produced it) until the sequencer had stored it (committed).", latencyBuckets),
		fanoutDuration: h("chatmesh_region_fanout_seconds",
			"Stage committed → produced: from a batch's commit until its outputs (acks, deliveries, receipts, link records) were acknowledged by Kafka.", latencyBuckets),
	}
}

func (h hists) collectors() []prometheus.Collector {
	return []prometheus.Collector{h.batchRecords, h.commitSeconds, h.commitEntries, h.sequenceDelay, h.fanoutDuration}
}

// observeSequenced observes the sequencing delay of every record of a
// batch that is now stored.
func (h hists) observeSequenced(recs []core.BusRecord) {
	now := time.Now()
	for i := range recs {
		if t := recs[i].Time; !t.IsZero() {
			h.sequenceDelay.Observe(max(now.Sub(t), 0).Seconds())
		}
	}
}

// deadReasons are the dead-letter reasons the sequencer gives
// (deadletter.go: "store" unless the record's own failure says otherwise).
var deadReasons = []string{"store", "panic"}

// counterDef is one exported Stats counter.
type counterDef struct {
	name, help string
	value      func(Stats) uint64
}

var regionCounters = []counterDef{
	{"appended_total", "Entries sequenced and stored.", func(s Stats) uint64 { return s.Appended }},
	{"duplicates_total", "Appends that hit an idempotency key (a resend; answered with the stored entry).", func(s Stats) uint64 { return s.Duplicates }},
	{"rejected_total", "Requests answered with an error.", func(s Stats) uint64 { return s.Rejected }},
	{"malformed_total", "Ingress records that did not decode (dropped).", func(s Stats) uint64 { return s.Malformed }},
	{"edge_records_total", "Bus records produced for edges and links (a bundle of edge records counts once).", func(s Stats) uint64 { return s.EdgeRecords }},
	{"undeliverable_total", "Records dropped because their topic does not exist.", func(s Stats) uint64 { return s.Undeliverable }},
	{"notified_total", "Push notifications handed to the notifier.", func(s Stats) uint64 { return s.Notified }},
	{"notify_dropped_total", "Push notifications dropped: queue full.", func(s Stats) uint64 { return s.NotifyDropped }},
	{"notify_failed_total", "Push notifications the notifier failed.", func(s Stats) uint64 { return s.NotifyFailed }},
	{"receipts_total", "Receipt records produced.", func(s Stats) uint64 { return s.ReceiptsSent }},
	{"receipts_coalesced_total", "Receipts merged into another receipt's frame: coalesced per batch and senders, or superseded by a later one of the same reader.", func(s Stats) uint64 { return s.ReceiptsCoalesced }},
	{"out_of_order_total", "Sends refused OUT_OF_ORDER: the predecessor they named was not stored yet.", func(s Stats) uint64 { return s.OutOfOrder }},
	{"typing_total", "Typing records produced.", func(s Stats) uint64 { return s.TypingFannedOut }},
	{"dead_lettered_total", "Ingress records sent to the dead-letter topic.", func(s Stats) uint64 { return s.DeadLettered }},
	{"panics_total", "Records whose handling panicked (then retried or dead-lettered).", func(s Stats) uint64 { return s.Panics }},
	{"state_loads_total", "Conversation states loaded from the store (cache misses).", func(s Stats) uint64 { return s.StateLoads }},
	{"receipt_scans_total", "Cursor moves that read entries to find the senders to notify.", func(s Stats) uint64 { return s.ReceiptScans }},
	{"sequencer_restarts_total", "Times the sequencer's consumer stopped and was restarted.", func(s Stats) uint64 { return s.Restarts }},
	{"reads_refused_total", "Reads answered UNAVAILABLE: no free read slot in time.", func(s Stats) uint64 { return s.ReadsRefused }},
	{"forwarded_total", "Ingress records forwarded to the conversation's home region.", func(s Stats) uint64 { return s.Forwarded }},
	{"hops_exceeded_total", "Records refused after too many forwards.", func(s Stats) uint64 { return s.HopsExceeded }},
	{"forward_refused_total", "Records not forwarded because their home region is silent (the sender retries).", func(s Stats) uint64 { return s.ForwardRefused }},
	{"fenced_total", "Appends the store fenced (a newer owner epoch).", func(s Stats) uint64 { return s.Fenced }},
	{"claims_total", "Conversations homed here through the directory.", func(s Stats) uint64 { return s.Claims }},
	{"moved_in_total", "Conversations moved here.", func(s Stats) uint64 { return s.MovedIn }},
	{"moved_away_total", "Cached conversations that moved to another region.", func(s Stats) uint64 { return s.MovedAway }},
	{"commits_total", "Write batches committed with at least one entry (group commit).", func(s Stats) uint64 { return s.Commits }},
	{"committed_entries_total", "Entries stored by those commits.", func(s Stats) uint64 { return s.CommittedEntries }},
	{"batch_fallbacks_total", "Batches redone without a write batch after a write broke it.", func(s Stats) uint64 { return s.BatchFallbacks }},
	{"ingress_expired_total", "Ingress records the broker's retention deleted before the sequencer committed past them (lost; their senders resend).", func(s Stats) uint64 { return s.IngressExpired }},
}

// retentionCounters are the retention worker's series (chatmesh_region_retention_*).
var retentionCounters = []struct {
	name, help string
	value      func(RetentionStats) int64
}{
	{"retention_passes_total", "Retention passes run.", func(s RetentionStats) int64 { return s.Passes }},
	{"retention_trimmed_total", "Entries deleted by retention.", func(s RetentionStats) int64 { return s.Trimmed }},
	{"retention_expired_total", "Entries deleted at the maximum age while some member device had not acked them.", func(s RetentionStats) int64 { return s.Expired }},
	{"retention_keys_forgotten_total", "Idempotency keys deleted after the resend window (their entries kept).", func(s RetentionStats) int64 { return s.KeysForgotten }},
	{"retention_errors_total", "Conversations retention failed on (retried next pass).", func(s RetentionStats) int64 { return s.Errors }},
}

// Collector returns a Prometheus collector of the region's series,
// labelled with its name (region): the Stats counters as
// chatmesh_region_*_total, dead letters by reason, whether the sequencer
// consumes, the lease (with Config.Lease), and the histograms of batch
// sizes, commit latency and the sequencing and fan-out stages. Register
// it with the process's registry; the region registers nothing itself.
func (r *Region) Collector() prometheus.Collector { return regionCollector{r} }

type regionCollector struct{ r *Region }

func (c regionCollector) label() prometheus.Labels { return prometheus.Labels{"region": c.r.cfg.Name} }

func (c regionCollector) desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("chatmesh_region_"+name, help, labels, c.label())
}

const (
	helpConsuming   = "1 while the sequencer consumes its ingress topic."
	helpReady       = "1 while the region can sequence (consuming and, in a mesh, holding its lease)."
	helpDeadReason  = "Ingress records dead-lettered, by reason."
	helpLeaseHeld   = "1 while the region holds its directory lease (mesh with automatic failover)."
	helpDeposed     = "1 while the directory holds this region failed (its homes moved away)."
	helpBeats       = "Heartbeats the directory answered."
	helpBeatFails   = "Heartbeats that got no answer."
	helpLapses      = "Times the lease ran out."
	helpRejoins     = "Rejoins after a failover that succeeded."
	helpNotifyQueue = "Push notifications waiting for the notifier."
)

func (c regionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range regionCounters {
		ch <- c.desc(d.name, d.help)
	}
	ch <- c.desc("dead_letters_total", helpDeadReason, "reason")
	ch <- c.desc("sequencer_consuming", helpConsuming)
	ch <- c.desc("ready", helpReady)
	ch <- c.desc("notify_queue", helpNotifyQueue)
	if c.r.retention != nil {
		for _, d := range retentionCounters {
			ch <- c.desc(d.name, d.help)
		}
	}
	if c.r.cfg.Lease != nil {
		ch <- c.desc("lease_held", helpLeaseHeld)
		ch <- c.desc("lease_deposed", helpDeposed)
		ch <- c.desc("lease_beats_total", helpBeats)
		ch <- c.desc("lease_beat_failures_total", helpBeatFails)
		ch <- c.desc("lease_lapses_total", helpLapses)
		ch <- c.desc("lease_rejoins_total", helpRejoins)
	}
	for _, h := range c.r.hists.collectors() {
		h.Describe(ch)
	}
}

func gauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c regionCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	s := r.Stats()
	for _, d := range regionCounters {
		ch <- prometheus.MustNewConstMetric(c.desc(d.name, d.help), prometheus.CounterValue, float64(d.value(s)))
	}
	dd := c.desc("dead_letters_total", helpDeadReason, "reason")
	dead := r.DeadLetters()
	for _, reason := range deadReasons { // exported at 0 too: alerts see a series from the start
		if _, ok := dead[reason]; !ok {
			dead[reason] = 0
		}
	}
	for reason, n := range dead {
		ch <- prometheus.MustNewConstMetric(dd, prometheus.CounterValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(c.desc("sequencer_consuming", helpConsuming), prometheus.GaugeValue, gauge(r.consuming.Load()))
	ch <- prometheus.MustNewConstMetric(c.desc("ready", helpReady), prometheus.GaugeValue, gauge(r.Health() == nil))
	ch <- prometheus.MustNewConstMetric(c.desc("notify_queue", helpNotifyQueue), prometheus.GaugeValue, float64(len(r.notifyCh)))
	if rt := r.retention; rt != nil {
		rs := rt.Stats()
		for _, d := range retentionCounters {
			ch <- prometheus.MustNewConstMetric(c.desc(d.name, d.help), prometheus.CounterValue, float64(d.value(rs)))
		}
	}
	if l := r.cfg.Lease; l != nil {
		ls := l.Stats()
		ch <- prometheus.MustNewConstMetric(c.desc("lease_held", helpLeaseHeld), prometheus.GaugeValue, gauge(ls.Held))
		ch <- prometheus.MustNewConstMetric(c.desc("lease_deposed", helpDeposed), prometheus.GaugeValue, gauge(ls.Deposed))
		ch <- prometheus.MustNewConstMetric(c.desc("lease_beats_total", helpBeats), prometheus.CounterValue, float64(ls.Beats))
		ch <- prometheus.MustNewConstMetric(c.desc("lease_beat_failures_total", helpBeatFails), prometheus.CounterValue, float64(ls.Failures))
		ch <- prometheus.MustNewConstMetric(c.desc("lease_lapses_total", helpLapses), prometheus.CounterValue, float64(ls.Lapses))
		ch <- prometheus.MustNewConstMetric(c.desc("lease_rejoins_total", helpRejoins), prometheus.CounterValue, float64(ls.Rejoins))
	}
	for _, h := range r.hists.collectors() {
		h.Collect(ch)
	}
}

// ErrStoreUnreachable: the store did not answer a probe read in time.
var ErrStoreUnreachable = errors.New("region: store unreachable")

// Ready reports whether the region can serve: nil when the sequencer
// consumes (and, with a Lease, holds its lease — Health) and the store
// answers a cheap read within timeout; else why not. An admin server's
// /readyz calls it.
func (r *Region) Ready(ctx context.Context, timeout time.Duration) error {
	if err := r.Health(); err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := r.store.User(pctx, "health-probe"); err != nil && !errors.Is(err, core.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrStoreUnreachable, err)
	}
	return nil
}

// Collector returns a Prometheus collector of the link's series,
// labelled from and to: records forwarded, batches, drops, restarts,
// whether it consumes, and the lag of its last batch.
func (l *Link) Collector() prometheus.Collector { return linkCollector{l} }

type linkCollector struct{ l *Link }

func (c linkCollector) descs() (forwarded, batches, dropped, malformed, restarts, consuming, lag *prometheus.Desc) {
	cl := prometheus.Labels{"from": c.l.cfg.From, "to": c.l.cfg.To}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("chatmesh_link_"+name, help, nil, cl)
	}
	return d("forwarded_total", "Records the link produced to the remote region's cluster."),
		d("batches_total", "Produces to the remote cluster."),
		d("dropped_total", "Records for a remote edge topic that no longer exists (dropped)."),
		d("malformed_total", "Link records that did not decode (dropped)."),
		d("restarts_total", "Times the link's consumer stopped and was restarted."),
		d("consuming", "1 while the link consumes its local link topic."),
		d("lag_seconds", "Age, when forwarded, of the newest record of the link's last batch (source region's produce → remote produce).")
}

func (c linkCollector) Describe(ch chan<- *prometheus.Desc) {
	a, b, d, e, f, g, h := c.descs()
	for _, x := range []*prometheus.Desc{a, b, d, e, f, g, h} {
		ch <- x
	}
}

func (c linkCollector) Collect(ch chan<- prometheus.Metric) {
	fwd, batches, dropped, malformed, restarts, consuming, lag := c.descs()
	s := c.l.Stats()
	ch <- prometheus.MustNewConstMetric(fwd, prometheus.CounterValue, float64(s.Forwarded))
	ch <- prometheus.MustNewConstMetric(batches, prometheus.CounterValue, float64(s.Batches))
	ch <- prometheus.MustNewConstMetric(dropped, prometheus.CounterValue, float64(s.Dropped))
	ch <- prometheus.MustNewConstMetric(malformed, prometheus.CounterValue, float64(s.Malformed))
	ch <- prometheus.MustNewConstMetric(restarts, prometheus.CounterValue, float64(s.Restarts))
	ch <- prometheus.MustNewConstMetric(consuming, prometheus.GaugeValue, gauge(c.l.Health() == nil))
	ch <- prometheus.MustNewConstMetric(lag, prometheus.GaugeValue, float64(s.LagMs)/1000)
}
