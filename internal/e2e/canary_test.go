package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region"
)

// syncBuffer is a log sink the test can read while the stack writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// canaryRun sends messages with random canaries over 1:1 (to a user with
// two devices), a group, and from a second device of the sender, then
// scans every byte the server side holds for them: every file under the
// region's data directory (Pebble SSTs, WAL and manifests; the embedded
// Kafka broker's segments), the server logs at debug level, and — read
// through the APIs, so compression cannot hide anything — every stored
// entry and every Kafka record of every topic. It returns how many
// distinct canaries were found and how many were sent.
func canaryRun(t *testing.T, b backend, sealer client.Sealer, perConv int) (found, sent int, bySource map[string]int) {
	t.Helper()
	logs := &syncBuffer{}
	dataDir := t.TempDir()
	ns := uniq("canary")
	s := startStack(t, b, func(c *stack.Config) {
		c.DataDir = dataDir
		c.Namespace, c.EdgeID, c.PGSchema = ns, ns+"-edge", ns
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	edges := []string{s.Endpoints().WS}
	newC := func(name string) *tclient {
		tc := openClientWith(t, edges, name, filepath.Join(t.TempDir(), name), sealer)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := tc.Register(ctx, name); err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		return tc
	}
	alice, bob, carol := newC(uniq("alice")), newC(uniq("bob")), newC(uniq("carol"))
	// bob and alice each get a second device, linked by the first.
	link := func(first *tclient, name string) *tclient {
		second := openClientWith(t, edges, name+"-2", filepath.Join(t.TempDir(), name+"-2"), sealer)
		tok, err := first.Link(second.LinkRequest())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := second.RegisterLinked(ctx, tok); err != nil {
			t.Fatalf("link %s: %v", name, err)
		}
		second.name = name
		return second
	}
	bob2 := link(bob, bob.name)
	alice2 := link(alice, alice.name)
	all := []*tclient{alice, bob, carol, bob2, alice2}
	for _, c := range all {
		c.start(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	info, err := alice.CreateGroup(ctx, "canaries", []string{bob.name, carol.name})
	if err != nil {
		t.Fatal(err)
	}
	direct := core.DirectConvID(alice.name, bob.name)
	var canaries [][]byte
	send := func(c *tclient, conv string) {
		b := make([]byte, 12)
		rand.Read(b)
		canary := []byte("CANARY-" + hex.EncodeToString(b))
		canaries = append(canaries, canary)
		if _, err := c.Send(ctx, conv, append([]byte("hello "), canary...)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < perConv; i++ {
		send(alice, direct)            // 1:1, to bob's two devices and alice's other device
		send(bob2, direct)             // from a second device
		send(carol, info.GetConvId())  // group
		send(alice2, info.GetConvId()) // group, from a second device
	}
	for _, c := range all {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	// Everyone got everything (so the messages really went through).
	waitFor(t, 2*time.Minute, "deliveries", func() bool {
		return len(bob.seqs(direct)) >= 2*perConv && len(bob2.seqs(direct)) >= 2*perConv &&
			len(carol.seqs(info.GetConvId())) >= 1+2*perConv
	})
	for _, b := range bob.bodies(direct)[:3] {
		if !bytes.Contains([]byte(b), []byte("CANARY-")) {
			t.Fatalf("bob could not read a message: %q", b)
		}
	}

	// Collect every server-side byte.
	// hay holds the server-side bytes by source.
	hay := map[string][][]byte{}
	hay["logs"] = append(hay["logs"], logs.Bytes())
	for _, conv := range []string{direct, info.GetConvId()} {
		msgs, err := s.Store.Messages(ctx, conv, 0, 1_000_000, 1<<40) // every entry
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			b, _ := protoMarshal(m)
			hay["store"] = append(hay["store"], b)
		}
	}
	hay["kafka records"] = kafkaContents(t, ctx, s.Bus, region.NamesFor(ns).Ingress, region.NamesFor(ns).Presence, region.EdgeTopic(ns+"-edge"))
	if b.dsn != "" {
		hay["postgres rows"] = postgresRows(t, ctx, b.dsn, ns)
	}
	s.Shutdown(ctx) // flush Pebble and the broker to disk, then read the files
	readFiles := func(source, root string, keep func(path string) bool) {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && keep(path) {
				if b, err := os.ReadFile(path); err == nil {
					hay[source] = append(hay[source], b)
				}
			}
			return nil
		})
	}
	readFiles("data files", dataDir, func(string) bool { return true })
	if dir := os.Getenv("CHATMESH_KAFKA_DIR"); dir != "" && b.brokers != nil {
		// The brokers' log segments of this run's topics (directories
		// named <topic>-<partition>).
		readFiles("kafka files", dir, func(path string) bool { return strings.Contains(path, ns) })
	}
	bySource = map[string]int{}
	for _, c := range canaries {
		hexC := []byte(hex.EncodeToString(c)) // how bytea shows in row_to_json
		any := false
		for source, hs := range hay {
			for _, h := range hs {
				if bytes.Contains(h, c) || bytes.Contains(h, hexC) {
					bySource[source]++
					any = true
					break
				}
			}
		}
		if any {
			found++
		}
	}
	return found, len(canaries), bySource
}

// postgresRows renders every row of every table in schema as JSON text.
func postgresRows(t *testing.T, ctx context.Context, dsn, schema string) [][]byte {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) == 0 {
		t.Fatalf("tables of %s: %v (%d)", schema, err, len(tables))
	}
	var out [][]byte
	for _, tb := range tables {
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT row_to_json(t)::text FROM %s t", pgx.Identifier{schema, tb}.Sanitize()))
		if err != nil {
			t.Fatal(err)
		}
		texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range texts {
			out = append(out, []byte(x))
		}
	}
	return out
}

// No plaintext anywhere server-side. The control run (no encryption) must
// find every canary, or the scan proves nothing.
func TestNoPlaintextServerSide(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		n := 250 // 4 sends per round: 1000 messages
		if testing.Short() || b.brokers != nil {
			n = 50 // 200 messages on the slower real servers
		}
		t.Run("control-plaintext", func(t *testing.T) {
			found, sent, by := canaryRun(t, b, client.InsecurePlaintextSealer{}, 10)
			if found != sent {
				t.Fatalf("the scan found %d of %d canaries in an unencrypted run: it cannot be trusted", found, sent)
			}
			// Each place that holds message contents must show them, or
			// scanning that place proves nothing.
			sources := []string{"store", "kafka records", "data files"}
			if b.dsn != "" {
				sources = []string{"store", "kafka records", "postgres rows", "kafka files"}
			}
			for _, src := range sources {
				if by[src] != sent {
					t.Fatalf("control: %s showed %d of %d canaries: %v", src, by[src], sent, by)
				}
			}
			t.Logf("control: found %d of %d canaries (%v)", found, sent, by)
		})
		t.Run("end-to-end", func(t *testing.T) {
			found, sent, by := canaryRun(t, b, nil, n)
			if found != 0 {
				t.Fatalf("found %d of %d canaries server-side: %v", found, sent, by)
			}
			t.Logf("end-to-end: found 0 of %d canaries", sent)
		})
	})
}

func protoMarshal(m proto.Message) ([]byte, error) { return proto.Marshal(m) }

// kafkaContents reads every record of the topics from the beginning (a
// fresh consumer group starts at the earliest offset) until the topics have
// been quiet for a second.
func kafkaContents(t *testing.T, ctx context.Context, bus core.Bus, topics ...string) [][]byte {
	t.Helper()
	var mu sync.Mutex
	var out [][]byte
	last := time.Now()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, topic := range topics {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bus.Consume(cctx, core.ConsumeSpec{Topic: topic, Group: uniq("scan")}, func(_ context.Context, r core.BusRecord) error {
				mu.Lock()
				out = append(out, bytes.Clone(r.Key), bytes.Clone(r.Value))
				last = time.Now()
				mu.Unlock()
				return nil
			})
		}()
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		mu.Lock()
		quiet := time.Since(last) > 2*time.Second && len(out) > 0
		mu.Unlock()
		if quiet {
			break
		}
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(out) == 0 {
		t.Fatal("read nothing from Kafka: the scan would prove nothing")
	}
	return out
}
