package stack_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/kafkabus"

	"github.com/chatmesh/chatmesh/internal/testenv"
)

// broker starts an in-memory embedded broker shared by the stacks of a
// test, so that its committed offsets outlive each stack's store.
func broker(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e.Addrs()
}

// commitAt makes the sequencer group of ns commit offset off on every
// ingress partition, after producing n records to the topic: what a
// sequencer that handled them leaves behind.
func commitAt(t *testing.T, brokers []string, ns string, n int, off func(end int64) int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	names := region.NamesFor(ns)
	bus, err := kafkabus.New(kafkabus.Config{Brokers: brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	if err := bus.EnsureTopic(ctx, names.Ingress, 4); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := bus.Produce(ctx, core.BusRecord{Topic: names.Ingress, Key: []byte{byte(i)}, Value: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	offs, err := bus.GroupOffsets(ctx, names.Ingress, names.SequencerGroup)
	if err != nil {
		t.Fatal(err)
	}
	var commits []kafka.OffsetCommit
	for _, o := range offs {
		commits = append(commits, kafka.OffsetCommit{Partition: o.Partition, Offset: off(o.End)})
	}
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	resp, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: names.SequencerGroup, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{names.Ingress: commits}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range resp.Topics[names.Ingress] {
		if ps.Error != nil {
			t.Fatalf("commit partition %d: %v", ps.Partition, ps.Error)
		}
	}
}

func uniq(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// backends: the Pebble store, and a PostgreSQL schema when CHATMESH_PG_DSN
// is set (a new, empty schema is PostgreSQL's "deleted store").
func forEachStore(t *testing.T, f func(t *testing.T, cfg func() stack.Config)) {
	t.Run("pebble", func(t *testing.T) {
		f(t, func() stack.Config { return stack.Config{DataDir: t.TempDir(), WTAddr: "-"} })
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := testenv.PostgresDSN(t) // fails under CHATMESH_REQUIRE_PG=1
		f(t, func() stack.Config {
			return stack.Config{DataDir: t.TempDir(), WTAddr: "-", PostgresDSN: dsn, PGSchema: uniq("integrity_")}
		})
	})
}

func start(t *testing.T, cfg stack.Config) (*stack.Stack, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, cfg)
	if err == nil {
		t.Cleanup(func() { s.Shutdown(context.Background()) })
	}
	return s, err
}

// TestNewStoreWithCommittedOffsetsRefused: the sequencer group committed
// records (a previous store sequenced them) and the store is new: the
// region refuses with ErrStoreMissing, twice (the refusal does not mark
// the store), while a new store with an untouched group starts, marks
// itself, and restarts fine after records were committed.
func TestNewStoreWithCommittedOffsetsRefused(t *testing.T) {
	forEachStore(t, func(t *testing.T, newCfg func() stack.Config) {
		brokers := broker(t)
		ns := uniq("n")
		commitAt(t, brokers, ns, 8, func(end int64) int64 { return end })
		cfg := newCfg()
		cfg.KafkaBrokers, cfg.Namespace = brokers, ns
		for attempt := 1; attempt <= 2; attempt++ {
			_, err := start(t, cfg)
			if !errors.Is(err, region.ErrStoreMissing) {
				t.Fatalf("attempt %d: want ErrStoreMissing, got %v", attempt, err)
			}
			if !strings.Contains(err.Error(), "restore") {
				t.Fatalf("attempt %d: no recovery advice: %v", attempt, err)
			}
		}

		// The control: a group that committed nothing.
		ok := newCfg()
		ok.KafkaBrokers, ok.Namespace = brokers, uniq("ok")
		s, err := start(t, ok)
		if err != nil {
			t.Fatalf("new store, new group: %v", err)
		}
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		commitAt(t, brokers, ok.Namespace, 8, func(end int64) int64 { return end })
		if _, err := start(t, ok); err != nil {
			t.Fatalf("marked store with committed offsets: %v", err)
		}
	})
}

// TestCommittedBeyondLogEndRefused: a committed offset past a partition's
// end (the broker lost records the sequencer handled) is refused with
// ErrBusTruncated instead of a consumer that waits for the log to grow
// back and skips everything written meanwhile.
func TestCommittedBeyondLogEndRefused(t *testing.T) {
	brokers := broker(t)
	ns := uniq("b")
	commitAt(t, brokers, ns, 4, func(end int64) int64 { return end + 3 })
	_, err := start(t, stack.Config{DataDir: t.TempDir(), WTAddr: "-", KafkaBrokers: brokers, Namespace: ns})
	if !errors.Is(err, region.ErrBusTruncated) || !strings.Contains(err.Error(), "log ends at") {
		t.Fatalf("want ErrBusTruncated naming the partition, got %v", err)
	}
}
