package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// SetPrivacy implements core.Store. Users are never deleted, so the
// existence check and the upsert need not share a transaction.
func (s *Store) SetPrivacy(ctx context.Context, user string, p core.Privacy) error {
	if _, err := s.User(ctx, user); err != nil {
		return fmt.Errorf("pgstore: set privacy: %w", err)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO privacy (user_id, hide_last_seen, add_policy) VALUES ($1, $2, $3)
		ON CONFLICT (user_id) DO UPDATE SET hide_last_seen = excluded.hide_last_seen, add_policy = excluded.add_policy`,
		user, p.HideLastSeen, int32(p.AddPolicy))
	if err != nil {
		return fmt.Errorf("pgstore: set privacy of %s: %w", user, err)
	}
	return nil
}

// Privacy implements core.Store.
func (s *Store) Privacy(ctx context.Context, user string) (core.Privacy, error) {
	var (
		hide   bool
		policy int32
	)
	err := s.q.QueryRow(ctx, `SELECT COALESCE(p.hide_last_seen, FALSE), COALESCE(p.add_policy, 0) FROM users u
		LEFT JOIN privacy p ON p.user_id = u.id WHERE u.id = $1`, user).Scan(&hide, &policy)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return core.Privacy{}, fmt.Errorf("pgstore: privacy: user %s: %w", user, core.ErrNotFound)
	case err != nil:
		return core.Privacy{}, fmt.Errorf("pgstore: privacy of %s: %w", user, err)
	}
	return core.Privacy{HideLastSeen: hide, AddPolicy: pb.AddPolicy(policy)}, nil
}
