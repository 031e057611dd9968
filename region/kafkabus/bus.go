package kafkabus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	metaapi "github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/chatmesh/chatmesh/core"
)

// Sentinel errors. Errors returned by the bus wrap them (and the kafka-go
// error underneath) with %w.
var (
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("kafkabus: closed")
	// ErrUnknownTopic means the topic does not exist (create it with EnsureTopic).
	ErrUnknownTopic = fmt.Errorf("kafkabus: %w", core.ErrUnknownTopic)
	// ErrInvalidConfig is returned by New for an unusable Config.
	ErrInvalidConfig = errors.New("kafkabus: invalid config")
)

// Config configures a Bus. Only Brokers is required; every other zero value
// selects the documented default.
type Config struct {
	// Brokers are bootstrap addresses (host:port). Required.
	Brokers []string
	// ClientID names this client to the brokers. Default "chatmesh".
	ClientID string
	// Logger receives warnings (handler retries, broker errors). Default:
	// discard. Record keys and values are never logged.
	Logger *slog.Logger

	// ReplicationFactor for EnsureTopic. Default min(3, brokers in the cluster).
	ReplicationFactor int
	// TopicRetention is the retention EnsureTopic sets on every topic it
	// creates or finds (EnsureTopicRetention sets another). Default
	// DefaultTopicRetention: 7 days, no size limit (see Retention in the
	// package documentation).
	TopicRetention core.TopicRetention
	// BatchTimeout is how long kafka-go's writer waits for more records
	// before it sends a partition's batch. Default 20µs: Produce already
	// group-commits (every record queued while a write is in flight goes
	// out in the next WriteMessages call, whose records for one partition
	// always share a batch), so waiting longer only adds latency. It was
	// 1ms: measured with `chatmesh bench --mode pairs --rate 200` against
	// `chatmesh dev`, each of the two produces on a message's path (edge to
	// ingress, sequencer to edge topic) took 1.9-2.5 ms at p50 with 1ms and
	// 0.3-0.4 ms with 20µs; ack p50 went from 7.8 to 4.3 ms.
	BatchTimeout time.Duration
	// BatchSize is the most records in one produce batch. Default 1000.
	// With MaxInFlight 1 each write's batches are sized to the records it
	// carries (at most BatchSize).
	BatchSize int
	// MaxInFlight is how many group-committed writes may be in flight at
	// once (see Produce). Default 1: kafka-go sends one batch per partition
	// at a time, so rounds in flight together split into smaller batches
	// that queue behind each other.
	MaxInFlight int
	// MaxPendingBytes bounds the records queued by Produce and not yet
	// taken by a flusher (default 64 MiB); beyond it Produce fails at once
	// with ErrBackpressure instead of queueing without bound.
	MaxPendingBytes int
	// DialTimeout for every broker connection. Default 10s.
	DialTimeout time.Duration
	// Dial, if set, opens every broker connection (the bootstrap brokers
	// and those learned from metadata; producer, consumers, admin), e.g.
	// through a latency proxy in tests (internal/netproxy.DialVia).
	// Default: a plain TCP dial.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MetadataTTL is how long the producer trusts cached metadata. Default 2s.
	MetadataTTL time.Duration

	// MaxWait is the longest a fetch waits for data; it bounds how long
	// stopping a consumer takes. Default 250ms. The brokers answer a parked
	// fetch as soon as records arrive (measured against a 3-broker Kafka 4.1
	// cluster, RF 3, acks=all: produce → fetched p50 2.8 ms with 500ms,
	// 2.3 ms with 20ms; BenchmarkParkedFetchWakeupRealKafka), so MaxWait
	// costs no latency; what it costs is an idle
	// fetch per partition every MaxWait. It was 20ms: the brokers then spent
	// a third of a core answering idle fetches and, under load, starved the
	// produces (chatmesh bench --pairs 20 --rate 200 against chatmesh dev on
	// 3 brokers + PostgreSQL: ack p50 / p99 244 / 591 ms at 20ms, 23 / 151 ms
	// at 250ms, 13 / 117 ms with CommitInterval 250ms as well).
	MaxWait time.Duration
	// CommitInterval is how often a group consumer commits the offsets of
	// handled records. Default 250ms. Offsets are also committed when a
	// partition is revoked and when Consume returns; a crash redoes at most
	// this much (handlers are idempotent). Each commit is a replicated
	// write on the brokers: it was 10ms, which cost broker CPU that
	// produces needed (see MaxWait).
	CommitInterval time.Duration
	// RetryMin and RetryMax bound the backoff between two calls of a handler
	// that failed on the same record. Defaults 10ms and 2s.
	RetryMin, RetryMax time.Duration
	// SessionTimeout, HeartbeatInterval and RebalanceTimeout configure group
	// membership. Defaults 6s, 1s and 10s. The broker bounds SessionTimeout
	// (Kafka's group.min.session.timeout.ms defaults to 6s). A consumer
	// that was SIGKILLed keeps its partitions until its session expires:
	// a restarted sequencer waits up to SessionTimeout for them, which is
	// part of a region's recovery time.
	SessionTimeout, HeartbeatInterval, RebalanceTimeout time.Duration

	// TLS, if set, encrypts every broker connection and verifies the
	// brokers' certificates (RootCAs; ServerName defaults to the broker's
	// host). Default: plaintext. TLS 1.2 is the minimum.
	TLS *tls.Config
	// SASL authenticates every broker connection (PLAIN, SCRAM-SHA-256 or
	// SCRAM-SHA-512). Default: none. See SASL.
	SASL SASL
}

func (c *Config) setDefaults() {
	if c.ClientID == "" {
		c.ClientID = "chatmesh"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.BatchTimeout, 20*time.Microsecond)
	def(&c.DialTimeout, 10*time.Second)
	def(&c.MetadataTTL, 2*time.Second)
	def(&c.MaxWait, 250*time.Millisecond)
	def(&c.CommitInterval, 250*time.Millisecond)
	def(&c.RetryMin, 10*time.Millisecond)
	def(&c.RetryMax, 2*time.Second)
	def(&c.SessionTimeout, 6*time.Second)
	def(&c.HeartbeatInterval, time.Second)
	def(&c.RebalanceTimeout, 10*time.Second)
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1
	}
	if c.MaxPendingBytes <= 0 {
		c.MaxPendingBytes = 64 << 20
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = c.RetryMin
	}
}

// Bus implements core.Bus on kafka-go. It is safe for concurrent use.
type Bus struct {
	cfg       Config
	log       *slog.Logger
	dialer    *kafka.Dialer
	transport *kafka.Transport
	writer    *kafka.Writer
	sec       security // TLS and SASL of every connection

	closing   context.Context // done when Close starts
	stop      context.CancelFunc
	consumers sync.WaitGroup // running Consume calls
	flushers  sync.WaitGroup // flush goroutines

	mu        sync.Mutex
	cond      *sync.Cond    // signals pending or closed; uses mu
	pending   []*produceReq // queued Produce calls, FIFO
	pendingB  int           // bytes of the records in pending (bounded by Config.MaxPendingBytes)
	closed    bool          // no more Produce calls are queued
	closeOnce sync.Once
	closeErr  error

	backpressure atomic.Uint64
	redone       atomic.Uint64 // pipelined batches handed over again after their Pending failed
	generations  atomic.Uint64 // consumer group generations joined by Consume calls
	m            *metrics      // Collector
}

var _ core.Bus = (*Bus)(nil)

// New returns a Bus. It does not contact the brokers: connection errors
// surface from the first call that needs them.
func New(cfg Config) (*Bus, error) {
	if len(cfg.Brokers) == 0 {
		return nil, fmt.Errorf("%w: no brokers", ErrInvalidConfig)
	}
	cfg.Brokers = append([]string(nil), cfg.Brokers...)
	cfg.setDefaults()
	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, err
	}
	b := &Bus{cfg: cfg, log: cfg.Logger.With("component", "kafkabus"), sec: sec, m: newMetrics(cfg.ClientID)}
	b.dialer = &kafka.Dialer{ClientID: cfg.ClientID, Timeout: cfg.DialTimeout, TLS: sec.tls, SASLMechanism: sec.sasl, DialFunc: cfg.Dial}
	b.transport = b.newTransport()
	b.writer = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: cfg.BatchTimeout,
		BatchSize:    cfg.BatchSize,
		Transport:    b.transport,
		ErrorLogger:  kafkaLogger(b.log, slog.LevelWarn),
	}
	b.closing, b.stop = context.WithCancel(context.Background())
	b.cond = sync.NewCond(&b.mu)
	for range cfg.MaxInFlight {
		b.flushers.Go(b.flush)
	}
	return b, nil
}

func (b *Bus) newTransport() *kafka.Transport {
	dial := (&net.Dialer{Timeout: b.cfg.DialTimeout}).DialContext
	if b.cfg.Dial != nil {
		dial = b.cfg.Dial
	}
	return &kafka.Transport{
		Dial:        dial,
		DialTimeout: b.cfg.DialTimeout,
		ClientID:    b.cfg.ClientID,
		MetadataTTL: b.cfg.MetadataTTL,
		TLS:         b.sec.tls,
		SASL:        b.sec.sasl,
	}
}

// Produce writes recs with acks=all, each to the partition chosen by the
// hash of its Key (kafka-go's Hash balancer: FNV-1a; records with a nil Key
// go round-robin), and returns when all are acknowledged or ctx ends. On
// error some records may have been written.
//
// Concurrent calls are group-committed: Produce queues its records, and
// each of Config.MaxInFlight flushers takes everything queued and writes it
// with one WriteMessages call, so the records that arrive while a write is
// in flight travel together in the next one. (kafka-go alone sends one
// batch per partition at a time and closes a batch BatchTimeout after its
// first record, so under load it sends many tiny batches one after
// another.) One caller's records keep their order; records of concurrent
// callers have no order between them.
func (b *Bus) Produce(ctx context.Context, recs ...core.BusRecord) error {
	if len(recs) == 0 {
		return nil
	}
	req := &produceReq{msgs: make([]kafka.Message, len(recs)), done: make(chan error, 1)}
	for i, r := range recs {
		if r.Topic == "" {
			return fmt.Errorf("kafkabus: produce record %d: %w: empty topic", i, core.ErrInvalidArgument)
		}
		req.msgs[i] = kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value}
		req.bytes += len(r.Key) + len(r.Value) + 64
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if b.pendingB > 0 && b.pendingB+req.bytes > b.cfg.MaxPendingBytes {
		b.mu.Unlock()
		b.backpressure.Add(1)
		return fmt.Errorf("kafkabus: produce %d records: %w", len(recs), ErrBackpressure)
	}
	b.pending = append(b.pending, req)
	b.pendingB += req.bytes
	b.cond.Signal()
	b.mu.Unlock()
	start := time.Now()
	select {
	case err := <-req.done:
		b.m.observeProduce(start, len(recs), err)
		return err
	case <-ctx.Done():
		b.m.observeProduce(start, len(recs), ctx.Err())
		// Records not yet taken by a flusher are withdrawn, so callers that
		// give up and retry cannot grow the queue; records in flight may
		// still be written.
		b.mu.Lock()
		if i := slices.Index(b.pending, req); i >= 0 {
			b.pending = slices.Delete(b.pending, i, i+1)
			b.pendingB -= req.bytes
		}
		b.mu.Unlock()
		return fmt.Errorf("kafkabus: produce %d records: %w", len(recs), ctx.Err())
	}
}

// ErrBackpressure means Produce refused records because Config.MaxPendingBytes
// of earlier records are still waiting to be written (the brokers are slow
// or down). It wraps core.ErrUnavailable: retry later.
var ErrBackpressure = fmt.Errorf("kafkabus: too many records waiting to be written: %w", core.ErrUnavailable)

// Redone returns how many pipelined batches failed after they were handed
// over (their Pending finished with an error) and were handed over again.
func (b *Bus) Redone() uint64 { return b.redone.Load() }

// Generations returns how many consumer group generations this bus's
// group consumers have joined: one per Consume call, plus one per
// rebalance, after which a partition's records since its last commit are
// handled again.
func (b *Bus) Generations() uint64 { return b.generations.Load() }

// Backpressure returns how many Produce calls were refused with ErrBackpressure.
func (b *Bus) Backpressure() uint64 { return b.backpressure.Load() }

// produceReq is one Produce call waiting for its records to be written.
type produceReq struct {
	msgs  []kafka.Message
	bytes int
	done  chan error // buffered: the flusher never blocks on it
}

// maxRound bounds the records of one WriteMessages call.
const maxRound = 10000

// flush is one flusher goroutine: it writes queued records until Close
// and the queue is empty.
func (b *Bus) flush() {
	for {
		b.mu.Lock()
		for len(b.pending) == 0 && !b.closed {
			b.cond.Wait()
		}
		if len(b.pending) == 0 {
			b.mu.Unlock()
			return
		}
		n, take := 0, 0
		for take < len(b.pending) && (take == 0 || n+len(b.pending[take].msgs) <= maxRound) {
			n += len(b.pending[take].msgs)
			take++
		}
		round := append([]*produceReq(nil), b.pending[:take]...)
		b.pending = append(b.pending[:0], b.pending[take:]...)
		for _, r := range round {
			b.pendingB -= r.bytes
		}
		if len(b.pending) > 0 {
			b.cond.Signal() // another flusher may take the rest
		}
		b.mu.Unlock()
		b.writeRound(round, n)
	}
}

// writeRound writes the records of reqs in one call and tells each caller
// the outcome of its own records.
func (b *Bus) writeRound(reqs []*produceReq, n int) {
	msgs := make([]kafka.Message, 0, n)
	for _, r := range reqs {
		msgs = append(msgs, r.msgs...)
	}
	// No caller's ctx bounds the round (it carries other callers' records);
	// kafka-go's own timeouts and retry limit (MaxAttempts) do.
	ctx := context.Background()
	if b.cfg.MaxInFlight == 1 {
		// kafka-go gives every new partition batch a slice of BatchSize
		// messages up front (≈160 KB at 1000): with one round in flight at
		// a time, size it to the round. Measured with chatmesh bench at
		// 2,000 msg/s against chatmesh dev, those slices were 72% of all
		// bytes the server allocated. A batch that reaches the round's size
		// also goes out at once instead of after BatchTimeout.
		b.writer.BatchSize = min(max(n, 1), b.cfg.BatchSize)
	}
	err := b.writer.WriteMessages(ctx, msgs...)
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		// The writer trusts its metadata cache; a topic created by another
		// client since the last refresh looks unknown. Refresh and retry once.
		refreshed := false
		for _, t := range uniqueTopics(msgs) {
			if ok, rerr := b.refreshTopic(ctx, t); rerr == nil && ok {
				refreshed = true
			}
		}
		if refreshed {
			err = b.writer.WriteMessages(ctx, msgs...)
		}
	}
	var werrs kafka.WriteErrors
	isWrite := errors.As(err, &werrs) && len(werrs) == len(msgs)
	if err != nil && !isWrite && len(reqs) > 1 && errors.Is(err, kafka.UnknownTopicOrPartition) {
		// The whole round failed for a topic that does not exist, without
		// per-record outcomes: do not blame the other callers' records
		// (they would drop them as undeliverable). Write each call on its
		// own so each gets its own answer.
		for _, r := range reqs {
			b.writeRound([]*produceReq{r}, len(r.msgs))
		}
		return
	}
	off := 0
	for _, r := range reqs {
		var rerr error
		switch {
		case err == nil:
		case isWrite:
			for _, e := range werrs[off : off+len(r.msgs)] {
				if e != nil {
					rerr = e
					break
				}
			}
		default:
			rerr = err
		}
		off += len(r.msgs)
		if rerr != nil {
			if errors.Is(rerr, kafka.UnknownTopicOrPartition) {
				rerr = fmt.Errorf("kafkabus: produce: %w: %w", ErrUnknownTopic, rerr)
			} else {
				rerr = fmt.Errorf("kafkabus: produce %d records: %w", len(r.msgs), rerr)
			}
		}
		r.done <- rerr
	}
}

func uniqueTopics(msgs []kafka.Message) []string {
	var ts []string
	seen := map[string]bool{}
	for _, r := range msgs {
		if !seen[r.Topic] {
			seen[r.Topic] = true
			ts = append(ts, r.Topic)
		}
	}
	return ts
}

// refreshTopic makes the writer's metadata cache learn about topic if the
// topic exists. It reports whether the topic exists.
func (b *Bus) refreshTopic(ctx context.Context, topic string) (bool, error) {
	md, err := b.freshMetadata(ctx, topic)
	if err != nil {
		return false, err
	}
	if !topicExists(md, topic) {
		return false, nil
	}
	// A metadata request with AllowAutoTopicCreation is the only request
	// that makes kafka-go's Transport bypass its cache and wait until the
	// topic appears in it. The topic exists (checked just above), so the flag
	// creates nothing.
	_, err = b.transport.RoundTrip(ctx, kafka.TCP(b.cfg.Brokers...), &metaapi.Request{
		TopicNames:             []string{topic},
		AllowAutoTopicCreation: true,
	})
	return err == nil, err
}

// freshMetadata reads cluster metadata bypassing every cache: it uses a
// transport of its own, closed before returning.
//
// A broker that is restarting (connection refused or reset) is not a
// reason to fail: it retries a few times with backoff, starting each
// attempt at the next broker of the list.
func (b *Bus) freshMetadata(ctx context.Context, topics ...string) (*kafka.MetadataResponse, error) {
	t := b.newTransport()
	defer t.CloseIdleConnections()
	const attempts = 6
	var err error
	for i := range attempts {
		brokers := append(slices.Clone(b.cfg.Brokers[i%len(b.cfg.Brokers):]), b.cfg.Brokers[:i%len(b.cfg.Brokers)]...)
		c := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: t, Timeout: b.cfg.DialTimeout}
		var md *kafka.MetadataResponse
		if md, err = c.Metadata(ctx, &kafka.MetadataRequest{Topics: topics}); err == nil {
			return md, nil
		}
		if i == attempts-1 || !sleepCtx(ctx, backoff(i, 100*time.Millisecond, 2*time.Second)) {
			break
		}
		b.log.Debug("metadata request failed; retrying", "attempt", i+1, "err", err)
	}
	return nil, fmt.Errorf("kafkabus: metadata: %w", err)
}

func topicExists(md *kafka.MetadataResponse, topic string) bool {
	for _, t := range md.Topics {
		if t.Name == topic {
			return t.Error == nil
		}
	}
	return false
}

// EnsureTopic creates topic with the given number of partitions if it does
// not exist, through the cluster's controller, with replication factor
// Config.ReplicationFactor (default min(3, brokers in the cluster)) and
// retention Config.TopicRetention. An existing topic is success whatever
// its partition count (a differing count is logged); its retention is set
// to Config.TopicRetention if it differs. It returns once metadata shows a
// leader for every partition.
func (b *Bus) EnsureTopic(ctx context.Context, topic string, partitions int) error {
	return b.EnsureTopicRetention(ctx, topic, partitions, b.cfg.TopicRetention)
}

// EnsureTopicRetention implements core.TopicConfigurer: EnsureTopic with
// retention r (zero fields: Config.TopicRetention's), set at creation and
// reconciled on an existing topic with IncrementalAlterConfigs.
func (b *Bus) EnsureTopicRetention(ctx context.Context, topic string, partitions int, r core.TopicRetention) error {
	r = b.retention(r)
	if b.closing.Err() != nil {
		return ErrClosed
	}
	if topic == "" || partitions < 1 {
		return fmt.Errorf("kafkabus: ensure topic %q: %w: need a name and partitions >= 1", topic, core.ErrInvalidArgument)
	}
	// A broker may be down or restarting (its metadata still names it, or
	// it was the controller we were told about): the whole step is retried
	// for up to ensureTopicRetry, reading the metadata again each time.
	var brokers []kafka.Broker
	start := time.Now()
	for attempt := 0; ; attempt++ {
		var err error
		brokers, err = b.createTopic(ctx, topic, partitions, r)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !retriableCreate(err) || time.Since(start) > ensureTopicRetry {
			return fmt.Errorf("kafkabus: ensure topic %q: %w", topic, err)
		}
		b.log.Debug("ensure topic: retrying", "topic", topic, "attempt", attempt+1, "err", err)
		if !sleepCtx(ctx, backoff(attempt, 50*time.Millisecond, time.Second)) {
			return fmt.Errorf("kafkabus: ensure topic %q: %w (after %w)", topic, ctx.Err(), err)
		}
	}
	// Wait until every broker's metadata shows a leader for every
	// partition: a client may ask any broker next.
	for attempt := 0; ; attempt++ {
		n, ok := b.topicReadyEverywhere(ctx, topic, brokers)
		if ok {
			if n != partitions {
				b.log.Warn("topic exists with a different partition count", "topic", topic, "want", partitions, "have", n)
			}
			_, _ = b.refreshTopic(ctx, topic)
			err := b.reconcileRetention(ctx, topic, r)
			if err == nil {
				return nil
			}
			// The request went to one broker of the list, which may be
			// the one that is down or restarting: retry like the create.
			if ctx.Err() != nil || !retriableCreate(err) || time.Since(start) > ensureTopicRetry {
				return fmt.Errorf("kafkabus: ensure topic %q: %w", topic, err)
			}
			b.log.Debug("ensure topic: retrying the retention settings", "topic", topic, "err", err)
		}
		if !sleepCtx(ctx, backoff(attempt, 20*time.Millisecond, 500*time.Millisecond)) {
			return fmt.Errorf("kafkabus: ensure topic %q: waiting for partition leaders: %w", topic, ctx.Err())
		}
	}
}

// ensureTopicRetry bounds how long EnsureTopic retries creating a topic
// while brokers are unreachable or too few are up for its replication.
const ensureTopicRetry = 60 * time.Second

// createTopic creates topic through the controller named by any reachable
// broker and returns the brokers that metadata listed.
func (b *Bus) createTopic(ctx context.Context, topic string, partitions int, r core.TopicRetention) ([]kafka.Broker, error) {
	conn, err := b.dialAny(ctx)
	if err != nil {
		return nil, err
	}
	brokers, err := conn.Brokers()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("list brokers: %w", err)
	}
	ctrl, err := conn.Controller()
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("find controller: %w", err)
	}
	rf := b.cfg.ReplicationFactor
	if rf <= 0 {
		rf = min(3, len(brokers))
	}
	cc, err := b.dialer.DialContext(ctx, "tcp", net.JoinHostPort(ctrl.Host, fmt.Sprint(ctrl.Port)))
	if err != nil {
		return nil, fmt.Errorf("dial controller: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = cc.SetDeadline(dl)
	}
	// Conn.CreateTopics treats TopicAlreadyExists as success.
	err = cc.CreateTopics(kafka.TopicConfig{Topic: topic, NumPartitions: partitions, ReplicationFactor: rf, ConfigEntries: retentionEntries(r)})
	cc.Close()
	if err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	return brokers, nil
}

// retriableCreate tells a failure worth retrying (a broker unreachable,
// not the controller, too few up for the replication factor) from one
// that will not change (an invalid name, a policy).
func retriableCreate(err error) bool {
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Temporary() || ke == kafka.InvalidReplicationFactor || ke == kafka.NotController || ke == kafka.BrokerNotAvailable
	}
	return true // dial and I/O errors
}

// topicReadyEverywhere asks each reachable broker for the topic's
// metadata and reports the partition count and whether every one of them
// shows a leader for every partition (false when none answers).
func (b *Bus) topicReadyEverywhere(ctx context.Context, topic string, brokers []kafka.Broker) (int, bool) {
	n := -1
	for _, br := range brokers {
		c, err := b.dialer.DialContext(ctx, "tcp", net.JoinHostPort(br.Host, fmt.Sprint(br.Port)))
		if err != nil {
			continue // down: it serves no client either; the others must agree
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		parts, err := c.ReadPartitions(topic)
		c.Close()
		if err != nil || len(parts) == 0 || (n >= 0 && len(parts) != n) {
			return 0, false
		}
		n = len(parts)
		for _, p := range parts {
			if p.Error != nil || p.Leader.ID < 0 || p.Leader.Host == "" {
				return 0, false
			}
		}
	}
	return n, n > 0
}

// leaders counts a topic's partitions and those with a leader.
func leaders(md *kafka.MetadataResponse, topic string) (n, led int) {
	for _, t := range md.Topics {
		if t.Name != topic || t.Error != nil {
			continue
		}
		for _, p := range t.Partitions {
			n++
			if p.Error == nil && p.Leader.Host != "" && p.Leader.ID >= 0 {
				led++
			}
		}
	}
	return n, led
}

func (b *Bus) dialAny(ctx context.Context) (*kafka.Conn, error) {
	var errs []error
	for _, addr := range b.cfg.Brokers {
		c, err := b.dialer.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("dial brokers: %w", errors.Join(errs...))
}

// Close stops running Consume calls (they return ErrClosed), waits for
// them, writes the records already queued by Produce, closes the writer and
// releases connections. It is idempotent.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		b.stop()
		b.consumers.Wait()
		// Flushers write what is queued, then exit.
		b.mu.Lock()
		b.closed = true
		b.cond.Broadcast()
		b.mu.Unlock()
		b.flushers.Wait()
		b.closeErr = b.writer.Close()
		b.transport.CloseIdleConnections()
		if b.closeErr != nil && !errors.Is(b.closeErr, io.ErrClosedPipe) {
			b.closeErr = fmt.Errorf("kafkabus: close writer: %w", b.closeErr)
		} else {
			b.closeErr = nil
		}
	})
	return b.closeErr
}

// backoff returns min*2^attempt capped at max.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// sleepCtx sleeps d or until ctx ends; it reports whether the sleep completed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// kafkaLogger adapts slog to kafka-go's Logger at one level.
func kafkaLogger(l *slog.Logger, level slog.Level) kafka.Logger {
	return kafka.LoggerFunc(func(format string, args ...any) {
		if l.Enabled(context.Background(), level) {
			l.Log(context.Background(), level, "kafka-go: "+fmt.Sprintf(format, args...))
		}
	})
}
