package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// ErrClosed is returned by every method after Close.
var ErrClosed = errors.New("pebblestore: closed")

// Options configures a Store. The zero value works.
type Options struct {
	// Logger receives Pebble's own log lines (at Info/Error) and the
	// store's. nil discards them.
	Logger *slog.Logger
	// CacheBytes is the block cache size; 0 means 64 MiB.
	CacheBytes int64
	// Stripes is the number of lock stripes for conversations and cursors;
	// 0 means 256.
	Stripes int
	// SkipVerifyScan skips reading every key at Open (the checksum scan of
	// an existing store; see the package documentation, Integrity). The
	// witness check still runs. For stores too large to scan at each start.
	SkipVerifyScan bool
}

// Store is a core.Store on an embedded Pebble database. See the package
// documentation for the key layout and the concurrency rules.
type Store struct {
	*base
	// rd is what the store reads: the database, or in a write batch's
	// view (batch.go) the indexed batch over it.
	rd pebble.Reader
	// wb is the write batch of a view; nil for the store itself.
	wb *writeBatch
}

// base is what a Store and its write-batch views share.
type base struct {
	db     *pebble.DB
	cache  *pebble.Cache
	lock   *pebble.Lock
	wit    *witness
	log    *slog.Logger
	seed   maphash.Seed
	closed atomic.Bool
	once   sync.Once

	regMu sync.Mutex // RegisterDevice: static-key uniqueness and device numbers
	// routeMu guards routes and last-seen: SetRoute and ClearRoute hold it
	// shared plus their user's stripe of routeUserMu (so route writes of
	// different users commit concurrently and share fsyncs), and
	// ClearEdgeRoutes holds it exclusively.
	routeMu     sync.RWMutex
	routeUserMu []sync.Mutex
	routes      *routeIndex  // every stored route (routeindex.go)
	convMu      []sync.Mutex // Append, striped by conversation
	cursorMu    []sync.Mutex // AdvanceCursor, striped by conversation
	prekeyMu    []sync.Mutex // prekeys by device and device lists by user, striped
	closeErr    error
}

var _ core.Store = (*Store)(nil)

// Open opens (creating if needed) the database in dir. The directory must
// not be opened by another process or another Store at the same time.
//
// An existing database is verified before it is opened for writing (see the
// package documentation, Integrity): a database whose write-ahead log lost
// committed writes, or whose files fail their checksums, is refused with
// ErrCorrupt and left exactly as it was.
func Open(dir string, opts Options) (_ *Store, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cacheBytes := opts.CacheBytes
	if cacheBytes <= 0 {
		cacheBytes = 64 << 20
	}
	stripes := opts.Stripes
	if stripes <= 0 {
		stripes = 256
	}
	plog := pebbleLogger{log: log.With("component", "pebble")}

	exists, err := dbExists(dir)
	if err != nil {
		return nil, err
	}
	if !exists {
		// A witness without a database: the database files were deleted.
		if _, found, err := readWitness(dir); err != nil || found {
			if err == nil {
				err = fmt.Errorf("pebblestore: open %s: %w: the database files are missing but %s says the store held data; %s",
					dir, ErrCorrupt, WitnessFile, recoveryHint)
			}
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
		}
	}
	// One lock held across verification and the read-write open.
	lock, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			_ = lock.Close()
		}
	}()
	if exists {
		haveWit, err := verifyExisting(dir, lock, plog, opts.SkipVerifyScan)
		if err != nil {
			return nil, err
		}
		if !haveWit {
			log.Warn("pebblestore: no integrity witness (a store made by an older version); creating one now: damage before this start cannot be detected", "dir", dir)
		}
	}

	cache := pebble.NewCache(cacheBytes)
	po := &pebble.Options{
		Cache:         cache,
		Logger:        plog,
		Lock:          lock,
		EventListener: corruptionListener(plog),
		// Open verified the database above; creating one is only for a
		// directory that had none.
		ErrorIfNotExists: exists,
	}
	// Point reads (an idempotency key, a last-seen time, a user, a device)
	// are most of the store's reads, and many look for keys that are not
	// there (a message's idempotency key, before it is stored); without a
	// filter such a Get searches every table whose key range covers the
	// key. A bloom filter per table (10 bits a key, ~1% false positives)
	// answers "not here" from memory. Tables written without one (older
	// stores) are read as before.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		cache.Unref()
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	routes, err := loadRouteIndex(db)
	if err != nil {
		_ = db.Close()
		cache.Unref()
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	wit, err := openWitness(dir, visibleSeqNum(db))
	if err != nil {
		_ = db.Close()
		cache.Unref()
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	st := &Store{base: &base{
		db:       db,
		cache:    cache,
		lock:     lock,
		wit:      wit,
		log:      log,
		seed:     maphash.MakeSeed(),
		convMu:   make([]sync.Mutex, stripes),
		cursorMu: make([]sync.Mutex, stripes),
		prekeyMu: make([]sync.Mutex, stripes),

		routeUserMu: make([]sync.Mutex, stripes),
		routes:      routes,
	}}
	st.rd = db
	return st, nil
}

// Close flushes and closes the database. It is idempotent; calls made after
// it fail with ErrClosed. Close must not race with calls in flight.
func (s *Store) Close() error {
	s.once.Do(func() {
		s.closed.Store(true)
		err := s.db.Close()
		s.cache.Unref()
		if err != nil {
			err = fmt.Errorf("pebblestore: close: %w", err)
		}
		s.closeErr = errors.Join(err, s.wit.close(), s.lock.Close())
	})
	return s.closeErr
}

// pebbleLogger routes Pebble's logging to slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...))
}

// Fatalf must not return (Pebble's contract): the store cannot continue.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error("fatal: " + msg)
	panic("pebblestore: pebble fatal error: " + msg)
}

func (s *Store) stripe(locks []sync.Mutex, id string) *sync.Mutex {
	return &locks[maphash.String(s.seed, id)%uint64(len(locks))]
}

func (s *Store) check() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.wit.failed()
}

// get returns a copy of the value at k, or nil, false.
func (s *Store) get(k []byte) ([]byte, bool, error) {
	v, closer, err := s.rd.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pebblestore: get: %w", err)
	}
	out := append([]byte(nil), v...)
	if err := closer.Close(); err != nil {
		return nil, false, fmt.Errorf("pebblestore: get: %w", err)
	}
	return out, true, nil
}

// scan calls fn for every key with the prefix, in order, until fn returns
// false or an error.
func (s *Store) scan(prefix []byte, fn func(k, v []byte) (bool, error)) error {
	return scanIn(s.rd, prefix, fn)
}

// scanIn is scan over rd. fn's errors are returned as they are; the
// iterator's are wrapped.
func scanIn(rd pebble.Reader, prefix []byte, fn func(k, v []byte) (bool, error)) error {
	it, err := rd.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("pebblestore: iterate: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("pebblestore: iterate: %w", err)
		}
		more, err := fn(it.Key(), v)
		if err != nil {
			_ = it.Close()
			return err
		}
		if !more {
			break
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("pebblestore: iterate: %w", err)
	}
	return nil
}

// commitNoSync commits without waiting for the fsync: for writes whose loss
// in a crash is harmless (cursors; see the package doc). A later synced
// commit makes them durable too.
func commitNoSync(b *pebble.Batch) error {
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: commit: %w", err)
	}
	return nil
}

// commit commits b synced, then advances the integrity witness past it
// before returning, so that a write acknowledged to a caller is covered by
// the witness (see the package documentation, Integrity).
func (s *Store) commit(b *pebble.Batch) error {
	if err := b.Commit(pebble.Sync); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: commit: %w", err)
	}
	end := uint64(b.SeqNum()) + uint64(b.Count())
	if err := b.Close(); err != nil {
		return fmt.Errorf("pebblestore: commit: %w", err)
	}
	return s.wit.advance(end)
}

// checkID rejects ids that would break the key layout (0x00 separates key
// parts) or are empty.
func checkID(what, id string) error {
	if id == "" {
		return fmt.Errorf("pebblestore: empty %s: %w", what, core.ErrInvalidArgument)
	}
	if strings.IndexByte(id, sep) >= 0 {
		return fmt.Errorf("pebblestore: %s %q contains NUL: %w", what, id, core.ErrInvalidArgument)
	}
	return nil
}

// ------------------------------------------------------------------ users and devices

// RegisterDevice implements core.Store.
func (s *Store) RegisterDevice(ctx context.Context, u core.User, d core.Device, createUser bool) (core.Device, error) {
	if err := s.check(); err != nil {
		return core.Device{}, err
	}
	if d.Key.User != "" && d.Key.User != u.ID {
		return core.Device{}, fmt.Errorf("pebblestore: device user %q != user %q: %w", d.Key.User, u.ID, core.ErrInvalidArgument)
	}
	if err := checkID("user id", u.ID); err != nil {
		return core.Device{}, err
	}
	if len(d.NoiseStatic) == 0 {
		return core.Device{}, fmt.Errorf("pebblestore: empty noise static key: %w", core.ErrInvalidArgument)
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if err := ctx.Err(); err != nil {
		return core.Device{}, err
	}

	ref, found, err := s.get(staticKey(d.NoiseStatic))
	if err != nil {
		return core.Device{}, err
	}
	if found {
		k, err := decodeDevRef(ref)
		if err != nil {
			return core.Device{}, err
		}
		if k.User != u.ID {
			return core.Device{}, fmt.Errorf("pebblestore: static key registered to another user: %w", core.ErrAlreadyExists)
		}
		return s.device(k)
	}

	_, userExists, err := s.get(userKey(u.ID))
	if err != nil {
		return core.Device{}, err
	}
	b := s.db.NewBatch()
	num := uint32(1)
	switch {
	case createUser && userExists:
		_ = b.Close()
		return core.Device{}, fmt.Errorf("pebblestore: user %s: %w", u.ID, core.ErrAlreadyExists)
	case createUser:
		if err := b.Set(userKey(u.ID), encodeUser(u), nil); err != nil {
			_ = b.Close()
			return core.Device{}, fmt.Errorf("pebblestore: batch: %w", err)
		}
	case !userExists:
		_ = b.Close()
		return core.Device{}, fmt.Errorf("pebblestore: user %s: %w", u.ID, core.ErrNotFound)
	default:
		last, err := s.lastDevice(u.ID)
		if err != nil {
			_ = b.Close()
			return core.Device{}, err
		}
		num = last + 1
	}
	d.Key = core.DeviceKey{User: u.ID, Device: num}
	if err := errors.Join(
		b.Set(deviceKey(d.Key), encodeDevice(d), nil),
		b.Set(staticKey(d.NoiseStatic), encodeDevRef(d.Key), nil),
	); err != nil {
		_ = b.Close()
		return core.Device{}, fmt.Errorf("pebblestore: batch: %w", err)
	}
	if err := s.commit(b); err != nil {
		return core.Device{}, err
	}
	return d, nil
}

func (s *Store) device(k core.DeviceKey) (core.Device, error) {
	v, found, err := s.get(deviceKey(k))
	if err != nil {
		return core.Device{}, err
	}
	if !found {
		return core.Device{}, fmt.Errorf("pebblestore: device %s: %w", k, core.ErrNotFound)
	}
	return decodeDevice(k, v)
}

// lastDevice returns the highest device number of user (0 if none).
func (s *Store) lastDevice(user string) (uint32, error) {
	p := devicePrefix(user)
	it, err := s.rd.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return 0, fmt.Errorf("pebblestore: iterate: %w", err)
	}
	var last uint32
	if it.Last() {
		k, err := splitUserDev(it.Key(), 1)
		if err != nil {
			_ = it.Close()
			return 0, err
		}
		last = k.Device
	}
	if err := it.Close(); err != nil {
		return 0, fmt.Errorf("pebblestore: iterate: %w", err)
	}
	return last, nil
}

// User implements core.Store.
func (s *Store) User(ctx context.Context, id string) (core.User, error) {
	if err := s.check(); err != nil {
		return core.User{}, err
	}
	v, found, err := s.get(userKey(id))
	if err != nil {
		return core.User{}, err
	}
	if !found {
		return core.User{}, fmt.Errorf("pebblestore: user %s: %w", id, core.ErrNotFound)
	}
	return decodeUser(id, v)
}

// Devices implements core.Store.
func (s *Store) Devices(ctx context.Context, user string) ([]core.Device, error) {
	if _, err := s.User(ctx, user); err != nil {
		return nil, err
	}
	var out []core.Device
	err := s.scan(devicePrefix(user), func(k, v []byte) (bool, error) {
		dk, err := splitUserDev(k, 1)
		if err != nil {
			return false, err
		}
		d, err := decodeDevice(dk, v)
		if err != nil {
			return false, err
		}
		out = append(out, d)
		return true, nil
	})
	return out, err
}

// DeviceByStatic implements core.Store.
func (s *Store) DeviceByStatic(ctx context.Context, static []byte) (core.Device, error) {
	if err := s.check(); err != nil {
		return core.Device{}, err
	}
	ref, found, err := s.get(staticKey(static))
	if err != nil {
		return core.Device{}, err
	}
	if !found || len(static) == 0 {
		return core.Device{}, fmt.Errorf("pebblestore: device by static key: %w", core.ErrNotFound)
	}
	k, err := decodeDevRef(ref)
	if err != nil {
		return core.Device{}, err
	}
	return s.device(k)
}

// ------------------------------------------------------------------ conversations

// Append implements core.Store.
func (s *Store) Append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	if err := s.check(); err != nil {
		return core.AppendResult{}, err
	}
	m := req.Message
	if m == nil {
		return core.AppendResult{}, fmt.Errorf("pebblestore: append without message: %w", core.ErrInvalidArgument)
	}
	if err := checkID("conversation id", m.ConvId); err != nil {
		return core.AppendResult{}, err
	}
	if m.ClientMsgId == "" {
		return core.AppendResult{}, fmt.Errorf("pebblestore: append to %s without client_msg_id: %w", m.ConvId, core.ErrInvalidArgument)
	}
	if req.Create != nil && req.Create.ID != m.ConvId {
		return core.AppendResult{}, fmt.Errorf("pebblestore: create %q for message of %q: %w", req.Create.ID, m.ConvId, core.ErrInvalidArgument)
	}
	sender := core.KeyOf(m.Sender)
	if strings.IndexByte(sender.User, sep) >= 0 {
		return core.AppendResult{}, fmt.Errorf("pebblestore: sender contains NUL: %w", core.ErrInvalidArgument)
	}
	for _, u := range req.MemberUsers() {
		if err := checkID("member", u); err != nil {
			return core.AppendResult{}, err
		}
	}
	conv := m.ConvId

	mu := s.stripe(s.convMu, conv)
	mu.Lock()
	defer mu.Unlock()
	if err := ctx.Err(); err != nil {
		return core.AppendResult{}, err
	}

	// 1. Duplicate detection comes first, so replays always succeed.
	dk := dedupeKey(conv, sender, m.ClientMsgId)
	sv, dup, err := s.get(dk)
	if err != nil {
		return core.AppendResult{}, err
	}
	if dup {
		seq, err := decodeSeq(sv)
		if err != nil {
			return core.AppendResult{}, err
		}
		stored, err := s.message(conv, seq)
		if err != nil {
			return core.AppendResult{}, err
		}
		return core.AppendResult{Message: stored, Duplicate: true}, nil
	}

	// 2. Existence, creation and the epoch fence.
	var cv []byte
	var exists bool
	if s.wb != nil {
		cv, exists, err = s.wb.conv(s, conv)
	} else {
		cv, exists, err = s.get(convKey(conv))
	}
	if err != nil {
		return core.AppendResult{}, err
	}
	var c core.Conversation
	switch {
	case exists:
		if c, err = decodeConv(conv, cv); err != nil {
			return core.AppendResult{}, err
		}
	case req.Create == nil:
		return core.AppendResult{}, fmt.Errorf("pebblestore: conversation %s: %w", conv, core.ErrNotFound)
	default:
		c = *req.Create
		c.Head, c.Epoch = 0, req.Epoch
	}
	if c.Epoch > req.Epoch {
		return core.AppendResult{}, fmt.Errorf("pebblestore: conversation %s at epoch %d, writer at %d: %w", conv, c.Epoch, req.Epoch, core.ErrFenced)
	}

	// 3. The entry, the idempotency key, the new head, membership: one batch.
	seq := c.Head + 1
	c.Head, c.Epoch = seq, req.Epoch
	if req.Title != nil {
		c.Title = *req.Title
	}
	stored := proto.Clone(m).(*pb.Message)
	stored.Seq, stored.Epoch = seq, req.Epoch
	if err := core.CheckStorable(stored); err != nil {
		return core.AppendResult{}, fmt.Errorf("pebblestore: append to %s: %w", conv, err)
	}
	body, err := proto.Marshal(stored)
	if err != nil {
		return core.AppendResult{}, fmt.Errorf("pebblestore: marshal message: %w", err)
	}
	b := s.db.NewBatch()
	if s.wb != nil {
		b = s.wb.b // a write batch's view: into the batch, committed with it
	}
	cenc := encodeConv(c)
	errs := []error{
		b.Set(messageKey(conv, seq), body, nil),
		b.Set(dk, encodeSeq(seq), nil),
		b.Set(convKey(conv), cenc, nil),
	}
	memberErr := s.applyMembers(b, conv, seq, &req)
	if err := errors.Join(append(errs, memberErr)...); err != nil {
		if s.wb != nil {
			// The batch may hold part of this entry: it cannot commit.
			s.wb.broken = fmt.Errorf("pebblestore: append to %s: %w", conv, err)
			return core.AppendResult{}, s.wb.broken
		}
		_ = b.Close()
		return core.AppendResult{}, fmt.Errorf("pebblestore: append to %s: %w", conv, err)
	}
	if s.wb != nil {
		s.wb.appended++
		s.wb.last[conv] = cenc
		return core.AppendResult{Message: stored}, nil
	}
	if err := s.commit(b); err != nil {
		return core.AppendResult{}, err
	}
	return core.AppendResult{Message: stored}, nil
}

// applyMembers adds the membership effects of req (core.MemberChanges) to
// b. Caller holds the conversation's stripe.
func (s *Store) applyMembers(b *pebble.Batch, conv string, seq uint64, req *core.AppendRequest) error {
	users := req.MemberUsers()
	if len(users) == 0 {
		return nil
	}
	cur := make(map[string]core.Member, len(users))
	for _, u := range users {
		v, found, err := s.get(memberKey(conv, u))
		if err != nil {
			return err
		}
		if !found {
			continue
		}
		if cur[u], err = decodeMember(u, v); err != nil {
			return fmt.Errorf("member %s: %w", u, err)
		}
	}
	put, del := core.MemberChanges(cur, seq, req)
	for _, m := range put {
		if err := errors.Join(
			b.Set(memberKey(conv, m.User), encodeMember(m), nil),
			b.Set(userConvKey(m.User, conv), nil, nil),
		); err != nil {
			return err
		}
	}
	for _, u := range del {
		if err := errors.Join(
			b.Delete(memberKey(conv, u), nil),
			b.Delete(userConvKey(u, conv), nil),
		); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) message(conv string, seq uint64) (*pb.Message, error) {
	v, found, err := s.get(messageKey(conv, seq))
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("pebblestore: %w: message %s/%d missing", ErrCorrupt, conv, seq)
	}
	m := &pb.Message{}
	if err := proto.Unmarshal(v, m); err != nil {
		return nil, fmt.Errorf("pebblestore: message %s/%d: %w: %w", conv, seq, ErrCorrupt, err)
	}
	return m, nil
}

// Conversation implements core.Store.
func (s *Store) Conversation(ctx context.Context, id string) (core.Conversation, error) {
	if err := s.check(); err != nil {
		return core.Conversation{}, err
	}
	v, found, err := s.get(convKey(id))
	if err != nil {
		return core.Conversation{}, err
	}
	if !found {
		return core.Conversation{}, fmt.Errorf("pebblestore: conversation %s: %w", id, core.ErrNotFound)
	}
	return decodeConv(id, v)
}

// Members implements core.Store.
func (s *Store) Members(ctx context.Context, conv string) ([]core.Member, error) {
	if _, err := s.Conversation(ctx, conv); err != nil {
		return nil, err
	}
	p := memberPrefix(conv)
	var out []core.Member
	err := s.scan(p, func(k, v []byte) (bool, error) {
		m, err := decodeMember(string(k[len(p):]), v)
		if err != nil {
			return false, fmt.Errorf("pebblestore: members of %s: %w", conv, err)
		}
		out = append(out, m)
		return true, nil
	})
	return out, err
}

// UserConversations implements core.Store.
func (s *Store) UserConversations(ctx context.Context, user string) ([]string, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	p := userConvPrefix(user)
	var out []string
	err := s.scan(p, func(k, _ []byte) (bool, error) {
		out = append(out, string(k[len(p):]))
		return true, nil
	})
	return out, err
}

// Messages implements core.Store. It iterates from after+1 and stops at
// the first entry that would pass limit or maxBytes, decoding only the
// entries it returns.
func (s *Store) Messages(ctx context.Context, conv string, after uint64, limit, maxBytes int) ([]*pb.Message, error) {
	c, err := s.Conversation(ctx, conv)
	if err != nil {
		return nil, err
	}
	if after >= c.Head {
		return nil, nil
	}
	return s.readMessages(conv, after+1, c.Head+1, false, limit, maxBytes)
}

// MessagesBefore implements core.Store: it iterates down from before-1.
func (s *Store) MessagesBefore(ctx context.Context, conv string, before, after uint64, limit, maxBytes int) ([]*pb.Message, error) {
	c, err := s.Conversation(ctx, conv)
	if err != nil {
		return nil, err
	}
	before = min(before, c.Head+1)
	if before <= after+1 {
		return nil, nil
	}
	return s.readMessages(conv, after+1, before, true, limit, maxBytes)
}

// readMessages reads the entries of conv with lo <= seq < hi, ascending or
// (down) descending, within the page bounds of core.Store.Messages; the
// result is always ascending.
func (s *Store) readMessages(conv string, lo, hi uint64, down bool, limit, maxBytes int) ([]*pb.Message, error) {
	if limit <= 0 {
		limit = core.DefaultPageSize
	}
	limit = min(limit, core.MaxPageSize)
	if maxBytes <= 0 {
		maxBytes = core.MaxPageBytes
	}
	it, err := s.rd.NewIter(&pebble.IterOptions{LowerBound: messageKey(conv, lo), UpperBound: messageKey(conv, hi)})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: iterate: %w", err)
	}
	defer it.Close()
	first, next := it.First, it.Next
	if down {
		first, next = it.Last, it.Prev
	}
	var out []*pb.Message
	total := 0
	for ok := first(); ok && len(out) < limit; ok = next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("pebblestore: messages of %s: %w", conv, err)
		}
		// The value is the entry's encoding: its length is proto.Size.
		if total+len(v) > maxBytes {
			break
		}
		total += len(v)
		m := &pb.Message{}
		if err := proto.Unmarshal(v, m); err != nil {
			return nil, fmt.Errorf("pebblestore: messages of %s: %w: %w", conv, ErrCorrupt, err)
		}
		out = append(out, m)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("pebblestore: messages of %s: %w", conv, err)
	}
	if down {
		slices.Reverse(out)
	}
	return out, nil
}

// ------------------------------------------------------------------ cursors

// AdvanceCursor implements core.Store.
func (s *Store) AdvanceCursor(ctx context.Context, conv string, dev core.DeviceKey, kind core.CursorKind, seq uint64) (uint64, bool, error) {
	if err := s.check(); err != nil {
		return 0, false, err
	}
	if kind != core.CursorDelivered && kind != core.CursorRead {
		return 0, false, fmt.Errorf("pebblestore: cursor kind %d: %w", kind, core.ErrInvalidArgument)
	}
	if err := errors.Join(checkID("conversation id", conv), checkID("user id", dev.User)); err != nil {
		return 0, false, err
	}
	mu := s.stripe(s.cursorMu, conv)
	mu.Lock()
	defer mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	ck := cursorConvKey(conv, dev)
	v, found, err := s.get(ck)
	if err != nil {
		return 0, false, err
	}
	var delivered, read uint64
	if found {
		if delivered, read, err = decodeCursor(v); err != nil {
			return 0, false, err
		}
	}
	cur := &delivered
	if kind == core.CursorRead {
		cur = &read
	}
	prev := *cur
	if seq <= prev {
		return prev, false, nil
	}
	*cur = seq
	b := s.db.NewBatch()
	val := encodeCursor(delivered, read)
	if err := errors.Join(b.Set(ck, val, nil), b.Set(cursorDevKey(dev, conv), val, nil)); err != nil {
		_ = b.Close()
		return 0, false, fmt.Errorf("pebblestore: batch: %w", err)
	}
	if err := commitNoSync(b); err != nil {
		return 0, false, err
	}
	return prev, true, nil
}

// AdvanceCursors implements core.CursorBatcher: the moves' stripes taken
// in order, every cursor moved forward in one batch, committed like
// AdvanceCursor's without waiting for the fsync.
func (s *Store) AdvanceCursors(ctx context.Context, moves []core.CursorMove) error {
	if err := s.check(); err != nil {
		return err
	}
	if len(moves) == 0 {
		return nil
	}
	idx := make([]uint64, 0, len(moves))
	for _, mv := range moves {
		if mv.Kind != core.CursorDelivered && mv.Kind != core.CursorRead {
			return fmt.Errorf("pebblestore: cursor kind %d: %w", mv.Kind, core.ErrInvalidArgument)
		}
		if err := errors.Join(checkID("conversation id", mv.Conv), checkID("user id", mv.Dev.User)); err != nil {
			return err
		}
		idx = append(idx, maphash.String(s.seed, mv.Conv)%uint64(len(s.cursorMu)))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		s.cursorMu[i].Lock()
	}
	defer func() {
		for _, i := range idx {
			s.cursorMu[i].Unlock()
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	type cur struct{ delivered, read uint64 }
	type key struct {
		conv string
		dev  core.DeviceKey
	}
	cursors := map[key]*cur{}
	var order []key
	for _, mv := range moves {
		k := key{mv.Conv, mv.Dev}
		c, ok := cursors[k]
		if !ok {
			v, found, err := s.get(cursorConvKey(mv.Conv, mv.Dev))
			if err != nil {
				return err
			}
			c = &cur{}
			if found {
				if c.delivered, c.read, err = decodeCursor(v); err != nil {
					return err
				}
			}
			cursors[k] = c
			order = append(order, k)
		}
		p := &c.delivered
		if mv.Kind == core.CursorRead {
			p = &c.read
		}
		*p = max(*p, mv.Seq)
	}
	b := s.db.NewBatch()
	var errs []error
	for _, k := range order {
		c := cursors[k]
		val := encodeCursor(c.delivered, c.read)
		errs = append(errs, b.Set(cursorConvKey(k.conv, k.dev), val, nil), b.Set(cursorDevKey(k.dev, k.conv), val, nil))
	}
	if err := errors.Join(errs...); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: batch: %w", err)
	}
	return commitNoSync(b)
}

// Cursors implements core.Store.
func (s *Store) Cursors(ctx context.Context, dev core.DeviceKey) ([]core.Cursor, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	p := cursorDevPrefix(dev)
	var out []core.Cursor
	err := s.scan(p, func(k, v []byte) (bool, error) {
		delivered, read, err := decodeCursor(v)
		if err != nil {
			return false, err
		}
		out = append(out, core.Cursor{Conv: string(k[len(p):]), Device: dev, Delivered: delivered, Read: read})
		return true, nil
	})
	return out, err
}

// ConvCursors implements core.Store.
func (s *Store) ConvCursors(ctx context.Context, conv string) ([]core.Cursor, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	p := cursorConvPrefix(conv)
	var out []core.Cursor
	err := s.scan(p, func(k, v []byte) (bool, error) {
		dev, err := splitUserDev(k, len(p))
		if err != nil {
			return false, err
		}
		delivered, read, err := decodeCursor(v)
		if err != nil {
			return false, err
		}
		out = append(out, core.Cursor{Conv: conv, Device: dev, Delivered: delivered, Read: read})
		return true, nil
	})
	return out, err
}

// ------------------------------------------------------------------ routes

// SetRoute implements core.Store.
func (s *Store) SetRoute(ctx context.Context, r core.Route) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := errors.Join(checkID("user id", r.Device.User), checkID("edge id", r.Edge)); err != nil {
		return err
	}
	s.routeMu.RLock()
	defer s.routeMu.RUnlock()
	mu := s.stripe(s.routeUserMu, r.Device.User)
	mu.Lock()
	defer mu.Unlock()
	old, found, err := s.routeNow(r.Device)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	var errs []error
	if found {
		errs = append(errs, b.Delete(edgeRouteKey(old.Edge, r.Device), nil))
	}
	errs = append(errs,
		b.Set(routeKey(r.Device), encodeRoute(r), nil),
		b.Set(edgeRouteKey(r.Edge, r.Device), nil, nil))
	if err := errors.Join(errs...); err != nil {
		_ = b.Close()
		return fmt.Errorf("pebblestore: batch: %w", err)
	}
	err = s.commit(b)
	s.routeWritten(r, false, err)
	return err
}

// routeNow is dev's stored route: from the route index, or from the
// database when the index cannot answer for dev's user. The caller holds
// the user's stripe of routeUserMu (or routeMu exclusively).
func (s *Store) routeNow(dev core.DeviceKey) (core.Route, bool, error) {
	if r, found, ok := s.routes.route(dev); ok {
		return r, found, nil
	}
	return s.route(dev)
}

// routeWritten brings the route index up to date after a route write of
// one user whose commit returned err: a committed write is applied as the
// same change; a failed one (or a user the index does not hold) is read
// again from the database.
func (s *Store) routeWritten(r core.Route, del bool, err error) {
	if err == nil && s.routes.applied(r, del) {
		return
	}
	_ = s.reloadRoutes(r.Device.User)
}

func (s *Store) route(dev core.DeviceKey) (core.Route, bool, error) {
	v, found, err := s.get(routeKey(dev))
	if err != nil || !found {
		return core.Route{}, false, err
	}
	r, err := decodeRoute(dev, v)
	return r, err == nil, err
}

// removeRoute adds the deletion of r and the last-seen update to b.
// Caller holds routeMu exclusively, or shared with r's user's stripe.
func (s *Store) removeRoute(b *pebble.Batch, r core.Route, atMs int64, seen map[string]int64) error {
	if err := errors.Join(b.Delete(routeKey(r.Device), nil), b.Delete(edgeRouteKey(r.Edge, r.Device), nil)); err != nil {
		return err
	}
	user := r.Device.User
	cur, ok := seen[user]
	if !ok {
		v, found, err := s.get(lastSeenKey(user))
		if err != nil {
			return err
		}
		if found {
			if cur, err = decodeMs(v); err != nil {
				return err
			}
		} else {
			cur = atMs - 1
		}
	}
	if atMs > cur {
		seen[user] = atMs
		return b.Set(lastSeenKey(user), encodeMs(atMs), nil)
	}
	seen[user] = cur
	return nil
}

// ClearRoute implements core.Store.
func (s *Store) ClearRoute(ctx context.Context, dev core.DeviceKey, session uint64, atMs int64) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	if err := checkID("user id", dev.User); err != nil {
		return false, err
	}
	s.routeMu.RLock()
	defer s.routeMu.RUnlock()
	mu := s.stripe(s.routeUserMu, dev.User)
	mu.Lock()
	defer mu.Unlock()
	r, found, err := s.routeNow(dev)
	if err != nil || !found || r.Session != session {
		return false, err
	}
	b := s.db.NewBatch()
	if err := s.removeRoute(b, r, atMs, map[string]int64{}); err != nil {
		_ = b.Close()
		return false, fmt.Errorf("pebblestore: clear route: %w", err)
	}
	err = s.commit(b)
	s.routeWritten(r, true, err)
	if err != nil {
		return false, err
	}
	return true, nil
}

// ClearEdgeRoutes implements core.Store. The removed routes are ordered by device.
func (s *Store) ClearEdgeRoutes(ctx context.Context, edge string, atMs int64) ([]core.Route, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := checkID("edge id", edge); err != nil {
		return nil, err
	}
	s.routeMu.Lock()
	defer s.routeMu.Unlock()
	p := edgeRoutePrefix(edge)
	var devs []core.DeviceKey
	if err := s.scan(p, func(k, _ []byte) (bool, error) {
		dev, err := splitUserDev(k, len(p))
		devs = append(devs, dev)
		return err == nil, err
	}); err != nil {
		return nil, err
	}
	if len(devs) == 0 {
		return nil, nil
	}
	b := s.db.NewBatch()
	seen := map[string]int64{}
	var out []core.Route
	for _, dev := range devs {
		r, found, err := s.route(dev)
		if err == nil && found && r.Edge == edge {
			out = append(out, r)
			err = s.removeRoute(b, r, atMs, seen)
		}
		if err != nil {
			_ = b.Close()
			return nil, fmt.Errorf("pebblestore: clear routes of edge %s: %w", edge, err)
		}
	}
	defer func() {
		// out is ordered by device, so by user.
		for i, r := range out {
			if i == 0 || r.Device.User != out[i-1].Device.User {
				s.reloadRoutes(r.Device.User)
			}
		}
	}()
	if err := s.commit(b); err != nil {
		return nil, err
	}
	return out, nil
}

// reloadStaleRoutes reloads user's routes, excluding its route writes.
func (s *Store) reloadStaleRoutes(user string) error {
	s.routeMu.RLock()
	defer s.routeMu.RUnlock()
	mu := s.stripe(s.routeUserMu, user)
	mu.Lock()
	defer mu.Unlock()
	return s.reloadRoutes(user)
}

// Routes implements core.Store. It reads the in-memory route index
// (routeindex.go), never the database.
func (s *Store) Routes(ctx context.Context, users []string) ([]core.Route, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	us, err := routeUsers(users)
	if err != nil {
		return nil, err
	}
	for _, u := range s.routes.staleOf(us) {
		if err := s.reloadStaleRoutes(u); err != nil {
			return nil, err
		}
	}
	return s.routes.lookup(us, nil)
}

// LastSeen implements core.Store.
func (s *Store) LastSeen(ctx context.Context, users []string) (map[string]int64, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	out := make(map[string]int64)
	for _, u := range users {
		v, found, err := s.get(lastSeenKey(u))
		if err != nil {
			return nil, err
		}
		if !found {
			continue
		}
		if out[u], err = decodeMs(v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Lookup implements core.Store.
func (s *Store) Lookup(ctx context.Context, conv string, sender core.DeviceKey, clientMsgID string) (*pb.Message, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if conv == "" || clientMsgID == "" || strings.IndexByte(conv, sep) >= 0 || strings.IndexByte(sender.User, sep) >= 0 {
		return nil, fmt.Errorf("pebblestore: lookup %q: %w", conv, core.ErrNotFound)
	}
	v, found, err := s.get(dedupeKey(conv, sender, clientMsgID))
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("pebblestore: lookup %s: %w", conv, core.ErrNotFound)
	}
	seq, err := decodeSeq(v)
	if err != nil {
		return nil, err
	}
	return s.message(conv, seq)
}
