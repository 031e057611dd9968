package pgstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/internal/testenv"
	"github.com/chatmesh/chatmesh/region/pgstore"
	"github.com/chatmesh/chatmesh/region/storetest"
)

// dsn returns the test database DSN (CHATMESH_PG_DSN). Without it the test
// is skipped, unless CHATMESH_REQUIRE_PG=1 (make test), where it fails.
// deploy/postgres/ensure.sh prints a DSN to use.
func dsn(tb testing.TB) string {
	tb.Helper()
	return testenv.PostgresDSN(tb)
}

// freshSchema returns the name of a new schema that is dropped when tb ends,
// after anything registered later (the store's Close) has run.
func freshSchema(tb testing.TB, dsn string) string {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := fmt.Sprintf("t_%d_%s", os.Getpid(), hex.EncodeToString(b[:]))
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

func openSchema(tb testing.TB, dsn, schema string) *pgstore.Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := pgstore.Open(ctx, dsn, pgstore.Options{Schema: schema, MaxConns: 4})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func open(tb testing.TB) core.Store {
	tb.Helper()
	d := dsn(tb)
	return openSchema(tb, d, freshSchema(tb, d))
}

func TestContract(t *testing.T) {
	dsn(t)
	storetest.Run(t, func(t *testing.T) core.Store { return open(t) })
}

func BenchmarkAppend(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) core.Store { return open(b) })
}

// TestMigrations: Open is idempotent, concurrent Opens of a fresh schema
// converge, and each migration is recorded once.
func TestMigrations(t *testing.T) {
	d := dsn(t)
	schema := freshSchema(t, d)
	var wg sync.WaitGroup
	stores := make([]*pgstore.Store, 3)
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := pgstore.Open(t.Context(), d, pgstore.Options{Schema: schema, MaxConns: 2})
			if err != nil {
				t.Errorf("concurrent Open %d: %v", i, err)
				return
			}
			stores[i] = s
		}()
	}
	wg.Wait()
	for _, s := range stores {
		if s != nil {
			s.Close()
		}
	}
	if t.Failed() {
		return
	}
	s := openSchema(t, d, schema)
	defer s.Close()

	conn, err := pgx.Connect(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(t.Context(), "SELECT version, name FROM "+pgx.Identifier{schema, "schema_migrations"}.Sanitize()+" ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		Version int64
		Name    string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rec])
	if err != nil {
		t.Fatal(err)
	}
	if want := []rec{{1, "init"}, {2, "prekeys"}, {4, "member_roles"}, {5, "privacy"}, {6, "route_region"}, {7, "retention"}}; !slices.Equal(got, want) {
		t.Fatalf("schema_migrations = %+v, want %+v", got, want)
	}
}

// TestTwoStoresOneConversation: two Stores (two pools, as two sequencer
// processes during an ownership hand-over would be) append to one
// conversation concurrently, with overlapping keys. Only the database's
// SERIALIZABLE transactions and the whole-transaction retries keep the
// sequence gapless and free of duplicates: there is no in-process lock.
func TestTwoStoresOneConversation(t *testing.T) {
	d := dsn(t)
	schema := freshSchema(t, d)
	stores := []*pgstore.Store{openSchema(t, d, schema), openSchema(t, d, schema)}
	defer stores[0].Close()
	defer stores[1].Close()
	const keys = 40
	seqOf := make([][]uint64, len(stores))
	firsts := make([][]bool, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		seqOf[i] = make([]uint64, keys)
		firsts[i] = make([]bool, keys)
		for w := 0; w < 2; w++ { // two goroutines per store
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < keys; k++ {
					if (k+w)%2 == 1 {
						continue
					}
					key := fmt.Sprintf("k%02d", k)
					if i == 1 {
						key = fmt.Sprintf("k%02d", keys-1-k)
					}
					m := &pb.Message{ConvId: "g:two", ClientMsgId: key, Sender: &pb.DeviceAddr{UserId: "a", DeviceId: 1}}
					res, err := s.Append(t.Context(), core.AppendRequest{Epoch: 1, Message: m, Create: &core.Conversation{ID: "g:two"}})
					if err != nil {
						t.Errorf("store %d append %s: %v", i, key, err)
						return
					}
					var n int
					fmt.Sscanf(key, "k%d", &n)
					seqOf[i][n] = res.Message.Seq
					firsts[i][n] = !res.Duplicate
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for k := 0; k < keys; k++ {
		if seqOf[0][k] != seqOf[1][k] || seqOf[0][k] == 0 {
			t.Fatalf("key %d: store 0 got seq %d, store 1 got %d", k, seqOf[0][k], seqOf[1][k])
		}
		if firsts[0][k] == firsts[1][k] {
			t.Fatalf("key %d: first-append flags %v and %v, want exactly one", k, firsts[0][k], firsts[1][k])
		}
	}
	ms, err := stores[0].Messages(t.Context(), "g:two", 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != keys {
		t.Fatalf("%d messages stored, want %d", len(ms), keys)
	}
	for i, m := range ms {
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
	}
}

// TestFencedErrorUnwraps: domain errors come out of the retry loop intact.
func TestFencedErrorUnwraps(t *testing.T) {
	s := open(t)
	defer s.Close()
	ctx := t.Context()
	m := func(k string) *pb.Message { return &pb.Message{ConvId: "g:f", ClientMsgId: k} }
	if _, err := s.Append(ctx, core.AppendRequest{Epoch: 2, Message: m("a"), Create: &core.Conversation{ID: "g:f"}}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Message: m("b")})
	if !errors.Is(err, core.ErrFenced) || core.Code(err) != pb.ErrorCode_ERROR_CODE_UNAVAILABLE {
		t.Fatalf("stale append: %v (code %v)", err, core.Code(err))
	}
}

func TestPrekeyContract(t *testing.T) {
	dsn(t)
	storetest.RunPrekeys(t, func(t *testing.T) core.Store { return open(t) })
}

func BenchmarkPrekeys(b *testing.B) {
	dsn(b)
	storetest.BenchPrekeys(b, func(b *testing.B) core.Store { return open(b) })
}

func TestMarkerContract(t *testing.T) {
	dsn(t)
	storetest.RunMarker(t, func(t *testing.T) core.Store { return open(t) })
}
