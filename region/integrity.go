package region

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// Start-up refusals (see checkData). Both say what is wrong and how to
// recover; neither changes the store or the bus.
var (
	// ErrStoreMissing: the store is new (never marked initialized, no data)
	// but the sequencer group has committed offsets on the ingress topic,
	// so an earlier store sequenced those records and this one has no trace
	// of them: starting would hand out seqs that devices already hold.
	ErrStoreMissing = errors.New("region: store missing")
	// ErrBusTruncated: the sequencer group's committed offset lies beyond the
	// end of an ingress partition: the log lost records the sequencer had
	// handled, and the consumer would wait for the log to grow back past
	// the committed offset, skipping every record written meanwhile.
	ErrBusTruncated = errors.New("region: ingress log lost consumed records")
)

// checkData runs before the sequencer starts, in this order:
//
//  1. With a bus that implements core.OffsetInspector: every committed
//     offset of the sequencer group on the ingress topic must lie within
//     the partition's log (ErrBusTruncated otherwise).
//  2. With a store that implements core.StoreMarker: a store that is not
//     initialized while the group has committed records is refused
//     (ErrStoreMissing); otherwise the store is marked initialized.
//
// The mark is written only after both checks passed, so a refused start
// leaves a new store unmarked and the next start refuses again.
func (r *Region) checkData(ctx context.Context) error {
	var offs []core.PartitionOffsets
	if oi, ok := r.bus.(core.OffsetInspector); ok {
		var err error
		if offs, err = oi.GroupOffsets(ctx, r.cfg.IngressTopic, r.cfg.SequencerGroup); err != nil {
			return fmt.Errorf("region: start-up check: %w", err)
		}
	}
	r.noteExpired(offs)
	var beyond []string
	handled := int64(0)
	for _, o := range offs {
		if o.Committed > 0 {
			handled += o.Committed - max(o.Start, 0)
		}
		if o.Committed > o.End {
			beyond = append(beyond, fmt.Sprintf("partition %d committed at %d, log ends at %d", o.Partition, o.Committed, o.End))
		}
	}
	if len(beyond) > 0 {
		return fmt.Errorf("region: %w: consumer group %q on topic %q: %s. "+
			"The broker lost records the sequencer had already handled (a truncated or restored broker data directory, or an unclean leader election), "+
			"and the sequencer would skip every record written until the log grows past the committed offset. "+
			"To recover: restore the broker data together with the store from the same backup; "+
			"with an external Kafka, if the store is intact, move the group to the log end once (kafka-consumer-groups.sh --group %s --topic %s --reset-offsets --to-latest --execute); "+
			"for `chatmesh dev` without a backup, start over by removing the whole -data directory. See deploy/README.md, section Damaged data",
			ErrBusTruncated, r.cfg.SequencerGroup, r.cfg.IngressTopic, strings.Join(beyond, "; "), r.cfg.SequencerGroup, r.cfg.IngressTopic)
	}

	m, ok := r.store.(core.StoreMarker)
	if !ok {
		return nil
	}
	initialized, err := m.Initialized(ctx)
	if err != nil {
		return fmt.Errorf("region: start-up check: %w", err)
	}
	if initialized {
		return nil
	}
	var anyCommitted bool
	for _, o := range offs {
		anyCommitted = anyCommitted || o.Committed > 0
	}
	if anyCommitted {
		return fmt.Errorf("region: %w: the store is empty and was never initialized, but consumer group %q has committed offsets on topic %q "+
			"(it handled about %d records): the store that sequenced them is missing (deleted, or this process points at the wrong directory, schema or database). "+
			"Starting would hand out seqs that devices already hold, and they would drop the new messages as duplicates. "+
			"To recover: point the region at the right store, or restore it from a backup; "+
			"to start over instead, remove the broker data as well (for `chatmesh dev`: the whole -data directory) and every client's state. See deploy/README.md, section Damaged data",
			ErrStoreMissing, r.cfg.SequencerGroup, r.cfg.IngressTopic, handled)
	}
	if err := m.MarkInitialized(ctx); err != nil {
		return fmt.Errorf("region: start-up check: %w", err)
	}
	return nil
}

// ErrBusExpired is logged (with Stats.IngressExpired) when the sequencer
// group's committed offset lies below the start of an ingress partition:
// the broker's retention (retention.ms / retention.bytes of the ingress
// topic, TopicRetention.Ingress) deleted requests the sequencer had not
// consumed. Those requests are lost (their senders never got an answer and
// resend them from their outboxes); the consumer goes on from the log
// start. The region does not refuse to run over it: what is lost is lost,
// and stopping would lose the rest. Raise the ingress retention above the
// longest outage of the sequencer.
var ErrBusExpired = errors.New("region: ingress records expired before the sequencer read them")

// ingressCheckInterval is how often a running region compares the
// sequencer's committed offsets with the ingress log's start.
const ingressCheckInterval = time.Minute

// noteExpired logs and counts the partitions whose committed offset is
// below the log start (ErrBusExpired), once per distinct offset pair.
func (r *Region) noteExpired(offs []core.PartitionOffsets) {
	for _, o := range offs {
		if o.Committed < 0 || o.Committed >= o.Start {
			continue
		}
		key := fmt.Sprintf("%d@%d", o.Partition, o.Committed)
		r.deadMu.Lock()
		seen := r.expiredSeen[key]
		if r.expiredSeen == nil {
			r.expiredSeen = map[string]bool{}
		}
		r.expiredSeen[key] = true
		r.deadMu.Unlock()
		if seen {
			continue
		}
		r.stats.ingressExpired.Add(uint64(o.Start - o.Committed))
		r.log.Error("ingress records deleted by the broker's retention before the sequencer read them",
			"err", ErrBusExpired, "topic", r.cfg.IngressTopic, "group", r.cfg.SequencerGroup,
			"partition", o.Partition, "committed", o.Committed, "log_start", o.Start, "lost", o.Start-o.Committed)
	}
}

// watchIngress checks the sequencer's committed offsets against the
// ingress log's start every ingressCheckInterval (see ErrBusExpired).
func (r *Region) watchIngress(ctx context.Context, oi core.OffsetInspector) {
	t := time.NewTicker(ingressCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		offs, err := oi.GroupOffsets(ctx, r.cfg.IngressTopic, r.cfg.SequencerGroup)
		if err != nil {
			r.log.Debug("ingress offset check failed", "err", err)
			continue
		}
		r.noteExpired(offs)
	}
}
