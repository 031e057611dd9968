package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
)

// backend names a store+bus combination to run a test on.
type backend struct {
	name    string
	brokers []string
	dsn     string
}

// realBackend returns real Kafka + PostgreSQL from the environment
// (internal/testenv). ok is false only when they are not configured and not
// required: with CHATMESH_REQUIRE_KAFKA=1 or CHATMESH_REQUIRE_PG=1 (make
// test) a missing one fails the test here.
func realBackend(t *testing.T) (b backend, ok bool) {
	t.Helper()
	brokers, dsn := os.Getenv(testenv.EnvKafkaBrokers), os.Getenv(testenv.EnvPGDSN)
	if brokers == "" || dsn == "" {
		if testenv.Required() {
			t.Fatalf("real Kafka and PostgreSQL required but %s=%q %s=%q", testenv.EnvKafkaBrokers, brokers, testenv.EnvPGDSN, dsn)
		}
		return backend{}, false
	}
	return backend{name: "kafka+postgres", brokers: strings.Split(brokers, ","), dsn: dsn}, true
}

// notReal is the skip reason of a real-server test without the servers.
const notReal = "real Kafka + PostgreSQL not configured: set " + testenv.EnvKafkaBrokers + " and " + testenv.EnvPGDSN +
	" (make test does, and requires them)"

// forEachBackend runs f on the embedded default and, when configured, on
// real Kafka + PostgreSQL.
func forEachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	t.Run("embedded", func(t *testing.T) { f(t, backend{name: "embedded"}) })
	if b, ok := realBackend(t); ok {
		t.Run("real", func(t *testing.T) { f(t, b) })
	} else {
		t.Run("real", func(t *testing.T) { t.Skip(notReal) })
	}
}

func uniq(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func startStack(t *testing.T, b backend, adjust func(*stack.Config)) *stack.Stack {
	t.Helper()
	ns := uniq("t")
	cfg := stack.Config{
		DataDir: t.TempDir(), KafkaBrokers: b.brokers, PostgresDSN: b.dsn, PGSchema: ns,
		Namespace: ns, EdgeID: ns + "-edge", WTAddr: "-", MaxConnsPerIP: 2000, Partitions: 4,
	}
	if os.Getenv("CHATMESH_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if adjust != nil {
		adjust(&cfg)
	}
	tuned := cfg.EdgeConfig
	cfg.EdgeConfig = func(c *edge.Config) {
		oneAddress(c)
		if tuned != nil {
			tuned(c)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s, err := stack.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start stack (%s): %v", b.name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// oneAddress lifts the edge's per-IP registration limit and budgets: every
// test client connects from 127.0.0.1, standing for many users' addresses.
func oneAddress(c *edge.Config) {
	c.Admission.RegisterBurst = 1_000_000
	c.Admission.IPMessagesPerSecond, c.Admission.IPMessageBurst = 1e9, 1e9
	c.Admission.IPReadsPerSecond, c.Admission.IPReadBurst = 1e9, 1e9
}

// recorder drains a client's events and keeps what a test asserts on.
type recorder struct {
	mu       sync.Mutex
	msgs     map[string][]*pb.Message // conv -> entries in the order handed to the app
	bodies   map[string][]string
	at       map[string][]time.Time // when each entry of msgs was handed over
	acks     map[string]uint64      // client msg id -> seq
	failed   map[string]error
	receipts []client.ReceiptEvent
	presence []client.PresenceEvent
	typing   []client.TypingEvent
	// disconnects counts the sessions that ended (DisconnectedEvent).
	disconnects int
}

type tclient struct {
	*client.Client
	name string
	dir  string
	rec  *recorder
	stop context.CancelFunc
	done chan struct{}
}

// newClient opens and registers a client; it is connected only after start.
func newClient(t *testing.T, edges []string, name string) *tclient {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	tc := openClient(t, edges, name, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := tc.Register(ctx, name); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return tc
}

// openClient opens the client state in dir (a new device or an existing one).
func openClient(t *testing.T, edges []string, name, dir string) *tclient {
	return openClientWith(t, edges, name, dir, nil)
}

// openClientWith is openClient with a given sealer (nil: the default,
// end-to-end encryption).
func openClientWith(t *testing.T, edges []string, name, dir string, sealer client.Sealer) *tclient {
	t.Helper()
	c, err := client.Open(context.Background(), client.Config{
		StateDir: dir, Edges: edges, EventBuffer: 1024, Sealer: sealer,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, AckTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tc := &tclient{Client: c, name: name, dir: dir, stop: cancel, done: make(chan struct{}), rec: &recorder{
		msgs: map[string][]*pb.Message{}, bodies: map[string][]string{}, at: map[string][]time.Time{}, acks: map[string]uint64{}, failed: map[string]error{},
	}}
	go tc.drain(ctx)
	t.Cleanup(tc.close)
	return tc
}

func (tc *tclient) close() {
	tc.stop()
	<-tc.done
	tc.Client.Close()
}

func (tc *tclient) drain(ctx context.Context) {
	defer close(tc.done)
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-tc.Events():
			r := tc.rec
			r.mu.Lock()
			switch e := ev.(type) {
			case client.MessageEvent:
				r.msgs[e.Conv()] = append(r.msgs[e.Conv()], e.Message)
				r.bodies[e.Conv()] = append(r.bodies[e.Conv()], string(e.Body))
				r.at[e.Conv()] = append(r.at[e.Conv()], time.Now())
			case client.SendAckedEvent:
				r.acks[e.ClientMsgID] = e.Seq
			case client.SendFailedEvent:
				r.failed[e.ClientMsgID] = e.Err
			case client.ReceiptEvent:
				r.receipts = append(r.receipts, e)
			case client.PresenceEvent:
				r.presence = append(r.presence, e)
			case client.TypingEvent:
				r.typing = append(r.typing, e)
			case client.DisconnectedEvent:
				r.disconnects++
				if os.Getenv("CHATMESH_TEST_DISCONNECTS") != "" {
					fmt.Fprintf(os.Stderr, "disconnect %s: %v\n", e.Edge, e.Err)
				}
			}
			r.mu.Unlock()
		}
	}
}

func (tc *tclient) start(t *testing.T) {
	t.Helper()
	if err := tc.Start(); err != nil {
		t.Fatalf("start %s: %v", tc.name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tc.WaitConnected(ctx); err != nil {
		t.Fatalf("connect %s: %v", tc.name, err)
	}
}

// seqs returns the seqs of conv handed to the app, in order.
func (tc *tclient) seqs(conv string) []uint64 {
	tc.rec.mu.Lock()
	defer tc.rec.mu.Unlock()
	var out []uint64
	for _, m := range tc.rec.msgs[conv] {
		out = append(out, m.GetSeq())
	}
	return out
}

func (tc *tclient) bodies(conv string) []string {
	tc.rec.mu.Lock()
	defer tc.rec.mu.Unlock()
	return slices.Clone(tc.rec.bodies[conv])
}

func (tc *tclient) hasReceipt(conv string, kind pb.ReceiptKind, seq uint64) bool {
	tc.rec.mu.Lock()
	defer tc.rec.mu.Unlock()
	for _, r := range tc.rec.receipts {
		if r.Conv == conv && r.Kind == kind && r.Seq >= seq {
			return true
		}
	}
	return false
}

// disconnects returns how many of the client's sessions have ended.
func (tc *tclient) disconnects() int {
	tc.rec.mu.Lock()
	defer tc.rec.mu.Unlock()
	return tc.rec.disconnects
}

func (tc *tclient) ackCount() int {
	tc.rec.mu.Lock()
	defer tc.rec.mu.Unlock()
	return len(tc.rec.acks)
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkExactlyOnceInOrder asserts conv's entries were handed to the app as
// exactly seq 1..n (or from..n), each once, in order.
func checkExactlyOnceInOrder(t *testing.T, tc *tclient, conv string, from, n uint64) {
	t.Helper()
	got := tc.seqs(conv)
	want := make([]uint64, 0, n)
	for s := from; s <= n; s++ {
		want = append(want, s)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s saw %s seqs %v, want %d..%d exactly once in order", tc.name, conv, abbreviate(got), from, n)
	}
}

// checkSameStream asserts that every member was handed n entries of conv,
// each once, in increasing seq order, and that all members saw the same
// seqs with the same bodies. (With end-to-end encryption a conversation
// also carries key-distribution entries that the client consumes itself,
// so the app-visible seqs need not be 1..n.)
func checkSameStream(t *testing.T, conv string, members []*tclient, n int) {
	t.Helper()
	ref := members[0].seqs(conv)
	refBodies := members[0].bodies(conv)
	for _, m := range members {
		got := m.seqs(conv)
		if len(got) != n {
			t.Fatalf("%s was handed %d entries of %s, want %d: %v", m.name, len(got), conv, n, abbreviate(got))
		}
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Fatalf("%s: %s seqs not strictly increasing: %v", m.name, conv, abbreviate(got))
			}
		}
		if !slices.Equal(got, ref) || !slices.Equal(m.bodies(conv), refBodies) {
			t.Fatalf("%s and %s saw different streams of %s", m.name, members[0].name, conv)
		}
	}
}

func abbreviate(s []uint64) string {
	if len(s) <= 20 {
		return fmt.Sprint(s)
	}
	return fmt.Sprintf("%v ... %v (%d)", s[:10], s[len(s)-10:], len(s))
}
