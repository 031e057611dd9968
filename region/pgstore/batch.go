package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/chatmesh/chatmesh/core"
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
}

// run runs fn in the batch's transaction. An error the database raised
// leaves the transaction aborted; Err reports it.
func (w *writeBatch) run(ctx context.Context, what string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if w.done {
		return fmt.Errorf("pgstore: %s: the write batch is finished: %w", what, core.ErrInvalidArgument)
	}
	err := fn(ctx, w.tx)
	if err != nil && !isDomain(err) {
		return fmt.Errorf("pgstore: %s: %w", what, err)
	}
	return err
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
	return &Batch{Store: &Store{base: s.base, q: tx, bt: &writeBatch{tx: tx}}}, nil
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
