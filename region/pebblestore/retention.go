package pebblestore

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// tagRetention: 'g' conv -> trimmed, keys through (core.RetentionMark).
// A conversation without one has both marks at 0.
const tagRetention = 'g'

var _ core.Retainer = (*Store)(nil)

func retentionKey(conv string) []byte { return key(tagRetention, conv) }

func encodeMark(trimmed, keys uint64) []byte { return enc(nil).u(trimmed).u(keys).bytes() }

// mark reads conv's conversation record and retention marks.
func (s *Store) mark(conv string) (core.RetentionMark, error) {
	cv, ok, err := s.get(convKey(conv))
	if err != nil {
		return core.RetentionMark{}, err
	}
	if !ok {
		return core.RetentionMark{}, fmt.Errorf("pebblestore: conversation %s: %w", conv, core.ErrNotFound)
	}
	c, err := decodeConv(conv, cv)
	if err != nil {
		return core.RetentionMark{}, fmt.Errorf("pebblestore: conversation %s: %w", conv, err)
	}
	return s.withMarks(c)
}

func (s *Store) withMarks(c core.Conversation) (core.RetentionMark, error) {
	m := core.RetentionMark{Conv: c.ID, Head: c.Head}
	v, ok, err := s.get(retentionKey(c.ID))
	if err != nil || !ok {
		return m, err
	}
	d := dec{buf: v}
	m.Trimmed, m.KeysThrough = d.u(), d.u()
	if err := d.done(); err != nil {
		return m, fmt.Errorf("pebblestore: retention mark of %s: %w", c.ID, err)
	}
	return m, nil
}

// RetentionMarks implements core.Retainer.
func (s *Store) RetentionMarks(ctx context.Context, after string, limit int) ([]core.RetentionMark, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = core.DefaultPageSize
	}
	lower := []byte{tagConv}
	if after != "" {
		lower = append(convKey(after), sep) // the smallest id greater than after
	}
	it, err := s.rd.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: []byte{tagConv + 1}})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: iterate: %w", err)
	}
	defer it.Close()
	var out []core.RetentionMark
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("pebblestore: retention marks: %w", err)
		}
		c, err := decodeConv(string(it.Key()[1:]), v)
		if err != nil {
			return nil, fmt.Errorf("pebblestore: conversation %q: %w", it.Key()[1:], err)
		}
		m, err := s.withMarks(c)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("pebblestore: retention marks: %w", err)
	}
	return out, nil
}

// RetentionMark implements core.Retainer.
func (s *Store) RetentionMark(ctx context.Context, conv string) (core.RetentionMark, error) {
	if err := s.check(); err != nil {
		return core.RetentionMark{}, err
	}
	if err := ctx.Err(); err != nil {
		return core.RetentionMark{}, err
	}
	if err := checkID("conversation id", conv); err != nil {
		return core.RetentionMark{}, fmt.Errorf("pebblestore: conversation %q: %w", conv, core.ErrNotFound)
	}
	return s.mark(conv)
}

// Trim implements core.Retainer: one synced batch deletes the entries
// (a range deletion), their idempotency keys (point deletions of the keys
// not yet forgotten) and moves the marks, under the conversation's append
// stripe, so that an Append never sees a key whose entry is gone.
func (s *Store) Trim(ctx context.Context, conv string, through uint64) error {
	return s.retain(ctx, conv, through, true)
}

// ForgetKeys implements core.Retainer.
func (s *Store) ForgetKeys(ctx context.Context, conv string, through uint64) error {
	return s.retain(ctx, conv, through, false)
}

func (s *Store) retain(ctx context.Context, conv string, through uint64, trim bool) error {
	if err := s.check(); err != nil {
		return err
	}
	if s.wb != nil {
		return fmt.Errorf("pebblestore: retention inside a write batch: %w", core.ErrInvalidArgument)
	}
	if err := checkID("conversation id", conv); err != nil {
		return err
	}
	mu := s.stripe(s.convMu, conv)
	mu.Lock()
	defer mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	m, err := s.mark(conv)
	if err != nil {
		return err
	}
	if through > m.Head {
		return fmt.Errorf("pebblestore: retention of %s through %d beyond head %d: %w", conv, through, m.Head, core.ErrInvalidArgument)
	}
	from := m.KeysThrough // keys of entries above it still exist
	if trim && through <= m.Trimmed || !trim && through <= m.KeysThrough {
		return nil
	}
	b := s.db.NewBatch()
	if from < through {
		if err := s.deleteKeys(b, conv, from, through); err != nil {
			_ = b.Close()
			return err
		}
	}
	if trim {
		if err := b.DeleteRange(messageKey(conv, m.Trimmed+1), messageKey(conv, through+1), nil); err != nil {
			_ = b.Close()
			return fmt.Errorf("pebblestore: trim %s: %w", conv, err)
		}
		m.Trimmed = through
	}
	if err := b.Set(retentionKey(conv), encodeMark(m.Trimmed, max(m.KeysThrough, through)), nil); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: retention of %s: %w", conv, err)
	}
	return s.commit(b)
}

// deleteKeys adds to b the deletion of the idempotency keys of the
// entries with after < seq <= through (all still stored).
func (s *Store) deleteKeys(b *pebble.Batch, conv string, after, through uint64) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: messageKey(conv, after+1), UpperBound: messageKey(conv, through+1)})
	if err != nil {
		return fmt.Errorf("pebblestore: iterate: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("pebblestore: entries of %s: %w", conv, err)
		}
		var e pb.Message
		if err := proto.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("pebblestore: entries of %s: %w: %w", conv, ErrCorrupt, err)
		}
		if err := b.Delete(dedupeKey(conv, core.KeyOf(e.GetSender()), e.GetClientMsgId()), nil); err != nil {
			return fmt.Errorf("pebblestore: forget keys of %s: %w", conv, err)
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("pebblestore: entries of %s: %w", conv, err)
	}
	return nil
}
