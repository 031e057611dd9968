package kafkabus_test

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/region/bustest"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// testTopicRetention: EnsureTopic sets the default retention at creation,
// EnsureTopicRetention sets another at creation and reconciles an existing
// topic's.
func testTopicRetention(t *testing.T, brokers []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bus := newBus(t, brokers)
	want := func(topic, ms, bytes string) {
		t.Helper()
		// A change reaches every broker of a cluster a moment after the
		// controller accepted it, and DescribeConfigs may ask any of them.
		for deadline := time.Now().Add(30 * time.Second); ; {
			got, err := bus.TopicConfigs(ctx, topic)
			if err != nil {
				t.Fatalf("TopicConfigs(%s): %v", topic, err)
			}
			if got["retention.ms"] == ms && got["retention.bytes"] == bytes {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: retention.ms=%q retention.bytes=%q, want %s and %s", topic, got["retention.ms"], got["retention.bytes"], ms, bytes)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	plain := bustest.Name(t, "plain")
	if err := bus.EnsureTopic(ctx, plain, 2); err != nil {
		t.Fatal(err)
	}
	want(plain, "604800000", "-1")
	// Reconciled on an existing topic (a second client, as a restarted
	// process with another policy).
	if err := newBus(t, brokers).EnsureTopicRetention(ctx, plain, 2, core.TopicRetention{Time: time.Hour, Bytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	want(plain, "3600000", "1048576")
	// And back.
	if err := bus.EnsureTopic(ctx, plain, 2); err != nil {
		t.Fatal(err)
	}
	want(plain, "604800000", "-1")

	tail := bustest.Name(t, "tail")
	if err := bus.EnsureTopicRetention(ctx, tail, 1, core.TopicRetention{Time: 2 * time.Hour, Bytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	want(tail, "7200000", "67108864")
}

func TestTopicRetentionEmbedded(t *testing.T) {
	e := startEmbedded(t, kafkabus.EmbeddedConfig{})
	testTopicRetention(t, e.Addrs())
}

func TestTopicRetentionRealKafka(t *testing.T) {
	testTopicRetention(t, testenv.KafkaBrokers(t))
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(filepath.Join(dir, "partitions"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return n
}

// TestEmbeddedTrimBounded streams records through a group-consumed topic
// (as ingress) and a group-less one with a size limit (as an edge topic),
// trimming after every round: the broker's data stays bounded, a second
// group that stopped consuming holds the log start at its committed
// offset (nothing it has not consumed is deleted, and it reads on from
// there), and a restart loads only what is left and resumes the groups.
func TestEmbeddedTrimBounded(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const segment = 64 << 10
	e := startEmbedded(t, kafkabus.EmbeddedConfig{DataDir: dir, TrimInterval: -1, SegmentBytes: segment})
	bus := newBus(t, e.Addrs())
	const in, edge, group, slow = "in", "edge.x", "seq", "slow"
	if err := bus.EnsureTopic(ctx, in, 2); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureTopicRetention(ctx, edge, 1, core.TopicRetention{Time: time.Hour, Bytes: 128 << 10}); err != nil {
		t.Fatal(err)
	}
	value := []byte(strings.Repeat("x", 1000))
	produce := func(b core.Bus, round, n int) {
		t.Helper()
		recs := make([]core.BusRecord, 0, 2*n)
		for i := range n {
			k := fmt.Appendf(nil, "r%d-%d", round, i)
			recs = append(recs, core.BusRecord{Topic: in, Key: k, Value: value}, core.BusRecord{Topic: edge, Key: k, Value: value})
		}
		if err := b.Produce(ctx, recs...); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	consume := func(b core.Bus, g string, until func() bool) {
		t.Helper()
		cctx, ccancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- b.Consume(cctx, core.ConsumeSpec{Topic: in, Group: g}, func(_ context.Context, r core.BusRecord) error {
				mu.Lock()
				seen[g+"/"+string(r.Key)]++
				mu.Unlock()
				return nil
			})
		}()
		for ctx.Err() == nil {
			mu.Lock()
			ok := until()
			mu.Unlock()
			if ok {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		ccancel() // Consume commits what it handled before returning
		<-done
		if ctx.Err() != nil {
			t.Fatal("timed out consuming")
		}
	}
	count := func(g string) int {
		n := 0
		for k := range seen {
			if strings.HasPrefix(k, g+"/") {
				n++
			}
		}
		return n
	}

	const rounds, perRound = 12, 200
	// The slow group reads the first round only, then stops.
	produce(bus, 0, perRound)
	consume(bus, slow, func() bool { return count(slow) == perRound })

	var peak int64
	for round := 1; round <= rounds; round++ {
		produce(bus, round, perRound)
		consume(bus, group, func() bool { return count(group) == (round+1)*perRound })
		if _, err := e.Trim(ctx); err != nil {
			t.Fatalf("Trim: %v", err)
		}
		peak = max(peak, dirBytes(t, dir))
	}
	// The slow group holds "in" at its commit; "edge.x" is bounded by size.
	start, end := e.LogBounds(in)
	var slowCommitted []int64
	{
		offs, err := bus.GroupOffsets(ctx, in, slow)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range offs {
			slowCommitted = append(slowCommitted, o.Committed)
		}
	}
	for p := range start {
		if start[p] > slowCommitted[p] {
			t.Fatalf("partition %d of %s starts at %d, beyond the slow group's commit %d: unconsumed records deleted", p, in, start[p], slowCommitted[p])
		}
	}
	es, ee := e.LogBounds(edge)
	if ee[0]-es[0] > 200 {
		t.Fatalf("%s keeps %d records, retention.bytes allows about 131", edge, ee[0]-es[0])
	}
	// Once the slow group catches up, "in" is trimmed to the groups' floor.
	consume(bus, slow, func() bool { return count(slow) == (rounds+1)*perRound })
	if _, err := e.Trim(ctx); err != nil {
		t.Fatal(err)
	}
	start, end = e.LogBounds(in)
	var left int64
	for p := range start {
		left += end[p] - start[p]
	}
	if left > int64(len(start)) { // the last record of each partition stays
		t.Fatalf("%d records of %s left after both groups consumed everything", left, in)
	}
	// Bound: ~2 topics' worth of one open segment per partition plus the
	// edge topic's retention, far below the 2×13×200 KB streamed.
	streamed := int64(2 * (rounds + 1) * perRound * len(value))
	after := dirBytes(t, dir)
	bound := int64(3*2*segment + 128<<10 + 64<<10)
	t.Logf("streamed %d KB; broker data peaked at %d KB, %d KB after the last trim (bound %d KB)", streamed>>10, peak>>10, after>>10, bound>>10)
	if after > bound {
		t.Fatalf("broker data %d bytes after trimming, bound %d (streamed %d)", after, bound, streamed)
	}

	// Restart: only what is left is loaded, and the group resumes.
	addr := e.Addrs()[0]
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if n := dirBytes(t, dir); n > bound {
		t.Fatalf("broker data %d bytes at restart, bound %d", n, bound)
	}
	e2 := startEmbedded(t, kafkabus.EmbeddedConfig{DataDir: dir, Addr: addr, TrimInterval: -1, SegmentBytes: segment})
	s2, _ := e2.LogBounds(in)
	for p := range s2 {
		if s2[p] < start[p] {
			t.Errorf("partition %d starts at %d after restart, %d before: trimmed records came back", p, s2[p], start[p])
		}
	}
	bus2 := newBus(t, e2.Addrs())
	produce(bus2, 100, 10)
	consume(bus2, group, func() bool { return count(group) == (rounds+1)*perRound+10 })
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("%s handled %d times after restart", k, n)
		}
	}
}
