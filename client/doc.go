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
//	device.json     X25519 Noise static key pair, Ed25519 identity key, user and
//	                device number (mode 0600, written atomically)
//	outbox/*.msg    one file per unacknowledged message (a pb.SendRequest + crc32c)
//	convs/<hex>.log one append-only log per conversation: its entries in seq
//	                order and the app's "seen" cursor (see Store)
//
// Everything is fsync'd before the call that wrote it returns.
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
// the device they were made on.
//
// # Sending
//
// Send seals the body (Config.Sealer), writes the message durably into the
// outbox under a fresh client message id (a ULID) and returns; it works
// offline. A sender goroutine per session puts outbox entries on the wire
// in outbox order, up to Config.SendWindow per conversation at once, and
// resends with the same client message id after a lost session, an ack
// timeout, or a transient error (UNAVAILABLE, RATE_LIMITED, ...) with
// exponential backoff; the server deduplicates on (conversation, device,
// client message id) and acks a duplicate with the original seq. A
// SendAck removes the entry and emits SendAckedEvent; a permanent error
// (NOT_MEMBER, NOT_FOUND, INVALID_ARGUMENT, FORBIDDEN, GROUP_FULL) removes
// it and emits SendFailedEvent. Caveat on order: with SendWindow > 1, when
// the edge rejects one message transiently while a later one of the same
// conversation, already in flight, is accepted, the two are sequenced out
// of order. SendWindow 1 rules that out at the cost of one round trip per
// message and conversation.
//
// # Receiving
//
// Live pushes, sync pages and history pages all go through one receive
// state machine per conversation (recvState): an entry at or below the
// stored head is a duplicate and dropped; head+1 is stored (fsync) and
// any buffered successors with it; anything further ahead is buffered in
// memory and triggers a sync. Each session starts with a full sync
// (every known cursor, paged until more=false). After storing, the device
// acks the highest contiguous seq per conversation (coalesced, one
// DeliveryAck per conversation per round). The stored head is the cursor
// and is derived from the stored data, so they cannot disagree after a crash.
//
// # Events and slow apps
//
// Events() is a bounded channel (Config.EventBuffer) fed by one dispatcher
// goroutine. Message events are not queued in memory: the dispatcher reads
// them from the store, after the app's per-conversation cursor, and blocks
// on the channel while the app is slow — the network side keeps storing
// and acking meanwhile, and nothing is lost. Each MessageEvent is handed
// exactly once, in seq order per conversation, also across restarts: the
// app cursor ("seen") is persisted after each batch (default; a crash can
// repeat at most the last batch) or only through Commit (ManualCommit, for
// exactly-once across crashes). Other events (acks, receipts, presence,
// typing, connection changes) wait in a bounded queue (Config.NoticeQueue);
// when it is full they are dropped and counted (DroppedNotices). Their
// state can be re-read: WaitSent and Outbox for sends, SubscribePresence
// for presence.
//
// # Concurrency
//
// Every exported method is safe for concurrent use. The client owns these
// goroutines: the dispatcher (Open..Close), the connection loop (Start..
// Close), and per session a reader (the loop's own goroutine), a sender
// with one goroutine per in-flight message, a syncer and an acker, all
// cancelled and awaited when the session ends.
//
// # What it does not do (yet)
//
// End-to-end encryption: the default InsecurePlaintextSealer puts the body
// into Envelope.ciphertext unencrypted; the Signal-style sealer plugs in
// through Config.Sealer. Read markers and typing are not durable (a read
// marker lost with a session is not resent). Group metadata (title,
// members) is not cached locally; ListConversations asks the server.
package client
