package e2ee

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// kv is the sealer's durable key-value state: one append-only log
// (state.log) of put/delete records, replayed into memory on open. Changes
// are staged with put/del and written by commit in one write + fsync, so a
// Seal's session updates and sent-copy become durable together. A torn
// tail (crash during a write) is cut off on open; the log is rewritten
// compactly on open when it holds much more than the live data.
//
// Not safe for concurrent use: the Sealer's mutex guards it.
type kv struct {
	dir, path string
	f         *os.File
	size      int64
	live      int64
	m         map[string][]byte
	staged    []byte
}

const (
	kvPut byte = 1
	kvDel byte = 2
	// kvHeader: crc32c(4) || payload length(4); payload: op(1) || klen(2) || key || value.
	kvHeader = 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func openKV(dir string) (*kv, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("e2ee: state dir: %w", err)
	}
	s := &kv{dir: dir, path: filepath.Join(dir, "state.log"), m: map[string][]byte{}}
	b, err := os.ReadFile(s.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("e2ee: read state: %w", err)
	}
	good := s.replay(b)
	for k, v := range s.m {
		s.live += recSize(k, v)
	}
	if good != len(b) || int64(good) > 2*s.live+compactSlack {
		if err := s.rewrite(); err != nil {
			return nil, err
		}
	} else {
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("e2ee: open state: %w", err)
		}
		s.f, s.size = f, int64(good)
	}
	return s, nil
}

// replay applies records from b and returns the length of the valid prefix.
func (s *kv) replay(b []byte) int {
	off := 0
	for len(b)-off >= kvHeader {
		sum := binary.BigEndian.Uint32(b[off:])
		n := int(binary.BigEndian.Uint32(b[off+4:]))
		if n < 3 || len(b)-off-kvHeader < n {
			break
		}
		p := b[off+kvHeader : off+kvHeader+n]
		if crc32.Checksum(p, castagnoli) != sum {
			break
		}
		kl := int(binary.BigEndian.Uint16(p[1:]))
		if 3+kl > n {
			break
		}
		k := string(p[3 : 3+kl])
		switch p[0] {
		case kvPut:
			s.m[k] = append([]byte(nil), p[3+kl:]...)
		case kvDel:
			delete(s.m, k)
		default:
			return off
		}
		off += kvHeader + n
	}
	return off
}

func appendRecord(buf []byte, op byte, k string, v []byte) []byte {
	n := 3 + len(k) + len(v)
	start := len(buf)
	buf = binary.BigEndian.AppendUint32(buf, 0)
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	buf = append(buf, op)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(k)))
	buf = append(buf, k...)
	buf = append(buf, v...)
	binary.BigEndian.PutUint32(buf[start:], crc32.Checksum(buf[start+kvHeader:], castagnoli))
	return buf
}

// rewrite writes the live map to a new log atomically and reopens it.
func (s *kv) rewrite() error {
	keys := make([]string, 0, len(s.m))
	for k := range s.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var buf []byte
	for _, k := range keys {
		buf = appendRecord(buf, kvPut, k, s.m[k])
	}
	tmp := s.path + ".tmp"
	if err := writeSync(tmp, buf); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("e2ee: rewrite state: %w", err)
	}
	// From here on the old file is unlinked: never append to it again.
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	if err := s.reopen(); err != nil {
		return err
	}
	s.size, s.live = int64(len(buf)), int64(len(buf))
	return nil
}

func (s *kv) reopen() error {
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("e2ee: open state: %w", err)
	}
	s.f = f
	return nil
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("e2ee: write state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("e2ee: write state: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("e2ee: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("e2ee: sync dir: %w", err)
	}
	return nil
}

func (s *kv) get(k string) ([]byte, bool) { v, ok := s.m[k]; return v, ok }

func recSize(k string, v []byte) int64 { return int64(kvHeader + 3 + len(k) + len(v)) }

// put stages k=v; visible to get at once, durable after commit.
func (s *kv) put(k string, v []byte) {
	if old, ok := s.m[k]; ok {
		s.live -= recSize(k, old)
	}
	s.m[k] = append([]byte(nil), v...)
	s.live += recSize(k, v)
	s.staged = appendRecord(s.staged, kvPut, k, v)
}

func (s *kv) del(k string) {
	old, ok := s.m[k]
	if !ok {
		return
	}
	s.live -= recSize(k, old)
	delete(s.m, k)
	s.staged = appendRecord(s.staged, kvDel, k, nil)
}

// keys returns the keys with the given prefix, sorted.
func (s *kv) keys(prefix string) []string {
	var out []string
	for k := range s.m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// commit writes the staged records and fsyncs. On error the in-memory
// state is ahead of the disk; the caller reports the error and the next
// commit retries the write of everything still staged.
func (s *kv) commit() error {
	if len(s.staged) == 0 {
		return nil
	}
	if s.f == nil {
		if err := s.reopen(); err != nil {
			return err
		}
	}
	if _, err := s.f.Write(s.staged); err != nil {
		return fmt.Errorf("e2ee: write state: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("e2ee: sync state: %w", err)
	}
	s.size += int64(len(s.staged))
	s.staged = s.staged[:0]
	if s.size > 2*s.live+compactSlack {
		// Mostly superseded records (every message rewrites its session):
		// rewrite the live state. Already durable, so a failure only
		// postpones compaction.
		_ = s.rewrite()
	}
	return nil
}

// compactSlack is the garbage the log may hold beyond the live data.
const compactSlack = 8 << 20

func (s *kv) close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
