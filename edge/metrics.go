package edge

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// latencyBuckets are the buckets of the edge's stage histograms, in
// seconds: 0.5 ms to 10 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// stages are the edge's per-stage latency histograms (one atomic
// observation per write or per edge record; nothing per target).
type stages struct {
	produce prometheus.Histogram // write received → ingress record acknowledged by Kafka
	answer  prometheus.Histogram // write received → the region's answer at the edge
	push    prometheus.Histogram // edge record's Kafka timestamp (the region's produce) → frames queued to sessions
}

func newStages(id string) *stages {
	cl := prometheus.Labels{"edge": id}
	h := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: cl, Buckets: latencyBuckets})
	}
	return &stages{
		produce: h("chatmesh_edge_ingress_produce_seconds",
			"Stage edge receive → ingress: from a write's admission at the edge until its ingress record was acknowledged by Kafka."),
		answer: h("chatmesh_edge_write_answer_seconds",
			"Whole path of a write as the edge sees it: from its admission until the region's answer (ack or error) reached the edge (ingress, sequencing, commit, fan-out)."),
		push: h("chatmesh_edge_push_seconds",
			"Stage produced → edge push: from an edge record's Kafka timestamp (the region's produce after its commit) until its frames were queued to the sessions."),
	}
}

func (s *stages) collectors() []prometheus.Collector {
	return []prometheus.Collector{s.produce, s.answer, s.push}
}

func since(t time.Time) float64 { return max(time.Since(t), 0).Seconds() }

// Collector returns a Prometheus collector that exports Stats as
// chatmesh_edge_* metrics labelled with the edge id, and the edge's stage
// latency histograms. Register it with
// whatever registry the process uses; the edge registers nothing itself.
func (e *Edge) Collector() prometheus.Collector { return collector{e} }

type collector struct{ e *Edge }

type metricDef struct {
	name, help string
	gauge      bool
	value      func(Stats) float64
}

var metricDefs = []metricDef{
	{"connections_total", "Transport connections accepted.", false, func(s Stats) float64 { return float64(s.Connections) }},
	{"rejected_per_ip_total", "Sessions refused by the per-IP limit.", false, func(s Stats) float64 { return float64(s.RejectedPerIP) }},
	{"open_connections", "Transport connections open.", true, func(s Stats) float64 { return float64(s.OpenConns) }},
	{"rejected_at_accept_total", "Connections closed at accept by the total or per-IP limit.", false, func(s Stats) float64 { return float64(s.RejectedAtAccept) }},
	{"accept_errors_total", "Failed Accept calls (retried after a backoff).", false, func(s Stats) float64 { return float64(s.AcceptErrors) }},
	{"listener_failures_total", "Listeners that stopped while the edge was running.", false, func(s Stats) float64 { return float64(s.ListenerFailures) }},
	{"handshake_failures_total", "Failed Noise handshakes.", false, func(s Stats) float64 { return float64(s.HandshakeFailures) }},
	{"sessions", "Established sessions.", true, func(s Stats) float64 { return float64(s.Sessions) }},
	{"frames_in_total", "Frames received from clients.", false, func(s Stats) float64 { return float64(s.FramesIn) }},
	{"frames_out_total", "Frames written to clients.", false, func(s Stats) float64 { return float64(s.FramesOut) }},
	{"writes_out_total", "Batches of frames written to clients, one flush each (frames_out_total / writes_out_total: frames per write).", false, func(s Stats) float64 { return float64(s.WritesOut) }},
	{"ingress_produced_total", "Ingress records produced.", false, func(s Stats) float64 { return float64(s.Produced) }},
	{"ingress_errors_total", "Ingress produce failures (answered UNAVAILABLE).", false, func(s Stats) float64 { return float64(s.ProduceErrors) }},
	{"rate_limited_total", "Frames refused with RATE_LIMITED.", false, func(s Stats) float64 { return float64(s.RateLimited) }},
	{"typing_dropped_total", "Typing frames dropped over the rate limit.", false, func(s Stats) float64 { return float64(s.TypingDropped) }},
	{"malformed_total", "Malformed frames.", false, func(s Stats) float64 { return float64(s.Malformed) }},
	{"too_large_total", "Frames above the size limit.", false, func(s Stats) float64 { return float64(s.TooLarge) }},
	{"too_large_to_send_total", "Server frames above the Noise limit, not sent.", false, func(s Stats) float64 { return float64(s.TooLargeToSend) }},
	{"write_errors_total", "Sessions ended by a failed write to the client.", false, func(s Stats) float64 { return float64(s.WriteErrors) }},
	{"dropped_slow_consumer_total", "Sessions closed because their send queue overflowed.", false, func(s Stats) float64 { return float64(s.DroppedSlowClient) }},
	{"idle_timeouts_total", "Sessions closed for idleness.", false, func(s Stats) float64 { return float64(s.IdleTimeouts) }},
	{"replaced_total", "Sessions replaced by a newer session of the same device.", false, func(s Stats) float64 { return float64(s.Replaced) }},
	{"edge_records_total", "Edge-topic records handled.", false, func(s Stats) float64 { return float64(s.EdgeRecordsHandled) }},
	{"edge_record_bundles_total", "Edge-topic records that were bundles of records (each of those counts in edge_records_total).", false, func(s Stats) float64 { return float64(s.EdgeBundles) }},
	{"locate_requests_total", "GET /v1/locate requests received.", false, func(s Stats) float64 { return float64(s.LocateRequests) }},
	{"locate_limited_total", "Locate requests answered 429 by the per-client budget.", false, func(s Stats) float64 { return float64(s.LocateLimited) }},
	{"not_serving", "1 while the edge refuses and closes sessions because its region cannot sequence.", true, func(s Stats) float64 {
		if s.NotServing {
			return 1
		}
		return 0
	}},
	{"not_ready_stops_total", "Times the edge stopped serving because its region could not sequence.", false, func(s Stats) float64 { return float64(s.NotReadyStops) }},
	{"not_ready_refused_total", "Connections refused while the edge was not serving.", false, func(s Stats) float64 { return float64(s.NotReadyRefused) }},
	{"not_ready_closed_total", "Sessions ended because the edge stopped serving.", false, func(s Stats) float64 { return float64(s.NotReadyClosed) }},
	{"presence_records_total", "Presence records handled.", false, func(s Stats) float64 { return float64(s.PresenceHandled) }},
}

func (c collector) desc(d metricDef) *prometheus.Desc {
	return prometheus.NewDesc("chatmesh_edge_"+d.name, d.help, nil, prometheus.Labels{"edge": c.e.cfg.ID})
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range metricDefs {
		ch <- c.desc(d)
	}
	for _, h := range c.e.stages.collectors() {
		h.Describe(ch)
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.e.Stats()
	for _, d := range metricDefs {
		t := prometheus.CounterValue
		if d.gauge {
			t = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(c.desc(d), t, d.value(s))
	}
	for _, h := range c.e.stages.collectors() {
		h.Collect(ch)
	}
}
