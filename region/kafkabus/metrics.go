package kafkabus

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// latencyBuckets are the histogram buckets of the bus's latencies, in
// seconds: 0.5 ms to 10 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// metrics are a Bus's Prometheus series (Collector). Everything on the
// produce and consume paths is an atomic add or a histogram observation
// on a child looked up once per consumer, never per record.
type metrics struct {
	produce       prometheus.Histogram     // seconds per Produce call
	producedRecs  atomic.Uint64            // records in Produce calls that succeeded
	produceErrors atomic.Uint64            // Produce calls that failed
	consumeDelay  *prometheus.HistogramVec // topic
	consumed      *prometheus.CounterVec   // topic
	retries       *prometheus.CounterVec   // topic

	lagDesc, stalledDesc, producedDesc, produceErrDesc, backpressureDesc, redoneDesc, generationsDesc *prometheus.Desc

	mu    sync.Mutex
	parts map[partKey]*partState // partitions consumed now
}

// partKey names a consumed partition.
type partKey struct {
	topic, group string
	partition    int
}

// partState is what a partition's consumer exports while it runs.
type partState struct {
	refs     int          // runPartition calls on the key (guarded by metrics.mu)
	lag      atomic.Int64 // records behind the partition's end at the last fetch
	stalled  atomic.Bool  // the handler is failing and being retried
	delay    prometheus.Observer
	consumed prometheus.Counter
	retries  prometheus.Counter
}

func newMetrics(client string) *metrics {
	cl := prometheus.Labels{"client": client}
	m := &metrics{
		produce: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "chatmesh_bus_produce_seconds",
			Help:        "Time of one Produce call: queued, written and acknowledged by all in-sync replicas (acks=all).",
			ConstLabels: cl, Buckets: latencyBuckets}),
		consumeDelay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "chatmesh_bus_consume_delay_seconds",
			Help:        "Time from the producer's timestamp of the first record of a consumed batch until the handler had handled the batch (waiting in Kafka, fetch, handling).",
			ConstLabels: cl, Buckets: latencyBuckets}, []string{"topic"}),
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chatmesh_bus_consumed_records_total",
			Help: "Records handled by this client's consumers.", ConstLabels: cl}, []string{"topic"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "chatmesh_bus_handler_retries_total",
			Help: "Handler failures retried on the same records.", ConstLabels: cl}, []string{"topic"}),
		lagDesc: prometheus.NewDesc("chatmesh_bus_consumer_lag_records",
			"Records between a consumed partition's end and the consumer's position, at the consumer's last fetch.",
			[]string{"topic", "group", "partition"}, cl),
		stalledDesc: prometheus.NewDesc("chatmesh_bus_consumer_stalled",
			"1 while the handler of a consumed partition fails and the same records are retried.",
			[]string{"topic", "group", "partition"}, cl),
		producedDesc:     prometheus.NewDesc("chatmesh_bus_produced_records_total", "Records written by Produce calls that succeeded.", nil, cl),
		produceErrDesc:   prometheus.NewDesc("chatmesh_bus_produce_errors_total", "Produce calls that failed (some of their records may have been written).", nil, cl),
		backpressureDesc: prometheus.NewDesc("chatmesh_bus_backpressure_total", "Produce calls refused because too many bytes were waiting to be written.", nil, cl),
		redoneDesc:       prometheus.NewDesc("chatmesh_bus_redone_batches_total", "Pipelined batches whose background work (the sequencer's produce of their outputs) failed after the next batch was handed over: both were handed over again.", nil, cl),
		generationsDesc:  prometheus.NewDesc("chatmesh_bus_group_generations_total", "Consumer group generations joined by this client's consumers: one per consumer at its start, one more per rebalance (after which records since the last commit are handled again).", nil, cl),
		parts:            map[partKey]*partState{},
	}
	return m
}

// observeProduce records one Produce call of n records that took since
// start and ended with err.
func (m *metrics) observeProduce(start time.Time, n int, err error) {
	m.produce.Observe(time.Since(start).Seconds())
	if err != nil {
		m.produceErrors.Add(1)
		return
	}
	m.producedRecs.Add(uint64(n))
}

// partition registers a running consumer of k; release unregisters it.
func (m *metrics) partition(k partKey) *partState {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.parts[k]
	if ps == nil {
		ps = &partState{delay: m.consumeDelay.WithLabelValues(k.topic), consumed: m.consumed.WithLabelValues(k.topic),
			retries: m.retries.WithLabelValues(k.topic)}
		m.parts[k] = ps
	}
	ps.refs++
	return ps
}

func (m *metrics) release(k partKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ps := m.parts[k]; ps != nil {
		if ps.refs--; ps.refs <= 0 {
			delete(m.parts, k)
		}
	}
}

// Collector returns a Prometheus collector of the bus's series, labelled
// with Config.ClientID (client): produce latency, records produced and
// failed, backpressure refusals, and for every partition a consumer of
// this bus reads now its lag, whether its handler is stalled, the delay
// from produce to handled and the records handled. Register it with the
// process's registry; the bus registers nothing itself. Two buses of one
// registry need distinct ClientIDs.
func (b *Bus) Collector() prometheus.Collector { return busCollector{b} }

type busCollector struct{ b *Bus }

func (c busCollector) Describe(ch chan<- *prometheus.Desc) {
	m := c.b.m
	m.produce.Describe(ch)
	m.consumeDelay.Describe(ch)
	m.consumed.Describe(ch)
	m.retries.Describe(ch)
	for _, d := range []*prometheus.Desc{m.lagDesc, m.stalledDesc, m.producedDesc, m.produceErrDesc, m.backpressureDesc, m.redoneDesc, m.generationsDesc} {
		ch <- d
	}
}

func (c busCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.b.m
	m.produce.Collect(ch)
	m.consumeDelay.Collect(ch)
	m.consumed.Collect(ch)
	m.retries.Collect(ch)
	ch <- prometheus.MustNewConstMetric(m.producedDesc, prometheus.CounterValue, float64(m.producedRecs.Load()))
	ch <- prometheus.MustNewConstMetric(m.produceErrDesc, prometheus.CounterValue, float64(m.produceErrors.Load()))
	ch <- prometheus.MustNewConstMetric(m.backpressureDesc, prometheus.CounterValue, float64(c.b.backpressure.Load()))
	ch <- prometheus.MustNewConstMetric(m.redoneDesc, prometheus.CounterValue, float64(c.b.redone.Load()))
	ch <- prometheus.MustNewConstMetric(m.generationsDesc, prometheus.CounterValue, float64(c.b.generations.Load()))
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, ps := range m.parts {
		p := strconv.Itoa(k.partition)
		ch <- prometheus.MustNewConstMetric(m.lagDesc, prometheus.GaugeValue, float64(max(ps.lag.Load(), 0)), k.topic, k.group, p)
		stalled := 0.0
		if ps.stalled.Load() {
			stalled = 1
		}
		ch <- prometheus.MustNewConstMetric(m.stalledDesc, prometheus.GaugeValue, stalled, k.topic, k.group, p)
	}
}
