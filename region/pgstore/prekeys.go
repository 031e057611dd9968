package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/chatmesh/chatmesh/core"
)

var _ core.PrekeyStore = (*Store)(nil)

// PutPrekeys implements core.PrekeyStore. A nil Identity needs an identity
// stored by an earlier upload (ErrNotFound otherwise). One-time ids already
// stored or listed in one_time_prekeys_used are skipped inside the insert.
func (s *Store) PutPrekeys(ctx context.Context, dev core.DeviceKey, up core.PrekeyUpload) error {
	var ids []int64
	var keys [][]byte
	seen := make(map[uint32]bool, len(up.OneTime))
	for _, o := range up.OneTime {
		if !seen[o.ID] { // first occurrence wins
			seen[o.ID] = true
			ids = append(ids, int64(o.ID))
			keys = append(keys, nonNil(o.Key))
		}
	}
	return s.tx(ctx, "put prekeys of "+dev.String(), func(ctx context.Context, tx pgx.Tx) error {
		var identity, signed, kem []byte
		err := tx.QueryRow(ctx, "SELECT identity, signed_prekey, kem_prekey FROM prekeys WHERE user_id = $1 AND device_id = $2",
			dev.User, int64(dev.Device)).Scan(&identity, &signed, &kem)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if len(up.Identity) > 0 {
			identity = up.Identity
		}
		if len(identity) == 0 {
			return fmt.Errorf("pgstore: prekeys of %s: no identity stored and none uploaded: %w", dev, core.ErrNotFound)
		}
		if len(up.SignedPrekey) > 0 {
			signed = up.SignedPrekey
		}
		if len(up.KEMPrekey) > 0 {
			kem = up.KEMPrekey
		}
		if _, err := tx.Exec(ctx, `INSERT INTO prekeys (user_id, device_id, identity, signed_prekey, kem_prekey) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id, device_id) DO UPDATE SET identity = excluded.identity, signed_prekey = excluded.signed_prekey, kem_prekey = excluded.kem_prekey`,
			dev.User, int64(dev.Device), identity, nonNil(signed), nonNil(kem)); err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `INSERT INTO one_time_prekeys (user_id, device_id, key_id, public_key)
			SELECT $1::TEXT, $2::BIGINT, t.k, t.p FROM unnest($3::BIGINT[], $4::BYTEA[]) AS t(k, p)
			WHERE NOT EXISTS (SELECT 1 FROM one_time_prekeys_used u WHERE u.user_id = $1::TEXT AND u.device_id = $2::BIGINT AND u.key_id = t.k)
			ON CONFLICT (user_id, device_id, key_id) DO NOTHING`,
			dev.User, int64(dev.Device), ids, keys)
		return err
	})
}

// TakeBundle implements core.PrekeyStore. It is ErrNotFound until the
// identity, the signed prekey and the KEM prekey are all stored, and then
// consumes nothing. The lowest one-time key is removed by DELETE ...
// RETURNING inside the SERIALIZABLE transaction: of two concurrent takers
// of the same key one fails to serialize and is retried as a whole.
func (s *Store) TakeBundle(ctx context.Context, dev core.DeviceKey) (core.PrekeyBundle, error) {
	var out core.PrekeyBundle
	err := s.tx(ctx, "take prekey bundle of "+dev.String(), func(ctx context.Context, tx pgx.Tx) error {
		out = core.PrekeyBundle{}
		err := tx.QueryRow(ctx, "SELECT identity, signed_prekey, kem_prekey FROM prekeys WHERE user_id = $1 AND device_id = $2",
			dev.User, int64(dev.Device)).Scan(&out.Identity, &out.SignedPrekey, &out.KEMPrekey)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if len(out.Identity) == 0 || len(out.SignedPrekey) == 0 || len(out.KEMPrekey) == 0 {
			return fmt.Errorf("pgstore: prekey bundle of %s: %w", dev, core.ErrNotFound)
		}
		var id int64
		var key []byte
		err = tx.QueryRow(ctx, `DELETE FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2
			AND key_id = (SELECT MIN(key_id) FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2)
			RETURNING key_id, public_key`, dev.User, int64(dev.Device)).Scan(&id, &key)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // exhausted
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO one_time_prekeys_used (user_id, device_id, key_id) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, device_id, key_id) DO NOTHING`, dev.User, int64(dev.Device), id); err != nil {
			return err
		}
		out.OneTime = &core.OneTimeKey{ID: uint32(id), Key: key}
		return tx.QueryRow(ctx, "SELECT count(*) FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2",
			dev.User, int64(dev.Device)).Scan(&out.Remaining)
	})
	if err != nil {
		return core.PrekeyBundle{}, err
	}
	return out, nil
}

// PeekBundle returns what TakeBundle would, without taking a one-time
// prekey: OneTime is nil and Remaining is the number left. The region
// answers with it when a fetch is over its limits (region/prekeys.go).
func (s *Store) PeekBundle(ctx context.Context, dev core.DeviceKey) (core.PrekeyBundle, error) {
	var out core.PrekeyBundle
	err := s.pool.QueryRow(ctx, `SELECT p.identity, p.signed_prekey, p.kem_prekey,
		(SELECT count(*) FROM one_time_prekeys o WHERE o.user_id = p.user_id AND o.device_id = p.device_id)
		FROM prekeys p WHERE p.user_id = $1 AND p.device_id = $2`,
		dev.User, int64(dev.Device)).Scan(&out.Identity, &out.SignedPrekey, &out.KEMPrekey, &out.Remaining)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return core.PrekeyBundle{}, fmt.Errorf("pgstore: prekey bundle of %s: %w", dev, err)
	}
	if len(out.Identity) == 0 || len(out.SignedPrekey) == 0 || len(out.KEMPrekey) == 0 {
		return core.PrekeyBundle{}, fmt.Errorf("pgstore: prekey bundle of %s: %w", dev, core.ErrNotFound)
	}
	return out, nil
}

// OneTimeCount implements core.PrekeyStore (0 for a device without uploads).
func (s *Store) OneTimeCount(ctx context.Context, dev core.DeviceKey) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2",
		dev.User, int64(dev.Device)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pgstore: one-time prekeys of %s: %w", dev, err)
	}
	return n, nil
}

// PutDeviceList implements core.PrekeyStore. Versions are compared in Go as
// unsigned values.
func (s *Store) PutDeviceList(ctx context.Context, user string, version uint64, list []byte) error {
	return s.tx(ctx, "put device list of "+user, func(ctx context.Context, tx pgx.Tx) error {
		var stored int64
		err := tx.QueryRow(ctx, "SELECT version FROM device_lists WHERE user_id = $1", user).Scan(&stored)
		switch {
		case err == nil:
			if version <= u64(stored) {
				return fmt.Errorf("pgstore: device list of %s: version %d not above stored %d: %w", user, version, u64(stored), core.ErrAlreadyExists)
			}
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO device_lists (user_id, version, list) VALUES ($1, $2, $3)
			ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, list = excluded.list`, user, i64(version), nonNil(list))
		return err
	})
}

// DeviceList implements core.PrekeyStore.
func (s *Store) DeviceList(ctx context.Context, user string) (uint64, []byte, error) {
	var version int64
	var list []byte
	err := s.pool.QueryRow(ctx, "SELECT version, list FROM device_lists WHERE user_id = $1", user).Scan(&version, &list)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, fmt.Errorf("pgstore: device list of %s: %w", user, core.ErrNotFound)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("pgstore: device list of %s: %w", user, err)
	}
	return u64(version), list, nil
}
