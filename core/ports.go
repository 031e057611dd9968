package core

import (
	"context"
	"time"

	"github.com/chatmesh/chatmesh/core/pb"
)

// User is an account: a name and the set of its devices.
type User struct {
	ID          string
	HomeRegion  string
	CreatedAtMs int64
}

// Device is one registered device of a user. The server keeps public keys only.
type Device struct {
	Key           DeviceKey
	NoiseStatic   []byte // X25519 public key proven in every transport handshake (32 bytes)
	IdentityKey   []byte // Ed25519 public key that signs links and prekeys (32 bytes)
	LinkedBy      uint32 // device that signed the link; 0 for a user's first device
	LinkSignature []byte
	CreatedAtMs   int64
}

// Conversation is the stored state of a conversation.
type Conversation struct {
	ID          string
	Kind        pb.ConversationKind
	Title       string
	HomeRegion  string
	Epoch       uint64 // owner epoch; only a writer at >= this epoch may append
	Head        uint64 // seq of the newest entry; 0 when empty
	CreatedAtMs int64
}

// Member is a user's membership of a conversation, or a pending invitation.
type Member struct {
	User      string
	JoinedSeq uint64 // seq of the entry that added (or invited) the user; a member reads from here on
	// Admin: a group member with admin rights (add, remove, promote,
	// demote, set the title). The creator starts as the only admin.
	Admin bool
	// Invited: a pending invitation, not a member: the user's add policy
	// refused a direct add; they become a member by ACCEPT. An invited
	// user reads and sends nothing, and is not counted by MemberSet.
	Invited bool
}

// Privacy is a user's privacy settings (shared by all their devices).
type Privacy struct {
	HideLastSeen bool         // others see online/offline but no last-seen time
	AddPolicy    pb.AddPolicy // who may add the user to a group directly
}

// CursorKind distinguishes the two per-device cursors.
type CursorKind uint8

// The cursor kinds.
const (
	CursorDelivered CursorKind = 1 // device has durably stored up to seq
	CursorRead      CursorKind = 2 // user has read up to seq
)

// Cursor is one device's position in one conversation.
type Cursor struct {
	Conv      string
	Device    DeviceKey
	Delivered uint64
	Read      uint64
}

// Route says that a device has a live session on an edge.
type Route struct {
	Device  DeviceKey
	Edge    string
	Session uint64
	SinceMs int64
	// Region is the region of the edge: a home region delivers to a
	// remote region's edge over the link to that region. "" is the
	// region reading the route (single-region deployments, and routes
	// stored before the mesh).
	Region string
}

// AppendRequest is the sequencer's single write: one new conversation entry,
// with any membership effects, in one transaction.
type AppendRequest struct {
	// Epoch is the writer's owner epoch. The store fails with ErrFenced when
	// the stored conversation's epoch is greater.
	Epoch uint64
	// Message to append. ConvId, Sender and ClientMsgId form the idempotency
	// key (with Sender's device). The store sets Seq (head+1) and Epoch; the
	// caller sets everything else (MsgId, SentAtMs, Kind, Envelope or Membership).
	Message *pb.Message
	// Create, when the conversation does not exist yet, creates it (with
	// Head 0 and Epoch = Epoch) before appending; its ID must equal
	// Message.ConvId. When the conversation exists, Create is ignored.
	// Without Create a missing conversation is ErrNotFound.
	Create *Conversation
	// AddMembers get JoinedSeq = the new seq. Adding an existing member is
	// a no-op; adding an invited user makes them a member (Invited cleared,
	// JoinedSeq = the new seq).
	AddMembers []string
	// RemoveMembers are deleted from the member list (members and
	// invitations alike). Removing a non-member is a no-op.
	RemoveMembers []string
	// Invite records pending invitations (Invited, JoinedSeq = the new seq)
	// for users who are neither members nor invited.
	Invite []string
	// Promote and Demote set and clear the Admin flag of members.
	Promote, Demote []string
	// Title, when non-nil, replaces the conversation's title.
	Title *string
}

// AppendResult reports the stored entry.
type AppendResult struct {
	// Message is the stored entry, Seq set. On a duplicate it is the entry
	// stored by the first append with the same idempotency key.
	Message *pb.Message
	// Duplicate is true when the idempotency key was already present; the
	// store then changed nothing.
	Duplicate bool
}

// Store is the region's source of truth. Every method is safe for
// concurrent use. Implementations: region/pebblestore (embedded) and
// region/pgstore (PostgreSQL / CockroachDB); both pass region/storetest.
//
// Errors wrap the core sentinels (ErrNotFound, ErrAlreadyExists, ErrFenced,
// ErrInvalidArgument) with %w so errors.Is works; any other error is
// transient or internal.
type Store interface {
	// RegisterDevice stores a device. If a device with the same NoiseStatic
	// already exists for d.Key.User, it is returned unchanged (idempotent
	// retry); if it exists for another user, ErrAlreadyExists.
	// With createUser the user must not exist yet (ErrAlreadyExists); it is
	// created with device number 1. Without createUser the user must exist
	// (ErrNotFound) and the device gets the next free number (max+1).
	// d.Key.Device is ignored on input; the result carries the assigned key.
	RegisterDevice(ctx context.Context, u User, d Device, createUser bool) (Device, error)
	// User returns a user (ErrNotFound).
	User(ctx context.Context, id string) (User, error)
	// Devices lists a user's devices ordered by device number (ErrNotFound
	// when the user does not exist).
	Devices(ctx context.Context, user string) ([]Device, error)
	// DeviceByStatic finds the device whose NoiseStatic equals static (ErrNotFound).
	DeviceByStatic(ctx context.Context, static []byte) (Device, error)

	// Append sequences one entry; see AppendRequest and AppendResult. An
	// entry that core.CheckStorable refuses (larger than MaxMessageBytes
	// once stored) is not stored: the error wraps a *WireError with code
	// MESSAGE_TOO_LARGE.
	// Duplicate detection happens before the epoch check and before the
	// existence check, so a replay of an appended entry always succeeds.
	Append(ctx context.Context, req AppendRequest) (AppendResult, error)
	// Lookup returns the entry stored under an idempotency key (the
	// conversation, the sender device and its client message id), or
	// ErrNotFound. The sequencer asks before refusing a request, so that a
	// resend of an entry stored earlier gets its original answer.
	Lookup(ctx context.Context, conv string, sender DeviceKey, clientMsgID string) (*pb.Message, error)
	// Conversation returns a conversation with its current Head (ErrNotFound).
	Conversation(ctx context.Context, id string) (Conversation, error)
	// Members lists a conversation's members and pending invitations (see
	// Member.Invited) ordered by user id (ErrNotFound when the conversation
	// does not exist).
	Members(ctx context.Context, conv string) ([]Member, error)
	// UserConversations lists the ids of the conversations the user is a
	// member of or invited to (callers check Member.Invited), ordered by id.
	UserConversations(ctx context.Context, user string) ([]string, error)
	// Messages returns entries with seq > after, ascending: at most limit
	// of them (limit <= 0: DefaultPageSize; at most MaxPageSize), stopping
	// before the entry that would make the sum of their encoded sizes
	// (proto.Size) exceed maxBytes (maxBytes <= 0: MaxPageBytes). Since no
	// stored entry exceeds MaxMessageBytes, maxBytes >= MaxMessageBytes
	// returns at least one entry when one exists. Implementations read
	// only what they return (plus at most one entry), never the whole range.
	Messages(ctx context.Context, conv string, after uint64, limit, maxBytes int) ([]*pb.Message, error)
	// MessagesBefore returns the newest entries with after < seq < before,
	// in ascending order: walking down from before, at most limit of them
	// (as in Messages), stopping before the entry that would make the sum
	// of their encoded sizes exceed maxBytes (as in Messages). It serves
	// history pages, which fill from the newest end.
	MessagesBefore(ctx context.Context, conv string, before, after uint64, limit, maxBytes int) ([]*pb.Message, error)

	// AdvanceCursor moves a device's cursor of the given kind to seq if seq
	// is greater than the stored value (cursors never move back). It returns
	// the previous value and whether it moved.
	AdvanceCursor(ctx context.Context, conv string, dev DeviceKey, kind CursorKind, seq uint64) (prev uint64, moved bool, err error)
	// Cursors returns every cursor of the device, ordered by conversation.
	Cursors(ctx context.Context, dev DeviceKey) ([]Cursor, error)
	// ConvCursors returns every device cursor of a conversation, ordered by device.
	ConvCursors(ctx context.Context, conv string) ([]Cursor, error)

	// SetRoute records that r.Device is online at r.Edge in r.Session,
	// replacing any previous route of the device.
	SetRoute(ctx context.Context, r Route) error
	// ClearRoute removes the device's route if it still names session, and
	// sets the user's last-seen time to atMs. It reports whether it removed.
	ClearRoute(ctx context.Context, dev DeviceKey, session uint64, atMs int64) (bool, error)
	// ClearEdgeRoutes removes every route that names edge (the edge
	// restarted or died), setting last seen of the affected users to atMs,
	// and returns the removed routes.
	ClearEdgeRoutes(ctx context.Context, edge string, atMs int64) ([]Route, error)
	// Routes returns the routes of all online devices of the given users,
	// ordered by device.
	Routes(ctx context.Context, users []string) ([]Route, error)
	// LastSeen returns the last-seen time (unix ms) of each given user that
	// has one.
	LastSeen(ctx context.Context, users []string) (map[string]int64, error)

	// SetPrivacy replaces a user's privacy settings (ErrNotFound when the
	// user does not exist). The caller validates p.
	SetPrivacy(ctx context.Context, user string, p Privacy) error
	// Privacy returns a user's privacy settings: the zero value when never
	// set, ErrNotFound when the user does not exist.
	Privacy(ctx context.Context, user string) (Privacy, error)

	// Close releases the store.
	Close() error
}

// CursorBatcher is the optional Store capability to persist the cursor
// moves of a sequencer batch at once: the result is that of calling
// AdvanceCursor for each move in order (cursors only move forward). Both
// store implementations provide it.
type CursorBatcher interface {
	AdvanceCursors(ctx context.Context, moves []CursorMove) error
}

// Batcher is the optional Store capability for group commit: the
// sequencer stores every entry of a consumed batch of ingress records in
// one WriteBatch and makes them durable with one commit (one fsync),
// before any of their acks or deliveries leaves. Both store
// implementations provide it; the region checks for it with a type
// assertion and falls back to one synced Append per entry without it.
type Batcher interface {
	// Begin starts a write batch. The caller must Commit or Discard it.
	Begin(ctx context.Context) (WriteBatch, error)
}

// IdemKey is an entry's idempotency key: its conversation, its sender
// device and the client's message id.
type IdemKey struct {
	Conv        string
	Sender      DeviceKey
	ClientMsgID string
}

// WriteBatch is a view of the store for one sequencer batch. Its Append
// writes into the batch: the batch's own reads (Lookup, Conversation,
// Members, ConvCursors, Messages, MessagesBefore and Append's duplicate
// check) see those writes, nobody else does until Commit. Its other
// methods act on the store directly, as core.Store's do.
//
// Commit makes the batch's appends durable at once (one fsync on Pebble,
// one transaction on PostgreSQL) or none of them: if another writer
// appended to one of the batch's conversations after the batch read it,
// Commit fails with an error wrapping ErrUnavailable and stores nothing,
// and the caller retries the batch from the store.
//
// A write that fails inside the batch may leave it unable to commit (a
// PostgreSQL transaction is aborted by any failed statement): Err then
// says so, and the caller discards the batch and redoes its work without
// one. A step that fails after its Append leaves the entry in the batch,
// as a failed step without a batch leaves it stored: a retried step finds
// it by its idempotency key.
type WriteBatch interface {
	Store
	// Err is non-nil once the batch can no longer commit.
	Err() error
	// Prefetch is a hint: the batch is about to append to convs with
	// these idempotency keys. A store whose reads cost a round trip reads
	// them all at once (PostgreSQL: the conversations' rows, locked, and
	// which keys are already stored); others ignore it.
	Prefetch(ctx context.Context, convs []string, keys []IdemKey) error
	Commit(ctx context.Context) error
	// Discard drops whatever Commit has not stored. It is safe after Commit.
	Discard()
	// Appended is how many new entries the batch holds.
	Appended() int
}

// RetentionMark is a conversation's retention state (core.Retainer).
type RetentionMark struct {
	Conv string
	Head uint64 // seq of the newest entry
	// Trimmed: every entry with seq <= Trimmed has been deleted, with its
	// idempotency key (0: none). Entries above it are all still stored.
	Trimmed uint64
	// KeysThrough: the idempotency keys of the entries with seq <=
	// KeysThrough have been deleted (always >= Trimmed): a resend of one
	// of them is a new entry.
	KeysThrough uint64
}

// Retainer is the optional Store capability for retention: it deletes
// old entries and idempotency keys of one conversation, a bounded range
// at a time. The store only deletes what it is told; the policy (which
// entries every member device has acked, the maximum age, the resend
// window) is region/retention.go's. Both store implementations provide
// it.
//
// A deleted entry is gone for every reader: Messages and MessagesBefore
// skip it (a sync page then starts above the reader's cursor, and the
// region tells the device which seqs expired), Lookup and Append no
// longer find its idempotency key.
type Retainer interface {
	// RetentionMarks lists up to limit conversations with id > after,
	// ascending by id, with their marks (limit <= 0: DefaultPageSize).
	// (pgstore compares ids in the database's collation; paging from ""
	// visits every conversation once either way.)
	RetentionMarks(ctx context.Context, after string, limit int) ([]RetentionMark, error)
	// RetentionMark returns one conversation's marks (ErrNotFound).
	RetentionMark(ctx context.Context, conv string) (RetentionMark, error)
	// Trim deletes the entries with Trimmed < seq <= through and their
	// idempotency keys, atomically, and sets Trimmed = through (and
	// KeysThrough to at least through). through <= Trimmed is a no-op;
	// through > Head is ErrInvalidArgument. The caller bounds the range
	// (the store deletes it in one write).
	Trim(ctx context.Context, conv string, through uint64) error
	// ForgetKeys deletes the idempotency keys of the entries with
	// KeysThrough < seq <= through, keeping the entries, and sets
	// KeysThrough = through. Bounds as in Trim.
	ForgetKeys(ctx context.Context, conv string, through uint64) error
}

// OneTimeKey is one opaque one-time prekey.
type OneTimeKey struct {
	ID  uint32
	Key []byte
}

// PrekeyUpload is a device's end-to-end public key material, verified by
// the region (crypto/prekey, crypto/identity) before it reaches the store;
// the store treats every field as opaque bytes.
type PrekeyUpload struct {
	Identity     []byte       // E2E identity (crypto/identity Public); nil: keep the stored one
	SignedPrekey []byte       // replaces the stored one when non-nil
	KEMPrekey    []byte       // replaces the stored one when non-nil
	OneTime      []OneTimeKey // added; an id already stored (or already handed out) is ignored
}

// PrekeyBundle is what TakeBundle hands out.
type PrekeyBundle struct {
	Identity     []byte
	SignedPrekey []byte
	KEMPrekey    []byte
	OneTime      *OneTimeKey // nil when the supply is exhausted
	Remaining    int         // one-time prekeys left after this one
}

// PrekeyStore is the optional Store capability for end-to-end key
// material. Both store implementations provide it; region services check
// for it with a type assertion.
type PrekeyStore interface {
	// PutPrekeys stores a device's upload (see PrekeyUpload). A one-time id
	// is never stored twice, even after it was handed out.
	PutPrekeys(ctx context.Context, dev DeviceKey, up PrekeyUpload) error
	// TakeBundle returns the device's identity, signed prekey and KEM prekey
	// and removes its lowest-numbered one-time prekey, atomically: no two
	// callers, concurrent or not, ever receive the same one-time prekey.
	// ErrNotFound when the device has not uploaded an identity and signed prekey.
	TakeBundle(ctx context.Context, dev DeviceKey) (PrekeyBundle, error)
	// OneTimeCount returns how many one-time prekeys the device has left.
	OneTimeCount(ctx context.Context, dev DeviceKey) (int, error)
	// PutDeviceList stores a user's signed device list if version is greater
	// than the stored one; otherwise ErrAlreadyExists (stale or replayed).
	PutDeviceList(ctx context.Context, user string, version uint64, list []byte) error
	// DeviceList returns the stored list (ErrNotFound when none).
	DeviceList(ctx context.Context, user string) (version uint64, list []byte, err error)
}

// BusRecord is one Kafka record.
type BusRecord struct {
	Topic     string
	Key       []byte
	Value     []byte
	Partition int   // set on consumed records
	Offset    int64 // set on consumed records
	// Time is set on consumed records: the record's timestamp, taken by
	// its producer when it wrote the record (zero if the bus has none).
	// Only metrics read it (stage latencies); nothing orders by it.
	Time time.Time
}

// ConsumeSpec says what to consume.
type ConsumeSpec struct {
	Topic string
	// Group is the consumer group. With a group, partitions are shared among
	// the group's members and offsets are committed after the handler
	// returns; without one, the consumer reads every partition itself,
	// starting at the end of the topic (live tail), and commits nothing.
	Group string
	// OnReady, if set, is called once when the consumer holds its partitions
	// and knows where it starts reading: records produced after OnReady
	// returns are guaranteed to be consumed.
	OnReady func()
}

// Handler processes one consumed record. It is called for the records of a
// partition one at a time, in offset order. If it returns an error the bus
// calls it again with the same record after a backoff; it must therefore be
// idempotent, and it should return only when the record is done or ctx ends.
type Handler func(ctx context.Context, rec BusRecord) error

// BatchHandler processes consecutive records of one partition at once, in
// offset order. Retry semantics are Handler's, for the whole batch: on an
// error the bus calls it again with the same records.
type BatchHandler func(ctx context.Context, recs []BusRecord) error

// BatchConsumer is an optional Bus capability: ConsumeBatch is Consume with
// a handler that receives up to maxBatch records that the bus has already
// fetched (it never waits to fill a batch), so a handler can amortize
// per-call costs — one produce round trip for a whole batch's outputs —
// under load without adding latency when idle.
type BatchConsumer interface {
	ConsumeBatch(ctx context.Context, spec ConsumeSpec, maxBatch int, h BatchHandler) error
}

// Pending is the unfinished end of a pipelined batch's handling (see
// PipelinedConsumer): Finish is called exactly once, when that work ended.
type Pending struct {
	done chan struct{}
	err  error
}

// NewPending returns an unfinished Pending.
func NewPending() *Pending { return &Pending{done: make(chan struct{})} }

// Finish records the outcome (nil: the batch is handled) and wakes every
// waiter. It must be called exactly once.
func (p *Pending) Finish(err error) {
	p.err = err
	close(p.done)
}

// Done is closed once Finish was called.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Err is the outcome passed to Finish; call it after Done is closed.
func (p *Pending) Err() error {
	<-p.done
	return p.err
}

// PipelinedBatchHandler is a BatchHandler that may leave the end of its
// work (typically producing the batch's outputs) running when it
// returns: it returns a Pending for that work, or nil when it is done. An
// error (returned, or from the Pending) is retried as a BatchHandler's is.
type PipelinedBatchHandler func(ctx context.Context, recs []BusRecord) (*Pending, error)

// PipelinedConsumer is an optional Bus capability: ConsumePipelined is
// ConsumeBatch, except that while one batch's Pending is unfinished the
// bus already hands the partition's next batch to h, so the two overlap
// (at most one Pending per partition is outstanding when h is called).
// A batch's offsets are committed only after its Pending finished with
// nil. When a Pending finishes with an error, that batch and every later
// one already handed to h are handed to h again, from the failed batch's
// first record, after a backoff. h must order its own Pendings: a batch
// that continues after a failed one (its first offset is past the failed
// batch's last) must fail too, while a batch that starts at or before the
// failed one's end is the redo and must not. recs stay the handler's (the
// bus does not reuse them) until the Pending finished. The partition's
// worker waits for its outstanding Pending before it stops.
type PipelinedConsumer interface {
	ConsumePipelined(ctx context.Context, spec ConsumeSpec, maxBatch int, h PipelinedBatchHandler) error
}

// Bus is the regional message bus (Kafka). Delivery is at-least-once.
type Bus interface {
	// Produce writes records with acks from all in-sync replicas, each to the
	// partition chosen by hashing its Key, and returns when all are
	// acknowledged. On error some records may still have been written.
	Produce(ctx context.Context, recs ...BusRecord) error
	// EnsureTopic creates a topic if absent.
	EnsureTopic(ctx context.Context, topic string, partitions int) error
	// Consume runs h for every record until ctx ends; it returns ctx's error
	// or a fatal error.
	Consume(ctx context.Context, spec ConsumeSpec, h Handler) error
	// Close flushes and releases the bus.
	Close() error
}

// TopicRetention is how long a topic keeps records: Kafka's retention.ms
// and retention.bytes (per partition). Records go when either limit is
// reached, consumed or not (real Kafka does not look at consumer offsets):
// for a topic a consumer group must read completely, Time must exceed any
// lag the group may build up, and Bytes should be unlimited. See
// region/kafkabus's documentation, Retention.
type TopicRetention struct {
	Time  time.Duration // <= 0: the bus's default
	Bytes int64         // per partition; 0: the bus's default; < 0: no size limit
}

// LiveTopicRetention is the retention of topics read live, without a
// consumer group (edge topics, presence): a record missed there is
// repaired by sync or the next snapshot, so ten minutes and 16 MiB per
// partition are plenty.
var LiveTopicRetention = TopicRetention{Time: 10 * time.Minute, Bytes: 16 << 20}

// TopicConfigurer is the optional Bus capability to create a topic with a
// retention, and to set that retention on a topic that exists already
// (EnsureTopic uses the bus's default retention).
type TopicConfigurer interface {
	EnsureTopicRetention(ctx context.Context, topic string, partitions int, r TopicRetention) error
}

// PushNotification is what a notifier learns about a message for an
// offline device: routing metadata only, never content.
type PushNotification struct {
	Device   DeviceKey
	Conv     string
	Seq      uint64
	MsgID    string
	SentAtMs int64
}

// Notifier tells offline devices that something arrived (APNs/FCM/webhook).
type Notifier interface {
	Notify(ctx context.Context, n PushNotification) error
}
