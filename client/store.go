package client

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// Record types of a conversation log.
const (
	recMessage byte = 1 // payload: a marshalled pb.Message
	recSeen    byte = 2 // payload: 8-byte big-endian seq, the app cursor
	recAcked   byte = 3 // payload: 8-byte big-endian seq the server confirmed as delivered
	// recSkip: payload 8-byte big-endian seq; the seqs after the head up to
	// it are not for this device (it joined, or was let back in, after
	// them) and will never be stored. The next message continues from it.
	recSkip byte = 4
	// recConv: payload the conversation id. The first record of a log
	// whose file name is a hash ("h-<sha256 hex>.log"): ids whose hex
	// encoding would not fit a file name (a 1:1 of two long user ids is
	// up to 131 bytes; most file systems allow 255-byte names).
	recConv byte = 5
)

// maxHexName is the longest hex-encoded conversation id used as a file
// name; longer ids are stored under a hash of the id.
const maxHexName = 200

// maxRecord bounds one log record; larger lengths mean corruption.
const maxRecord = 4 << 20

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Store is the device's local, durable message store: one append-only log
// per conversation under <state>/convs/, holding the conversation's entries
// in seq order and the app's "seen" cursor. The entries are gapless from 1,
// except where a skip record says that the seqs before a join point (a
// member added to a group later, an invitation, an accepted invitation, a
// re-admission) are not for this device. The head — the highest stored or
// skipped seq — is the device's delivery cursor; it is derived from the
// data on open, so cursor and data can never disagree.
//
// Each record is [u32 length][u8 type][payload][u32 crc32c(type|payload)];
// a torn or corrupt tail (crash during append) is cut off on open. Every
// append is fsync'd before it returns.
//
// Store is safe for concurrent use.
type Store struct {
	dir   string
	mu    sync.Mutex
	convs map[string]*convLog
}

type convLog struct {
	path  string
	conv  string    // the conversation id (read from a hashed log's recConv)
	segs  []segment // stored entries, in seq order
	head  uint64    // highest stored or skipped seq
	size  int64
	seen  uint64
	acked uint64
}

// segment is a run of consecutive stored entries.
type segment struct {
	first   uint64  // seq of offsets[0]
	offsets []int64 // offsets[i] is the record offset of seq first+i
}

// add records the entry at seq head+1 stored at off.
func (cl *convLog) add(off int64) {
	cl.head++
	if n := len(cl.segs); n > 0 && cl.segs[n-1].first+uint64(len(cl.segs[n-1].offsets)) == cl.head {
		cl.segs[n-1].offsets = append(cl.segs[n-1].offsets, off)
		return
	}
	cl.segs = append(cl.segs, segment{first: cl.head, offsets: []int64{off}})
}

// count returns how many entries are stored.
func (cl *convLog) count() int {
	n := 0
	for _, sg := range cl.segs {
		n += len(sg.offsets)
	}
	return n
}

// ConvSummary describes one locally stored conversation.
type ConvSummary struct {
	Conv string
	Head uint64 // highest stored seq (the delivery cursor)
	Seen uint64 // the app's cursor (messages handed to / committed by the app)
	// Acked is the delivery cursor the server confirmed (DeliveryAck reply).
	Acked uint64
}

// OpenStore opens (creating) a store in dir.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("client: store: %w", err)
	}
	s := &Store{dir: dir, convs: map[string]*convLog{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("client: store: %w", err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok || e.IsDir() {
			continue
		}
		if hashed, ok := strings.CutPrefix(name, "h-"); ok {
			cl, err := loadConvLog(filepath.Join(dir, e.Name()))
			if err != nil {
				return nil, err
			}
			sum := sha256.Sum256([]byte(cl.conv))
			if cl.conv == "" || hex.EncodeToString(sum[:]) != hashed {
				continue // its id record was torn: nothing after it was written either
			}
			s.convs[cl.conv] = cl
			continue
		}
		raw, err := hex.DecodeString(name)
		if err != nil {
			continue
		}
		cl, err := loadConvLog(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		s.convs[string(raw)] = cl
	}
	return s, nil
}

// loadConvLog scans a log, truncating any torn tail.
func loadConvLog(path string) (*convLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("client: store: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("client: store: read %s: %w", path, err)
	}
	cl := &convLog{path: path}
	var off int64
scan:
	for {
		typ, payload, n, ok := decodeRecord(data[off:])
		if !ok {
			break
		}
		switch typ {
		case recMessage:
			var m pb.Message
			if err := proto.Unmarshal(payload, &m); err != nil || m.GetSeq() != cl.head+1 {
				// Not the next seq: treat like corruption and stop here.
				break scan
			}
			cl.add(off)
		case recSkip:
			if len(payload) != 8 || binary.BigEndian.Uint64(payload) <= cl.head {
				break scan // skips only move forward
			}
			cl.head = binary.BigEndian.Uint64(payload)
		case recSeen:
			if len(payload) == 8 {
				cl.seen = max(cl.seen, binary.BigEndian.Uint64(payload))
			}
		case recAcked:
			if len(payload) == 8 {
				cl.acked = max(cl.acked, binary.BigEndian.Uint64(payload))
			}
		case recConv:
			if off != 0 {
				break scan // only ever the first record
			}
			cl.conv = string(payload)
		}
		off += int64(n)
	}
	cl.size = off
	if off != int64(len(data)) {
		if err := f.Truncate(off); err != nil {
			return nil, fmt.Errorf("client: store: truncate torn tail of %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("client: store: %w", err)
		}
	}
	cl.seen = min(cl.seen, cl.head)
	cl.acked = min(cl.acked, cl.head)
	return cl, nil
}

// decodeRecord parses one record at the start of b.
func decodeRecord(b []byte) (typ byte, payload []byte, n int, ok bool) {
	if len(b) < 9 {
		return 0, nil, 0, false
	}
	l := binary.BigEndian.Uint32(b)
	if l > maxRecord || len(b) < int(l)+9 {
		return 0, nil, 0, false
	}
	body := b[4 : 5+l]
	if crc32.Checksum(body, crcTable) != binary.BigEndian.Uint32(b[5+l:]) {
		return 0, nil, 0, false
	}
	return body[0], body[1:], int(l) + 9, true
}

func appendRecord(dst []byte, typ byte, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	start := len(dst)
	dst = append(dst, typ)
	dst = append(dst, payload...)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], crcTable))
}

func (s *Store) logPath(conv string) string {
	if h := hex.EncodeToString([]byte(conv)); len(h) <= maxHexName {
		return filepath.Join(s.dir, h+".log")
	}
	sum := sha256.Sum256([]byte(conv))
	return filepath.Join(s.dir, "h-"+hex.EncodeToString(sum[:])+".log")
}

// newLog returns the log of a conversation not stored yet; a log under a
// hashed file name starts with the conversation's id (recConv).
func (s *Store) newLog(conv string) (*convLog, error) {
	cl := &convLog{path: s.logPath(conv), conv: conv}
	if strings.HasPrefix(filepath.Base(cl.path), "h-") {
		if err := s.writeSync(cl, appendRecord(nil, recConv, []byte(conv)), true, true); err != nil {
			return nil, err
		}
	}
	return cl, nil
}

// Head returns the highest stored or skipped seq of conv (0 when unknown).
func (s *Store) Head(conv string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cl := s.convs[conv]; cl != nil {
		return cl.head
	}
	return 0
}

// Conversations lists the stored conversations ordered by id.
func (s *Store) Conversations() []ConvSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ConvSummary, 0, len(s.convs))
	for id, cl := range s.convs {
		out = append(out, ConvSummary{Conv: id, Head: cl.head, Seen: cl.seen, Acked: cl.acked})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Conv < out[j].Conv })
	return out
}

// Append stores msgs, which must all belong to conv and continue its seq
// exactly (head+1, head+2, ...), and fsyncs them.
func (s *Store) Append(conv string, msgs []*pb.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.convs[conv]
	created := false
	if cl == nil {
		var err error
		if cl, err = s.newLog(conv); err != nil {
			return err
		}
		created = true
	}
	head := cl.head
	var buf []byte
	offs := make([]int64, 0, len(msgs))
	for i, m := range msgs {
		if m.GetConvId() != conv || m.GetSeq() != head+uint64(i)+1 {
			return fmt.Errorf("%w: %s: append seq %d after head %d", ErrStore, conv, m.GetSeq(), head+uint64(i))
		}
		b, err := proto.Marshal(m)
		if err != nil {
			return fmt.Errorf("%w: encode: %w", ErrStore, err)
		}
		offs = append(offs, cl.size+int64(len(buf)))
		buf = appendRecord(buf, recMessage, b)
	}
	if err := s.write(cl, buf, created); err != nil {
		return err
	}
	if created {
		s.convs[conv] = cl
	}
	for _, off := range offs {
		cl.add(off)
	}
	return nil
}

// Skip records that conv's seqs after the head up to seq are not for this
// device: it was not a member when they were written (it joined at seq+1),
// so they will never be stored and the next entry is seq+1. A seq at or
// below the head is a no-op. The record is not fsync'd by itself: the
// append of the join entry that follows makes it durable, and a lost skip
// is only made again by the next sync.
func (s *Store) Skip(conv string, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.convs[conv]
	created := false
	if cl == nil {
		var err error
		if cl, err = s.newLog(conv); err != nil {
			return err
		}
		created = true
	}
	if seq <= cl.head {
		return nil
	}
	if err := s.writeSync(cl, appendRecord(nil, recSkip, binary.BigEndian.AppendUint64(nil, seq)), created, created); err != nil {
		return err
	}
	if created {
		s.convs[conv] = cl
	}
	cl.head = seq
	return nil
}

// write appends buf to cl's file and fsyncs; it rolls the file back to its
// old size when the write fails half-way.
func (s *Store) write(cl *convLog, buf []byte, created bool) error {
	return s.writeSync(cl, buf, created, true)
}

func (s *Store) writeSync(cl *convLog, buf []byte, created, sync bool) error {
	f, err := os.OpenFile(cl.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	defer f.Close()
	_, err = f.WriteAt(buf, cl.size)
	if err == nil && sync {
		err = f.Sync()
	}
	if err != nil {
		_ = f.Truncate(cl.size)
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	if created {
		if err := syncDir(s.dir); err != nil {
			return fmt.Errorf("%w: %w", ErrStore, err)
		}
	}
	cl.size += int64(len(buf))
	return nil
}

// SetSeen durably moves conv's app cursor forward to seq (never back, never
// past the head).
func (s *Store) SetSeen(conv string, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.convs[conv]
	if cl == nil {
		return nil
	}
	seq = min(seq, cl.head)
	if seq <= cl.seen {
		return nil
	}
	if err := s.write(cl, appendRecord(nil, recSeen, binary.BigEndian.AppendUint64(nil, seq)), false); err != nil {
		return err
	}
	cl.seen = seq
	return nil
}

// SetAcked records that the server confirmed conv's delivery cursor at seq
// (never moves back). It is not fsync'd: losing it only repeats an ack.
func (s *Store) SetAcked(conv string, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.convs[conv]
	if cl == nil || seq <= cl.acked {
		return nil
	}
	seq = min(seq, cl.head)
	if err := s.writeSync(cl, appendRecord(nil, recAcked, binary.BigEndian.AppendUint64(nil, seq)), false, false); err != nil {
		return err
	}
	cl.acked = seq
	return nil
}

// Acked returns the delivery cursor the server last confirmed for conv.
func (s *Store) Acked(conv string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cl := s.convs[conv]; cl != nil {
		return cl.acked
	}
	return 0
}

// Seen returns conv's app cursor.
func (s *Store) Seen(conv string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cl := s.convs[conv]; cl != nil {
		return cl.seen
	}
	return 0
}

// Messages returns up to limit stored entries of conv with seq > after,
// ascending (limit <= 0: all).
func (s *Store) Messages(conv string, after uint64, limit int) ([]*pb.Message, error) {
	s.mu.Lock()
	cl := s.convs[conv]
	if cl == nil || after >= cl.head {
		s.mu.Unlock()
		return nil, nil
	}
	// The byte range from the first stored entry after `after` to the
	// entry after the last one wanted (or the end of the log).
	from, to, want := int64(-1), cl.size, 0
scan:
	for _, sg := range cl.segs {
		n := uint64(len(sg.offsets))
		if sg.first+n-1 <= after {
			continue
		}
		i := uint64(0)
		if after >= sg.first {
			i = after - sg.first + 1
		}
		for ; i < n; i++ {
			if limit > 0 && want == limit {
				to = sg.offsets[i]
				break scan
			}
			if from < 0 {
				from = sg.offsets[i]
			}
			want++
		}
	}
	path := cl.path
	s.mu.Unlock()
	if want == 0 {
		return nil, nil
	}

	// Records below cl.size are immutable, so reading outside the lock is safe.
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStore, err)
	}
	defer f.Close()
	buf := make([]byte, to-from)
	if _, err := f.ReadAt(buf, from); err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrStore, conv, err)
	}
	out := make([]*pb.Message, 0, want)
	for len(buf) > 0 {
		typ, payload, n, ok := decodeRecord(buf)
		if !ok {
			return nil, fmt.Errorf("%w: %s: corrupt record", ErrStore, conv)
		}
		buf = buf[n:]
		if typ != recMessage {
			continue
		}
		m := new(pb.Message)
		if err := proto.Unmarshal(payload, m); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrStore, conv, err)
		}
		out = append(out, m)
	}
	if len(out) != want {
		return nil, fmt.Errorf("%w: %s: read %d entries, want %d", ErrStore, conv, len(out), want)
	}
	return out, nil
}

// Message returns one stored entry.
func (s *Store) Message(conv string, seq uint64) (*pb.Message, error) {
	if seq == 0 {
		return nil, fmt.Errorf("%w: seq 0", ErrNoSuchMessage)
	}
	ms, err := s.Messages(conv, seq-1, 1)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 || ms[0].GetSeq() != seq { // absent, or skipped
		return nil, fmt.Errorf("%w: %s/%d", ErrNoSuchMessage, conv, seq)
	}
	return ms[0], nil
}
