// Package pebblestore implements core.Store on an embedded Pebble database
// (github.com/cockroachdb/pebble/v2, CockroachDB's storage engine). It is the
// store of `chatmesh dev` and of single-node deployments; it passes the
// shared contract suite in region/storetest.
//
// # Life cycle
//
//	s, err := pebblestore.Open(dir, pebblestore.Options{Logger: log})
//	...
//	defer s.Close()
//
// Open creates the directory's database if needed, and verifies an
// existing one before it writes anything (see Integrity): a damaged store
// is refused with ErrCorrupt. Close is idempotent; calls after it fail
// with ErrClosed. Close must not race with calls still in flight (the
// owner stops its callers first).
//
// # Ownership and concurrency
//
// A Pebble store is owned by exactly one process and one Store value: Pebble
// takes a file lock on the directory, so a second Open fails. Pebble has no
// transactions, so every read-check-write is made atomic by in-process
// locking around one Pebble batch:
//
//   - Append holds a per-conversation lock stripe (Options.Stripes, default
//     256, chosen by hashing the conversation id) while it checks the
//     idempotency key, the conversation and its epoch, then commits the
//     entry, the key, the new head and the membership changes in one batch.
//     Appends to different stripes run in parallel and share Pebble's group
//     commit.
//   - AdvanceCursor holds a per-conversation stripe of a second lock array.
//   - RegisterDevice holds one store-wide lock (static-key uniqueness spans
//     users; registration is rare).
//   - Route and last-seen changes hold one store-wide lock.
//   - PutPrekeys and TakeBundle hold a per-device stripe of a third lock
//     array (PutDeviceList a per-user one) while they read the device's
//     prekey row and one-time keys and commit one batch: TakeBundle deletes
//     the lowest 'o' key and writes its 't' tombstone together, so no two
//     callers get the same one-time key, and an id with a tombstone is
//     never stored again.
//   - Reads take no lock; each sees committed batches only.
//
// Every method is safe for concurrent use. The locks make the store
// correct only within one process, which is why the directory is locked.
//
// # Durability
//
// Every write batch commits with pebble.Sync — when a method returns, its
// effect is in the fsynced write-ahead log and survives a SIGKILL or a power
// loss — except AdvanceCursor. Routes are synced too, so that a restarted
// region does not believe in sessions it has already cleared.
// Route writes of different users run concurrently (a stripe per user,
// ClearEdgeRoutes alone), so a reconnect storm's route writes share
// fsyncs instead of queueing for one lock.
//
// Routes are also held in memory (routeindex.go): Open loads every route,
// and each route write reloads the users it touched from the database once
// its commit returns, so Routes — read by the sequencer's fan-out for every
// batch — answers from a map. That is safe only because the store owns its
// directory: no other process writes routes behind it. A route damaged on
// disk fails Routes for its user with ErrCorrupt, as the scan did; a reload
// that could not read the database marks its user to be read again by the
// next Routes call.
//
// The sequencer's write batch (Store.Begin, batch.go; core.WriteBatch) is
// an indexed pebble.Batch: its appends are read back by the batch (reads
// go through the batch, then the database) and by nobody else until its
// Commit, which is one synced commit for every entry in it. Commit first
// takes the stripes of the batch's conversations (in stripe order) and
// checks that each conversation's committed record is still the one the
// batch read at its first append to it; if another writer appended
// meanwhile, Commit stores nothing and fails with core.ErrUnavailable.
// An append in a batch does not read the conversation's record again: it
// takes the record the batch last wrote, else the committed one it read at
// its first append (a record another writer committed after that is not
// seen, and Commit's check refuses the batch; storetest
// BatchConflictAfterRefusal). One read of the store fewer per entry.
//
// Cursor moves are committed without waiting for the fsync (they reach the
// OS at once, so they survive a process kill, and the next synced commit
// makes them durable against power loss). Cursors are advisory: sync reads
// from the client's own cursors, and a cursor rolled back by a power loss
// only means a device's next ack moves it again and a receipt is sent
// twice. In a 500-member group every member's delivery ack is a cursor
// move in the conversation's partition, so an fsync each would queue the
// conversation's next message behind 500 fsyncs.
//
// # Integrity
//
// Pebble replays its write-ahead log up to the first record it cannot
// read and treats a torn or corrupted tail of the newest WAL as the end of
// the log, silently: a WAL truncated or damaged while the process was down
// lost acknowledged entries, the conversation's head went back, and the
// next append reused a seq that devices already held (they drop it as a
// duplicate). Pebble has no option to make that strict (a torn tail is
// what a crash during a write leaves), and a WAL cut at a record boundary
// cannot be told from a clean end without knowing where it ended. So the
// store keeps that knowledge itself:
//
//   - The witness file (WitnessFile, in the directory) holds a Pebble
//     sequence number: after every synced commit returns, and before the
//     method returns to its caller, the store writes the end of the
//     commit's batch (Batch.SeqNum + Count) to the witness and fsyncs it.
//     The write is group-committed: one fsync covers every commit that
//     arrived while the previous one was in flight. The file has two
//     checksummed slots written alternately, so a torn witness write
//     leaves the previous value. Pebble's WAL order is its sequence order,
//     so everything at or below the witness was durable before anything
//     was acknowledged against it; a commit whose own sync succeeded but
//     whose witness write failed breaks the store (every later call fails)
//     rather than acknowledge what the witness does not cover.
//   - Open of an existing database first opens it read-only with the
//     directory lock held (Pebble replays the WAL into memory, writes
//     nothing), compares the database's visible sequence number with the
//     witness (lower: ErrCorrupt, "committed writes are missing"), and
//     reads every key and value, which makes Pebble check every block's
//     checksum (Options.SkipVerifyScan skips this read for very large
//     stores). Only then is the database opened for writing. A refused
//     Open leaves every file as it was, so it refuses again next time.
//   - A witness without a database (the database files were deleted) is
//     ErrCorrupt; a database without a witness (made before the witness
//     existed) gets one, with a warning that earlier damage cannot be
//     detected.
//   - Pebble's DataCorruption event is logged, not fatal: a read of a
//     damaged block fails with an error instead of crashing the process.
//
// Cost: a synced commit waits for a second fsync (measured with
// `go test ./region/pebblestore -run '^$' -bench Append`: one conversation, one appender at a time 1.05 ms ->
// 2.2 ms per append; concurrent appenders share both fsyncs and were not
// slower, 2,600-3,500 appends/s), and Open reads the whole store.
//
// Every ErrCorrupt refusal says what is wrong and how to recover: restore
// the store together with the broker data from a backup; never delete the
// store to start fresh (devices hold its seqs) — see deploy/README.md,
// "Damaged data". A plain crash is not damage: TestSIGKILLNoFalseAlarm
// kills an appending process and reopens.
//
// Initialized and MarkInitialized implement core.StoreMarker (key
// '#' 'i' 'd'), with which a region refuses a new store when the bus says
// an earlier one existed (region/integrity.go).
//
// # Key layout
//
// Each key starts with a one-byte tag. Strings inside keys are terminated by
// 0x00 when something follows them (so ids must not contain NUL; such ids are
// ErrInvalidArgument), which also keeps byte order equal to string order:
// "a" 0x00 sorts before "ab". Numbers in keys are big-endian, so they sort
// numerically.
//
//	'u' user                                  -> home region, created_at   (users)
//	'd' user 0 dev:BE32                       -> device fields             (devices, by number)
//	's' noise_static                          -> user, dev                 (static-key index)
//	'c' conv                                  -> kind, title, home region, epoch, head, created_at
//	'm' conv 0 seq:BE64                       -> pb.Message (protobuf, Seq and Epoch set)
//	'k' conv 0 sender 0 dev:BE32 client_msg_id -> seq                      (idempotency keys)
//	'b' conv 0 user                           -> joined_seq [flags]        (members and invitations, by user)
//	'v' user 0 conv                           -> (empty)                   (a user's conversations and invitations)
//	'x' user 0 dev:BE32 conv                  -> delivered, read           (cursors by device)
//	'y' conv 0 user 0 dev:BE32                -> delivered, read           (cursors by conversation)
//	'r' user 0 dev:BE32                       -> edge, session, since      (routes)
//	'e' edge 0 user 0 dev:BE32                -> (empty)                   (routes by edge)
//	'l' user                                  -> last seen ms
//	'h' user                                  -> hide last seen, add policy (privacy settings)
//	'p' user 0 dev:BE32                       -> identity, signed prekey, KEM prekey (prekeys)
//	'o' user 0 dev:BE32 id:BE32               -> one-time prekey           (unused, by id)
//	't' user 0 dev:BE32 id:BE32               -> (empty)                   (handed-out one-time ids)
//	'w' user                                  -> version, signed device list
//	'g' conv                                  -> trimmed, keys through      (retention marks)
//	'#' "id"                                  -> marked-initialized time    (core.StoreMarker)
//
// A 'b' value is the joined seq alone for a plain member; an admin or an
// invitation appends a flags varint (1 admin, 2 invited; never 0), so a
// store written before roles existed reads unchanged.
//
// Values other than messages use a compact encoding of unsigned and signed
// varints and length-prefixed byte strings (codec.go). The 'x'/'y' and
// 'r'/'e' pairs are written in the same batch, so an index never disagrees
// with its table.
//
// # Retention
//
// The store implements core.Retainer (retention.go); region/retention.go
// decides what goes. A 'g' conv record holds the conversation's marks
// (trimmed, keys through; absent: both 0). Trim deletes the entries of a
// bounded seq range with one range deletion of 'm' keys plus the point
// deletions of their 'k' keys (read from the entries), and moves the
// marks, in one synced batch under the conversation's append stripe, so an
// Append never finds a key whose entry is gone. ForgetKeys deletes 'k'
// keys only. Disk space comes back when Pebble compacts the range
// tombstones.
//
// # What it does not do
//
// No replication, no multi-region placement and no sharing between
// processes: production runs region/pgstore on CockroachDB. Semantics shared
// with pgstore that core/ports.go leaves open are listed in
// region/storetest's documentation.
package pebblestore
