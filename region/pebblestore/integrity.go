package pebblestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// WitnessFile is the name, inside the store's directory, of the integrity
// witness: the Pebble sequence number up to which every synced commit is
// known to be durable. See the package documentation (Integrity).
const WitnessFile = "CHATMESH-WITNESS"

// recoveryHint is appended to every ErrCorrupt refusal at Open.
const recoveryHint = "the store refuses to start rather than lose acknowledged messages or hand out a seq twice. " +
	"To recover: stop every process using it, move the damaged directory aside (keep it for inspection), " +
	"and restore the whole data directory (store and broker together) from a backup taken while the process was stopped. " +
	"Do not delete the store to start fresh: devices hold seqs from it and would drop new messages as duplicates; " +
	"starting over means deleting the store, the broker data and every client's state together " +
	"(for `chatmesh dev`: remove the whole -data directory). See deploy/README.md, section Damaged data"

// ------------------------------------------------------------------ open-time verification

// verifyExisting checks an existing database in dir before it is opened for
// writing, without changing anything on disk: it opens the database
// read-only (Pebble replays the WAL into memory only), compares Pebble's
// sequence number with the witness, and unless skipScan reads every key and
// value (Pebble checks every block's checksum on read). haveWit is false
// when the directory has no witness file.
func verifyExisting(dir string, lock *pebble.Lock, log pebble.Logger, skipScan bool) (haveWit bool, err error) {
	wit, haveWit, err := readWitness(dir)
	if err != nil {
		return false, err
	}
	cache := pebble.NewCache(8 << 20)
	defer cache.Unref()
	db, err := pebble.Open(dir, &pebble.Options{
		Cache:            cache,
		Logger:           log,
		Lock:             lock,
		ReadOnly:         true,
		ErrorIfNotExists: true,
		EventListener:    corruptionListener(log),
	})
	if err != nil {
		return false, damaged(dir, "the database does not open", err)
	}
	defer db.Close()
	visible := visibleSeqNum(db)
	if haveWit && visible < wit {
		return false, fmt.Errorf("pebblestore: open %s: %w: committed writes are missing: "+
			"the write-ahead log ends at Pebble sequence number %d but %d were durably committed "+
			"(the WAL was truncated or its tail corrupted); %s",
			dir, ErrCorrupt, visible, wit, recoveryHint)
	}
	if !skipScan {
		if err := scanAll(db); err != nil {
			return false, damaged(dir, "reading every key failed (a checksum mismatch or a missing or truncated sstable)", err)
		}
	}
	return haveWit, nil
}

// damaged wraps an error found while verifying an existing store. Every
// failure to open or read an existing database is a refusal; it is
// ErrCorrupt (with the recovery advice) unless it is about the process
// rather than the files: a permission error or running out of
// descriptors or memory. Pebble reports damage in several shapes (a
// checksum mismatch, an sstable whose size disagrees with the manifest, a
// missing file), not all marked as corruption, so the test is the
// exclusion.
func damaged(dir, what string, err error) error {
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EMFILE) ||
		errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOMEM) {
		return fmt.Errorf("pebblestore: open %s: %s: %w", dir, what, err)
	}
	// Pebble's detail carriers put line breaks into the text; one line reads
	// better in a log.
	cause := strings.Join(strings.Fields(err.Error()), " ")
	return fmt.Errorf("pebblestore: open %s: %w: %s: %s; %s", dir, ErrCorrupt, what, cause, recoveryHint)
}

// corruptionListener logs on-disk corruption as an error and lets the read
// that found it fail. Pebble's default calls Logger.Fatalf, which would
// turn a damaged block into a crash instead of a refusal with a reason.
func corruptionListener(log pebble.Logger) *pebble.EventListener {
	return &pebble.EventListener{DataCorruption: func(info pebble.DataCorruptionInfo) {
		log.Errorf("on-disk corruption: %s", info)
	}}
}

// scanAll reads every key and value of db.
func scanAll(db *pebble.DB) error {
	it, err := db.NewIter(nil)
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		if _, err := it.ValueAndErr(); err != nil {
			_ = it.Close()
			return err
		}
	}
	return it.Close() // returns the iterator's error, if any
}

// visibleSeqNum returns the database's visible sequence number: one past the
// last committed write. Pebble exposes it through the sequence number of a
// snapshot, reported by Metrics; call it only when no other snapshot is
// open and nothing writes (during Open).
func visibleSeqNum(db *pebble.DB) uint64 {
	snap := db.NewSnapshot()
	defer snap.Close()
	return uint64(db.Metrics().Snapshots.EarliestSeqNum)
}

// dbExists says whether dir holds a Pebble database (a manifest).
func dbExists(dir string) (bool, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	desc, err := pebble.Peek(dir, vfs.Default)
	if err != nil {
		return false, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	return desc.Exists, nil
}

// ------------------------------------------------------------------ the witness file

// The witness file has two 32-byte slots written alternately, so a write
// torn by a crash damages only the slot being written and the other still
// holds the previous value. A slot is
//
//	magic "CMWITNS1" (8) | generation BE64 | seqnum BE64 | CRC-32C of the first 24 bytes BE32 | 4 zero bytes
//
// and the valid slot with the higher generation is the witness's value.
const (
	slotSize     = 32
	witnessMagic = "CMWITNS1"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeSlot(gen, seq uint64) []byte {
	b := make([]byte, slotSize)
	copy(b, witnessMagic)
	binary.BigEndian.PutUint64(b[8:], gen)
	binary.BigEndian.PutUint64(b[16:], seq)
	binary.BigEndian.PutUint32(b[24:], crc32.Checksum(b[:24], castagnoli))
	return b
}

func decodeSlot(b []byte) (gen, seq uint64, ok bool) {
	if len(b) < slotSize || string(b[:8]) != witnessMagic ||
		binary.BigEndian.Uint32(b[24:]) != crc32.Checksum(b[:24], castagnoli) {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(b[8:]), binary.BigEndian.Uint64(b[16:]), true
}

// readWitness returns the witness's sequence number; found is false when
// the file does not exist. A file with no valid slot is ErrCorrupt.
func readWitness(dir string) (seq uint64, found bool, err error) {
	_, seq, found, err = readSlots(filepath.Join(dir, WitnessFile))
	if err != nil {
		return 0, false, fmt.Errorf("pebblestore: open %s: %w; %s", dir, err, recoveryHint)
	}
	return seq, found, nil
}

func readSlots(path string) (gen, seq uint64, found bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, fmt.Errorf("read integrity witness: %w", err)
	}
	ok := false
	for off := 0; off+slotSize <= len(b) && off < 2*slotSize; off += slotSize {
		if g, s, valid := decodeSlot(b[off : off+slotSize]); valid && (!ok || g > gen) {
			gen, seq, ok = g, s, true
		}
	}
	if !ok {
		return 0, 0, false, fmt.Errorf("%w: integrity witness %s is unreadable (%d bytes, no valid slot)", ErrCorrupt, path, len(b))
	}
	return gen, seq, true, nil
}

// witness keeps the witness file in step with synced commits. advance is
// group-committed: one file write and fsync covers every commit that
// arrived while the previous one was in flight.
type witness struct {
	f *os.File

	mu      sync.Mutex
	cond    *sync.Cond
	gen     uint64 // generation of the newest written slot
	durable uint64 // sequence number the file holds, fsynced
	want    uint64 // highest sequence number asked for
	busy    bool   // a write is in flight
	err     error  // sticky: a failed write breaks the store
}

// openWitness opens (creating with value seq when absent) the witness file
// of dir. A new file and its directory entry are fsynced.
func openWitness(dir string, seq uint64) (*witness, error) {
	path := filepath.Join(dir, WitnessFile)
	gen, cur, found, err := readSlots(path)
	if err != nil {
		return nil, err
	}
	if !found {
		// Created whole or not at all: a crash while creating must not
		// leave an empty witness that the next Open reads as damage.
		tmp := path + ".tmp"
		b := make([]byte, 2*slotSize) // generation 1 lives in the second slot
		copy(b[slotSize:], encodeSlot(1, seq))
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return nil, fmt.Errorf("pebblestore: integrity witness: %w", err)
		}
		if err := syncFile(tmp); err != nil {
			return nil, err
		}
		if err := os.Rename(tmp, path); err != nil {
			return nil, fmt.Errorf("pebblestore: integrity witness: %w", err)
		}
		if err := syncDir(dir); err != nil {
			return nil, err
		}
		gen, cur, found = 1, seq, true
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: integrity witness: %w", err)
	}
	w := &witness{f: f, gen: gen, durable: cur, want: cur}
	w.cond = sync.NewCond(&w.mu)
	if !found || seq > cur {
		if err := w.write(gen+1, seq); err != nil {
			_ = f.Close()
			return nil, err
		}
		w.gen, w.durable, w.want = gen+1, seq, seq
		if !found {
			if err := syncDir(dir); err != nil {
				_ = f.Close()
				return nil, err
			}
		}
	}
	return w, nil
}

func (w *witness) write(gen, seq uint64) error {
	if _, err := w.f.WriteAt(encodeSlot(gen, seq), int64(gen%2)*slotSize); err != nil {
		return fmt.Errorf("pebblestore: write integrity witness: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("pebblestore: sync integrity witness: %w", err)
	}
	return nil
}

// advance returns once the witness durably holds at least seq. Callers pass
// the end (exclusive) of a batch whose synced commit returned.
func (w *witness) advance(seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq > w.want {
		w.want = seq
	}
	for w.durable < seq {
		if w.err != nil {
			return w.err
		}
		if w.busy {
			w.cond.Wait()
			continue
		}
		w.busy = true
		gen, target := w.gen+1, w.want
		w.mu.Unlock()
		err := w.write(gen, target)
		w.mu.Lock()
		w.busy = false
		if err != nil {
			w.err = err
		} else {
			w.gen, w.durable = gen, target
		}
		w.cond.Broadcast()
	}
	return nil
}

// failed returns the sticky write error, if any.
func (w *witness) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *witness) close() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("pebblestore: close integrity witness: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("pebblestore: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("pebblestore: sync %s: %w", dir, err)
	}
	return nil
}

// ------------------------------------------------------------------ store identity

// tagMeta starts the store's own metadata keys.
const tagMeta = '#'

// identityKey marks a store as initialized: written by MarkInitialized once
// the region checked that nothing says a previous store existed.
var identityKey = []byte{tagMeta, 'i', 'd'}

// Initialized implements core.StoreMarker: the store was marked
// initialized, or holds users or conversations (a store made before the
// marker existed).
func (s *Store) Initialized(ctx context.Context) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	if _, found, err := s.get(identityKey); err != nil || found {
		return found, err
	}
	for _, tag := range []byte{tagUser, tagConv} {
		found := false
		err := s.scan([]byte{tag}, func(k, v []byte) (bool, error) {
			found = true
			return false, nil
		})
		if err != nil || found {
			return found, err
		}
	}
	return false, nil
}

// MarkInitialized implements core.StoreMarker. It is idempotent.
func (s *Store) MarkInitialized(ctx context.Context) error {
	if err := s.check(); err != nil {
		return err
	}
	if _, found, err := s.get(identityKey); err != nil || found {
		return err
	}
	b := s.db.NewBatch()
	if err := b.Set(identityKey, be64(nil, uint64(time.Now().UnixMilli())), nil); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: batch: %w", err)
	}
	return s.commit(b)
}

// syncFile fsyncs a file by name.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("pebblestore: integrity witness: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pebblestore: integrity witness: sync: %w", err)
	}
	return nil
}
