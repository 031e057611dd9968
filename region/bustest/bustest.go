package bustest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// Environment variables that select a real Kafka cluster.
const (
	// EnvBrokers lists a real cluster's bootstrap brokers, comma-separated.
	EnvBrokers = "CHATMESH_KAFKA_BROKERS"
	// EnvRequire, when "1", turns a missing EnvBrokers into a test failure.
	EnvRequire = "CHATMESH_REQUIRE_KAFKA"
)

// RealKafkaBrokers returns the brokers named by CHATMESH_KAFKA_BROKERS. When
// it is unset the test is skipped, or fails if CHATMESH_REQUIRE_KAFKA=1.
//
// Deprecated: tests use internal/testenv.KafkaBrokers, the one place that
// decides between skipping and failing (this package may not import it).
func RealKafkaBrokers(t testing.TB) []string {
	t.Helper()
	v := strings.TrimSpace(os.Getenv(EnvBrokers))
	if v == "" {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("%s=1 but %s is not set (start one with deploy/kafka/cluster.sh start)", EnvRequire, EnvBrokers)
		}
		t.Skipf("%s not set: skipping real-Kafka tests (deploy/kafka/cluster.sh start prints it)", EnvBrokers)
	}
	var out []string
	for _, b := range strings.Split(v, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// How long the suite waits for an expected outcome before failing. Generous:
// it detects hangs and losses, it does not measure speed.
const waitLimit = 60 * time.Second

// Run runs the core.Bus contract suite. newBus returns a fresh bus connected
// to the cluster under test and registers its Close with t.Cleanup; it is
// called several times per test (a "restart" is a new bus). Every test uses
// its own topics and groups, so the cluster may be shared and reused.
func Run(t *testing.T, newBus func(t *testing.T) core.Bus) {
	t.Run("EnsureTopicIdempotent", func(t *testing.T) { testEnsureTopic(t, newBus) })
	t.Run("PerKeyOrder", func(t *testing.T) { testPerKeyOrder(t, newBus) })
	t.Run("GroupConsumesAll", func(t *testing.T) { testGroupConsumesAll(t, newBus) })
	t.Run("CommitThenRestartResumes", func(t *testing.T) { testCommitResume(t, newBus) })
	t.Run("HandlerErrorRetriedSameRecord", func(t *testing.T) { testHandlerRetry(t, newBus) })
	t.Run("LiveTailSeesOnlyNew", func(t *testing.T) { testLiveTail(t, newBus) })
	t.Run("TwoMembersSharePartitions", func(t *testing.T) { testTwoMembers(t, newBus) })
	t.Run("BatchesInOrderAndRetried", func(t *testing.T) { testBatches(t, newBus) })
	t.Run("PipelinedOverlapRedoCommit", func(t *testing.T) { testPipelined(t, newBus) })
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)

// Name returns a topic or group name unique to this test and this run.
func Name(t testing.TB, what string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := unsafeName.ReplaceAllString(t.Name(), "-")
	if len(n) > 80 {
		n = n[len(n)-80:]
	}
	return fmt.Sprintf("bt-%s-%s-%s", n, what, hex.EncodeToString(b[:]))
}

// consumer runs Consume in a goroutine owned by the test; stop cancels it
// and waits for it to return.
type consumer struct {
	cancel context.CancelFunc
	done   chan error
	ready  chan struct{}
}

func startConsumer(t *testing.T, bus core.Bus, topic, group string, h core.Handler) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &consumer{cancel: cancel, done: make(chan error, 1), ready: make(chan struct{})}
	var once sync.Once
	spec := core.ConsumeSpec{Topic: topic, Group: group, OnReady: func() { once.Do(func() { close(c.ready) }) }}
	go func() { c.done <- bus.Consume(ctx, spec, h) }()
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *consumer) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-c.ready:
	case err := <-c.done:
		c.done <- err
		t.Fatalf("consumer ended before OnReady: %v", err)
	case <-time.After(waitLimit):
		t.Fatalf("consumer not ready after %v", waitLimit)
	}
}

// stop cancels the consumer and waits for Consume to return; it fails the
// test if Consume returns anything but context.Canceled or hangs.
func (c *consumer) stop(t *testing.T) {
	t.Helper()
	if c.cancel == nil {
		return
	}
	c.cancel()
	c.cancel = nil
	select {
	case err := <-c.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Consume returned %v after cancel, want context.Canceled", err)
		}
	case <-time.After(waitLimit):
		t.Errorf("Consume did not return within %v of cancel", waitLimit)
	}
}

// seen collects handled records.
type seen struct {
	mu    sync.Mutex
	count map[string]int   // value -> times handled
	order map[string][]int // key -> sequence numbers in handling order
	parts map[string]map[int]bool
	by    map[string]int // value -> member that handled it first
}

func newSeen() *seen {
	return &seen{count: map[string]int{}, order: map[string][]int{}, parts: map[string]map[int]bool{}, by: map[string]int{}}
}

// add records rec, whose value is "key/seq".
func (s *seen) add(rec core.BusRecord, member int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := string(rec.Value)
	s.count[v]++
	if _, ok := s.by[v]; !ok {
		s.by[v] = member
	}
	k := string(rec.Key)
	if i := strings.LastIndexByte(v, '/'); i >= 0 {
		if n, err := strconv.Atoi(v[i+1:]); err == nil {
			s.order[k] = append(s.order[k], n)
		}
	}
	if s.parts[k] == nil {
		s.parts[k] = map[int]bool{}
	}
	s.parts[k][rec.Partition] = true
}

func (s *seen) handler(member int) core.Handler {
	return func(_ context.Context, rec core.BusRecord) error {
		s.add(rec, member)
		return nil
	}
}

// missing returns how many of vals were not handled yet.
func (s *seen) missing(vals []string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range vals {
		if s.count[v] == 0 {
			n++
		}
	}
	return n
}

func (s *seen) duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := 0
	for _, c := range s.count {
		d += c - 1
	}
	return d
}

func (s *seen) waitAll(t *testing.T, vals []string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for s.missing(vals) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d records never handled within %v", s.missing(vals), len(vals), waitLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// produceKeys produces perKey records for each of keys, "key/0".."key/perKey-1"
// in order per key (keys concurrently, in batches of batch records), and
// returns all values.
func produceKeys(t *testing.T, bus core.Bus, topic string, keys []string, perKey, batch int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(keys))
	for _, k := range keys {
		wg.Go(func() {
			for i := 0; i < perKey; i += batch {
				var recs []core.BusRecord
				for j := i; j < min(i+batch, perKey); j++ {
					recs = append(recs, core.BusRecord{Topic: topic, Key: []byte(k), Value: fmt.Appendf(nil, "%s/%d", k, j)})
				}
				if err := bus.Produce(ctx, recs...); err != nil {
					errs <- fmt.Errorf("produce key %s: %w", k, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var vals []string
	for _, k := range keys {
		for i := range perKey {
			vals = append(vals, fmt.Sprintf("%s/%d", k, i))
		}
	}
	return vals
}

func keysN(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("%s%03d", prefix, i)
	}
	return ks
}

func ensure(t *testing.T, bus core.Bus, topic string, partitions int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := bus.EnsureTopic(ctx, topic, partitions); err != nil {
		t.Fatalf("EnsureTopic(%s, %d): %v", topic, partitions, err)
	}
}

func testEnsureTopic(t *testing.T, newBus func(*testing.T) core.Bus) {
	bus := newBus(t)
	topic := Name(t, "t")
	ensure(t, bus, topic, 3)
	ensure(t, bus, topic, 3) // again: no error
	// A second client sees the topic and may "create" it again.
	other := newBus(t)
	ensure(t, other, topic, 3)
	// The topic is usable from the other client at once.
	vals := produceKeys(t, other, topic, keysN("k", 3), 1, 1)
	s := newSeen()
	c := startConsumer(t, bus, topic, Name(t, "g"), s.handler(0))
	c.waitReady(t)
	s.waitAll(t, vals)

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := bus.EnsureTopic(ctx, Name(t, "bad"), 0); err == nil {
		t.Error("EnsureTopic with 0 partitions succeeded")
	}
	// Consuming a topic that does not exist is an error, not a hang.
	err := bus.Consume(ctx, core.ConsumeSpec{Topic: Name(t, "absent"), Group: Name(t, "g")},
		func(context.Context, core.BusRecord) error { return nil })
	if err == nil || ctx.Err() != nil {
		t.Errorf("Consume of a missing topic = %v (ctx err %v), want an immediate error", err, ctx.Err())
	}
}

// rebalancesOf returns how many times the group consumers of bus
// rebalanced, when the bus counts its group generations (kafkabus does):
// a broker killed by another test of the shared cluster, or a session
// lost on a loaded machine, moves the group to a new generation, which
// resumes each partition from its last commit and hands records since
// then over again. 0 for a bus that does not count them.
func rebalancesOf(t *testing.T, bus core.Bus) uint64 {
	g, ok := bus.(interface{ Generations() uint64 })
	if !ok || g.Generations() <= 1 {
		return 0
	}
	n := g.Generations() - 1
	t.Logf("the consumer's group rebalanced %d time(s): records since the last commit may be handled again", n)
	return n
}

// checkOrder fails t unless ord, the sequence numbers of one key in
// handling order, runs 0, 1, 2, ... in order, each once; after each of up
// to rebalances rebalances it may rewind (to a record already handled,
// resuming from the last commit), never skip ahead.
func checkOrder(t *testing.T, key string, ord []int, rebalances uint64) {
	t.Helper()
	rewinds := uint64(0)
	for i, n := range ord {
		switch {
		case i == 0 && n == 0, i > 0 && n == ord[i-1]+1:
		case i > 0 && n <= ord[i-1] && rewinds < rebalances:
			rewinds++
		default:
			t.Fatalf("key %s: record %d handled at position %d (order %v...; %d rebalance(s))", key, n, i, ord[:min(len(ord), i+3)], rebalances)
		}
	}
}

func testPerKeyOrder(t *testing.T, newBus func(*testing.T) core.Bus) {
	bus := newBus(t)
	topic := Name(t, "t")
	ensure(t, bus, topic, 4)
	s := newSeen()
	c := startConsumer(t, bus, topic, Name(t, "g"), s.handler(0))
	c.waitReady(t)
	keys := keysN("conv-", 12)
	vals := produceKeys(t, bus, topic, keys, 100, 7)
	s.waitAll(t, vals)
	c.stop(t)
	rebalances := rebalancesOf(t, bus)

	s.mu.Lock()
	defer s.mu.Unlock()
	parts := map[int]bool{}
	for _, k := range keys {
		if len(s.parts[k]) != 1 {
			t.Errorf("key %s landed in %d partitions, want 1", k, len(s.parts[k]))
		}
		for p := range s.parts[k] {
			parts[p] = true
		}
		// One consumer: in order, and exactly once unless the group
		// rebalanced.
		checkOrder(t, k, s.order[k], rebalances)
	}
	if len(parts) < 2 {
		t.Errorf("12 keys hashed into %d partition(s) of 4", len(parts))
	}
}

func testGroupConsumesAll(t *testing.T, newBus func(*testing.T) core.Bus) {
	bus := newBus(t)
	topic := Name(t, "t")
	ensure(t, bus, topic, 6)
	// Records produced before the group exists are consumed too (a new
	// group starts at the earliest offset).
	before := produceKeys(t, bus, topic, keysN("a", 20), 10, 3)
	s := newSeen()
	c := startConsumer(t, bus, topic, Name(t, "g"), s.handler(0))
	c.waitReady(t)
	after := produceKeys(t, newBus(t), topic, keysN("b", 50), 20, 1)
	s.waitAll(t, append(before, after...))
	if d := s.duplicates(); d != 0 {
		t.Logf("duplicates with one stable member: %d", d)
	}
}

func testCommitResume(t *testing.T, newBus func(*testing.T) core.Bus) {
	topic := Name(t, "t")
	group := Name(t, "g")
	prod := newBus(t)
	ensure(t, prod, topic, 4)

	// Round 1: consume everything, then stop the consumer (its Close commits).
	s1 := newSeen()
	c1 := startConsumer(t, newBus(t), topic, group, s1.handler(1))
	c1.waitReady(t)
	first := produceKeys(t, prod, topic, keysN("r1-", 10), 30, 5)
	s1.waitAll(t, first)
	c1.stop(t)

	// Round 2: stop a consumer while records are still flowing.
	// Its handler is slow, so the stop lands mid-stream.
	s2 := newSeen()
	slow := func(ctx context.Context, rec core.BusRecord) error {
		s2.add(rec, 2)
		time.Sleep(2 * time.Millisecond)
		return nil
	}
	c2 := startConsumer(t, newBus(t), topic, group, slow)
	c2.waitReady(t)
	second := produceKeys(t, prod, topic, keysN("r2-", 10), 30, 5)
	deadline := time.Now().Add(waitLimit)
	for len(second)-s2.missing(second) < 40 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	c2.stop(t)

	// Round 3: a new consumer (a restarted process) in the same group
	// resumes after the committed offsets: nothing of round 2 that round 2
	// did not handle is lost, and little of round 1 is handled again.
	third := produceKeys(t, prod, topic, keysN("r3-", 10), 30, 5)
	s3 := newSeen()
	c3 := startConsumer(t, newBus(t), topic, group, s3.handler(3))
	c3.waitReady(t)
	s3.waitAll(t, third)

	lost := 0
	for _, v := range second {
		s2.mu.Lock()
		n2 := s2.count[v]
		s2.mu.Unlock()
		s3.mu.Lock()
		n3 := s3.count[v]
		s3.mu.Unlock()
		if n2+n3 == 0 {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d records of round 2 were handled by neither the stopped nor the resumed consumer", lost)
	}
	redoneFirst := len(first) - s3.missing(first)
	redoneSecond := 0
	for _, v := range second {
		s2.mu.Lock()
		n2 := s2.count[v]
		s2.mu.Unlock()
		s3.mu.Lock()
		n3 := s3.count[v]
		s3.mu.Unlock()
		if n2 > 0 && n3 > 0 {
			redoneSecond++
		}
	}
	t.Logf("resume after commit: duplicates: %d of %d cleanly stopped round-1 records, %d of %d round-2 records (stopped mid-stream, %d handled before stop)",
		redoneFirst, len(first), redoneSecond, len(second), len(second)-s2.missing(second))
	if redoneFirst > 0 {
		t.Errorf("%d records handled and committed by a cleanly stopped consumer were handled again", redoneFirst)
	}
}

func testHandlerRetry(t *testing.T, newBus func(*testing.T) core.Bus) {
	bus := newBus(t)
	topic := Name(t, "t")
	ensure(t, bus, topic, 1)
	const failures = 3
	var (
		mu    sync.Mutex
		calls []string // values in call order
		errs  int
	)
	h := func(_ context.Context, rec core.BusRecord) error {
		mu.Lock()
		defer mu.Unlock()
		v := string(rec.Value)
		calls = append(calls, fmt.Sprintf("%s@%d", v, rec.Offset))
		if v == "k/5" && errs < failures {
			errs++
			return errors.New("transient failure")
		}
		return nil
	}
	c := startConsumer(t, bus, topic, Name(t, "g"), h)
	c.waitReady(t)
	produceKeys(t, bus, topic, []string{"k"}, 10, 10)
	deadline := time.Now().Add(waitLimit)
	for {
		mu.Lock()
		n := len(calls)
		mu.Unlock()
		if n >= 10+failures {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d handler calls within %v", n, waitLimit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.stop(t)
	mu.Lock()
	defer mu.Unlock()
	var want []string
	for i := range 10 {
		n := 1
		if i == 5 {
			n = 1 + failures
		}
		for range n {
			want = append(want, fmt.Sprintf("k/%d@%d", i, i))
		}
	}
	if strings.Join(calls, " ") != strings.Join(want, " ") {
		t.Errorf("handler calls:\n got %v\nwant %v", calls, want)
	}
}

func testLiveTail(t *testing.T, newBus func(*testing.T) core.Bus) {
	bus := newBus(t)
	topic := Name(t, "t")
	ensure(t, bus, topic, 3)
	old := produceKeys(t, bus, topic, keysN("old", 9), 5, 5)
	s := newSeen()
	c := startConsumer(t, newBus(t), topic, "", s.handler(0))
	c.waitReady(t)
	// OnReady promises: everything produced from now on is consumed.
	fresh := produceKeys(t, bus, topic, keysN("new", 9), 20, 3)
	s.waitAll(t, fresh)
	if n := len(old) - s.missing(old); n != 0 {
		t.Errorf("live tail handled %d records produced before it started", n)
	}
	// Two tails each see every record (no group: nothing is shared).
	s2 := newSeen()
	c2 := startConsumer(t, newBus(t), topic, "", s2.handler(1))
	c2.waitReady(t)
	more := produceKeys(t, bus, topic, keysN("more", 9), 5, 5)
	s.waitAll(t, more)
	s2.waitAll(t, more)
	if n := len(fresh) - s2.missing(fresh); n != 0 {
		t.Errorf("second live tail handled %d records produced before it started", n)
	}
}

func testTwoMembers(t *testing.T, newBus func(*testing.T) core.Bus) {
	prod := newBus(t)
	topic := Name(t, "t")
	group := Name(t, "g")
	ensure(t, prod, topic, 4)
	s := newSeen()
	b1 := newBus(t)
	c1 := startConsumer(t, b1, topic, group, s.handler(1))
	c1.waitReady(t)
	c2 := startConsumer(t, newBus(t), topic, group, s.handler(2))
	c2.waitReady(t)

	// Produce rounds until both members have handled records: right after
	// the second member joins, the first may still hold every partition
	// until its next heartbeat learns of the rebalance.
	var all []string
	members := func() (m1, m2 int) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, m := range s.by {
			if m == 1 {
				m1++
			} else {
				m2++
			}
		}
		return m1, m2
	}
	deadline := time.Now().Add(waitLimit)
	for round := 0; ; round++ {
		all = append(all, produceKeys(t, prod, topic, keysN(fmt.Sprintf("r%d-", round), 16), 5, 5)...)
		time.Sleep(200 * time.Millisecond)
		if m1, m2 := members(); m1 > 0 && m2 > 0 {
			break
		}
		if time.Now().After(deadline) {
			m1, m2 := members()
			t.Fatalf("after %v: member 1 handled %d, member 2 handled %d records; want both > 0", waitLimit, m1, m2)
		}
	}
	s.waitAll(t, all)
	// Member 2's join was a rebalance for member 1: a bus that counts
	// generations counted it.
	if g, ok := b1.(interface{ Generations() uint64 }); ok && g.Generations() < 2 {
		t.Errorf("member 1's bus counted %d group generation(s), want at least 2 (member 2 joined)", g.Generations())
	}
	// Once the group is stable, a partition is handled by one member: the
	// records of the last round split by key across both members.
	last := produceKeys(t, prod, topic, keysN("final-", 16), 10, 10)
	s.waitAll(t, last)
	m1, m2 := members()
	t.Logf("two members: member 1 first-handled %d, member 2 %d records; duplicates %d", m1, m2, s.duplicates())
	c1.stop(t)
	// The survivor takes over every partition.
	after := produceKeys(t, prod, topic, keysN("solo-", 16), 5, 5)
	s.waitAll(t, after)
}

// testBatches checks core.BatchConsumer (when the bus has it): records
// produced before the consumer starts arrive in batches of at most
// maxBatch, at least one batch holds more than one record, every record is
// handled exactly once in per-key order, and a failing batch is retried
// with exactly the same records.
func testBatches(t *testing.T, newBus func(*testing.T) core.Bus) {
	bus := newBus(t)
	bc, ok := bus.(core.BatchConsumer)
	if !ok {
		t.Skip("the bus has no batch consumer")
	}
	topic := Name(t, "t")
	ensure(t, bus, topic, 2)
	keys := keysN("k", 4)
	vals := produceKeys(t, bus, topic, keys, 100, 25)
	const maxBatch = 16
	s := newSeen()
	var mu sync.Mutex
	biggest, failed, failedPart := 0, false, -1
	var failedBatch, retried []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- bc.ConsumeBatch(ctx, core.ConsumeSpec{Topic: topic, Group: Name(t, "g")}, maxBatch, func(_ context.Context, recs []core.BusRecord) error {
			var vs []string
			for _, r := range recs {
				vs = append(vs, string(r.Value))
			}
			mu.Lock()
			if len(recs) > maxBatch {
				mu.Unlock()
				t.Errorf("batch of %d > %d", len(recs), maxBatch)
				return nil
			}
			biggest = max(biggest, len(recs))
			if !failed && len(recs) > 1 {
				failed, failedBatch, failedPart = true, vs, recs[0].Partition
				mu.Unlock()
				return errors.New("injected failure")
			}
			if failedBatch != nil && retried == nil && recs[0].Partition == failedPart {
				retried = vs
			}
			mu.Unlock()
			for _, r := range recs {
				s.add(r, 0)
			}
			return nil
		})
	}()
	s.waitAll(t, vals)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if biggest < 2 {
		t.Fatalf("no batch held more than one record (biggest %d)", biggest)
	}
	if strings.Join(retried, ",") != strings.Join(failedBatch, ",") {
		t.Fatalf("failed batch %v retried as %v", failedBatch, retried)
	}
	rebalances := rebalancesOf(t, bus)
	if d := s.duplicates(); d != 0 && rebalances == 0 {
		t.Fatalf("%d duplicates with one stable member", d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		checkOrder(t, k, s.order[k], rebalances)
	}
}

// testPipelined checks core.PipelinedConsumer (when the bus has it):
//   - the next batch is handed over while the one before is still in
//     flight (its Pending unfinished);
//   - a Pending that fails makes the bus hand that batch and every later
//     one over again, from the failed batch's first record, so the records
//     of the batches that finished with nil are each key's records once,
//     in order;
//   - offsets are committed only for batches whose Pending finished with
//     nil: after a restart of the group, only the records of a batch whose
//     Pending never finished (the consumer stopped first) come again.
func testPipelined(t *testing.T, newBus func(*testing.T) core.Bus) {
	bus := newBus(t)
	pc, ok := bus.(core.PipelinedConsumer)
	if !ok {
		t.Skip("the bus has no pipelined consumer")
	}
	topic, group := Name(t, "t"), Name(t, "g")
	ensure(t, bus, topic, 1)
	keys := keysN("k", 4)
	vals := produceKeys(t, bus, topic, keys, 15, 5)

	var (
		mu       sync.Mutex
		calls    int
		overlap  bool // a call came while the previous batch was in flight
		failedAt = -1 // first offset of the batch whose Pending failed
		redoneAt = -1 // first offset of the first call after that failure was settled
		last     *core.Pending
		lastOff  int64
		hold     = make(chan struct{}) // the first batch's Pending waits for the second call
		finished = newSeen()           // records of batches that finished with nil
		handed   = make(map[string]int)
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- pc.ConsumePipelined(ctx, core.ConsumeSpec{Topic: topic, Group: group}, 8, func(hctx context.Context, recs []core.BusRecord) (*core.Pending, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			n := calls
			for _, r := range recs {
				handed[string(r.Value)]++
			}
			if last != nil {
				select {
				case <-last.Done():
				default:
					overlap = true
				}
			}
			if n == 2 {
				close(hold)
			}
			if failedAt >= 0 && redoneAt < 0 && n > 4 {
				redoneAt = int(recs[0].Offset)
			}
			prev, prevLast, p := last, lastOff, core.NewPending()
			last, lastOff = p, recs[len(recs)-1].Offset
			first := recs[0].Offset
			go func() {
				if n == 1 {
					select {
					case <-hold:
					case <-time.After(waitLimit):
						t.Errorf("the second batch was never handed over while the first was in flight")
					}
				}
				if prev != nil {
					if err := prev.Err(); err != nil && first > prevLast {
						p.Finish(fmt.Errorf("predecessor failed: %w", err))
						return
					}
				}
				if n == 3 {
					mu.Lock()
					failedAt = int(recs[0].Offset)
					mu.Unlock()
					p.Finish(errors.New("injected failure after hand-over"))
					return
				}
				for _, r := range recs {
					finished.add(r, 0)
				}
				p.Finish(nil)
			}()
			return p, nil
		})
	}()
	finished.waitAll(t, vals)
	mu.Lock()
	if !overlap {
		t.Errorf("no batch was handed over while the one before was in flight")
	}
	if failedAt < 0 || redoneAt != failedAt {
		t.Errorf("batch at offset %d failed; the next batch handed over after it began at %d, want the same", failedAt, redoneAt)
	}
	mu.Unlock()
	rebalances := rebalancesOf(t, bus)
	if d := finished.duplicates(); d != 0 && rebalances == 0 {
		t.Errorf("%d records in two finished batches", d)
	}
	func() {
		finished.mu.Lock()
		defer finished.mu.Unlock()
		for _, k := range keys {
			checkOrder(t, k, finished.order[k], rebalances)
		}
	}()

	// A batch in flight when the consumer stops is not committed.
	mu.Lock()
	stuck := newSeen()
	mu.Unlock()
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("ConsumePipelined returned %v", err)
	}
	// Records produced after the first consumer stopped; the second one's
	// handler finishes nothing until its ctx ends.
	tail := produceKeys(t, bus, topic, []string{"tail"}, 3, 3)
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() {
		done2 <- pc.ConsumePipelined(ctx2, core.ConsumeSpec{Topic: topic, Group: group}, 8, func(hctx context.Context, recs []core.BusRecord) (*core.Pending, error) {
			for _, r := range recs {
				stuck.add(r, 0)
			}
			p := core.NewPending()
			go func() {
				<-hctx.Done()
				p.Finish(hctx.Err())
			}()
			return p, nil
		})
	}()
	stuck.waitAll(t, tail)
	cancel2()
	if err := <-done2; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("ConsumePipelined returned %v", err)
	}
	for _, v := range vals {
		if stuck.count[v] != 0 {
			t.Fatalf("record %s of a finished batch handed over again after a restart", v)
		}
	}
	again := newSeen()
	c := startConsumer(t, newBus(t), topic, group, again.handler(0))
	again.waitAll(t, tail)
	c.stop(t)
}
