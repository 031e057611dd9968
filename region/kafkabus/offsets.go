package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chatmesh/chatmesh/core"
)

var _ core.OffsetInspector = (*Bus)(nil)

// GroupOffsets implements core.OffsetInspector: for every partition of
// topic, group's committed offset (-1 if none) and the log's first offset
// and high watermark, read fresh from the group coordinator and the
// partition leaders. A missing topic has no partitions. Errors a cluster
// gives while it settles — the coordinator moved or is still loading the
// group (as right after a broker or the group's member restarted), a
// leader election — are retried with backoff for up to
// groupOffsetsRetryFor.
func (b *Bus) GroupOffsets(ctx context.Context, topic, group string) ([]core.PartitionOffsets, error) {
	deadline := time.Now().Add(groupOffsetsRetryFor)
	for attempt := 1; ; attempt++ {
		out, err := b.groupOffsets(ctx, topic, group)
		var ke kafka.Error
		if err == nil || !errors.As(err, &ke) || !ke.Temporary() || time.Now().After(deadline) {
			return out, err
		}
		b.log.Warn("reading group offsets, retrying", "group", group, "topic", topic, "attempt", attempt, "err", err)
		if !sleepCtx(ctx, backoff(attempt, b.cfg.RetryMin, b.cfg.RetryMax)) {
			return nil, fmt.Errorf("%w (then: %w)", err, ctx.Err())
		}
	}
}

// groupOffsetsRetryFor bounds how long GroupOffsets retries a temporary
// error.
const groupOffsetsRetryFor = 30 * time.Second

func (b *Bus) groupOffsets(ctx context.Context, topic, group string) ([]core.PartitionOffsets, error) {
	if b.closing.Err() != nil {
		return nil, ErrClosed
	}
	if topic == "" || group == "" {
		return nil, fmt.Errorf("kafkabus: group offsets: %w: need a topic and a group", core.ErrInvalidArgument)
	}
	md, err := b.freshMetadata(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("kafkabus: group offsets of %q on %q: %w", group, topic, err)
	}
	if !topicExists(md, topic) {
		return nil, nil
	}
	var parts []int
	for _, t := range md.Topics {
		if t.Name == topic {
			for _, p := range t.Partitions {
				parts = append(parts, p.ID)
			}
		}
	}
	slices.Sort(parts)

	t := b.newTransport()
	defer t.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(b.cfg.Brokers...), Transport: t, Timeout: b.cfg.DialTimeout}
	bound := func(first bool) (map[int]int64, error) {
		reqs := make([]kafka.OffsetRequest, len(parts))
		for i, p := range parts {
			reqs[i] = kafka.LastOffsetOf(p)
			if first {
				reqs[i] = kafka.FirstOffsetOf(p)
			}
		}
		resp, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
		if err != nil {
			return nil, err
		}
		out := make(map[int]int64, len(parts))
		for _, po := range resp.Topics[topic] {
			if po.Error != nil {
				return nil, fmt.Errorf("partition %d: %w", po.Partition, po.Error)
			}
			if first {
				out[po.Partition] = po.FirstOffset
			} else {
				out[po.Partition] = po.LastOffset
			}
		}
		if len(out) != len(parts) {
			return nil, fmt.Errorf("got %d of %d partitions", len(out), len(parts))
		}
		return out, nil
	}
	starts, err := bound(true)
	if err != nil {
		return nil, fmt.Errorf("kafkabus: group offsets of %q on %q: first offsets: %w", group, topic, err)
	}
	ends, err := bound(false)
	if err != nil {
		return nil, fmt.Errorf("kafkabus: group offsets of %q on %q: end offsets: %w", group, topic, err)
	}
	of, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err == nil && of.Error != nil {
		err = of.Error
	}
	if errors.Is(err, kafka.GroupIdNotFound) {
		// A group that never existed (kfake says so; Kafka answers -1).
		of, err = &kafka.OffsetFetchResponse{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kafkabus: group offsets of %q on %q: committed offsets: %w", group, topic, err)
	}
	committed := make(map[int]int64, len(parts))
	for _, p := range of.Topics[topic] {
		switch {
		case errors.Is(p.Error, kafka.UnknownTopicOrPartition):
			// Nothing committed.
		case p.Error != nil:
			return nil, fmt.Errorf("kafkabus: group offsets of %q on %q: partition %d: %w", group, topic, p.Partition, p.Error)
		default:
			committed[p.Partition] = p.CommittedOffset
		}
	}
	out := make([]core.PartitionOffsets, 0, len(parts))
	for _, p := range parts {
		o := core.PartitionOffsets{Partition: p, Committed: -1, Start: starts[p], End: ends[p]}
		if c, ok := committed[p]; ok && c >= 0 {
			o.Committed = c
		}
		out = append(out, o)
	}
	return out, nil
}
