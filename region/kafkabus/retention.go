package kafkabus

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chatmesh/chatmesh/core"
)

// DefaultTopicRetention is Config.TopicRetention's default: records are
// kept 7 days, with no size limit. Kafka deletes by time and size only,
// never by consumer offsets, so for the topics a consumer group must read
// completely (ingress, links) the time must exceed any lag the group can
// build up, and a size limit would delete a backlog before it is read.
var DefaultTopicRetention = core.TopicRetention{Time: 7 * 24 * time.Hour, Bytes: -1}

var _ core.TopicConfigurer = (*Bus)(nil)

// retention fills r's zero fields from the bus's default.
func (b *Bus) retention(r core.TopicRetention) core.TopicRetention {
	def := b.cfg.TopicRetention
	if def.Time <= 0 {
		def.Time = DefaultTopicRetention.Time
	}
	if def.Bytes == 0 {
		def.Bytes = DefaultTopicRetention.Bytes
	}
	if r.Time <= 0 {
		r.Time = def.Time
	}
	if r.Bytes == 0 {
		r.Bytes = def.Bytes
	}
	if r.Bytes < 0 {
		r.Bytes = -1
	}
	return r
}

// retentionValues are the topic configs of r.
func retentionValues(r core.TopicRetention) map[string]string {
	return map[string]string{
		"retention.ms":    strconv.FormatInt(r.Time.Milliseconds(), 10),
		"retention.bytes": strconv.FormatInt(r.Bytes, 10),
	}
}

func retentionEntries(r core.TopicRetention) []kafka.ConfigEntry {
	var out []kafka.ConfigEntry
	for k, v := range retentionValues(r) {
		out = append(out, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
	}
	return out
}

// reconcileRetention sets topic's retention.ms and retention.bytes to r's
// where they differ (a topic created before, by another version or by an
// operator): DescribeConfigs, then IncrementalAlterConfigs SET.
func (b *Bus) reconcileRetention(ctx context.Context, topic string, r core.TopicRetention) error {
	want := retentionValues(r)
	have, err := b.TopicConfigs(ctx, topic)
	if err != nil {
		return err
	}
	var set []kafka.IncrementalAlterConfigsRequestConfig
	for k, v := range want {
		if have[k] != v {
			set = append(set, kafka.IncrementalAlterConfigsRequestConfig{Name: k, Value: v, ConfigOperation: kafka.ConfigOperationSet})
		}
	}
	if len(set) == 0 {
		return nil
	}
	c := &kafka.Client{Addr: kafka.TCP(b.cfg.Brokers...), Transport: b.transport, Timeout: b.cfg.DialTimeout}
	res, err := c.IncrementalAlterConfigs(ctx, &kafka.IncrementalAlterConfigsRequest{Resources: []kafka.IncrementalAlterConfigsRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, Configs: set,
	}}})
	if err != nil {
		return fmt.Errorf("set retention: %w", err)
	}
	for _, rr := range res.Resources {
		if rr.Error != nil {
			return fmt.Errorf("set retention: %w", rr.Error)
		}
	}
	b.log.Info("topic retention set", "topic", topic, "retention_ms", want["retention.ms"], "retention_bytes", want["retention.bytes"],
		"was_ms", have["retention.ms"], "was_bytes", have["retention.bytes"])
	return nil
}

// TopicConfigs returns topic's retention.ms and retention.bytes as the
// cluster reports them (explicit or default).
func (b *Bus) TopicConfigs(ctx context.Context, topic string) (map[string]string, error) {
	c := &kafka.Client{Addr: kafka.TCP(b.cfg.Brokers...), Transport: b.transport, Timeout: b.cfg.DialTimeout}
	res, err := c.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"retention.ms", "retention.bytes"},
	}}})
	if err != nil {
		return nil, fmt.Errorf("describe configs of %q: %w", topic, err)
	}
	out := map[string]string{}
	for _, rr := range res.Resources {
		if rr.Error != nil {
			return nil, fmt.Errorf("describe configs of %q: %w", topic, rr.Error)
		}
		for _, e := range rr.ConfigEntries {
			out[e.ConfigName] = e.ConfigValue
		}
	}
	return out, nil
}
