package pgstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/cockroach-go/v2/crdb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// ErrCorrupt means a stored row did not decode.
var ErrCorrupt = errors.New("pgstore: corrupt row")

// Options configures a Store. The zero value works.
type Options struct {
	// Logger receives migration and retry diagnostics; nil discards them.
	Logger *slog.Logger
	// Schema, when set, is created if absent and becomes the search_path of
	// every connection, so several stores (tests, simulated regions) can
	// share one database. Empty means the DSN's default (public).
	Schema string
	// MaxConns caps the pool; 0 means defaultMaxConns. Every sequencer
	// partition worker holds one connection for its write batch, so the
	// pool should exceed the ingress partitions (8 by default) by what
	// the region's reads need.
	MaxConns int32
	// MaxRetries bounds the retries of one transaction after serialization
	// failures; 0 means 50.
	MaxRetries int
}

// defaultMaxConns is the pool size when Options.MaxConns is 0.
const defaultMaxConns = 24

// Store is a core.Store on PostgreSQL or CockroachDB.
type Store struct {
	*base
	// q answers the reads the sequencer makes in a step (conversations,
	// members, cursors, messages, Lookup, users, devices, privacy): the
	// pool, or in a write batch's view (batch.go) its transaction, so a
	// step never needs a second connection while its batch holds one.
	q querier
	// bt is the transaction of a write batch's view; nil for the store.
	bt *writeBatch
}

// base is what a Store and its write-batch views share.
type base struct {
	pool       *pgxpool.Pool
	log        *slog.Logger
	maxRetries int
	closeOnce  sync.Once
}

// querier is what *pgxpool.Pool and pgx.Tx have in common for reads.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var _ core.Store = (*Store)(nil)

// Open connects to dsn, applies the embedded migrations and returns the
// store. The caller owns it and must Close it.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pgstore: parse dsn: %w", err)
	}
	cfg.MaxConns = defaultMaxConns
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if opts.Schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = opts.Schema
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: connect: %w", err)
	}
	s := &Store{base: &base{pool: pool, log: log, maxRetries: opts.MaxRetries}, q: pool}
	if s.maxRetries <= 0 {
		s.maxRetries = 50
	}
	if opts.Schema != "" {
		// IF NOT EXISTS still races with a concurrent creator (unique
		// violation on the catalog); tx retries that.
		err := s.tx(ctx, "create schema", func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{opts.Schema}.Sanitize())
			return err
		})
		if err != nil {
			pool.Close()
			return nil, err
		}
	}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the pool, waiting for connections in use to be released.
// It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(s.pool.Close)
	return nil
}

// ------------------------------------------------------------------ transactions

// retryCodes are the SQLSTATEs after which the whole transaction is worth
// running again, besides the serialization failures (40001) crdb retries on
// its own: a deadlock, and the "someone else created it first" family — a
// unique violation (a concurrent transaction inserted the row this one
// checked for; the retry sees it) and, for concurrent IF NOT EXISTS DDL on
// PostgreSQL, duplicate table/object.
var retryCodes = map[string]bool{
	"40P01": true, // deadlock_detected
	"23505": true, // unique_violation
	"42P07": true, // duplicate_table
	"42710": true, // duplicate_object
}

// retryable marks an error as retryable for crdb.ExecuteCtx.
type retryable struct{ err error }

func (e retryable) Error() string    { return e.err.Error() }
func (e retryable) Unwrap() error    { return e.err }
func (e retryable) SQLState() string { return "40001" }

// tx runs fn in a SERIALIZABLE transaction, retried as a whole (a new
// transaction each time) by crdb.ExecuteCtx on serialization failures, with
// jittered exponential backoff between attempts. fn must be idempotent
// with respect to its Go-side effects: it may run several times.
func (s *Store) tx(ctx context.Context, what string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	attempt := 0
	err := crdb.ExecuteCtx(crdb.WithMaxRetries(ctx, s.maxRetries), func(ctx context.Context, _ ...any) error {
		if attempt > 0 {
			d := time.Duration(float64(min(time.Millisecond<<min(attempt, 7), 100*time.Millisecond)) * (0.5 + rand.Float64()))
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		attempt++
		err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.Serializable}, func(tx pgx.Tx) error {
			return fn(ctx, tx)
		})
		var pe *pgconn.PgError
		if errors.As(err, &pe) && retryCodes[pe.Code] {
			return retryable{err}
		}
		return err
	})
	if attempt > 1 {
		s.log.Debug("pgstore: transaction retried", "op", what, "attempts", attempt)
	}
	if err != nil {
		var r retryable
		if errors.As(err, &r) {
			err = r.err
		}
		if isDomain(err) {
			return err
		}
		return fmt.Errorf("pgstore: %s: %w", what, err)
	}
	return nil
}

func isDomain(err error) bool {
	for _, e := range []error{core.ErrNotFound, core.ErrAlreadyExists, core.ErrFenced, core.ErrInvalidArgument} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// nonNil makes nil byte slices empty (BYTEA NOT NULL); nilIfEmpty undoes it.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// Unsigned values are stored in BIGINT columns bit for bit; comparisons
// of them are done in Go.
func i64(v uint64) int64 { return int64(v) }
func u64(v int64) uint64 { return uint64(v) }

// ------------------------------------------------------------------ users and devices

const deviceCols = "user_id, device_id, noise_static, identity_key, linked_by, link_signature, created_at_ms"

func scanDevice(row pgx.Row) (core.Device, error) {
	var d core.Device
	var dev, linked int64
	err := row.Scan(&d.Key.User, &dev, &d.NoiseStatic, &d.IdentityKey, &linked, &d.LinkSignature, &d.CreatedAtMs)
	d.Key.Device, d.LinkedBy = uint32(dev), uint32(linked)
	d.NoiseStatic, d.IdentityKey, d.LinkSignature = nilIfEmpty(d.NoiseStatic), nilIfEmpty(d.IdentityKey), nilIfEmpty(d.LinkSignature)
	return d, err
}

// RegisterDevice implements core.Store.
func (s *Store) RegisterDevice(ctx context.Context, u core.User, d core.Device, createUser bool) (core.Device, error) {
	if u.ID == "" || (d.Key.User != "" && d.Key.User != u.ID) {
		return core.Device{}, fmt.Errorf("pgstore: device user %q, user %q: %w", d.Key.User, u.ID, core.ErrInvalidArgument)
	}
	if len(d.NoiseStatic) == 0 {
		return core.Device{}, fmt.Errorf("pgstore: empty noise static key: %w", core.ErrInvalidArgument)
	}
	var out core.Device
	err := s.tx(ctx, "register device", func(ctx context.Context, tx pgx.Tx) error {
		existing, err := scanDevice(tx.QueryRow(ctx, "SELECT "+deviceCols+" FROM devices WHERE noise_static = $1", d.NoiseStatic))
		switch {
		case err == nil && existing.Key.User == u.ID:
			out = existing
			return nil
		case err == nil:
			return fmt.Errorf("pgstore: static key registered to another user: %w", core.ErrAlreadyExists)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		var one int
		err = tx.QueryRow(ctx, "SELECT 1 FROM users WHERE id = $1", u.ID).Scan(&one)
		userExists := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		num := int64(1)
		switch {
		case createUser && userExists:
			return fmt.Errorf("pgstore: user %s: %w", u.ID, core.ErrAlreadyExists)
		case createUser:
			if _, err := tx.Exec(ctx, "INSERT INTO users (id, home_region, created_at_ms) VALUES ($1, $2, $3)", u.ID, u.HomeRegion, u.CreatedAtMs); err != nil {
				return err
			}
		case !userExists:
			return fmt.Errorf("pgstore: user %s: %w", u.ID, core.ErrNotFound)
		default:
			if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(device_id), 0) + 1 FROM devices WHERE user_id = $1", u.ID).Scan(&num); err != nil {
				return err
			}
		}
		out = d
		out.Key = core.DeviceKey{User: u.ID, Device: uint32(num)}
		_, err = tx.Exec(ctx, "INSERT INTO devices ("+deviceCols+") VALUES ($1, $2, $3, $4, $5, $6, $7)",
			u.ID, num, d.NoiseStatic, nonNil(d.IdentityKey), int64(d.LinkedBy), nonNil(d.LinkSignature), d.CreatedAtMs)
		return err
	})
	if err != nil {
		return core.Device{}, err
	}
	return out, nil
}

// User implements core.Store.
func (s *Store) User(ctx context.Context, id string) (core.User, error) {
	u := core.User{ID: id}
	err := s.q.QueryRow(ctx, "SELECT home_region, created_at_ms FROM users WHERE id = $1", id).Scan(&u.HomeRegion, &u.CreatedAtMs)
	if errors.Is(err, pgx.ErrNoRows) {
		return core.User{}, fmt.Errorf("pgstore: user %s: %w", id, core.ErrNotFound)
	}
	if err != nil {
		return core.User{}, fmt.Errorf("pgstore: user %s: %w", id, err)
	}
	return u, nil
}

// Devices implements core.Store.
func (s *Store) Devices(ctx context.Context, user string) ([]core.Device, error) {
	if _, err := s.User(ctx, user); err != nil {
		return nil, err
	}
	rows, err := s.q.Query(ctx, "SELECT "+deviceCols+" FROM devices WHERE user_id = $1 ORDER BY device_id", user)
	if err != nil {
		return nil, fmt.Errorf("pgstore: devices of %s: %w", user, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (core.Device, error) { return scanDevice(r) })
	if err != nil {
		return nil, fmt.Errorf("pgstore: devices of %s: %w", user, err)
	}
	return out, nil
}

// DeviceByStatic implements core.Store.
func (s *Store) DeviceByStatic(ctx context.Context, static []byte) (core.Device, error) {
	d, err := scanDevice(s.q.QueryRow(ctx, "SELECT "+deviceCols+" FROM devices WHERE noise_static = $1", nonNil(static)))
	if errors.Is(err, pgx.ErrNoRows) {
		return core.Device{}, fmt.Errorf("pgstore: device by static key: %w", core.ErrNotFound)
	}
	if err != nil {
		return core.Device{}, fmt.Errorf("pgstore: device by static key: %w", err)
	}
	return d, nil
}

// ------------------------------------------------------------------ conversations

func decodeMessage(body []byte) (*pb.Message, error) {
	m := &pb.Message{}
	if err := proto.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("%w: message: %w", ErrCorrupt, err)
	}
	return m, nil
}

// Append implements core.Store.
func (s *Store) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	m := req.Message
	if m == nil {
		return core.AppendResult{}, fmt.Errorf("pgstore: append without message: %w", core.ErrInvalidArgument)
	}
	if m.ConvId == "" || m.ClientMsgId == "" {
		return core.AppendResult{}, fmt.Errorf("pgstore: append needs conv_id and client_msg_id: %w", core.ErrInvalidArgument)
	}
	if req.Create != nil && req.Create.ID != m.ConvId {
		return core.AppendResult{}, fmt.Errorf("pgstore: create %q for message of %q: %w", req.Create.ID, m.ConvId, core.ErrInvalidArgument)
	}
	if req.Epoch > math.MaxInt64 {
		return core.AppendResult{}, fmt.Errorf("pgstore: epoch %d out of range: %w", req.Epoch, core.ErrInvalidArgument)
	}
	conv, sender := m.ConvId, core.KeyOf(m.Sender)
	touched := req.MemberUsers()

	if s.bt != nil {
		if len(touched) == 0 {
			return s.bt.appendDeferred(ctx, req, conv, sender)
		}
		// Membership effects read and write the members table at once:
		// the deferred rows go first, and the conversation's row is read
		// again from the transaction afterwards.
		if err := s.bt.flush(ctx); err != nil {
			return core.AppendResult{}, err
		}
		delete(s.bt.convs, conv)
	}
	var res core.AppendResult
	appendTx := func(ctx context.Context, tx pgx.Tx) error {
		res = core.AppendResult{}
		// 1. Duplicate detection first: a replay always succeeds.
		var body []byte
		err := tx.QueryRow(ctx, "SELECT body FROM messages WHERE conv_id = $1 AND sender_user = $2 AND sender_device = $3 AND client_msg_id = $4",
			conv, sender.User, int64(sender.Device), m.ClientMsgId).Scan(&body)
		if err == nil {
			stored, err := decodeMessage(body)
			res = core.AppendResult{Message: stored, Duplicate: true}
			return err
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}

		// 2. Existence, creation and the epoch fence. FOR UPDATE makes
		// concurrent appenders of one conversation queue on its row.
		var c core.Conversation
		var epoch, head int64
		var kind int32
		err = tx.QueryRow(ctx, "SELECT kind, title, home_region, epoch, head, created_at_ms FROM conversations WHERE id = $1 FOR UPDATE", conv).
			Scan(&kind, &c.Title, &c.HomeRegion, &epoch, &head, &c.CreatedAtMs)
		exists := err == nil
		switch {
		case exists:
			c.ID, c.Kind, c.Epoch, c.Head = conv, pb.ConversationKind(kind), u64(epoch), u64(head)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		case req.Create == nil:
			return fmt.Errorf("pgstore: conversation %s: %w", conv, core.ErrNotFound)
		default:
			c = *req.Create
			c.Head, c.Epoch = 0, req.Epoch
		}
		if c.Epoch > req.Epoch {
			return fmt.Errorf("pgstore: conversation %s at epoch %d, writer at %d: %w", conv, c.Epoch, req.Epoch, core.ErrFenced)
		}

		// 3. Entry, new head, title, membership.
		seq := c.Head + 1
		if req.Title != nil {
			c.Title = *req.Title
		}
		stored := proto.Clone(m).(*pb.Message)
		stored.Seq, stored.Epoch = seq, req.Epoch
		if err := core.CheckStorable(stored); err != nil {
			return fmt.Errorf("pgstore: append to %s: %w", conv, err)
		}
		body, err = proto.Marshal(stored)
		if err != nil {
			return fmt.Errorf("pgstore: marshal message: %w", err)
		}
		if exists {
			_, err = tx.Exec(ctx, "UPDATE conversations SET head = $2, epoch = $3, title = $4 WHERE id = $1", conv, i64(seq), i64(req.Epoch), c.Title)
		} else {
			_, err = tx.Exec(ctx, "INSERT INTO conversations (id, kind, title, home_region, epoch, head, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
				conv, int32(c.Kind), c.Title, c.HomeRegion, i64(req.Epoch), i64(seq), c.CreatedAtMs)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO messages (conv_id, seq, sender_user, sender_device, client_msg_id, body) VALUES ($1, $2, $3, $4, $5, $6)",
			conv, i64(seq), sender.User, int64(sender.Device), m.ClientMsgId, body); err != nil {
			return err
		}
		if len(touched) > 0 {
			if err := applyMembers(ctx, tx, conv, seq, touched, &req); err != nil {
				return err
			}
		}
		res = core.AppendResult{Message: stored}
		return nil
	}
	var err error
	if s.bt != nil {
		err = s.bt.run(ctx, "append to "+conv, appendTx)
		if err == nil && !res.Duplicate {
			s.bt.appended++
			s.bt.keys[idemKey{conv, sender.User, sender.Device, m.ClientMsgId}] = res.Message
		}
	} else {
		err = s.tx(ctx, "append to "+conv, appendTx)
	}
	if err != nil {
		return core.AppendResult{}, err
	}
	return res, nil
}

// applyMembers writes the membership effects of req (core.MemberChanges)
// for the entry at seq. The caller holds the conversation's row lock, so
// the rows read here cannot change before the writes.
func applyMembers(ctx context.Context, tx pgx.Tx, conv string, seq uint64, touched []string, req *core.AppendRequest) error {
	rows, err := tx.Query(ctx, "SELECT user_id, joined_seq, admin, invited FROM members WHERE conv_id = $1 AND user_id = ANY($2::TEXT[])", conv, touched)
	if err != nil {
		return err
	}
	list, err := pgx.CollectRows(rows, scanMember)
	if err != nil {
		return err
	}
	cur := make(map[string]core.Member, len(list))
	for _, m := range list {
		cur[m.User] = m
	}
	put, del := core.MemberChanges(cur, seq, req)
	if len(put) > 0 {
		users, seqs := make([]string, len(put)), make([]int64, len(put))
		admin, invited := make([]bool, len(put)), make([]bool, len(put))
		for i, m := range put {
			users[i], seqs[i], admin[i], invited[i] = m.User, i64(m.JoinedSeq), m.Admin, m.Invited
		}
		if _, err := tx.Exec(ctx, `INSERT INTO members (conv_id, user_id, joined_seq, admin, invited)
			SELECT $1, u, s, a, i FROM unnest($2::TEXT[], $3::BIGINT[], $4::BOOL[], $5::BOOL[]) AS t(u, s, a, i)
			ON CONFLICT (conv_id, user_id) DO UPDATE SET joined_seq = excluded.joined_seq, admin = excluded.admin, invited = excluded.invited`,
			conv, users, seqs, admin, invited); err != nil {
			return err
		}
	}
	if len(del) > 0 {
		if _, err := tx.Exec(ctx, "DELETE FROM members WHERE conv_id = $1 AND user_id = ANY($2::TEXT[])", conv, del); err != nil {
			return err
		}
	}
	return nil
}

func scanMember(r pgx.CollectableRow) (core.Member, error) {
	var m core.Member
	var seq int64
	err := r.Scan(&m.User, &seq, &m.Admin, &m.Invited)
	m.JoinedSeq = u64(seq)
	return m, err
}

// Conversation implements core.Store.
func (s *Store) Conversation(ctx context.Context, id string) (core.Conversation, error) {
	if s.bt != nil {
		if bc, ok := s.bt.convs[id]; ok {
			return bc.c, nil
		}
	}
	c := core.Conversation{ID: id}
	var epoch, head int64
	var kind int32
	err := s.q.QueryRow(ctx, "SELECT kind, title, home_region, epoch, head, created_at_ms FROM conversations WHERE id = $1", id).
		Scan(&kind, &c.Title, &c.HomeRegion, &epoch, &head, &c.CreatedAtMs)
	if errors.Is(err, pgx.ErrNoRows) {
		return core.Conversation{}, fmt.Errorf("pgstore: conversation %s: %w", id, core.ErrNotFound)
	}
	if err != nil {
		return core.Conversation{}, fmt.Errorf("pgstore: conversation %s: %w", id, err)
	}
	c.Kind, c.Epoch, c.Head = pb.ConversationKind(kind), u64(epoch), u64(head)
	return c, nil
}

// Members implements core.Store.
func (s *Store) Members(ctx context.Context, conv string) ([]core.Member, error) {
	if _, err := s.Conversation(ctx, conv); err != nil {
		return nil, err
	}
	rows, err := s.q.Query(ctx, "SELECT user_id, joined_seq, admin, invited FROM members WHERE conv_id = $1 ORDER BY user_id", conv)
	if err != nil {
		return nil, fmt.Errorf("pgstore: members of %s: %w", conv, err)
	}
	out, err := pgx.CollectRows(rows, scanMember)
	if err != nil {
		return nil, fmt.Errorf("pgstore: members of %s: %w", conv, err)
	}
	// Byte order whatever the database collation is.
	slices.SortFunc(out, func(a, b core.Member) int { return cmp.Compare(a.User, b.User) })
	return out, nil
}

// UserConversations implements core.Store.
func (s *Store) UserConversations(ctx context.Context, user string) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT conv_id FROM members WHERE user_id = $1 ORDER BY conv_id", user)
	if err != nil {
		return nil, fmt.Errorf("pgstore: conversations of %s: %w", user, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("pgstore: conversations of %s: %w", user, err)
	}
	slices.Sort(out)
	return out, nil
}

// Messages implements core.Store. The byte bound is applied by the
// server (a running sum of octet_length(body) — the entry's encoded size —
// over at most limit rows), so no row past the page crosses the wire, and
// the rows are decoded as they stream in.
func (s *Store) Messages(ctx context.Context, conv string, after uint64, limit, maxBytes int) ([]*pb.Message, error) {
	c, err := s.Conversation(ctx, conv)
	if err != nil {
		return nil, err
	}
	if after >= c.Head {
		return nil, nil
	}
	return s.readMessages(ctx, conv, after, c.Head+1, false, limit, maxBytes)
}

// MessagesBefore implements core.Store: the running sum goes down from before-1.
func (s *Store) MessagesBefore(ctx context.Context, conv string, before, after uint64, limit, maxBytes int) ([]*pb.Message, error) {
	c, err := s.Conversation(ctx, conv)
	if err != nil {
		return nil, err
	}
	before = min(before, c.Head+1)
	if before <= after+1 {
		return nil, nil
	}
	return s.readMessages(ctx, conv, after, before, true, limit, maxBytes)
}

// Page queries for readMessages: the entries with $2 < seq < $3 in the
// given direction, at most $4 of them, while the running total of their
// sizes stays within $5; returned ascending.
const (
	pageUpSQL = `SELECT body FROM (
	SELECT seq, body, sum(octet_length(body)) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS total
	FROM (SELECT seq, body FROM messages WHERE conv_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq LIMIT $4) AS page
) AS t WHERE total <= $5 ORDER BY seq`
	pageDownSQL = `SELECT body FROM (
	SELECT seq, body, sum(octet_length(body)) OVER (ORDER BY seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS total
	FROM (SELECT seq, body FROM messages WHERE conv_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq DESC LIMIT $4) AS page
) AS t WHERE total <= $5 ORDER BY seq`
)

func (s *Store) readMessages(ctx context.Context, conv string, after, before uint64, down bool, limit, maxBytes int) ([]*pb.Message, error) {
	if limit <= 0 {
		limit = core.DefaultPageSize
	}
	limit = min(limit, core.MaxPageSize)
	if maxBytes <= 0 {
		maxBytes = core.MaxPageBytes
	}
	if s.bt != nil {
		// The batch's deferred entries are part of what it reads.
		if err := s.bt.flush(ctx); err != nil {
			return nil, err
		}
	}
	q := pageUpSQL
	if down {
		q = pageDownSQL
	}
	rows, err := s.q.Query(ctx, q, conv, i64(after), i64(before), limit, int64(maxBytes))
	if err != nil {
		return nil, fmt.Errorf("pgstore: messages of %s: %w", conv, err)
	}
	defer rows.Close()
	var out []*pb.Message
	total := 0
	for rows.Next() {
		var body []byte
		if err := rows.Scan(&body); err != nil {
			return nil, fmt.Errorf("pgstore: messages of %s: %w", conv, err)
		}
		if total+len(body) > maxBytes { // the server already cut the page; belt and braces
			break
		}
		total += len(body)
		m, err := decodeMessage(body)
		if err != nil {
			return nil, fmt.Errorf("pgstore: messages of %s: %w", conv, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgstore: messages of %s: %w", conv, err)
	}
	return out, nil
}

// ------------------------------------------------------------------ cursors

// AdvanceCursor implements core.Store.
func (s *Store) AdvanceCursor(ctx context.Context, conv string, dev core.DeviceKey, kind core.CursorKind, seq uint64) (uint64, bool, error) {
	if kind != core.CursorDelivered && kind != core.CursorRead {
		return 0, false, fmt.Errorf("pgstore: cursor kind %d: %w", kind, core.ErrInvalidArgument)
	}
	var prev uint64
	var moved bool
	err := s.tx(ctx, "advance cursor", func(ctx context.Context, tx pgx.Tx) error {
		prev, moved = 0, false
		var d, r int64
		err := tx.QueryRow(ctx, "SELECT delivered_seq, read_seq FROM cursors WHERE conv_id = $1 AND user_id = $2 AND device_id = $3 FOR UPDATE",
			conv, dev.User, int64(dev.Device)).Scan(&d, &r)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		delivered, read := u64(d), u64(r)
		cur := &delivered
		if kind == core.CursorRead {
			cur = &read
		}
		prev = *cur
		if seq <= prev {
			return nil
		}
		*cur = seq
		if _, err := tx.Exec(ctx, `INSERT INTO cursors (conv_id, user_id, device_id, delivered_seq, read_seq) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (conv_id, user_id, device_id) DO UPDATE SET delivered_seq = excluded.delivered_seq, read_seq = excluded.read_seq`,
			conv, dev.User, int64(dev.Device), i64(delivered), i64(read)); err != nil {
			return err
		}
		moved = true
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	return prev, moved, nil
}

// AdvanceCursors implements core.CursorBatcher: one statement, each
// cursor moved to the greatest of its stored and its moved values.
func (s *Store) AdvanceCursors(ctx context.Context, moves []core.CursorMove) error {
	if len(moves) == 0 {
		return nil
	}
	convs, users := make([]string, len(moves)), make([]string, len(moves))
	devs, ds, rs := make([]int64, len(moves)), make([]int64, len(moves)), make([]int64, len(moves))
	for i, mv := range moves {
		if mv.Kind != core.CursorDelivered && mv.Kind != core.CursorRead {
			return fmt.Errorf("pgstore: cursor kind %d: %w", mv.Kind, core.ErrInvalidArgument)
		}
		if mv.Seq > math.MaxInt64 {
			return fmt.Errorf("pgstore: cursor seq %d out of range: %w", mv.Seq, core.ErrInvalidArgument)
		}
		convs[i], users[i], devs[i] = mv.Conv, mv.Dev.User, int64(mv.Dev.Device)
		if mv.Kind == core.CursorRead {
			rs[i] = int64(mv.Seq)
		} else {
			ds[i] = int64(mv.Seq)
		}
	}
	// Seqs stay below 2^63, so comparing them in SQL (GREATEST) is safe.
	return s.tx(ctx, "advance cursors", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO cursors (conv_id, user_id, device_id, delivered_seq, read_seq)
SELECT conv_id, user_id, device_id, max(d), max(r)
FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[]) AS m(conv_id, user_id, device_id, d, r)
GROUP BY conv_id, user_id, device_id
ON CONFLICT (conv_id, user_id, device_id) DO UPDATE SET
	delivered_seq = GREATEST(cursors.delivered_seq, excluded.delivered_seq),
	read_seq = GREATEST(cursors.read_seq, excluded.read_seq)`, convs, users, devs, ds, rs)
		return err
	})
}

func (s *Store) cursors(ctx context.Context, what, where string, args ...any) ([]core.Cursor, error) {
	rows, err := s.q.Query(ctx, "SELECT conv_id, user_id, device_id, delivered_seq, read_seq FROM cursors WHERE "+where, args...)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (core.Cursor, error) {
		var c core.Cursor
		var dev, d, rd int64
		err := r.Scan(&c.Conv, &c.Device.User, &dev, &d, &rd)
		c.Device.Device, c.Delivered, c.Read = uint32(dev), u64(d), u64(rd)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: %w", what, err)
	}
	return out, nil
}

// Cursors implements core.Store.
func (s *Store) Cursors(ctx context.Context, dev core.DeviceKey) ([]core.Cursor, error) {
	out, err := s.cursors(ctx, "cursors of "+dev.String(), "user_id = $1 AND device_id = $2 ORDER BY conv_id", dev.User, int64(dev.Device))
	slices.SortFunc(out, func(a, b core.Cursor) int { return cmp.Compare(a.Conv, b.Conv) })
	return out, err
}

// ConvCursors implements core.Store.
func (s *Store) ConvCursors(ctx context.Context, conv string) ([]core.Cursor, error) {
	out, err := s.cursors(ctx, "cursors of "+conv, "conv_id = $1 ORDER BY user_id, device_id", conv)
	slices.SortFunc(out, func(a, b core.Cursor) int { return a.Device.Compare(b.Device) })
	return out, err
}

// ------------------------------------------------------------------ routes

const routeCols = "user_id, device_id, edge, session, since_ms, region"

func scanRoute(r pgx.CollectableRow) (core.Route, error) {
	var rt core.Route
	var dev, session int64
	err := r.Scan(&rt.Device.User, &dev, &rt.Edge, &session, &rt.SinceMs, &rt.Region)
	rt.Device.Device, rt.Session = uint32(dev), u64(session)
	return rt, err
}

// SetRoute implements core.Store.
func (s *Store) SetRoute(ctx context.Context, r core.Route) error {
	return s.tx(ctx, "set route", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO routes ("+routeCols+`) VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (user_id, device_id) DO UPDATE SET edge = excluded.edge, session = excluded.session, since_ms = excluded.since_ms, region = excluded.region`,
			r.Device.User, int64(r.Device.Device), r.Edge, i64(r.Session), r.SinceMs, r.Region)
		return err
	})
}

// touchLastSeen moves the last-seen time of users forward to atMs.
func touchLastSeen(ctx context.Context, tx pgx.Tx, users []string, atMs int64) error {
	_, err := tx.Exec(ctx, `INSERT INTO last_seen (user_id, at_ms) SELECT u, $2 FROM unnest($1::TEXT[]) AS t(u)
		ON CONFLICT (user_id) DO UPDATE SET at_ms = GREATEST(last_seen.at_ms, excluded.at_ms)`, users, atMs)
	return err
}

// ClearRoute implements core.Store.
func (s *Store) ClearRoute(ctx context.Context, dev core.DeviceKey, session uint64, atMs int64) (bool, error) {
	var removed bool
	err := s.tx(ctx, "clear route", func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM routes WHERE user_id = $1 AND device_id = $2 AND session = $3", dev.User, int64(dev.Device), i64(session))
		if err != nil {
			return err
		}
		removed = tag.RowsAffected() > 0
		if !removed {
			return nil
		}
		return touchLastSeen(ctx, tx, []string{dev.User}, atMs)
	})
	return removed, err
}

// ClearEdgeRoutes implements core.Store. The removed routes are ordered by device.
func (s *Store) ClearEdgeRoutes(ctx context.Context, edge string, atMs int64) ([]core.Route, error) {
	var out []core.Route
	err := s.tx(ctx, "clear routes of edge "+edge, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "DELETE FROM routes WHERE edge = $1 RETURNING "+routeCols, edge)
		if err != nil {
			return err
		}
		if out, err = pgx.CollectRows(rows, scanRoute); err != nil || len(out) == 0 {
			return err
		}
		var users []string
		for _, r := range out {
			users = append(users, r.Device.User)
		}
		slices.Sort(users)
		return touchLastSeen(ctx, tx, slices.Compact(users), atMs)
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b core.Route) int { return a.Device.Compare(b.Device) })
	return out, nil
}

// Routes implements core.Store.
func (s *Store) Routes(ctx context.Context, users []string) ([]core.Route, error) {
	if len(users) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT "+routeCols+" FROM routes WHERE user_id = ANY($1::TEXT[]) ORDER BY user_id, device_id", users)
	if err != nil {
		return nil, fmt.Errorf("pgstore: routes: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanRoute)
	if err != nil {
		return nil, fmt.Errorf("pgstore: routes: %w", err)
	}
	slices.SortFunc(out, func(a, b core.Route) int { return a.Device.Compare(b.Device) })
	return out, nil
}

// LastSeen implements core.Store.
func (s *Store) LastSeen(ctx context.Context, users []string) (map[string]int64, error) {
	out := make(map[string]int64)
	if len(users) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, "SELECT user_id, at_ms FROM last_seen WHERE user_id = ANY($1::TEXT[])", users)
	if err != nil {
		return nil, fmt.Errorf("pgstore: last seen: %w", err)
	}
	var u string
	var at int64
	_, err = pgx.ForEachRow(rows, []any{&u, &at}, func() error {
		out[u] = at
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: last seen: %w", err)
	}
	return out, nil
}

// Lookup implements core.Store.
func (s *Store) Lookup(ctx context.Context, conv string, sender core.DeviceKey, clientMsgID string) (*pb.Message, error) {
	if s.bt != nil {
		if m, ok := s.bt.keys[idemKey{conv, sender.User, sender.Device, clientMsgID}]; ok {
			return m, nil
		}
	}
	var body []byte
	err := s.q.QueryRow(ctx, "SELECT body FROM messages WHERE conv_id = $1 AND sender_user = $2 AND sender_device = $3 AND client_msg_id = $4",
		conv, sender.User, int64(sender.Device), clientMsgID).Scan(&body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("pgstore: lookup %s: %w", conv, core.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: lookup %s: %w", conv, err)
	}
	return decodeMessage(body)
}
