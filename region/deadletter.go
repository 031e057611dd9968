package region

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// recordError is a failure that belongs to one record (a panic while
// handling it); other errors are classified by whether the store answers.
type recordError struct {
	reason string
	err    error
}

func (e *recordError) Error() string { return e.err.Error() }
func (e *recordError) Unwrap() error { return e.err }

// attempts counts the consecutive failures of the record each partition
// is stuck on. It holds at most one entry per partition, and per
// partition the offsets of its last deadMemory dead-lettered records: a
// pipelined batch redone after its outputs failed to produce (kafkabus
// rewinds to it) meets its poison record again, and that record is
// skipped as before instead of failing MaxAttempts times more and being
// dead-lettered twice.
type attempts struct {
	mu   sync.Mutex
	m    map[partKey]stuck
	dead map[partKey][]int64 // oldest first, at most deadMemory
}

// deadMemory bounds the dead-lettered offsets remembered per partition; a
// redo covers at most the batch in flight and the one after it.
const deadMemory = 64

type partKey struct {
	topic     string
	partition int
}

type stuck struct {
	offset int64
	n      int
	since  time.Time // first failure while the store answered
}

// failed decides what happens to a record whose step failed with err. It
// returns err (the bus retries the batch after a backoff) until the record
// has failed Config.MaxAttempts times in a row, over at least
// Config.DeadLetterAfter, while the store answered a probe each time — a
// record that fails while the store is down is not its fault: its count
// starts again and it is retried for as long as it takes. Then the record goes to the
// dead-letter topic with its reason, is counted, and failed returns nil:
// the partition moves on. The client's outbox resends a message whose
// record was dead-lettered; if the cause was the record, the resend fails
// the same way and the sender sees no ack, never a lost acked message.
func (r *Region) failed(ctx context.Context, st core.Store, rec core.BusRecord, err error) error {
	if ctx.Err() != nil {
		return err
	}
	k := partKey{rec.Topic, rec.Partition}
	r.attempts.mu.Lock()
	done := slices.Contains(r.attempts.dead[k], rec.Offset)
	r.attempts.mu.Unlock()
	if done {
		r.log.Debug("record dead-lettered before, skipped again", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
		return nil
	}
	healthy := r.storeAnswers(ctx, st)
	now := r.cfg.Now()
	r.attempts.mu.Lock()
	s := r.attempts.m[k]
	if s.offset != rec.Offset || !healthy {
		// A failure while the store is down is not the record's fault:
		// the count starts again once the store answers.
		s = stuck{offset: rec.Offset}
	}
	if healthy {
		if s.n == 0 {
			s.since = now
		}
		s.n++
	}
	r.attempts.m[k] = s
	r.attempts.mu.Unlock()
	if !healthy || s.n < r.cfg.MaxAttempts || now.Sub(s.since) < r.cfg.DeadLetterAfter {
		return err
	}
	reason := "store"
	var re *recordError
	if errors.As(err, &re) {
		reason = re.reason
	}
	dl := &pb.DeadLetter{
		Reason: reason, Error: err.Error(), Topic: rec.Topic, Partition: int32(rec.Partition), Offset: rec.Offset,
		Key: rec.Key, Value: rec.Value, Attempts: uint32(s.n), AtMs: r.nowMs(),
	}
	b, merr := proto.Marshal(dl)
	if merr != nil {
		return fmt.Errorf("region: encode dead letter: %w", merr)
	}
	if perr := r.bus.Produce(ctx, core.BusRecord{Topic: r.cfg.DeadLetterTopic, Key: rec.Key, Value: b}); perr != nil {
		return fmt.Errorf("region: dead-letter %s/%d@%d: %w (after %w)", rec.Topic, rec.Partition, rec.Offset, perr, err)
	}
	r.succeeded(rec)
	r.attempts.mu.Lock()
	d := append(r.attempts.dead[k], rec.Offset)
	if len(d) > deadMemory {
		d = slices.Delete(d, 0, len(d)-deadMemory)
	}
	r.attempts.dead[k] = d
	r.attempts.mu.Unlock()
	r.stats.deadLettered.Add(1)
	r.deadByReason(reason)
	r.log.Error("record dead-lettered after repeated failures",
		"topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "conv", string(rec.Key),
		"attempts", s.n, "reason", reason, "err", err, "dead_letter_topic", r.cfg.DeadLetterTopic)
	return nil
}

// succeeded forgets the failures of rec's partition once rec is done.
func (r *Region) succeeded(rec core.BusRecord) {
	k := partKey{rec.Topic, rec.Partition}
	r.attempts.mu.Lock()
	if s, ok := r.attempts.m[k]; ok && s.offset <= rec.Offset {
		delete(r.attempts.m, k)
	}
	r.attempts.mu.Unlock()
}

// storeAnswers probes the store with a cheap read: true when it answers
// (found or not found) within a short time.
func (r *Region) storeAnswers(ctx context.Context, st core.Store) bool {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := st.User(pctx, "health-probe")
	return err == nil || errors.Is(err, core.ErrNotFound)
}

func (r *Region) deadByReason(reason string) {
	r.deadMu.Lock()
	r.deadReasons[reason]++
	r.deadMu.Unlock()
}

// DeadLetters returns how many records were dead-lettered, by reason.
func (r *Region) DeadLetters() map[string]uint64 {
	r.deadMu.Lock()
	defer r.deadMu.Unlock()
	out := make(map[string]uint64, len(r.deadReasons))
	for k, v := range r.deadReasons {
		out[k] = v
	}
	return out
}
