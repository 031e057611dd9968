package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// writeBatch is the transaction of a write batch's view (core.WriteBatch).
//
// It runs at REPEATABLE READ, not SERIALIZABLE like the store's own
// transactions: every append locks its conversation's row (SELECT … FOR
// UPDATE), and at REPEATABLE READ that lock fails with a serialization
// error if another writer changed the row after the batch's snapshot — the
// conflict that matters, an overlapping owner appending to the same
// conversation — without the predicate-lock false positives that
// SERIALIZABLE would raise between long batches of unrelated
// conversations.
type writeBatch struct {
	tx       pgx.Tx
	appended int
	done     bool

	// Plain appends (no membership effects) are deferred: the batch keeps
	// each conversation's row (locked FOR UPDATE at its first append) and
	// the new entries in memory, and flush writes them with one multi-row
	// statement per table, in one round trip, before a read that needs
	// them and at Commit. An append then costs one round trip (its
	// duplicate check), plus one per conversation per batch (the lock).
	convs  map[string]*batchConv
	keys   map[idemKey]*pb.Message // entries of this batch by idempotency key
	absent map[idemKey]bool        // keys Prefetch found not stored
	msgs   []pendingMsg
}

type batchConv struct {
	c       core.Conversation
	inDB    bool // the row exists in the transaction (else: INSERT at flush)
	dirty   bool // head, epoch or title changed since the row was read or flushed
	written bool // the batch appended to it (flush writes it)
}

type idemKey struct {
	conv, user string
	device     uint32
	cmid       string
}

type pendingMsg struct {
	conv   string
	seq    uint64
	sender core.DeviceKey
	cmid   string
	body   []byte
}

// row returns the batch's copy of conv's row, reading and locking it at
// the first call. nil, nil: the conversation does not exist.
func (w *writeBatch) row(ctx context.Context, conv string) (*batchConv, error) {
	if bc, ok := w.convs[conv]; ok {
		return bc, nil
	}
	var c core.Conversation
	var epoch, head int64
	var kind int32
	err := w.tx.QueryRow(ctx, "SELECT kind, title, home_region, epoch, head, created_at_ms FROM conversations WHERE id = $1 FOR UPDATE", conv).
		Scan(&kind, &c.Title, &c.HomeRegion, &epoch, &head, &c.CreatedAtMs)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	c.ID, c.Kind, c.Epoch, c.Head = conv, pb.ConversationKind(kind), u64(epoch), u64(head)
	bc := &batchConv{c: c, inDB: true}
	w.convs[conv] = bc
	return bc, nil
}

// prefetch locks and reads the rows of convs and finds which of keys are
// stored, in one round trip.
func (w *writeBatch) prefetch(ctx context.Context, convs []string, keys []core.IdemKey) error {
	var ids []string
	for _, c := range convs {
		if _, ok := w.convs[c]; !ok && !slices.Contains(ids, c) {
			ids = append(ids, c)
		}
	}
	var kc, ku, km []string
	var kd []int64
	for _, k := range keys {
		ik := idemKey{k.Conv, k.Sender.User, k.Sender.Device, k.ClientMsgID}
		if _, ok := w.keys[ik]; ok || w.absent[ik] {
			continue
		}
		kc, ku, kd, km = append(kc, k.Conv), append(ku, k.Sender.User), append(kd, int64(k.Sender.Device)), append(km, k.ClientMsgID)
	}
	if len(ids)+len(kc) == 0 {
		return nil
	}
	var batch pgx.Batch
	if len(ids) > 0 {
		// Rows locked in id order, as any two batches lock them.
		slices.Sort(ids)
		batch.Queue("SELECT id, kind, title, home_region, epoch, head, created_at_ms FROM conversations WHERE id = ANY($1::TEXT[]) ORDER BY id FOR UPDATE", ids).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var c core.Conversation
				var epoch, head int64
				var kind int32
				if err := rows.Scan(&c.ID, &kind, &c.Title, &c.HomeRegion, &epoch, &head, &c.CreatedAtMs); err != nil {
					return err
				}
				c.Kind, c.Epoch, c.Head = pb.ConversationKind(kind), u64(epoch), u64(head)
				w.convs[c.ID] = &batchConv{c: c, inDB: true}
			}
			return rows.Err()
		})
	}
	found := map[idemKey]bool{}
	if len(kc) > 0 {
		batch.Queue(`SELECT m.conv_id, m.sender_user, m.sender_device, m.client_msg_id, m.body FROM messages AS m
JOIN unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS k(conv_id, sender_user, sender_device, client_msg_id)
ON m.conv_id = k.conv_id AND m.sender_user = k.sender_user AND m.sender_device = k.sender_device AND m.client_msg_id = k.client_msg_id`,
			kc, ku, kd, km).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var k idemKey
				var dev int64
				var body []byte
				if err := rows.Scan(&k.conv, &k.user, &dev, &k.cmid, &body); err != nil {
					return err
				}
				k.device = uint32(dev)
				m, err := decodeMessage(body)
				if err != nil {
					return err
				}
				w.keys[k] = m
				found[k] = true
			}
			return rows.Err()
		})
	}
	if err := w.tx.SendBatch(ctx, &batch).Close(); err != nil {
		return fmt.Errorf("pgstore: write batch prefetch: %w", err)
	}
	for i := range kc {
		k := idemKey{kc[i], ku[i], uint32(kd[i]), km[i]}
		if !found[k] {
			w.absent[k] = true
		}
	}
	return nil
}

// Prefetch implements core.WriteBatch.
func (b *Batch) Prefetch(ctx context.Context, convs []string, keys []core.IdemKey) error {
	if b.bt.done {
		return fmt.Errorf("pgstore: prefetch in a finished batch: %w", core.ErrInvalidArgument)
	}
	return b.bt.prefetch(ctx, convs, keys)
}

// appendDeferred is Append in a write batch for an entry without
// membership effects.
func (w *writeBatch) appendDeferred(ctx context.Context, req core.AppendRequest, conv string, sender core.DeviceKey) (core.AppendResult, error) {
	m := req.Message
	k := idemKey{conv, sender.User, sender.Device, m.ClientMsgId}
	// 1. Duplicate detection first: a replay always succeeds.
	if stored, ok := w.keys[k]; ok {
		return core.AppendResult{Message: stored, Duplicate: true}, nil
	}
	var body []byte
	err := pgx.ErrNoRows
	if !w.absent[k] {
		err = w.tx.QueryRow(ctx, "SELECT body FROM messages WHERE conv_id = $1 AND sender_user = $2 AND sender_device = $3 AND client_msg_id = $4",
			conv, sender.User, int64(sender.Device), m.ClientMsgId).Scan(&body)
	}
	if err == nil {
		stored, err := decodeMessage(body)
		if err != nil {
			return core.AppendResult{}, err
		}
		return core.AppendResult{Message: stored, Duplicate: true}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return core.AppendResult{}, fmt.Errorf("pgstore: append to %s: %w", conv, err)
	}
	// 2. Existence, creation and the epoch fence.
	bc, err := w.row(ctx, conv)
	if err != nil {
		return core.AppendResult{}, fmt.Errorf("pgstore: append to %s: %w", conv, err)
	}
	if bc == nil {
		if req.Create == nil {
			return core.AppendResult{}, fmt.Errorf("pgstore: conversation %s: %w", conv, core.ErrNotFound)
		}
		c := *req.Create
		c.Head, c.Epoch = 0, req.Epoch
		bc = &batchConv{c: c}
	}
	if bc.c.Epoch > req.Epoch {
		return core.AppendResult{}, fmt.Errorf("pgstore: conversation %s at epoch %d, writer at %d: %w", conv, bc.c.Epoch, req.Epoch, core.ErrFenced)
	}
	// 3. The entry and the new head, in memory until flush.
	seq := bc.c.Head + 1
	stored := proto.Clone(m).(*pb.Message)
	stored.Seq, stored.Epoch = seq, req.Epoch
	if err := core.CheckStorable(stored); err != nil {
		return core.AppendResult{}, fmt.Errorf("pgstore: append to %s: %w", conv, err)
	}
	body, err = proto.Marshal(stored)
	if err != nil {
		return core.AppendResult{}, fmt.Errorf("pgstore: marshal message: %w", err)
	}
	w.convs[conv] = bc
	bc.c.Head, bc.c.Epoch = seq, req.Epoch
	if req.Title != nil {
		bc.c.Title = *req.Title
	}
	bc.dirty, bc.written = true, true
	w.msgs = append(w.msgs, pendingMsg{conv: conv, seq: seq, sender: sender, cmid: m.ClientMsgId, body: body})
	w.keys[k] = stored
	w.appended++
	return core.AppendResult{Message: stored}, nil
}

// flush writes the deferred rows: new conversations, changed heads and the
// new entries, one multi-row statement each, in one round trip.
func (w *writeBatch) flush(ctx context.Context) error {
	var newIDs, newTitles, newHomes []string
	var newKinds []int32
	var newEpochs, newHeads, newCreated []int64
	var upIDs, upTitles []string
	var upEpochs, upHeads []int64
	for id, bc := range w.convs {
		if !bc.dirty {
			continue
		}
		if bc.inDB {
			upIDs, upTitles = append(upIDs, id), append(upTitles, bc.c.Title)
			upEpochs, upHeads = append(upEpochs, i64(bc.c.Epoch)), append(upHeads, i64(bc.c.Head))
		} else {
			newIDs, newTitles, newHomes = append(newIDs, id), append(newTitles, bc.c.Title), append(newHomes, bc.c.HomeRegion)
			newKinds = append(newKinds, int32(bc.c.Kind))
			newEpochs, newHeads, newCreated = append(newEpochs, i64(bc.c.Epoch)), append(newHeads, i64(bc.c.Head)), append(newCreated, bc.c.CreatedAtMs)
		}
	}
	if len(newIDs)+len(upIDs)+len(w.msgs) == 0 {
		return nil
	}
	var batch pgx.Batch
	if len(newIDs) > 0 {
		batch.Queue(`INSERT INTO conversations (id, kind, title, home_region, epoch, head, created_at_ms)
SELECT * FROM unnest($1::TEXT[], $2::INTEGER[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::BIGINT[])`,
			newIDs, newKinds, newTitles, newHomes, newEpochs, newHeads, newCreated)
	}
	if len(upIDs) > 0 {
		batch.Queue(`UPDATE conversations AS c SET head = u.head, epoch = u.epoch, title = u.title
FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[]) AS u(id, head, epoch, title) WHERE c.id = u.id`,
			upIDs, upHeads, upEpochs, upTitles)
	}
	if n := len(w.msgs); n > 0 {
		convs, users, cmids := make([]string, n), make([]string, n), make([]string, n)
		seqs, devs := make([]int64, n), make([]int64, n)
		bodies := make([][]byte, n)
		for i, m := range w.msgs {
			convs[i], seqs[i], users[i], devs[i], cmids[i], bodies[i] = m.conv, i64(m.seq), m.sender.User, int64(m.sender.Device), m.cmid, m.body
		}
		batch.Queue(`INSERT INTO messages (conv_id, seq, sender_user, sender_device, client_msg_id, body)
SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::BYTEA[])`,
			convs, seqs, users, devs, cmids, bodies)
	}
	if err := w.tx.SendBatch(ctx, &batch).Close(); err != nil {
		return fmt.Errorf("pgstore: write batch flush: %w", err)
	}
	for _, bc := range w.convs {
		if bc.dirty {
			bc.inDB, bc.dirty = true, false
		}
	}
	w.msgs = w.msgs[:0]
	return nil
}

// run runs fn in the batch's transaction, inside a savepoint: if fn
// fails, whatever it wrote is rolled back and the batch stays as it was
// (used for appends with membership effects, which are rare; plain
// appends are deferred instead).
func (w *writeBatch) run(ctx context.Context, what string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if w.done {
		return fmt.Errorf("pgstore: %s: the write batch is finished: %w", what, core.ErrInvalidArgument)
	}
	sp, err := w.tx.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: %s: savepoint: %w", what, err)
	}
	if err := fn(ctx, sp); err != nil {
		if rerr := sp.Rollback(ctx); rerr != nil {
			err = errors.Join(err, fmt.Errorf("rollback to savepoint: %w", rerr))
		}
		if !isDomain(err) {
			return fmt.Errorf("pgstore: %s: %w", what, err)
		}
		return err
	}
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: %s: release savepoint: %w", what, err)
	}
	return nil
}

// Batch is a write batch's view of the store (core.WriteBatch). It is for
// one goroutine.
type Batch struct {
	*Store
}

var _ core.WriteBatch = (*Batch)(nil)
var _ core.Batcher = (*Store)(nil)

// Begin implements core.Batcher.
func (s *Store) Begin(ctx context.Context) (core.WriteBatch, error) {
	if s.bt != nil {
		return nil, fmt.Errorf("pgstore: begin inside a write batch: %w", core.ErrInvalidArgument)
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return nil, fmt.Errorf("pgstore: begin: %w: %w", err, core.ErrUnavailable)
	}
	w := &writeBatch{tx: tx, convs: map[string]*batchConv{}, keys: map[idemKey]*pb.Message{}, absent: map[idemKey]bool{}}
	return &Batch{Store: &Store{base: s.base, q: tx, bt: w}}, nil
}

// Err implements core.WriteBatch: the transaction is aborted once any
// statement in it failed.
func (b *Batch) Err() error {
	if b.bt.done {
		return nil
	}
	if b.bt.tx.Conn().PgConn().TxStatus() == 'E' {
		return fmt.Errorf("pgstore: write batch: a statement failed and aborted the transaction: %w", core.ErrUnavailable)
	}
	return nil
}

// Appended implements core.WriteBatch.
func (b *Batch) Appended() int { return b.bt.appended }

// Close discards the batch; it never closes the store.
func (b *Batch) Close() error {
	b.Discard()
	return nil
}

// Discard implements core.WriteBatch.
func (b *Batch) Discard() {
	if b.bt.done {
		return
	}
	b.bt.done = true
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	_ = b.bt.tx.Rollback(ctx)
}

// Commit implements core.WriteBatch.
func (b *Batch) Commit(ctx context.Context) error {
	if b.bt.done {
		return fmt.Errorf("pgstore: commit of a finished batch: %w", core.ErrInvalidArgument)
	}
	if err := b.Err(); err != nil {
		b.Discard()
		return err
	}
	if err := b.bt.flush(ctx); err != nil {
		b.Discard()
		return fmt.Errorf("%w: %w", err, core.ErrUnavailable)
	}
	b.bt.done = true
	if err := b.bt.tx.Commit(ctx); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && retryCodes[pe.Code] {
			return fmt.Errorf("pgstore: commit: a concurrent writer: %w: %w", err, core.ErrUnavailable)
		}
		return fmt.Errorf("pgstore: commit: %w: %w", err, core.ErrUnavailable)
	}
	return nil
}

// rollbackTimeout bounds the rollback of a discarded batch.
const rollbackTimeout = 5 * time.Second
