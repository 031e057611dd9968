package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chatmesh/chatmesh/core"
)

var _ core.StoreMarker = (*Store)(nil)

// markerTable holds one row once the region marked the store initialized
// (core.StoreMarker). It is created on first use rather than by a
// migration: the mark is the region's, not part of the data model.
const markerTable = `CREATE TABLE IF NOT EXISTS store_marker (
	id            INT    NOT NULL PRIMARY KEY,
	created_at_ms BIGINT NOT NULL
)`

// Initialized implements core.StoreMarker: the schema holds the mark, or
// users or conversations (a store made before the mark existed).
func (s *Store) Initialized(ctx context.Context) (bool, error) {
	var found bool
	err := s.tx(ctx, "store marker", func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, markerTable); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM store_marker)
			OR EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM conversations)`).Scan(&found)
	})
	if err != nil {
		return false, fmt.Errorf("pgstore: store marker: %w", err)
	}
	return found, nil
}

// MarkInitialized implements core.StoreMarker. It is idempotent.
func (s *Store) MarkInitialized(ctx context.Context) error {
	err := s.tx(ctx, "mark store", func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, markerTable); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO store_marker (id, created_at_ms) VALUES (1, $1) ON CONFLICT (id) DO NOTHING`, time.Now().UnixMilli())
		return err
	})
	if err != nil {
		return fmt.Errorf("pgstore: mark store: %w", err)
	}
	return nil
}
