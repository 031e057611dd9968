package kafkabus_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/region/kafkabus"

	"github.com/chatmesh/chatmesh/internal/testenv"
)

// TestEmbeddedListenerSurvivesAcceptErrors: the broker's listener fails
// its first Accept calls with EMFILE (what running out of descriptors
// looks like). kfake's own accept loop exits on the first error and every
// client then hangs; the resilient listener retries, so the broker serves
// topics, produce and consume afterwards.
func TestEmbeddedListenerSurvivesAcceptErrors(t *testing.T) {
	cfg := kafkabus.EmbeddedConfig{}
	kafkabus.InjectAcceptErrors(&cfg, 3, syscall.EMFILE)
	e := startEmbedded(t, cfg)
	bus := newBus(t, e.Addrs())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureTopic(ctx, "acc", 1); err != nil {
		t.Fatalf("broker unusable after Accept errors: %v", err)
	}
	produce(t, ctx, bus, "acc", 0, 5)
	if n := e.AcceptErrors(); n < 3 {
		t.Fatalf("AcceptErrors = %d, want >= 3 (the injection did not happen)", n)
	}
}

func produce(t *testing.T, ctx context.Context, bus *kafkabus.Bus, topic string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ { // one Produce per record: one batch each
		if err := bus.Produce(ctx, core.BusRecord{Topic: topic, Key: []byte("k"), Value: fmt.Appendf(nil, "v%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// consumeAll has group consume topic until its committed offsets reach the
// end of every partition.
func consumeAll(t *testing.T, ctx context.Context, bus *kafkabus.Bus, topic, group string) []core.PartitionOffsets {
	t.Helper()
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- bus.Consume(cctx, core.ConsumeSpec{Topic: topic, Group: group}, func(context.Context, core.BusRecord) error { return nil })
	}()
	defer func() { ccancel(); <-done }()
	for {
		offs, err := bus.GroupOffsets(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		caught := true
		for _, o := range offs {
			caught = caught && (o.Committed == o.End || o.Committed == -1 && o.End == o.Start)
		}
		if caught {
			return offs
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %s did not commit to the end: %+v", group, offs)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestGroupOffsets: a missing topic has no partitions; a group that
// committed nothing reads -1; after consuming, committed equals the end.
func TestGroupOffsets(t *testing.T) {
	e := startEmbedded(t, kafkabus.EmbeddedConfig{})
	bus := newBus(t, e.Addrs())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if offs, err := bus.GroupOffsets(ctx, "absent", "g"); err != nil || offs != nil {
		t.Fatalf("missing topic: %+v %v", offs, err)
	}
	if err := bus.EnsureTopic(ctx, "go", 2); err != nil {
		t.Fatal(err)
	}
	produce(t, ctx, bus, "go", 0, 7)
	offs, err := bus.GroupOffsets(ctx, "go", "g")
	if err != nil || len(offs) != 2 {
		t.Fatalf("before consuming: %+v %v", offs, err)
	}
	total := int64(0)
	for _, o := range offs {
		if o.Committed != -1 || o.Start != 0 {
			t.Fatalf("before consuming: %+v", offs)
		}
		total += o.End
	}
	if total != 7 {
		t.Fatalf("ends add up to %d, want 7: %+v", total, offs)
	}
	consumeAll(t, ctx, bus, "go", "g")
}

// segment returns the path of the single segment file of topic-0 in dir
// and the byte offsets at which its record batches start.
func segment(t *testing.T, dir, topic string) (string, []int) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "partitions", topic+"-0", "*.dat"))
	if len(m) != 1 {
		t.Fatalf("segments of %s: %v", topic, m)
	}
	raw, err := os.ReadFile(m[0])
	if err != nil {
		t.Fatal(err)
	}
	var starts []int
	for pos := 0; pos+12 <= len(raw); pos += 12 + int(binary.BigEndian.Uint32(raw[pos+8:])) {
		starts = append(starts, pos)
	}
	return m[0], starts
}

// TestEmbeddedRefusesDamagedPartition: a persisted partition whose segment
// file was cut mid-batch, cut at a batch boundary, or corrupted makes
// StartEmbedded refuse with ErrDamaged and a recovery hint, without
// changing the directory (kfake alone would cut the file with one warning
// and run, and the group's committed offset, beyond the new end, would
// stall the partition).
func TestEmbeddedRefusesDamagedPartition(t *testing.T) {
	cases := []struct {
		name   string
		damage func(raw []byte, starts []int) []byte
	}{
		{"cut mid-batch", func(raw []byte, _ []int) []byte { return raw[:len(raw)-10] }},
		{"cut at a batch boundary", func(raw []byte, starts []int) []byte { return raw[:starts[len(starts)/2]] }},
		{"corrupted", func(raw []byte, starts []int) []byte { raw[starts[3]+40] ^= 0xff; return raw }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			e, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{DataDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			bus := newBus(t, e.Addrs())
			if err := bus.EnsureTopic(ctx, "dmg", 1); err != nil {
				t.Fatal(err)
			}
			produce(t, ctx, bus, "dmg", 0, 10)
			consumeAll(t, ctx, bus, "dmg", "g")
			if err := bus.Close(); err != nil {
				t.Fatal(err)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			path, starts := segment(t, dir, "dmg")
			if len(starts) != 10 {
				t.Fatalf("%d batches in the segment, want 10", len(starts))
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.damage(raw, starts), 0o644); err != nil {
				t.Fatal(err)
			}
			before := testenv.TreeDigest(t, dir)
			for attempt := 1; attempt <= 2; attempt++ {
				e, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{DataDir: dir})
				if err == nil {
					e.Close()
					t.Fatalf("attempt %d: damaged broker data accepted", attempt)
				}
				if !errors.Is(err, kafkabus.ErrDamaged) || !strings.Contains(err.Error(), "restore") {
					t.Fatalf("attempt %d: want ErrDamaged with a recovery hint, got %v", attempt, err)
				}
				if after := testenv.TreeDigest(t, dir); after != before {
					t.Fatalf("attempt %d: a refused start changed the data directory", attempt)
				}
			}
		})
	}
}

// TestEmbeddedCleanRestartAccepted: the check does not refuse an intact
// directory, after a clean restart with a rolled-over group.
func TestEmbeddedCleanRestartAccepted(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for round := 0; round < 2; round++ {
		e, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{DataDir: dir})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		bus := newBus(t, e.Addrs())
		if err := bus.EnsureTopic(ctx, "ok", 2); err != nil {
			t.Fatal(err)
		}
		produce(t, ctx, bus, "ok", round*5, round*5+5)
		consumeAll(t, ctx, bus, "ok", "g")
		bus.Close()
		e.Close()
	}
}
