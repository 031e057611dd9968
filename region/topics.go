package region

import (
	"context"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// TopicRetention is the retention of the topics a region creates (Kafka's
// retention.ms and retention.bytes; see region/kafkabus's documentation,
// Retention). Zero fields take the defaults below.
type TopicRetention struct {
	// Ingress is for the ingress topic, which the sequencer's group must
	// read completely. Default 7 days, no size limit: Kafka deletes by
	// age and size whatever the groups committed, so the time must exceed
	// any lag the sequencer can build up (an outage longer than that
	// loses requests, which the region reports, see ErrBusExpired), and a
	// size limit would delete a backlog unread. Link topics (read
	// completely by the receiving region's group) get the bus's default
	// retention (kafkabus.Config.TopicRetention, also 7 days): both
	// regions create them, and must agree.
	Ingress core.TopicRetention
	// Live is for the presence topic, read live without a group (a
	// record missed is repaired by the next snapshot). Default
	// core.LiveTopicRetention: 10 minutes, 16 MiB per partition.
	Live core.TopicRetention
	// DeadLetter is for the dead-letter topic, kept for the operator.
	// Default 30 days, 256 MiB.
	DeadLetter core.TopicRetention
}

func (t *TopicRetention) fill() {
	def := func(r *core.TopicRetention, d core.TopicRetention) {
		if r.Time <= 0 {
			r.Time = d.Time
		}
		if r.Bytes == 0 {
			r.Bytes = d.Bytes
		}
	}
	def(&t.Ingress, core.TopicRetention{Time: 7 * 24 * time.Hour, Bytes: -1})
	def(&t.Live, core.LiveTopicRetention)
	def(&t.DeadLetter, core.TopicRetention{Time: 30 * 24 * time.Hour, Bytes: 256 << 20})
}

// ensureTopic creates topic (or reconciles its retention) with the
// retention tr when the bus can set one, else with the bus's default.
func (r *Region) ensureTopic(ctx context.Context, bus core.Bus, topic string, partitions int, tr core.TopicRetention) error {
	if tc, ok := bus.(core.TopicConfigurer); ok {
		return tc.EnsureTopicRetention(ctx, topic, partitions, tr)
	}
	return bus.EnsureTopic(ctx, topic, partitions)
}
