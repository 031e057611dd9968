// Package pgstore implements core.Store on PostgreSQL and CockroachDB with
// pgx/v5 (pgxpool). It is the production store: CockroachDB in a
// multi-region cluster, PostgreSQL 15 in tests. It passes the shared
// contract suite in region/storetest.
//
// # Life cycle
//
//	s, err := pgstore.Open(ctx, dsn, pgstore.Options{Logger: log})
//	...
//	defer s.Close()
//
// Open parses the DSN (a postgres:// URL or key=value string), creates the
// pool, creates Options.Schema if one is given (it becomes every
// connection's search_path, so tests and simulated regions can each have a
// schema in one database) and applies the embedded migrations. Close is
// idempotent and waits for connections in use.
//
// # Group commit
//
// Store.Begin (batch.go) opens a REPEATABLE READ transaction for the
// sequencer's write batch (core.WriteBatch). Prefetch locks the rows of
// the conversations the batch will append to (SELECT … FOR UPDATE, in id
// order) and finds which of its idempotency keys are already stored, in
// one round trip. A plain append then runs in memory: the duplicate check
// against the batch's keys, the epoch fence against the locked row, the
// next seq; the batch's own reads (Conversation, Lookup) answer from that
// memory, and a read of messages flushes first. Flush — before such a
// read, before an append with membership effects, and at Commit — writes
// the new conversations, the new heads and the new entries with one
// multi-row statement per table (unnest over arrays), pipelined in one
// round trip. An append with membership effects runs Store.Append's
// statements inside a savepoint, rolled back if it fails. Every read a
// step makes (users, devices, privacy too) goes through the batch's
// transaction, so a step never waits for a second pool connection while
// its batch holds one; routes are read after the commit.
//
// At REPEATABLE READ, locking a row another writer changed after the
// batch's snapshot fails (40001): an overlapping owner shows up there, at
// Prefetch or at an append, and any failed statement aborts the
// transaction; the sequencer then redoes the batch without one. (On
// CockroachDB, REPEATABLE READ is SERIALIZABLE unless its read-committed /
// repeatable-read settings are on: long batches may then fail at COMMIT
// with a retryable error, which the sequencer also answers by redoing the
// batch one record at a time.)
//
// # Migrations
//
// migrations/NNNN_name.sql files are embedded and applied in version order.
// Each is applied in one transaction together with its row in
// schema_migrations (version, name, applied_at_ms); a version already
// recorded is skipped. The statements themselves are idempotent
// (CREATE TABLE / INDEX IF NOT EXISTS), and concurrent Opens of a fresh
// database converge: the losers of a DDL race get a retryable error, retry,
// and find the version recorded. A new migration is a new file with the
// next number; never edit an applied one.
//
// # Dialect
//
// The SQL is the subset PostgreSQL 15 and CockroachDB both accept: explicit
// primary keys (no SERIAL or sequences), no PL/pgSQL, no extensions,
// INSERT ... ON CONFLICT, DELETE ... RETURNING, unnest and = ANY over
// TEXT[] parameters, GREATEST, SELECT ... FOR UPDATE. Unsigned 64-bit values
// (seqs, epochs, sessions) are stored bit for bit in BIGINT columns and
// compared in Go, never in SQL, except seq ranges, which stay below 2^63.
// Text ordering is byte order: results are sorted in Go after the query, so
// the database's collation (en_US on some PostgreSQL installs) cannot
// reorder ids. Nothing CockroachDB-only is used yet; multi-region table
// localities (REGIONAL BY ROW on conversations keyed by home_region) belong
// in a later migration guarded by a dialect check, see deploy/.
//
// Conversations carry home_region and epoch: the epoch fences a deposed
// sequencer (an Append below the stored epoch fails with core.ErrFenced, an
// Append above it raises it), so a region that lost ownership cannot write
// even while it still believes it owns the conversation.
//
// # Transactions and concurrency
//
// Every write runs in one SERIALIZABLE transaction, retried as a whole — a
// new transaction each attempt — by crdb.ExecuteCtx around
// pgx.BeginTxFunc, with jittered exponential backoff (1 ms doubling to
// 100 ms) and at most Options.MaxRetries (50) retries. crdbpgx.ExecuteTx is
// deliberately not used: it retries by savepoint inside one transaction,
// which never recovers from a 40001 on PostgreSQL and can report success for
// a rolled-back COMMIT. Besides serialization failures (40001), deadlocks
// and "created concurrently" errors (unique violation, duplicate table or
// object) are retried: the retry re-reads and finds the row.
//
// Append reads the idempotency key first (so a replay always succeeds and
// changes nothing), then locks the conversation row FOR UPDATE, checks the
// epoch, inserts the entry, moves the head and applies membership changes
// in the same transaction. Membership changes (core.MemberChanges, the
// rule both stores share) read the affected member rows, then upsert the
// changed rows with one INSERT ... SELECT FROM unnest(...) ON CONFLICT DO
// UPDATE and delete the removed ones; roles and invitations are the admin
// and invited columns of members (migration 0004). Concurrent appenders of one conversation — even
// in different processes — therefore serialize on that row; there is no
// in-process lock. Reads run outside transactions on the pool.
//
// End-to-end key material (core.PrekeyStore, migration 0002): TakeBundle
// deletes the device's lowest one-time prekey with DELETE ... WHERE key_id =
// (SELECT MIN(key_id) ...) RETURNING, records the id in
// one_time_prekeys_used and counts the rest, in one SERIALIZABLE
// transaction; two concurrent takers of the same key conflict and the loser
// is retried as a whole, so a key is handed out at most once. PutPrekeys
// inserts one-time keys with ON CONFLICT DO NOTHING, skipping ids in
// one_time_prekeys_used. Device-list versions are compared in Go.
//
// Every method is safe for concurrent use.
//
// # What it does not do
//
// It does not cache, does not create the database or role
// (deploy/postgres/ensure.sh does that for tests and CI). The semantics
// that core/ports.go leaves open are listed in region/storetest.
//
// # Retention
//
// The store implements core.Retainer (retention.go, migration 0007);
// region/retention.go decides what goes. The retention table holds each
// conversation's marks (trimmed, keys_through; no row: both 0). Trim is
// one transaction: DELETE of a bounded seq range of messages (their
// idempotency keys are columns of those rows) and the marks moved, the
// retention row locked FOR UPDATE. ForgetKeys sets client_msg_id to NULL
// on a bounded range (the column is nullable since 0007; NULLs never
// collide in the unique index), so a resend is a new entry. Deletion
// competes with Append only for the rows it deletes, never for the
// conversation's row.
package pgstore
