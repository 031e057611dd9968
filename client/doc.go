// Package client is chatmesh's Go client SDK: one device's identity,
// transport, durable outbox and local message store. The CLI
// (chatmesh chat), the bench, the simulator and end-to-end tests drive
// chatmesh through it.
//
// # Life cycle
//
//	c, err := client.Open(ctx, client.Config{StateDir: dir, Edges: []string{"ws://127.0.0.1:7000"}})
//	defer c.Close()
//	if _, ok := c.Device(); !ok {
//		c.Register(ctx, "alice")           // first device of a new user
//	}
//	c.Start()                              // connect, reconnect, sync, send, ack — in the background
//	id, _ := c.SendDirect(ctx, "bob", []byte("hi"))
//	res, _ := c.WaitSent(ctx, id)          // "sent ✓" with res.Seq
//	for ev := range c.Events() { ... }     // MessageEvent, SendAckedEvent, ReceiptEvent, ...
//
// Open loads or creates the state dir; it never touches the network. Start
// runs the connection loop in a goroutine the client owns (Run is the
// blocking form for callers that want to own it); Close cancels everything
// the client started and waits for it. After Close the state on disk is
// consistent and a later Open continues where this one stopped.
//
// # State dir
//
//	device.json        X25519 Noise static key pair, end-to-end identity
//	                   (crypto/identity Private; its Ed25519 half is the
//	                   registered identity key), user and device number
//	                   (mode 0600, written atomically)
//	e2ee/state.log     the end-to-end sealer's state: prekey private keys,
//	                   trusted device lists, ratchet sessions, sender keys,
//	                   plaintext copies (see package client/e2ee)
//	outbox/outbox.log  the unacknowledged messages: "add" and "done" records
//	                   (see Outbox); compacted on open
//	convs/<hex>.log    one append-only log per conversation: its entries in seq
//	                   order (with skip records at join points), the app's
//	                   "seen" cursor and the confirmed delivery cursor (see Store)
//	lock               flock'd from Open to Close: a second Client of the same
//	                   dir, in any process, gets ErrStateInUse (unix only)
//
// Records carry a crc32c; a torn tail left by a crash is cut off on open.
// Identity, outbox adds and stored entries are fsync'd before the call that
// wrote them returns; concurrent Sends share one fsync (group commit).
//
// # Identity, registration, linking
//
// A device is identified by its Noise static key; the edge learns it in the
// XX handshake, and the ClientHello names the device once it is registered.
// Register makes the device the first device of a new user. A further
// device of the same user is linked in two steps, like a QR-code scan:
// the new device shows LinkRequest() (its public keys), an existing device
// turns it into a link token with Link (an Ed25519 signature over
// "chatmesh-link-v1"||user||noise_static||identity_key, see LinkMessage),
// and the new device calls RegisterLinked with it. Private keys never leave
// the device they were made on. The link request also carries the new
// device's full end-to-end identity; the linking device adds it to the
// user's signed device list once the new device has registered (it
// watches for that for 5 minutes after Link, and checks on every connect
// and send; PublishLinkedDevices does it on demand).
//
// # End-to-end encryption
//
// By default (Config.Sealer nil) bodies are end-to-end encrypted by
// client/e2ee: pairwise Signal-style sessions (PQXDH + Double Ratchet) per
// device for 1:1 and multi-device, Sender Keys for groups, signed device
// lists verified before encrypting. Register publishes the device list and
// prekeys over a short session right after registration; every session
// uploads prekeys again (idempotent) before WaitConnected returns, and a
// prekey_status push makes the client upload more one-time prekeys.
// A changed peer identity raises IdentityChangedEvent and Send to that
// user fails (e2ee.ErrIdentityChanged) until TrustIdentity; SafetyNumber
// gives the number to compare. Send needs the server the first time it
// encrypts to a device (device list, prekey bundle). Own messages come
// back with their local copy as body. Config.Sealer =
// InsecurePlaintextSealer{} turns encryption off (control runs, tests).
//
// # Sending
//
// Send seals the body (Config.Sealer), writes the message durably into the
// outbox under a fresh client message id (a ULID) and returns; it works
// offline once the sealer knows the recipients' devices (the end-to-end
// sealer needs the server to encrypt to a device for the first time). A
// group message may be preceded in the outbox by key-distribution entries
// (see MessageSealer), stored together with it (all or none). The outbox
// holds at most Config.MaxOutbox messages and MaxOutboxBytes bytes
// (defaults 10,000 and 64 MiB): past either, Send fails with
// ErrOutboxFull and stores nothing. Its scheduling work is per
// conversation, not per entry, so a device back online with a full outbox
// settles it in linear time (BenchmarkOutboxSettle: 10,000 messages in one
// conversation, 14–24 ms of scheduling). A sender goroutine per session puts outbox entries on the wire
// in outbox order, up to Config.SendWindow per conversation at once, and
// resends with the same client message id after a lost session, an ack
// timeout, or a transient error (UNAVAILABLE, RATE_LIMITED, ...) with
// exponential backoff, waiting at least the error's retry_after_ms (at
// most 5 min); the server deduplicates on (conversation, device,
// client message id) and acks a duplicate with the original seq. A
// SendAck removes the entry and emits SendAckedEvent — as does the
// message's own stored entry coming back to this device in a push or a
// sync, whichever comes first (the SendAck may have been lost with the
// session). A session that starts with entries in the outbox sends
// nothing until its first sync has settled those already stored, so a
// device back after longer than the server's resend window does not
// store them twice (PROTOCOL.md §7.1). A permanent error
// (NOT_MEMBER, NOT_FOUND, INVALID_ARGUMENT, FORBIDDEN, GROUP_FULL) removes
// it and emits SendFailedEvent; so does a message larger than the edge's
// max_frame_bytes (from its ServerHello), which is failed locally with
// FRAME_TOO_LARGE instead of being sent. Order: up to SendWindow (default
// 32) messages per conversation are in flight at once, each naming the
// previous unanswered one of its conversation (after_client_msg_id,
// PROTOCOL.md §7.1.2); the region refuses a message OUT_OF_ORDER until
// its predecessor is stored, and the client sends refused ones again in
// outbox order, so a conversation's messages are sequenced in send order
// even when the edge refuses one transiently while later ones pass.
// Key-distribution entries of the end-to-end sealer are in addition sent
// alone and acked before anything after it in its conversation is sent.
//
// # Receiving
//
// Live pushes, sync pages and history pages all go through one receive
// state machine per conversation (recvState): an entry at or below the
// stored head is a duplicate and dropped; head+1 is stored (fsync) and
// any buffered successors with it; anything further ahead is buffered in
// memory and triggers a sync. Each session starts with a full sync
// (every known cursor, paged until more=false). The server bounds pages in
// bytes as well as in count, so a page may hold a single large message:
// sync follows more, FetchHistory pages back by before_seq until it has
// what was asked for, and ListConversations pages by after_conv_id. The stored head is the
// delivery cursor and is derived from the stored data, so the two cannot
// disagree after a crash.
//
// Join points: a user added to a group later (or invited, or accepting an
// invitation, or let back in after a removal) may read only from that
// entry on. The server answers a sync with the entries after the cursor
// that the user may read, so when a conversation's first entry in a sync
// page lies beyond head+1, the client records the seqs in between as
// skipped (a skip record in the conversation log, Store.Skip) and stores
// from there; the store is then gapless from 1 except at such skips. Live
// pushes and history pages never skip: a push beyond head+1 waits for the
// sync it triggers.
//
// After storing, the device acks the highest contiguous seq per
// conversation: coalesced, at most one DeliveryAck per conversation in
// flight. The region confirms each ack; the confirmed cursor is recorded
// in the conversation log (not fsync'd), and at the start of every session
// each conversation whose head is beyond its confirmed cursor is acked
// again, so an ack lost with a session or a crash is repeated.
//
// # Connection
//
// The connection loop dials Config.Edges in turn (ws:// and wss:// for
// WebSocket, https:// for WebTransport with an optional pinned certificate
// hash), runs the Noise XX handshake (optionally pinning the edge's static
// key) and keeps one session up. Any session end — transport error,
// Disconnect, failed sync, unanswered keepalive ping (Config.KeepAlive) —
// leads to a reconnect with exponential backoff and full jitter, to the next
// edge in the list.
//
// With Config.LocateURL the list comes from a locator (Locate, GET
// /v1/locate on any edge): the healthy edges nearest first, each with its
// URLs and Noise key, and a TTL. The client connects to the first and
// fails over down the list (each attempt bounded by DialTimeout), and
// locates again when every edge of the list failed in a row or the TTL
// has expired at reconnect time; a session that stayed up 30 s sends the
// next reconnect back to the top of the list. Each located edge must
// prove the Noise key of the answer (unless Config.ServerKey pins one
// key for all): the locator is what the client trusts about which edge
// is which, so outside development it must be served over HTTPS (Locate
// refuses plain http except to loopback). A locator's 429/503 with
// Retry-After lengthens the backoff (at most 5 min). Only UNAUTHENTICATED, FORBIDDEN and REPLACED stop the
// loop (Run returns the error; with Start, Err reports it): retrying cannot
// help there. An edge that rejects a connection before the handshake
// finishes signals the code by WebSocket close status 4000+code or
// WebTransport session error code; the client turns both into a
// *core.WireError.
//
// # Events and slow apps
//
// Events() is a bounded channel (Config.EventBuffer) fed by one dispatcher
// goroutine. Message events are not queued in memory: the dispatcher reads
// them from the store, after the app's per-conversation cursor, and blocks
// on the channel while the app is slow — the network side keeps storing
// and acking meanwhile, and nothing is lost. Each MessageEvent is handed
// exactly once, in seq order per conversation, also across restarts: the
// app cursor ("seen") is persisted after each batch of up to 256 events
// (default: a crash between handing a batch and persisting the cursor
// repeats that batch after restart) or only when the app calls Commit
// (ManualCommit: the app commits after it has durably processed an event,
// so a crash repeats at most the uncommitted events and loses none).
// Other events (acks, receipts, presence, typing, connection changes) wait
// in a bounded queue (Config.NoticeQueue);
// when it is full they are dropped and counted (DroppedNotices). Their
// state can be re-read: WaitSent and Outbox for sends, SubscribePresence
// for presence. Pending counts what waits for the app (stored messages
// not yet handed, queued notices, the channel), so an app that drains
// and exits (chatmesh chat receive) knows when it has seen everything.
//
// # Concurrency
//
// Every exported method is safe for concurrent use. The client owns these
// goroutines: the dispatcher (Open..Close), the connection loop (Start..
// Close), and per session a reader (the loop's own goroutine), a sender
// (it writes the frames itself, in outbox order) with one goroutine per
// in-flight message waiting for its SendAck, a syncer, an acker with one
// goroutine per ack awaiting confirmation, and a keepalive pinger; all are
// cancelled and awaited when the session ends.
//
// # What it does not do (yet)
//
// History for new devices: a linked device cannot read what was sent
// before its link (MessageEvent.OpenErr = e2ee.ErrNotForDevice). Read
// markers are retried across reconnects while MarkRead's context lives
// but are not persisted; typing is best effort.
// Group metadata (title, members) is not cached locally; ListConversations
// asks the server. The local store keeps every entry forever (no pruning).
package client
