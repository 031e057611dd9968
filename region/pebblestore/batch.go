package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/chatmesh/chatmesh/core"
)

// writeBatch is the state of a write batch's view (core.WriteBatch): the
// indexed batch its appends go into and, per conversation it appended to,
// the conversation's record as committed when the batch first read it.
// Commit checks those records under the conversations' stripes: if
// another writer appended meanwhile, the batch stores nothing.
type writeBatch struct {
	b        *pebble.Batch
	base     map[string][]byte // conversation → committed record (nil: absent) at first append
	last     map[string][]byte // conversation → the record this batch last wrote
	appended int
	broken   error // a failed write left the batch half-written: it cannot commit
	done     bool
}

// note records conv's committed record the first time the batch appends
// to it.
func (w *writeBatch) note(s *Store, conv string) error {
	if _, ok := w.base[conv]; ok {
		return nil
	}
	v, found, err := s.committed(convKey(conv))
	if err != nil {
		return err
	}
	if !found {
		v = nil
	} else if v == nil {
		v = []byte{}
	}
	w.base[conv] = v
	return nil
}

// conv returns conv's record as the batch sees it — the record the batch
// last wrote, else the committed one note read — without reading the key
// again. Caller holds conv's stripe. A record committed by another writer
// after note is not seen here (a read through the batch would see it);
// Commit finds it changed and stores nothing.
func (w *writeBatch) conv(s *Store, conv string) ([]byte, bool, error) {
	if v, ok := w.last[conv]; ok {
		return v, true, nil
	}
	if err := w.note(s, conv); err != nil {
		return nil, false, err
	}
	v := w.base[conv]
	return v, v != nil, nil
}

// committed reads k from the database itself, never from a batch.
func (s *Store) committed(k []byte) ([]byte, bool, error) {
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pebblestore: get: %w", err)
	}
	out := bytes.Clone(v)
	if out == nil {
		out = []byte{}
	}
	if err := closer.Close(); err != nil {
		return nil, false, fmt.Errorf("pebblestore: get: %w", err)
	}
	return out, true, nil
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
	if err := s.check(); err != nil {
		return nil, err
	}
	if s.wb != nil {
		return nil, fmt.Errorf("pebblestore: begin inside a write batch: %w", core.ErrInvalidArgument)
	}
	ib := s.db.NewIndexedBatch()
	return &Batch{Store: &Store{base: s.base, rd: ib, wb: &writeBatch{b: ib, base: map[string][]byte{}, last: map[string][]byte{}}}}, nil
}

// Prefetch implements core.WriteBatch: Pebble's reads are local, so it
// does nothing.
func (b *Batch) Prefetch(context.Context, []string, []core.IdemKey) error { return nil }

// Err implements core.WriteBatch.
func (b *Batch) Err() error { return b.wb.broken }

// Appended implements core.WriteBatch.
func (b *Batch) Appended() int { return b.wb.appended }

// Close discards the batch; it never closes the store.
func (b *Batch) Close() error {
	b.Discard()
	return nil
}

// Discard implements core.WriteBatch.
func (b *Batch) Discard() {
	if b.wb.done {
		return
	}
	b.wb.done = true
	_ = b.wb.b.Close()
}

// Commit implements core.WriteBatch: under the stripes of every
// conversation the batch appended to (taken in stripe order, so two
// commits cannot deadlock, and no single Append can interleave), it checks
// that their committed records are what the batch first read, then commits
// with one synced write.
func (b *Batch) Commit(ctx context.Context) error {
	w := b.wb
	if w.done {
		return fmt.Errorf("pebblestore: commit of a finished batch: %w", core.ErrInvalidArgument)
	}
	if w.broken != nil {
		b.Discard()
		return fmt.Errorf("pebblestore: commit: %w", w.broken)
	}
	if w.appended == 0 {
		b.Discard()
		return nil
	}
	if err := b.check(); err != nil {
		b.Discard()
		return err
	}
	idx := make([]uint64, 0, len(w.base))
	for conv := range w.base {
		idx = append(idx, maphash.String(b.seed, conv)%uint64(len(b.convMu)))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		b.convMu[i].Lock()
	}
	defer func() {
		for _, i := range idx {
			b.convMu[i].Unlock()
		}
	}()
	if err := ctx.Err(); err != nil {
		b.Discard()
		return err
	}
	for conv, want := range w.base {
		got, found, err := b.committed(convKey(conv))
		if err != nil {
			b.Discard()
			return err
		}
		if found != (want != nil) || !bytes.Equal(got, want) {
			b.Discard()
			return fmt.Errorf("pebblestore: conversation %s changed under the write batch: %w", conv, core.ErrUnavailable)
		}
	}
	w.done = true
	return b.commit(w.b)
}
