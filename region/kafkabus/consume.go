package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chatmesh/chatmesh/core"
)

// Consume runs h for the records of spec.Topic until ctx ends (it then
// returns ctx's error) or the Bus is closed (ErrClosed). A topic that does
// not exist when Consume starts is a fatal error (ErrUnknownTopic).
//
// With spec.Group it joins the consumer group and handles the records of the
// partitions assigned to this member, from the group's committed offsets (a
// group without offsets starts at the earliest record). Without a group it
// tails every partition from its current end. See the package doc for the
// OnReady guarantee of each mode.
//
// Each partition has its own goroutine: h is called for one partition's
// records one at a time in offset order, and concurrently across
// partitions. A handler error is retried on the same record with capped
// exponential backoff (Config.RetryMin..RetryMax) until it succeeds, the
// partition is revoked, or ctx ends.
func (b *Bus) Consume(ctx context.Context, spec core.ConsumeSpec, h core.Handler) error {
	if h == nil {
		return fmt.Errorf("kafkabus: consume: %w: need a topic and a handler", core.ErrInvalidArgument)
	}
	return b.ConsumeBatch(ctx, spec, 1, func(ctx context.Context, recs []core.BusRecord) error { return h(ctx, recs[0]) })
}

// ConsumeBatch implements core.BatchConsumer: Consume, but h receives up to
// maxBatch consecutive records of one partition that were already fetched
// (after the first record it waits at most batchGap for the next), and a
// failing h is retried with the same batch. Offsets are committed after h
// returns nil for the whole batch.
func (b *Bus) ConsumeBatch(ctx context.Context, spec core.ConsumeSpec, maxBatch int, h core.BatchHandler) error {
	if h == nil {
		return fmt.Errorf("kafkabus: consume: %w: need a topic and a handler", core.ErrInvalidArgument)
	}
	return b.ConsumePipelined(ctx, spec, maxBatch, func(ctx context.Context, recs []core.BusRecord) (*core.Pending, error) {
		return nil, h(ctx, recs)
	})
}

// ConsumePipelined implements core.PipelinedConsumer: ConsumeBatch, but
// while a batch's Pending is unfinished the partition's next batch is
// already fetched and handed to h (see runPartition).
func (b *Bus) ConsumePipelined(ctx context.Context, spec core.ConsumeSpec, maxBatch int, h core.PipelinedBatchHandler) error {
	if h == nil || spec.Topic == "" {
		return fmt.Errorf("kafkabus: consume: %w: need a topic and a handler", core.ErrInvalidArgument)
	}
	if maxBatch < 1 {
		maxBatch = 1
	}
	b.consumers.Add(1)
	defer b.consumers.Done()
	if b.closing.Err() != nil {
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.closing, cancel)
	defer stop()

	md, err := b.freshMetadata(ctx, spec.Topic)
	if err != nil {
		return b.consumeErr(ctx, fmt.Errorf("kafkabus: consume %q: %w", spec.Topic, err))
	}
	if !topicExists(md, spec.Topic) {
		return fmt.Errorf("kafkabus: consume %q: %w", spec.Topic, ErrUnknownTopic)
	}
	if spec.Group != "" {
		err = b.consumeGroup(ctx, spec, maxBatch, h)
	} else {
		err = b.consumeTail(ctx, spec, maxBatch, h, md)
	}
	return b.consumeErr(ctx, err)
}

// consumeErr turns an error caused by the end of ctx into ctx's error, or
// ErrClosed when the bus was closed.
func (b *Bus) consumeErr(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	if b.closing.Err() != nil {
		return ErrClosed
	}
	return ctx.Err()
}

// consumeTail reads every partition from the end offsets it resolves
// before calling OnReady.
func (b *Bus) consumeTail(ctx context.Context, spec core.ConsumeSpec, maxBatch int, h core.PipelinedBatchHandler, md *kafka.MetadataResponse) error {
	var parts []int
	for _, t := range md.Topics {
		if t.Name == spec.Topic {
			for _, p := range t.Partitions {
				parts = append(parts, p.ID)
			}
		}
	}
	ends, err := b.endOffsets(ctx, spec.Topic, parts)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Go(func() {
			b.runPartition(ctx, spec.Topic, "", p, ends[p], maxBatch, h, nil)
		})
	}
	if spec.OnReady != nil {
		spec.OnReady()
	}
	<-ctx.Done()
	wg.Wait()
	return ctx.Err()
}

// endOffsets returns the high watermark of each partition, read fresh from
// the partition leaders.
func (b *Bus) endOffsets(ctx context.Context, topic string, parts []int) (map[int]int64, error) {
	reqs := make([]kafka.OffsetRequest, len(parts))
	for i, p := range parts {
		reqs[i] = kafka.LastOffsetOf(p)
	}
	deadline := time.Now().Add(endOffsetsRetryFor)
	for attempt := 0; ; attempt++ {
		// A fresh transport per attempt: a fresh view of the leaders.
		t := b.newTransport()
		c := &kafka.Client{Addr: kafka.TCP(b.cfg.Brokers...), Transport: t, Timeout: b.cfg.DialTimeout}
		resp, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{
			Topics: map[string][]kafka.OffsetRequest{topic: reqs},
		})
		t.CloseIdleConnections()
		if err == nil {
			ends := make(map[int]int64, len(parts))
			for _, po := range resp.Topics[topic] {
				if po.Error != nil {
					err = po.Error
					break
				}
				ends[po.Partition] = po.LastOffset
			}
			if err == nil && len(ends) == len(parts) {
				return ends, nil
			}
			if err == nil {
				err = fmt.Errorf("got %d of %d partitions", len(ends), len(parts))
			}
		}
		// Leadership may be moving (a broker restarts), or a topic just
		// created not be served by every leader yet (real Kafka has
		// answered UNKNOWN_SERVER_ERROR then): retry for a while.
		if time.Now().After(deadline) || !sleepCtx(ctx, backoff(attempt, 50*time.Millisecond, time.Second)) {
			return nil, fmt.Errorf("kafkabus: consume %q: end offsets (%d attempts): %w", topic, attempt+1, err)
		}
	}
}

// endOffsetsRetryFor bounds how long endOffsets retries.
const endOffsetsRetryFor = 15 * time.Second

// consumeGroup is the consumer-group loop: one generation after another
// until ctx ends.
func (b *Bus) consumeGroup(ctx context.Context, spec core.ConsumeSpec, maxBatch int, h core.PipelinedBatchHandler) error {
	log := b.log.With("topic", spec.Topic, "group", spec.Group)
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                spec.Group,
		Brokers:           b.cfg.Brokers,
		Dialer:            b.dialer,
		Topics:            []string{spec.Topic},
		GroupBalancers:    []kafka.GroupBalancer{kafka.RangeGroupBalancer{}, kafka.RoundRobinGroupBalancer{}},
		HeartbeatInterval: b.cfg.HeartbeatInterval,
		SessionTimeout:    b.cfg.SessionTimeout,
		RebalanceTimeout:  b.cfg.RebalanceTimeout,
		JoinGroupBackoff:  b.cfg.RetryMax,
		StartOffset:       kafka.FirstOffset,
		// Timeout bounds each coordinator request; JoinGroup legitimately
		// blocks on the broker for up to the rebalance timeout.
		Timeout:     b.cfg.RebalanceTimeout + b.cfg.DialTimeout,
		ErrorLogger: kafkaLogger(log, slog.LevelDebug),
	})
	if err != nil {
		return fmt.Errorf("kafkabus: consume %q group %q: %w", spec.Topic, spec.Group, err)
	}
	// Close leaves the group and waits for the current generation's
	// goroutines (partition workers and committer), which stop on its end.
	defer cg.Close()

	ready := false
	for attempt := 0; ; {
		gen, err := cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Join/sync failures: the group retries by itself (after
			// JoinGroupBackoff); report and wait for the next attempt.
			attempt++
			log.Warn("consumer group join failed", "err", err, "attempt", attempt)
			continue
		}
		attempt = 0
		b.generations.Add(1)
		assigned := gen.Assignments[spec.Topic]
		if ready {
			// A rebalance (a member came or went, a session or the
			// coordinator was lost): uncommitted records are handled again.
			log.Info("consumer group rebalanced", "generation", gen.ID, "partitions", len(assigned))
		} else {
			log.Debug("consumer group generation", "generation", gen.ID, "partitions", len(assigned))
		}
		cm := &committer{gen: gen, topic: spec.Topic, every: b.cfg.CommitInterval, log: log, done: map[int]int64{}}
		cm.workers.Add(len(assigned)) // before the committer may Wait
		gen.Start(cm.run)
		for _, a := range assigned {
			gen.Start(func(gctx context.Context) {
				defer cm.workers.Done()
				// Handlers see a context that ends with the generation (the
				// partition was revoked) or with Consume's ctx.
				pctx, cancel := context.WithCancel(ctx)
				defer cancel()
				stop := context.AfterFunc(gctx, cancel)
				defer stop()
				b.runPartition(pctx, spec.Topic, spec.Group, a.ID, a.Offset, maxBatch, h, cm.handled)
				// Returning ends the generation: kafka-go stops a generation
				// as soon as one of its goroutines returns. That is what we
				// want when ctx ended; a revoked partition returns only
				// because the generation ended already.
			})
		}
		if !ready {
			ready = true
			if spec.OnReady != nil {
				spec.OnReady()
			}
		}
	}
}

// committer commits the offsets of handled records of one generation.
type committer struct {
	gen   *kafka.Generation
	topic string
	every time.Duration
	log   *slog.Logger

	workers sync.WaitGroup // partition workers of the generation

	mu      sync.Mutex
	done    map[int]int64 // partition -> offset of the newest handled record
	pending bool
}

// handled records that rec's record was handled: everything up to and
// including offset in partition may be committed.
func (c *committer) handled(partition int, offset int64) {
	c.mu.Lock()
	c.done[partition] = offset
	c.pending = true
	c.mu.Unlock()
}

func (c *committer) run(gctx context.Context) {
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		select {
		case <-gctx.Done():
			// The generation ends (rebalance or shutdown). The partition
			// workers stop at the same moment; wait for them so that the
			// records they finished are in the final commit. A record whose
			// commit is lost (the coordinator may refuse a commit for an
			// ended generation) is handled again by the next owner.
			c.workers.Wait()
			c.commit()
			return
		case <-t.C:
			c.commit()
		}
	}
}

func (c *committer) commit() {
	c.mu.Lock()
	if !c.pending {
		c.mu.Unlock()
		return
	}
	offs := make(map[int]int64, len(c.done))
	for p, o := range c.done {
		offs[p] = o + 1 // Kafka commits the offset of the next record to read
	}
	c.pending = false
	c.mu.Unlock()
	if err := c.gen.CommitOffsets(map[string]map[int]int64{c.topic: offs}); err != nil {
		c.log.Debug("commit offsets failed; the records will be handled again", "err", err)
		c.mu.Lock()
		c.pending = true
		c.mu.Unlock()
	}
}

// batchGap is how long runPartition waits for a further, already fetched
// record before it hands a batch over. Records of one fetch response reach
// the reader's queue microseconds apart, so a short gap still gathers a
// whole response; every batch waits it once, so it adds to latency (it was
// 200µs).
const batchGap = 50 * time.Microsecond

// runPartition fetches one partition from start (an absolute offset or
// kafka.FirstOffset/LastOffset) and hands its records to h in order, up to
// maxBatch at a time (only records already fetched: it never waits to fill
// a batch), retrying failures on the same batch, until ctx ends. handled,
// if not nil, learns the newest record of each batch that h accepted.
//
// Pipelining: when h returns a Pending, the batch is in flight. The worker
// goes on fetching; the next batch is handed to h while the Pending is
// unfinished (so its work overlaps the in-flight batch's end), and only
// then does the worker wait for that Pending. A batch counts as handled
// (handled learns it, in order) once its Pending finished with nil. A
// Pending that fails rewinds the reader to its batch's first record: that
// batch and the one handed over after it are handed to h again, after a
// backoff. At most one Pending is outstanding when h is called.
func (b *Bus) runPartition(ctx context.Context, topic, group string, partition int, start int64, maxBatch int, h core.PipelinedBatchHandler, handled func(int, int64)) {
	log := b.log.With("topic", topic, "partition", partition)
	pk := partKey{topic: topic, group: group, partition: partition}
	ps := b.m.partition(pk)
	defer b.m.release(pk)
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:         b.cfg.Brokers,
		Topic:           topic,
		Partition:       partition,
		Dialer:          b.dialer,
		MinBytes:        1,
		MaxBytes:        4 << 20,
		MaxWait:         b.cfg.MaxWait,
		ReadLagInterval: -1,
		ReadBackoffMin:  b.cfg.RetryMin,
		ReadBackoffMax:  b.cfg.RetryMax,
		ErrorLogger:     kafkaLogger(log, slog.LevelDebug),
	})
	defer r.Close()
	if err := r.SetOffset(start); err != nil {
		log.Warn("set start offset", "offset", start, "err", err)
		return
	}
	w := &partitionWorker{bus: b, log: log, r: r, partition: partition, handled: handled, ps: ps}
	// No handler work outlives the worker: its context has ended, so an
	// in-flight Pending finishes soon (unhandled: the next owner redoes it).
	defer w.drain()
	fails := 0
	for {
		m, err := w.fetch(ctx)
		if errors.Is(err, errSettled) {
			continue // the in-flight batch finished first (or was rewound)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fails++
			log.Warn("fetch failed", "err", err, "attempt", fails)
			if !sleepCtx(ctx, backoff(fails, b.cfg.RetryMin, b.cfg.RetryMax)) {
				return
			}
			continue
		}
		fails = 0
		// A new slice per batch: the handler may still read the one in
		// flight.
		batch := make([]core.BusRecord, 1, min(maxBatch, 8))
		batch[0] = toRecord(m)
		// Take what is already buffered. A fetch abandoned by its deadline
		// loses nothing: kafka-go keeps the record for the next fetch.
		if maxBatch > 1 { // (no gap timer for one-record batches)
			fctx, cancel := context.WithTimeout(ctx, batchGap)
			for len(batch) < maxBatch {
				m, err := r.FetchMessage(fctx)
				if err != nil {
					break
				}
				batch = append(batch, toRecord(m))
			}
			cancel()
		}
		ps.lag.Store(r.Lag())
		p, res := w.handle(ctx, h, batch)
		switch res {
		case stopped:
			return
		case rewound:
			continue // the batch before failed: both come again
		}
		ps.consumed.Add(float64(len(batch)))
		if t := batch[0].Time; !t.IsZero() {
			ps.delay.Observe(time.Since(t).Seconds())
		}
		// The batch before this one must end before this one may count.
		if !w.settle(ctx) {
			// It failed and the reader was rewound to it (or ctx ended):
			// this batch is handed over again too, after the one before
			// it. Its own end (it fails after its predecessor) is waited
			// for, bounded, so no handler work overlaps the redo.
			if p != nil {
				w.await(p, batch[0].Offset)
			}
			continue
		}
		if p == nil {
			w.done(batch[len(batch)-1].Offset)
			continue
		}
		w.inflight = &inflight{first: batch[0].Offset, last: batch[len(batch)-1].Offset, p: p}
	}
}

// errSettled: fetch gave up because the in-flight batch finished first.
var errSettled = errors.New("kafkabus: in-flight batch settled")

// partitionWorker is runPartition's state: the reader and the one batch
// whose Pending is outstanding.
type partitionWorker struct {
	bus       *Bus
	log       *slog.Logger
	r         *kafka.Reader
	partition int
	handled   func(int, int64)
	ps        *partState
	inflight  *inflight
	redos     int // consecutive failed Pendings
}

// inflight is a batch handed to the handler whose Pending is unfinished.
type inflight struct {
	first, last int64
	p           *core.Pending
}

// fetch returns the next record. While a batch is in flight it also waits
// for that batch's Pending: if the Pending finishes first, fetch settles
// it and returns errSettled.
func (w *partitionWorker) fetch(ctx context.Context) (kafka.Message, error) {
	if w.inflight == nil {
		return w.r.FetchMessage(ctx)
	}
	fctx, cancel := context.WithCancel(ctx)
	stop := make(chan struct{})
	pdone := w.inflight.p.Done()
	go func() {
		select {
		case <-pdone:
			cancel()
		case <-stop:
		}
	}()
	m, err := w.r.FetchMessage(fctx)
	close(stop)
	cancel()
	if err == nil || ctx.Err() != nil {
		return m, err
	}
	// The fetch was abandoned because the batch in flight finished (the
	// record, if one had arrived, stays buffered in the reader).
	w.settle(ctx)
	return kafka.Message{}, errSettled
}

// settle waits for the in-flight batch's Pending. It returns true when
// there is none or it finished with nil (the batch counts as handled);
// false when it failed, in which case the reader was rewound to the
// batch's first record after a backoff, or when ctx ended.
func (w *partitionWorker) settle(ctx context.Context) bool {
	f := w.inflight
	if f == nil {
		return true
	}
	select {
	case <-f.p.Done():
	case <-ctx.Done():
		return false
	}
	w.inflight = nil
	err := f.p.Err()
	if err == nil {
		w.redos = 0
		w.ps.stalled.Store(false)
		w.done(f.last)
		return true
	}
	w.redos++
	w.ps.stalled.Store(true)
	w.ps.retries.Inc()
	w.bus.log.Log(ctx, retryLevel(err), "handler failed after the batch was handed over; redoing from its first record", "partition", w.partition, "offset", f.first, "attempt", w.redos, "err", err)
	w.bus.redone.Add(1)
	if !sleepCtx(ctx, backoff(w.redos-1, w.bus.cfg.RetryMin, w.bus.cfg.RetryMax)) {
		return false
	}
	if err := w.r.SetOffset(f.first); err != nil {
		// Only a closed reader refuses: the worker is stopping.
		w.log.Warn("rewind", "offset", f.first, "err", err)
	}
	return false
}

// done records that the batch ending at offset was handled.
func (w *partitionWorker) done(offset int64) {
	if w.handled != nil {
		w.handled(w.partition, offset)
	}
}

// drain waits (bounded) for the in-flight Pending when the worker stops;
// a batch that finished cleanly meanwhile counts as handled, so the
// generation's final commit includes it and the next owner does not redo
// it.
func (w *partitionWorker) drain() {
	f := w.inflight
	if f == nil {
		return
	}
	if w.await(f.p, f.first) && f.p.Err() == nil {
		w.done(f.last)
	}
}

// await waits for p at most drainTimeout; false if it did not finish.
func (w *partitionWorker) await(p *core.Pending, offset int64) bool {
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	select {
	case <-p.Done():
		return true
	case <-t.C:
		w.log.Error("handler's in-flight batch did not finish after its context ended; leaving it", "offset", offset, "waited", drainTimeout)
		return false
	}
}

// drainTimeout bounds how long a stopping partition worker waits for its
// in-flight batch.
const drainTimeout = 30 * time.Second

func retryLevel(err error) slog.Level {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

func toRecord(m kafka.Message) core.BusRecord {
	return core.BusRecord{Topic: m.Topic, Key: m.Key, Value: m.Value, Partition: m.Partition, Offset: m.Offset, Time: m.Time}
}

// handleResult is how a call of partitionWorker.handle ended.
type handleResult int

const (
	accepted handleResult = iota // h took the batch (maybe with a Pending)
	rewound                      // the batch before failed: the reader was rewound to it, this batch comes again
	stopped                      // ctx ended
)

// handle calls h until it accepts the batch. Before retrying a failed
// call it settles the batch in flight: if that one failed too, the reader
// was rewound to it and this batch is dropped (it comes again after it).
// w.ps learns that the partition is stalled while h fails (until a call
// succeeds or the batch in flight before it does).
func (w *partitionWorker) handle(ctx context.Context, h core.PipelinedBatchHandler, recs []core.BusRecord) (*core.Pending, handleResult) {
	for attempt := 0; ; attempt++ {
		p, err := h(ctx, recs)
		if err == nil {
			if attempt > 0 {
				w.ps.stalled.Store(false)
			}
			return p, accepted
		}
		w.ps.stalled.Store(true)
		w.ps.retries.Inc()
		if ctx.Err() != nil {
			return nil, stopped
		}
		w.log.Log(ctx, retryLevel(err), "handler failed; retrying the same records", "offset", recs[0].Offset, "records", len(recs), "attempt", attempt+1, "err", err)
		if w.inflight != nil && !w.settle(ctx) {
			if ctx.Err() != nil {
				return nil, stopped
			}
			return nil, rewound
		}
		if !sleepCtx(ctx, backoff(attempt, w.bus.cfg.RetryMin, w.bus.cfg.RetryMax)) {
			return nil, stopped
		}
	}
}
