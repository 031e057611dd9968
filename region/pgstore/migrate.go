package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migration is one embedded SQL file, named NNNN_name.sql.
type migration struct {
	version int64
	name    string
	sql     string
}

// migrations returns the embedded migrations in version order.
func migrations() ([]migration, error) {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("pgstore: list migrations: %w", err)
	}
	var out []migration
	for _, path := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(path, "migrations/"), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("pgstore: migration file %s is not NNNN_name.sql", path)
		}
		body, err := migrationFS.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("pgstore: read migration %s: %w", path, err)
		}
		out = append(out, migration{version: v, name: name, sql: string(body)})
	}
	slices.SortFunc(out, func(a, b migration) int { return int(a.version - b.version) })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("pgstore: two migrations with version %d", out[i].version)
		}
	}
	return out, nil
}

// migrate applies, in order, every embedded migration not yet recorded in
// schema_migrations. Each migration and its record commit in one
// transaction, so a crash leaves either both or neither; the statements are
// idempotent (IF NOT EXISTS) anyway, so concurrent Opens racing on a fresh
// database converge (the loser retries and finds the version recorded).
func (s *Store) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	err = s.tx(ctx, "create schema_migrations", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version       BIGINT NOT NULL PRIMARY KEY,
			name          TEXT   NOT NULL,
			applied_at_ms BIGINT NOT NULL
		)`)
		return err
	})
	if err != nil {
		return err
	}
	for _, m := range ms {
		applied := false
		err := s.tx(ctx, fmt.Sprintf("migration %d", m.version), func(ctx context.Context, tx pgx.Tx) error {
			applied = false
			var one int
			err := tx.QueryRow(ctx, "SELECT 1 FROM schema_migrations WHERE version = $1", m.version).Scan(&one)
			if err == nil {
				return nil
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			// No arguments: the simple protocol runs the multi-statement file.
			if _, err := tx.Exec(ctx, m.sql, pgx.QueryExecModeSimpleProtocol); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
				m.version, m.name, time.Now().UnixMilli())
			applied = err == nil
			return err
		})
		if err != nil {
			return err
		}
		if applied {
			s.log.Info("pgstore: applied migration", "version", m.version, "name", m.name)
		}
	}
	return nil
}
