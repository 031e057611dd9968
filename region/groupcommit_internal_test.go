package region

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/region/kafkabus"
	"github.com/chatmesh/chatmesh/region/pebblestore"
	"github.com/chatmesh/chatmesh/region/pgstore"
)

// groupCommitStores opens a fresh store of each kind: Pebble, and
// PostgreSQL in a schema of its own (required under make test).
func groupCommitStores(_ testing.TB) map[string]func(t testing.TB) core.Store {
	return map[string]func(t testing.TB) core.Store{
		"pebble": func(t testing.TB) core.Store {
			st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
		"postgres": func(t testing.TB) core.Store {
			dsn := testenv.PostgresDSN(t)
			var b [6]byte
			_, _ = rand.Read(b[:])
			schema := "gc_" + hex.EncodeToString(b[:])
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Errorf("drop schema %s: %v", schema, err)
					return
				}
				defer conn.Close(ctx)
				if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
					t.Errorf("drop schema %s: %v", schema, err)
				}
			})
			st, err := pgstore.Open(t.Context(), dsn, pgstore.Options{Schema: schema, MaxConns: 4})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
	}
}

// batchRegion is a region that is not started: the test calls handleBatch
// itself, so it knows exactly which records form one batch.
func batchRegion(t testing.TB, st core.Store, adjust ...func(*Config)) *Region {
	t.Helper()
	ctx := t.Context()
	emb, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	bus, err := kafkabus.New(kafkabus.Config{Brokers: emb.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	if err := bus.EnsureTopic(ctx, EdgeTopic("e1"), 1); err != nil {
		t.Fatal(err)
	}
	return unstartedRegion(t, st, bus, adjust...)
}

// unstartedRegion is region r1 with one ingress partition on st and bus,
// not started.
func unstartedRegion(t testing.TB, st core.Store, bus core.Bus, adjust ...func(*Config)) *Region {
	t.Helper()
	cfg := Config{Name: "r1", IngressPartitions: 1}
	for _, f := range adjust {
		f(&cfg)
	}
	r, err := New(cfg, st, bus)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func sendRecord(t testing.TB, from core.DeviceKey, reqID uint64, conv, cmid string, offset int64) core.BusRecord {
	t.Helper()
	in := &pb.IngressRecord{
		Origin: &pb.Origin{EdgeId: "e1", SessionId: 1, ReqId: reqID, Device: from.Addr()},
		Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{
			ConvId: conv, ClientMsgId: cmid, Envelope: &pb.Envelope{Ciphertext: []byte("opaque " + cmid)},
		}},
	}
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return core.BusRecord{Topic: DefaultIngressTopic, Key: []byte(conv), Value: b, Offset: offset}
}

func registerUser(t testing.TB, st core.Store, user string) core.DeviceKey {
	t.Helper()
	static := make([]byte, 32)
	copy(static, user)
	d, err := st.RegisterDevice(t.Context(), core.User{ID: user, HomeRegion: "r1", CreatedAtMs: 1}, core.Device{NoiseStatic: static, IdentityKey: make([]byte, 32)}, true)
	if err != nil {
		t.Fatal(err)
	}
	return d.Key
}

// One consumed batch of ingress records is stored with one commit (one
// sync), in order, resends within the batch deduped; nothing is visible
// in the store before the commit.
func TestGroupCommitOneCommitPerBatch(t *testing.T) {
	for name, open := range groupCommitStores(t) {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			r := batchRegion(t, st)
			alice, bob := registerUser(t, st, "alice"), registerUser(t, st, "bob")
			d1, d2 := core.DirectConvID("alice", "bob"), core.DirectConvID("alice", "carol")
			registerUser(t, st, "carol")
			var recs []core.BusRecord
			for i := range 40 {
				from, conv := alice, d1
				if i%3 == 1 {
					from = bob
				}
				if i%5 == 4 {
					from, conv = alice, d2
				}
				recs = append(recs, sendRecord(t, from, uint64(i+1), conv, fmt.Sprintf("m%d", i), int64(i)))
			}
			recs = append(recs, sendRecord(t, alice, 99, d1, "m0", 40)) // a resend in the same batch
			if err := r.handleBatch(t.Context(), recs); err != nil {
				t.Fatal(err)
			}
			s := r.Stats()
			if s.Commits != 1 || s.CommittedEntries != 40 || s.Appended != 40 || s.Duplicates != 1 || s.BatchFallbacks != 0 {
				t.Fatalf("stats %+v: want 1 commit of 40 entries and 1 duplicate", s)
			}
			for conv, want := range map[string]int{d1: 32, d2: 8} {
				ms, err := st.Messages(t.Context(), conv, 0, 100, 0)
				if err != nil || len(ms) != want {
					t.Fatalf("%s: %d entries, %v; want %d", conv, len(ms), err, want)
				}
				last := -1
				for i, m := range ms {
					var n int
					fmt.Sscanf(m.GetClientMsgId(), "m%d", &n)
					if m.GetSeq() != uint64(i+1) || n <= last {
						t.Fatalf("%s: entry %d is %s at seq %d: out of order", conv, i, m.GetClientMsgId(), m.GetSeq())
					}
					last = n
				}
			}
			// A second batch reuses the cached state and commits once more.
			if err := r.handleBatch(t.Context(), []core.BusRecord{sendRecord(t, alice, 100, d1, "n1", 41), sendRecord(t, bob, 101, d1, "n2", 42)}); err != nil {
				t.Fatal(err)
			}
			if s := r.Stats(); s.Commits != 2 || s.CommittedEntries != 42 {
				t.Fatalf("after the second batch: %+v", s)
			}
			if c, err := st.Conversation(t.Context(), d1); err != nil || c.Head != 34 {
				t.Fatalf("head %+v, %v; want 34", c, err)
			}
		})
	}
}

// breakingStore breaks the write batch of its first Begin at the append
// of one key (as a statement failing inside a PostgreSQL transaction
// does); later batches work.
type breakingStore struct {
	core.Store
	key    string
	broken bool
}

func (s *breakingStore) Begin(ctx context.Context) (core.WriteBatch, error) {
	wb, err := s.Store.(core.Batcher).Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &breakingBatch{WriteBatch: wb, s: s}, nil
}

type breakingBatch struct {
	core.WriteBatch
	s   *breakingStore
	err error
}

func (b *breakingBatch) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	if !b.s.broken && req.Message.GetClientMsgId() == b.s.key {
		b.s.broken = true
		b.err = errors.New("injected: a statement failed and aborted the batch")
		return core.AppendResult{}, b.err
	}
	return b.WriteBatch.Append(ctx, req)
}

func (b *breakingBatch) Err() error {
	if b.err != nil {
		return b.err
	}
	return b.WriteBatch.Err()
}

// A write that breaks the batch: nothing of the batch is committed or
// sent from it; the records are redone one synced write at a time, all
// stored once, in order.
func TestGroupCommitBrokenBatchFallsBack(t *testing.T) {
	for name, open := range groupCommitStores(t) {
		t.Run(name, func(t *testing.T) {
			inner := open(t)
			st := &breakingStore{Store: inner, key: "m5"}
			r := batchRegion(t, st)
			alice, _ := registerUser(t, inner, "alice"), registerUser(t, inner, "bob")
			conv := core.DirectConvID("alice", "bob")
			var recs []core.BusRecord
			for i := range 10 {
				recs = append(recs, sendRecord(t, alice, uint64(i+1), conv, fmt.Sprintf("m%d", i), int64(i)))
			}
			if err := r.handleBatch(t.Context(), recs); err != nil {
				t.Fatal(err)
			}
			s := r.Stats()
			if s.BatchFallbacks != 1 || s.Appended != 10 || s.Commits != 0 || s.DeadLettered != 0 {
				t.Fatalf("stats %+v: want 1 fallback, 10 appended one by one", s)
			}
			ms, err := inner.Messages(t.Context(), conv, 0, 100, 0)
			if err != nil || len(ms) != 10 {
				t.Fatalf("%d entries, %v", len(ms), err)
			}
			for i, m := range ms {
				if m.GetClientMsgId() != fmt.Sprintf("m%d", i) || m.GetSeq() != uint64(i+1) {
					t.Fatalf("entry %d: %s at %d", i, m.GetClientMsgId(), m.GetSeq())
				}
			}
		})
	}
}

// BenchmarkSequencerBatch measures the sequencer's step and store cost per
// 1:1 message on Pebble and PostgreSQL, batches of 64 records over 32 conversations,
// with and without group commit:
//
//	go test ./region -run '^$' -bench SequencerBatch -benchtime 200x
func BenchmarkSequencerBatch(b *testing.B) {
	for _, kind := range []string{"pebble", "postgres"} {
		for _, group := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/groupcommit=%v", kind, group), func(b *testing.B) {
				st := groupCommitStores(b)[kind](b)
				r := batchRegion(b, st, func(c *Config) { c.NoGroupCommit = !group })
				const convs, per = 32, 64
				var senders []core.DeviceKey
				var ids []string
				for i := range convs {
					a, p := fmt.Sprintf("a%d", i), fmt.Sprintf("p%d", i)
					senders = append(senders, registerUser(b, st, a))
					registerUser(b, st, p)
					ids = append(ids, core.DirectConvID(a, p))
				}
				b.ResetTimer()
				off := int64(0)
				for n := range b.N {
					recs := make([]core.BusRecord, 0, per)
					for i := range per {
						c := (n*per + i) % convs
						off++
						recs = append(recs, sendRecord(b, senders[c], uint64(off), ids[c], fmt.Sprintf("m%d", off), off))
					}
					if err := r.handleBatch(context.Background(), recs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*per)/b.Elapsed().Seconds(), "msgs/s")
				if s := r.Stats(); s.Commits > 0 {
					b.ReportMetric(float64(s.CommittedEntries)/float64(s.Commits), "entries/commit")
				}
			})
		}
	}
}

// orderStore notes whether routes are read while a write batch holds
// entries it has not committed.
type orderStore struct {
	core.Store
	pending      atomic.Bool
	routeReads   atomic.Int32
	earlyReads   atomic.Int32
	pendingSeen  atomic.Bool
	commitsAfter atomic.Int32
}

func (s *orderStore) Begin(ctx context.Context) (core.WriteBatch, error) {
	wb, err := s.Store.(core.Batcher).Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &orderBatch{WriteBatch: wb, s: s}, nil
}

func (s *orderStore) Routes(ctx context.Context, users []string) ([]core.Route, error) {
	s.routeReads.Add(1)
	if s.pending.Load() {
		s.earlyReads.Add(1)
	}
	return s.Store.Routes(ctx, users)
}

type orderBatch struct {
	core.WriteBatch
	s *orderStore
}

func (b *orderBatch) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	res, err := b.WriteBatch.Append(ctx, req)
	if err == nil && !res.Duplicate {
		b.s.pending.Store(true)
		b.s.pendingSeen.Store(true)
	}
	return res, err
}

func (b *orderBatch) Commit(ctx context.Context) error {
	err := b.WriteBatch.Commit(ctx)
	b.s.pending.Store(false)
	return err
}

func (b *orderBatch) Discard() {
	b.WriteBatch.Discard()
	b.s.pending.Store(false)
}

// Deliveries, receipts and typing are addressed by routes read after the
// batch's entries are committed: a device whose session records its route
// after that read syncs after the commit and finds the entry.
func TestGroupCommitRoutesReadAfterCommit(t *testing.T) {
	inner := groupCommitStores(t)["pebble"](t)
	st := &orderStore{Store: inner}
	r := batchRegion(t, st)
	alice, bob := registerUser(t, inner, "alice"), registerUser(t, inner, "bob")
	for i, d := range []core.DeviceKey{alice, bob} {
		if err := inner.SetRoute(t.Context(), core.Route{Device: d, Edge: "e1", Session: uint64(7 + i), SinceMs: 1}); err != nil {
			t.Fatal(err)
		}
	}
	conv := core.DirectConvID("alice", "bob")
	var recs []core.BusRecord
	for i := range 5 {
		recs = append(recs, sendRecord(t, alice, uint64(i+1), conv, fmt.Sprintf("m%d", i), int64(i)))
	}
	typing, _ := proto.Marshal(&pb.IngressRecord{
		Origin: &pb.Origin{EdgeId: "e1", SessionId: 8, ReqId: 0, Device: bob.Addr()},
		Op:     &pb.IngressRecord_Typing{Typing: &pb.TypingRequest{ConvId: conv, Typing: true}},
	})
	recs = append(recs, core.BusRecord{Topic: DefaultIngressTopic, Key: []byte(conv), Value: typing, Offset: 5})
	if err := r.handleBatch(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	if !st.pendingSeen.Load() || st.routeReads.Load() == 0 {
		t.Fatalf("the test did not exercise the path: appended %v, route reads %d", st.pendingSeen.Load(), st.routeReads.Load())
	}
	if n := st.earlyReads.Load(); n != 0 {
		t.Fatalf("%d route reads while entries were uncommitted", n)
	}
	if s := r.Stats(); s.EdgeRecords == 0 || s.TypingFannedOut != 1 {
		t.Fatalf("stats %+v: want deliveries to bob's edge and one typing record", s)
	}
}

// Concurrent partition workers on a pool smaller than their number: a
// step never needs a second connection while its batch holds one (users,
// privacy and conversations are read through the batch, routes after its
// commit), so every batch completes.
func TestGroupCommitSmallPool(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "gcpool_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, dsn); err == nil {
			_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
			conn.Close(ctx)
		}
	})
	st, err := pgstore.Open(t.Context(), dsn, pgstore.Options{Schema: schema, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := batchRegion(t, st)
	const workers = 4
	var senders []core.DeviceKey
	for w := range workers {
		senders = append(senders, registerUser(t, st, fmt.Sprintf("s%d", w)))
		registerUser(t, st, fmt.Sprintf("p%d", w))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			var recs []core.BusRecord
			for i := range 8 {
				// New 1:1s: each creation reads the peer's user row.
				conv := core.DirectConvID(fmt.Sprintf("s%d", w), fmt.Sprintf("p%d", (w+i)%workers))
				recs = append(recs, sendRecord(t, senders[w], uint64(i+1), conv, fmt.Sprintf("w%dm%d", w, i), int64(i)))
			}
			errs <- r.handleBatch(ctx, recs)
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatalf("a partition's batch: %v", err)
		}
	}
	if s := r.Stats(); s.Appended != workers*8 {
		t.Fatalf("stats %+v: want %d appended", s, workers*8)
	}
}

// failingPrefetch makes every write batch's Prefetch fail, as a statement
// that only this batch's keys make would.
type failingPrefetch struct{ core.Store }

func (s *failingPrefetch) Begin(ctx context.Context) (core.WriteBatch, error) {
	wb, err := s.Store.(core.Batcher).Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &failingPrefetchBatch{wb}, nil
}

type failingPrefetchBatch struct{ core.WriteBatch }

func (b *failingPrefetchBatch) Prefetch(context.Context, []string, []core.IdemKey) error {
	return errors.New("injected: prefetch refused")
}

// A batch whose prefetch fails is redone without a write batch instead of
// being retried as it is forever.
func TestGroupCommitPrefetchFailureFallsBack(t *testing.T) {
	inner := groupCommitStores(t)["pebble"](t)
	r := batchRegion(t, &failingPrefetch{inner})
	alice, _ := registerUser(t, inner, "alice"), registerUser(t, inner, "bob")
	conv := core.DirectConvID("alice", "bob")
	recs := []core.BusRecord{sendRecord(t, alice, 1, conv, "m1", 0), sendRecord(t, alice, 2, conv, "m2", 1)}
	if err := r.handleBatch(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s.BatchFallbacks != 1 || s.Appended != 2 {
		t.Fatalf("stats %+v: want one fallback and both stored", s)
	}
}

// A record that does not decode, inside a group-committed batch, is
// counted and dropped on its own: the records around it are stored in
// the batch's one commit, in order (prefetch decodes each record once and
// hands it to its step).
func TestGroupCommitMalformedRecordInBatch(t *testing.T) {
	st, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := batchRegion(t, st)
	alice := registerUser(t, st, "alice")
	registerUser(t, st, "bob")
	d1 := core.DirectConvID("alice", "bob")
	recs := []core.BusRecord{
		sendRecord(t, alice, 1, d1, "a", 0),
		{Topic: DefaultIngressTopic, Key: []byte(d1), Value: []byte{0xff, 0xff, 0xff}, Offset: 1},
		sendRecord(t, alice, 2, d1, "b", 2),
	}
	if err := r.handleBatch(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	s := r.Stats()
	if s.Malformed != 1 || s.Commits != 1 || s.CommittedEntries != 2 || s.BatchFallbacks != 0 {
		t.Fatalf("stats %+v: want 1 malformed, 1 commit of 2 entries", s)
	}
	ms, err := st.Messages(t.Context(), d1, 0, 10, 0)
	if err != nil || len(ms) != 2 || ms[0].GetClientMsgId() != "a" || ms[1].GetClientMsgId() != "b" {
		t.Fatalf("stored %v, %v", ms, err)
	}
}

// A full batch (MaxBatch records) of envelopes at the size limit is one
// commit on both stores (≈16 MB in one Pebble batch, one PostgreSQL
// transaction), and every entry reads back whole.
func TestGroupCommitFullBatchOfMaxSizeEnvelopes(t *testing.T) {
	for name, open := range groupCommitStores(t) {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			r := batchRegion(t, st)
			alice := registerUser(t, st, "alice")
			registerUser(t, st, "bob")
			d1 := core.DirectConvID("alice", "bob")
			// The envelope's encoding is exactly MaxEnvelopeBytes: 1 tag
			// byte and a 3-byte length before the ciphertext.
			body := make([]byte, core.MaxEnvelopeBytes-4)
			if n := proto.Size(&pb.Envelope{Ciphertext: body}); n != core.MaxEnvelopeBytes {
				t.Fatalf("envelope of %d bytes, want %d", n, core.MaxEnvelopeBytes)
			}
			recs := make([]core.BusRecord, MaxBatch)
			for i := range recs {
				body[0], body[1] = byte(i), byte(i>>8)
				in := &pb.IngressRecord{
					Origin: &pb.Origin{EdgeId: "e1", SessionId: 1, ReqId: uint64(i + 1), Device: alice.Addr()},
					Op: &pb.IngressRecord_Send{Send: &pb.SendRequest{
						ConvId: d1, ClientMsgId: fmt.Sprintf("m%03d", i), Envelope: &pb.Envelope{Ciphertext: body},
					}},
				}
				v, err := proto.Marshal(in)
				if err != nil {
					t.Fatal(err)
				}
				recs[i] = core.BusRecord{Topic: DefaultIngressTopic, Key: []byte(d1), Value: v, Offset: int64(i)}
			}
			if err := r.handleBatch(t.Context(), recs); err != nil {
				t.Fatal(err)
			}
			if s := r.Stats(); s.Commits != 1 || s.CommittedEntries != MaxBatch || s.BatchFallbacks != 0 || s.Rejected != 0 {
				t.Fatalf("stats %+v: want one commit of %d entries", s, MaxBatch)
			}
			var got int
			for after := uint64(0); got < MaxBatch; {
				ms, err := st.Messages(t.Context(), d1, after, MaxBatch, 0)
				if err != nil || len(ms) == 0 {
					t.Fatalf("read after %d: %d entries, %v", after, len(ms), err)
				}
				for _, m := range ms {
					c := m.GetEnvelope().GetCiphertext()
					if len(c) != len(body) || int(c[0])|int(c[1])<<8 != got {
						t.Fatalf("entry %d: %d bytes, tag %d", got, len(c), int(c[0])|int(c[1])<<8)
					}
					got++
					after = m.GetSeq()
				}
			}
		})
	}
}
