package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/chatmesh/chatmesh/core"
)

var _ core.Retainer = (*Store)(nil)

// RetentionMarks implements core.Retainer.
func (s *Store) RetentionMarks(ctx context.Context, after string, limit int) ([]core.RetentionMark, error) {
	if limit <= 0 {
		limit = core.DefaultPageSize
	}
	rows, err := s.q.Query(ctx, `SELECT c.id, c.head, COALESCE(r.trimmed, 0), COALESCE(r.keys_through, 0)
FROM conversations AS c LEFT JOIN retention AS r ON r.conv_id = c.id
WHERE c.id > $1 ORDER BY c.id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("pgstore: retention marks: %w", err)
	}
	var out []core.RetentionMark
	var m core.RetentionMark
	var head, trimmed, keys int64
	_, err = pgx.ForEachRow(rows, []any{&m.Conv, &head, &trimmed, &keys}, func() error {
		m.Head, m.Trimmed, m.KeysThrough = u64(head), u64(trimmed), u64(keys)
		out = append(out, m)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: retention marks: %w", err)
	}
	// The order (and "id > after") is the database's collation, which
	// may differ from byte order; paging is consistent with itself, so a
	// walk from "" still visits every conversation once.
	return out, nil
}

// RetentionMark implements core.Retainer.
func (s *Store) RetentionMark(ctx context.Context, conv string) (core.RetentionMark, error) {
	return readMark(ctx, s.q, conv, false)
}

// readMark reads conv's head and marks; forUpdate locks the retention row
// (if any) so that two passes over one conversation queue.
func readMark(ctx context.Context, q querier, conv string, forUpdate bool) (core.RetentionMark, error) {
	m := core.RetentionMark{Conv: conv}
	var head int64
	err := q.QueryRow(ctx, "SELECT head FROM conversations WHERE id = $1", conv).Scan(&head)
	if errors.Is(err, pgx.ErrNoRows) {
		return m, fmt.Errorf("pgstore: conversation %s: %w", conv, core.ErrNotFound)
	}
	if err != nil {
		return m, fmt.Errorf("pgstore: conversation %s: %w", conv, err)
	}
	m.Head = u64(head)
	lock := ""
	if forUpdate {
		lock = " FOR UPDATE"
	}
	var trimmed, keys int64
	err = q.QueryRow(ctx, "SELECT trimmed, keys_through FROM retention WHERE conv_id = $1"+lock, conv).Scan(&trimmed, &keys)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return m, fmt.Errorf("pgstore: retention mark of %s: %w", conv, err)
	default:
		m.Trimmed, m.KeysThrough = u64(trimmed), u64(keys)
	}
	return m, nil
}

// Trim implements core.Retainer: one transaction deletes the rows (and
// with them their idempotency keys) and moves the marks.
func (s *Store) Trim(ctx context.Context, conv string, through uint64) error {
	return s.retain(ctx, conv, through, true)
}

// ForgetKeys implements core.Retainer: the rows stay, their client_msg_id
// becomes NULL.
func (s *Store) ForgetKeys(ctx context.Context, conv string, through uint64) error {
	return s.retain(ctx, conv, through, false)
}

func (s *Store) retain(ctx context.Context, conv string, through uint64, trim bool) error {
	if s.bt != nil {
		return fmt.Errorf("pgstore: retention inside a write batch: %w", core.ErrInvalidArgument)
	}
	what := "forget keys of " + conv
	if trim {
		what = "trim " + conv
	}
	return s.tx(ctx, what, func(ctx context.Context, tx pgx.Tx) error {
		m, err := readMark(ctx, tx, conv, true)
		if err != nil {
			return err
		}
		if through > m.Head {
			return fmt.Errorf("pgstore: retention of %s through %d beyond head %d: %w", conv, through, m.Head, core.ErrInvalidArgument)
		}
		if trim && through <= m.Trimmed || !trim && through <= m.KeysThrough {
			return nil
		}
		if trim {
			if _, err := tx.Exec(ctx, "DELETE FROM messages WHERE conv_id = $1 AND seq > $2 AND seq <= $3", conv, i64(m.Trimmed), i64(through)); err != nil {
				return err
			}
			m.Trimmed = through
		} else {
			if _, err := tx.Exec(ctx, "UPDATE messages SET client_msg_id = NULL WHERE conv_id = $1 AND seq > $2 AND seq <= $3", conv, i64(m.KeysThrough), i64(through)); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO retention (conv_id, trimmed, keys_through) VALUES ($1, $2, $3)
ON CONFLICT (conv_id) DO UPDATE SET trimmed = excluded.trimmed, keys_through = excluded.keys_through`,
			conv, i64(m.Trimmed), i64(max(m.KeysThrough, through)))
		return err
	})
}
