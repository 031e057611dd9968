package pebblestore

import (
	"context"
	"fmt"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// privacyKey: 'h' user -> hide_last_seen, add_policy.
func privacyKey(user string) []byte { return key(tagPrivacy, user) }

func encodePrivacy(p core.Privacy) []byte {
	var hide uint64
	if p.HideLastSeen {
		hide = 1
	}
	return enc(nil).u(hide).u(uint64(p.AddPolicy)).bytes()
}

func decodePrivacy(v []byte) (core.Privacy, error) {
	d := dec{buf: v}
	hide, policy := d.u(), d.u()
	if err := d.done(); err != nil {
		return core.Privacy{}, err
	}
	if hide > 1 || policy > uint64(^uint32(0)>>1) {
		return core.Privacy{}, ErrCorrupt
	}
	return core.Privacy{HideLastSeen: hide == 1, AddPolicy: pb.AddPolicy(policy)}, nil
}

// SetPrivacy implements core.Store. Users are never deleted, so checking
// that the user exists and then writing needs no lock.
func (s *Store) SetPrivacy(ctx context.Context, user string, p core.Privacy) error {
	if _, err := s.User(ctx, user); err != nil {
		return fmt.Errorf("pebblestore: set privacy: %w", err)
	}
	b := s.db.NewBatch()
	if err := b.Set(privacyKey(user), encodePrivacy(p), nil); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: batch: %w", err)
	}
	return s.commit(b)
}

// Privacy implements core.Store.
func (s *Store) Privacy(ctx context.Context, user string) (core.Privacy, error) {
	if _, err := s.User(ctx, user); err != nil {
		return core.Privacy{}, fmt.Errorf("pebblestore: privacy: %w", err)
	}
	v, found, err := s.get(privacyKey(user))
	if err != nil || !found {
		return core.Privacy{}, err
	}
	p, err := decodePrivacy(v)
	if err != nil {
		return core.Privacy{}, fmt.Errorf("pebblestore: privacy of %s: %w", user, err)
	}
	return p, nil
}
