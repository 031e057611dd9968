// Package region holds a region's services: the sequencer that consumes the
// ingress topic, the fan-out to edges, delivered/read cursors turned into
// receipts, presence, typing, conversation membership, device registration,
// sync and history. Storage and transport come in through core.Store and
// core.Bus; region/pebblestore, region/pgstore and region/kafkabus implement
// them.
//
// # Write path
//
// Edges produce pb.IngressRecord to the ingress topic keyed by conversation
// id. The sequencer (consumer group "sequencer", sequencer.go) handles the
// records of a partition in order, up to MaxBatch that the bus already
// holds at a time (core.BatchConsumer). Each record is one step:
//
//  1. the conversation's state (core.ConvState: conversation, members with
//     roles and invitations, every device's cursors, the newest senders),
//     kept by the partition worker in a byte-bounded cache and checked
//     against the store's head once per batch (another process may have
//     owned the partition meanwhile);
//  2. the decision, pure (core): core.PlanCreateGroup / PlanGroupChange
//     (roles, consent, the last admin's heir), ConvState.PlanCursor (moves
//     only forward, clamped to the head, receipts from the reader's join
//     point), membership for sends — an outsider gets core.OutsiderError,
//     the same answer whether the conversation exists or not — and, for a
//     send naming its predecessor (after_client_msg_id), that the
//     predecessor is stored (ConvState.SentLast, else an idempotency-key
//     lookup; otherwise core.ErrOutOfOrder: per-sender pipelining);
//  3. the store write (Store.Append de-duplicates on conversation + sender
//     device + client message id and assigns the next gapless seq in one
//     transaction; a request about to be refused is first looked up by its
//     idempotency key, so a resend of an entry stored before the refusal
//     applied gets its original answer);
//  4. the state moved past the write (ConvState.Apply) and the readers'
//     member cache kept in step;
//  5. the outputs collected: the ack (or the conversation's info), one
//     pb.EdgeRecord per edge hosting an online member device (fan-out per
//     edge, not per member, the sending device included), receipts
//     (coalesced at the end of the batch: those for the same user in
//     one Receipts frame, one per reader device and kind; receipts.go),
//     push notifications. A client's resend of a stored message is acked
//     without a second delivery once this process produced the first
//     (emitted.go); a batch retried after a failed produce delivers its
//     deduped entries again. Outputs
//     addressed to users find their devices' routes after the batch's
//     commit, in one read for the whole batch (fanout.go, resolveFan): a
//     device records its route before its first sync, so an entry is
//     either found by that sync or pushed to the route. What the batch
//     has for one local edge then goes out as one bus record, a bundle
//     (pb.EdgeRecord.bundle, at most 256 records and 256 KiB; the
//     records of an edge keep their order; bundleEdgeRecords): a busy
//     group's answers and receipt frames, and a 1:1 batch's deliveries
//     and answers, are not each a record of their own. Edges must
//     understand bundles before their region produces them.
//
// Group commit: with a store that is a core.Batcher (both are), the
// steps of a batch read and append through one core.WriteBatch: its
// appends are visible to the batch's own later steps (a resend in the same
// batch dedupes, a conversation created by an earlier record exists) and
// to nobody else, and when the batch's records are done it commits with
// one sync (one Pebble fsync, one PostgreSQL transaction) before any of
// its acks or deliveries leaves — durability per ack is unchanged, the
// cost of a sync is shared by up to MaxBatch entries. If the batch cannot
// begin, prefetch or commit (an overlapping owner changed one of its
// conversations, a statement failed), or any step fails, nothing of it
// is stored or sent and the sequencer redoes its records one synced write
// each (Stats.BatchFallbacks): there a record that keeps failing is
// counted and dead-lettered on its own, once. The readers'
// member cache learns a new head only after its commit. Config.NoGroupCommit
// turns it off (go test ./region -bench SequencerBatch compares).
//
// When the batch's records are done and committed, all outputs go out in
// one produce, then the batch's cursor moves are persisted, then the bus
// commits the offsets. A failed produce retries the whole batch: entries dedupe and
// re-emit, cursor moves were not persisted and are recomputed, so neither a
// message nor a receipt is lost.
//
// Pipelining (core.PipelinedConsumer; Config.NoPipeline turns it off):
// the produce and the cursor writes of a batch run in the background
// while the partition's next batch is fetched, stepped and committed, so
// at load a partition pays max(commit, produce) per batch instead of the
// sum. The outputs of a partition's batches still go out in batch order
// (a batch's produce starts after its predecessor's finished), and the
// bus commits a batch's offsets only after its produce and cursor writes
// finished. If they fail, the bus hands that batch and the next one over
// again (kafkabus rewinds the partition's reader), and the states they
// touched are dropped from the cache, so the redo re-emits the outputs and
// recomputes the cursor moves from the store, as above. One cost: a
// state evicted from the cache while its batch's cursor moves are still
// being written reloads the older cursors, and the next ack may repeat a
// receipt (cursors only move forward; clients treat a receipt as "up to
// seq"). Clients drop duplicates by (conversation,
// seq). A record that fails Config.MaxAttempts times in a row while the
// store answers a probe goes to the dead-letter topic (pb.DeadLetter with
// its reason, counted per reason) and the partition moves on; a consumer
// that stops is restarted, counted (Stats.Restarts) and reported by Health.
//
// Membership changes, delivery acks and read markers travel the same
// partition as the conversation's messages, so they are ordered with them.
// Every write carries a client idempotency key: client_msg_id for sends and
// modify_members; the creator-bound group id for create_group. Typing
// indicators are fanned out and never stored.
//
// # Start-up checks
//
// Before the sequencer consumes, Start checks the store against the bus
// (integrity.go), with the optional capabilities core.OffsetInspector
// (kafkabus) and core.StoreMarker (both stores): a committed offset of the
// sequencer group beyond the end of an ingress partition is
// ErrBusTruncated, and a store that is new (never marked, no data) while
// the group has committed offsets is ErrStoreMissing — a previous store
// sequenced those records, and this one would hand out the same seqs
// again. Otherwise the store is marked initialized. Both errors say how to
// recover (deploy/README.md, Damaged data); neither changes anything, so a
// refused start refuses again. The stores refuse their own damage at Open
// (pebblestore.ErrCorrupt). A committed offset below a partition's log
// start (the broker's retention deleted requests the sequencer never read)
// is not refused but logged as ErrBusExpired and counted
// (Stats.IngressExpired), at start and every minute.
//
// # Retention
//
// Retention (retention.go) deletes entries and idempotency keys from a
// store that implements core.Retainer, by Config.Retention
// (RetentionConfig; flags --retention-max-age, --retention-history,
// --resend-window, --retention-off). Start runs it every Interval (1
// minute); each pass visits up to PassConversations conversations and each
// deletion is one bounded store write (BatchEntries 256, BatchBytes 1
// MiB), so the sequencer's appends wait for at most one such write. An
// entry is deleted when it is older than MaxAge (30 days), or when it is
// older than the resend window (24 hours) and History and every device
// that needs it acked it (delivered cursor): the devices of members who
// joined at or before it, that existed when it was sequenced, other than
// its sender. Idempotency keys go after the resend window. Reads report
// what retention deleted (sync: SyncResponse.expired; history:
// expired_through). Topics get their retention from Config.TopicRetention
// (topics.go).
//
// # Read path
//
// API implements the edge's Backend: device authentication by Noise static
// key, registration (with a required proof of possession of the identity
// key and at most core.MaxDevicesPerUser devices), session open/close
// (routes and presence), and queries (sync, history, conversation list,
// user lookup, presence snapshots, privacy settings) and
// the end-to-end key material (prekey uploads and bundles, each one-time
// prekey handed out at most once and at a limited rate per requester and
// per target, PrekeyFetchLimits; signed device lists — see prekeys.go),
// verifying every signature it can and storing public keys only. A
// session's route is stored before the session serves requests, and the
// fan-out reads routes after the append, so every entry is either in the
// session's first sync or pushed to it live.
//
// # Privacy
//
// Presence (snapshots and live events) is shown only to a user's
// conversation peers, and without last seen for users who hide it
// (presence.go has the rule and its cost bounds). Every request about a
// conversation by a non-member is answered by core.CheckMember's
// OutsiderError — the same NOT_FOUND whether the conversation exists or
// not.
//
// Every read is bounded (reads.go): sync, history and list_conversations
// pages in count and in encoded bytes so that each response fits one
// Noise transport message (core.MaxPageBytes), the store reads of a page
// in bytes (core.Store.Messages / MessagesBefore stop early), and the
// reads one process serves at once (Config.MaxConcurrentReads, default
// 64; UNAVAILABLE with retry_after_ms beyond it). The stores refuse an
// entry larger than core.MaxMessageBytes, so every stored entry fits a
// page and a push on its own.
//
// # The mesh (several regions)
//
// With Config.Placement set (placement.go; DirectoryPlacement reads the
// Raft directory of region/directory) the region is one of a mesh. The
// store is one logical store shared by every region (CockroachDB
// multi-region in production, PostgreSQL in tests, one Pebble store in
// `dev`), so every read above is served by the region the edge belongs
// to; only sequencing is bound to a conversation's home region:
//
//   - Before a record's step, placeStep looks the conversation up in the
//     directory's applied copy (memory; the directory is never on the
//     per-message path). Homed here: the step appends at the directory's
//     owner epoch for that conversation. Homed elsewhere: the record is
//     forwarded (IngressRecord.hops+1) over the link to its home.
//   - Absent from the directory: a creating record (the first send of a
//     1:1 by one of its users to an existing peer, create_group by the
//     group's creator) is forwarded to the initiator's home region (a
//     user's home is where they first registered), which claims it with
//     a compare-and-set on the epoch (0 → 1), recording the owner; a
//     conversation already in the store is claimed the same way by the
//     region that sees it, and the claim returns the real home if another
//     region got there first. Anything else runs here unplaced and is
//     refused as for a conversation that does not exist, without a
//     directory write; an unplaced step never appends. The first
//     directory failure of a batch is latched: the batch's later records
//     that need the directory are answered UNAVAILABLE at once.
//   - The store fences every append by the conversation's owner epoch. A
//     deposed home (its copy not yet showing a move) may still append at
//     the old epoch until the new home's first write (the one store orders
//     both), and is refused by the store (ErrFenced) from then on; it re-reads the directory
//     linearizably and forwards the record to the new home (refenced) —
//     never drops it. A record forwarded MaxHops times, or one no home
//     can take (directory unreachable), is answered UNAVAILABLE with
//     retry_after_ms; the client's outbox resends, the home deduplicates.
//   - Outputs for devices on another region's edge (routes carry their
//     region; replies go to Origin.region) and presence events for the
//     other regions' edges go to the local outbound topic
//     "<ns>.link.<remote>" as pb.LinkRecord. A Link worker per remote
//     region (link.go) consumes it and produces to the remote cluster with
//     acks=all, committing after; a retried link batch repeats records,
//     which the home's dedupe and the clients' seq dedupe absorb.
//
// Exactly once and one order per conversation still come from the home's
// idempotency keys, gapless seqs and client dedupe; a planned move (a
// directory compare-and-set of the epoch) makes the new home continue from
// the stored head.
//
// # Failover: the lease
//
// A mesh region holds a Lease from the directory (lease.go): it heartbeats
// to the leader every quarter lease (500 ms by default), echoing the token
// of the last reply it acted on, and a reply renews the lease to the SEND
// time of its heartbeat plus the lease (2 s) — only once the region's own
// copy of the directory has applied the index the leader answered at, and
// only when that heartbeat followed the echoed reply within FailAfter - 2
// x lease (the contract in region/directory's doc.go). The sequencer
// checks it before every step: without it the batch waits (up to 1 s) and
// is retried — not a record failure, never dead-lettered — and Health
// reports ErrLeaseLost. The directory fails a region no sooner than
// FailAfter (5 s) after the last reply it echoed, so a region cut off from
// the directory majority (or from its replies) stops sequencing before its
// conversations move; the store's per-conversation epoch fence is what
// guarantees one writer even when a step outlives the lease or the
// process pauses. The leader also names regions it has not heard from for
// three heartbeat intervals (Lease.Silent): the sequencer does not forward
// into them (the sender gets UNAVAILABLE with retry_after_ms and its
// resend reaches the new home after the failover) instead of leaving
// records in a lost region's ingress until the client's ack timeout.
//
// A reply saying the region was failed (Healthy=false) keeps the lease:
// the copy shows every home moved away, so the sequencer forwards what it
// still holds in its ingress to the current homes (placement), and the
// directory refuses to home anything new in a failed region. After
// RejoinAfter (10 s) of answered heartbeats the Lease rejoins (restore
// By "rejoin") if the failure detector failed the region; a region an
// operator failed waits for the operator. New users and conversations may
// then be homed here again; moved homes stay where they are until a
// planned move.
//
// The region's edges follow the same rule: the internal API serves GET
// ReadyPath (/internal/v1/ready; API.Ready in process, RemoteAPI.Ready
// across processes), 200 while Health is nil and 503 with the reason
// otherwise, and an edge given it (edge.Config.Ready) stops serving after
// a second without it — refusing new connections and closing its
// sessions with UNAVAILABLE — so clients move to another region's edge
// instead of sending into an ingress nobody sequences. A deposed region
// that holds its lease is ready (it forwards); only "not sequencing"
// counts. The in-process mesh and `chatmesh edge` in a mesh wire it; a
// single region does not (there is nowhere else to go, and a sequencer
// restart should not close every session).
//
// # Concurrency
//
// Region and API are safe for concurrent use. Region.Start launches the
// sequencer and the notifier goroutines; Shutdown stops and awaits them.
//
// # Metrics
//
// Region.Collector exports the Stats counters as chatmesh_region_*_total
// (labelled region), chatmesh_region_dead_letters_total{reason},
// chatmesh_region_sequencer_consuming, chatmesh_region_ready, the lease
// (chatmesh_region_lease_held, _deposed, _beats_total,
// _beat_failures_total, _lapses_total, _rejoins_total) and five
// histograms the sequencer observes once per batch (and once per record
// for the sequencing delay): chatmesh_region_batch_records,
// chatmesh_region_commit_seconds (the store's commit: its latency),
// chatmesh_region_commit_entries, chatmesh_region_sequence_seconds (an
// ingress record's Kafka timestamp → committed) and
// chatmesh_region_fanout_seconds (commit → outputs acknowledged by Kafka).
// Link.Collector exports chatmesh_link_* (labelled from, to). Region.Ready
// is the readiness an admin server's /readyz uses: Health, and a probe
// read of the store within a timeout (ErrStoreUnreachable).
package region
