package kafkabus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// Embedded broker retention (see the package documentation, Retention).
const (
	// DefaultEmbeddedTrimInterval is EmbeddedConfig.TrimInterval's default.
	DefaultEmbeddedTrimInterval = 30 * time.Second
	// DefaultEmbeddedSegmentBytes is EmbeddedConfig.SegmentBytes' default:
	// the broker deletes whole segment files only, so a partition keeps
	// up to one segment of records below its log start on disk.
	DefaultEmbeddedSegmentBytes = 4 << 20
	// kfakeCleanerOff is the interval given to kfake's own retention
	// ticker: effectively never, so that only Trim deletes records.
	kfakeCleanerOff = "315360000000" // 10 years in ms
)

// TrimStats is what one Trim did.
type TrimStats struct {
	Partitions int   // partitions whose log start moved
	Records    int64 // records deleted (log start offsets moved by)
}

// Trim deletes records from the embedded broker, partition by partition:
//
//   - A topic on which some consumer group has committed offsets (ingress,
//     links) is trimmed to the lowest committed offset of all those groups
//     (a partition a group has no commit for is not trimmed): a record is
//     deleted only once every group has consumed it, whatever its age.
//   - Never the last record of a partition: kfake restores a partition's
//     high watermark from its newest segment file on restart, so an
//     emptied partition would come back at offset 0, below every
//     committed offset.
//   - Any other topic (edge topics, presence, dead letters: read live,
//     without a group) is trimmed by its retention.ms and retention.bytes
//     topic configs (EnsureTopic sets them): everything once the newest
//     record is older than retention.ms, and the oldest records beyond
//     retention.bytes (estimated from the partition's average record size).
//
// kfake's own time and size retention is turned off (it does not look at
// committed offsets). StartEmbedded runs Trim every TrimInterval.
func (e *Embedded) Trim(ctx context.Context) (TrimStats, error) {
	var st TrimStats
	c := &kafka.Client{Addr: kafka.TCP(e.addrs...), Timeout: 10 * time.Second}
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		return st, fmt.Errorf("kafkabus: trim: metadata: %w", err)
	}
	lg, err := c.ListGroups(ctx, &kafka.ListGroupsRequest{})
	if err != nil {
		return st, fmt.Errorf("kafkabus: trim: list groups: %w", err)
	}
	// floors[topic][partition]: the lowest committed offset over the
	// groups that committed on the topic; -1 blocks trimming.
	floors := map[string]map[int32]int64{}
	for _, g := range lg.Groups {
		gi := e.c.GroupInfo(g.GroupID)
		if gi == nil {
			continue
		}
		for topic, commits := range gi.Commits {
			f := floors[topic]
			if f == nil {
				f = map[int32]int64{}
				floors[topic] = f
			}
			for p, cm := range commits {
				if old, ok := f[p]; !ok || cm.Offset < old {
					f[p] = cm.Offset
				}
			}
			// A partition this group never committed is not consumed by it
			// yet: block it.
			for _, pi := range e.c.PartitionInfos(topic) {
				if _, ok := commits[pi.Partition]; !ok {
					f[pi.Partition] = -1
				}
			}
		}
	}
	now := time.Now().UnixMilli()
	for _, t := range md.Topics {
		if t.Error != nil || strings.HasPrefix(t.Name, "__") {
			continue
		}
		f, grouped := floors[t.Name]
		retMs, retBytes := e.topicRetention(t.Name)
		for _, pi := range e.c.PartitionInfos(t.Name) {
			lso, hwm := pi.LogStartOffset, pi.HighWatermark
			target := lso
			if grouped {
				if fl, ok := f[pi.Partition]; ok && fl >= 0 {
					target = min(fl, hwm)
				}
			} else {
				if retMs >= 0 && pi.MaxTimestamp > 0 && now-pi.MaxTimestamp >= retMs {
					target = hwm
				} else if retBytes >= 0 && pi.NumBytes > retBytes && hwm > lso {
					keep := (hwm - lso) * retBytes / pi.NumBytes
					target = hwm - keep
				}
			}
			// Keep the last record: kfake restores a partition's high
			// watermark from its newest segment file, so an emptied
			// partition would restart at offset 0, below the groups'
			// committed offsets.
			target = min(target, hwm-1)
			if target <= lso {
				continue
			}
			if err := e.c.DeleteRecords(t.Name, pi.Partition, target); err != nil {
				return st, fmt.Errorf("kafkabus: trim %s/%d to %d: %w", t.Name, pi.Partition, target, err)
			}
			st.Partitions++
			st.Records += target - lso
		}
	}
	return st, nil
}

// topicRetention reads a topic's retention.ms and retention.bytes (-1: no
// limit); missing or unparsable values are DefaultTopicRetention's.
func (e *Embedded) topicRetention(topic string) (ms, bytes int64) {
	ms, bytes = DefaultTopicRetention.Time.Milliseconds(), DefaultTopicRetention.Bytes
	ti := e.c.TopicInfo(topic)
	if ti == nil {
		return ms, bytes
	}
	if v := ti.Configs["retention.ms"]; v != nil {
		if n, err := strconv.ParseInt(*v, 10, 64); err == nil {
			ms = n
		}
	}
	if v := ti.Configs["retention.bytes"]; v != nil {
		if n, err := strconv.ParseInt(*v, 10, 64); err == nil {
			bytes = n
		}
	}
	return ms, bytes
}

// runTrim runs Trim every interval until stop is closed.
func (e *Embedded) runTrim(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), interval)
		st, err := e.Trim(ctx)
		cancel()
		switch {
		case err != nil:
			e.log.Warn("embedded broker: trim failed", "err", err)
		case st.Records > 0:
			e.log.Debug("embedded broker: trimmed", "partitions", st.Partitions, "records", st.Records)
		}
	}
}
