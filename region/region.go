package region

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/chatmesh/chatmesh/core"
)

// Topic names shared with edges.
const (
	DefaultIngressTopic  = "ingress"
	DefaultPresenceTopic = "presence"
	// DefaultDeadLetterTopic receives pb.DeadLetter records: ingress records
	// the sequencer gave up on (see Config.MaxAttempts).
	DefaultDeadLetterTopic = "deadletter"
	EdgeTopicPrefix        = "edge."
	SequencerGroup         = "sequencer"
)

// Names are the topic and group names of one region's bus.
type Names struct {
	Ingress, Presence, SequencerGroup, DeadLetter string
	// LinkPrefix prefixes the outbound link topics ("<prefix><remote>")
	// and the link workers' consumer groups.
	LinkPrefix string
}

// NamesFor returns the names under a namespace: the defaults when ns is
// empty, else "<ns>.ingress", "<ns>.presence" and "<ns>.sequencer", so that
// several regions (or test runs) can share one Kafka cluster. Edge topics
// are already unique per edge id.
func NamesFor(ns string) Names {
	n := Names{Ingress: DefaultIngressTopic, Presence: DefaultPresenceTopic, SequencerGroup: SequencerGroup, DeadLetter: DefaultDeadLetterTopic, LinkPrefix: DefaultLinkPrefix}
	if ns != "" {
		n = Names{Ingress: ns + "." + n.Ingress, Presence: ns + "." + n.Presence, SequencerGroup: ns + "." + n.SequencerGroup, DeadLetter: ns + "." + n.DeadLetter,
			LinkPrefix: ns + "." + n.LinkPrefix}
	}
	return n
}

// EdgeTopic is the topic an edge consumes.
func EdgeTopic(edgeID string) string { return EdgeTopicPrefix + edgeID }

// Config configures a region. The zero value works apart from the store and bus.
type Config struct {
	Name              string // region name, default "local"
	IngressTopic      string // default "ingress"
	IngressPartitions int    // default 8
	PresenceTopic     string // default "presence"
	SequencerGroup    string // consumer group of the sequencer, default "sequencer"
	DeadLetterTopic   string // default "deadletter"
	// MaxAttempts and DeadLetterAfter: a record that fails this many times
	// in a row, over at least this long, while the store answers goes to
	// DeadLetterTopic (defaults 5 and 30 s: a brief hiccup of the store or
	// the bus never dead-letters anything).
	MaxAttempts     int
	DeadLetterAfter time.Duration
	// NoGroupCommit turns group commit off: every entry is then its own
	// synced write, as without a core.Batcher store. By default a store
	// that is a core.Batcher gets one write batch, and one sync, per
	// consumed batch of ingress records; acks and deliveries leave only
	// after it committed.
	NoGroupCommit bool
	// NoPipeline turns pipelining off: a partition's next batch is then
	// handled only after this one's outputs are produced. By default, on a
	// bus that is a core.PipelinedConsumer, the next batch's steps and
	// commit overlap this one's produce (see handleBatchPipelined).
	NoPipeline bool
	// StateCacheBytes bounds the sequencer's cached conversation state
	// (members, cursors), by estimated size (default 64 MiB).
	StateCacheBytes int
	// Epoch is the owner epoch of every conversation when Placement is
	// nil (one region), default 1.
	Epoch uint64
	// Placement, when set, makes the region one of a mesh: conversations
	// are sequenced only in their home region at the directory's epoch,
	// and records for others are forwarded over links (placement.go,
	// link.go). nil: a single region that homes everything.
	Placement Placement
	// Lease, when set, gates the sequencer: it sequences only while the
	// region holds its lease from the directory (lease.go). Its owner runs
	// it (Lease.Run), from the moment the region is announced in the
	// directory: the failure detector judges the region from then on.
	// nil: no lease (a single region, or a mesh without failover).
	Lease *Lease
	// LinkPrefix prefixes the outbound link topics, default "link.".
	LinkPrefix string
	Logger     *slog.Logger
	Now        func() time.Time
	// Notifier receives push notifications for offline devices; nil: none.
	Notifier core.Notifier
	// NotifyQueue bounds pending push notifications (default 4096); when full
	// a notification is dropped and counted (sync repairs what push misses).
	NotifyQueue int
	// ReceiptScanLimit bounds how many messages a cursor move scans to find
	// the senders to notify (default 1000).
	ReceiptScanLimit int
	// MaxConcurrentReads bounds the reads (API.Query) the process serves
	// at once (default DefaultMaxConcurrentReads); see reads.go.
	MaxConcurrentReads int
	// ReadWait is how long a read waits for a free slot before it is
	// answered UNAVAILABLE with retry_after_ms (default DefaultReadWait).
	ReadWait time.Duration
	// PrekeyLowWater: when a bundle fetch leaves a device with fewer
	// one-time prekeys than this, the device is told to upload more
	// (default 20; see prekeys.go for how often).
	PrekeyLowWater int
	// PrekeyFetch limits how fast bundle fetches take one-time prekeys
	// (see PrekeyFetchLimits in prekeys.go).
	PrekeyFetch PrekeyFetchLimits
	// Retention is the message retention policy (retention.go); the zero
	// value is the default policy. It runs when the store implements
	// core.Retainer (both stores do).
	Retention RetentionConfig
	// TopicRetention is the retention of the topics the region creates
	// (topics.go); the zero value is the default.
	TopicRetention TopicRetention
}

func (c *Config) fill() {
	if c.Name == "" {
		c.Name = "local"
	}
	if c.IngressTopic == "" {
		c.IngressTopic = DefaultIngressTopic
	}
	if c.IngressPartitions <= 0 {
		c.IngressPartitions = 8
	}
	if c.PresenceTopic == "" {
		c.PresenceTopic = DefaultPresenceTopic
	}
	if c.SequencerGroup == "" {
		c.SequencerGroup = SequencerGroup
	}
	if c.Epoch == 0 {
		c.Epoch = 1
	}
	if c.LinkPrefix == "" {
		c.LinkPrefix = DefaultLinkPrefix
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = DefaultDeadLetterTopic
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.DeadLetterAfter <= 0 {
		c.DeadLetterAfter = 30 * time.Second
	}
	if c.StateCacheBytes <= 0 {
		c.StateCacheBytes = 64 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.NotifyQueue <= 0 {
		c.NotifyQueue = 4096
	}
	if c.ReceiptScanLimit <= 0 {
		c.ReceiptScanLimit = 1000
	}
	if c.MaxConcurrentReads <= 0 {
		c.MaxConcurrentReads = DefaultMaxConcurrentReads
	}
	if c.ReadWait <= 0 {
		c.ReadWait = DefaultReadWait
	}
	if c.PrekeyLowWater <= 0 {
		c.PrekeyLowWater = 20
	}
	c.PrekeyFetch.fill()
	c.TopicRetention.fill()
}

// Region runs a region's services on a store and a bus.
type Region struct {
	cfg   Config
	store core.Store
	bus   core.Bus
	log   *slog.Logger

	ulidMu  sync.Mutex
	entropy *ulid.MonotonicEntropy

	members *memberCache // readers' cache, keyed by head; the sequencer keeps it in step
	devices *deviceCache
	states  *stateCache // the sequencer's conversation state, per partition worker
	pipe    pipeTails   // per ingress partition, the newest pipelined batch (sequencer.go)
	emitted emittedSet  // user entries whose deliveries were produced (emitted.go)

	attempts    attempts
	deadMu      sync.Mutex
	deadReasons map[string]uint64
	expiredSeen map[string]bool // ingress partitions@offsets reported expired (integrity.go)
	consuming   atomic.Bool
	lastErr     atomic.Pointer[error]
	// presence caches presence permissions and privacy settings (presence.go).
	presence *presenceCache
	bundles  *bundleLimiter
	// routeLocks serialize SessionOpened per user (striped).
	routeLocks [64]sync.Mutex

	linkTopics linkSet    // outbound link topics created (link.go)
	retention  *Retention // nil: the store keeps everything

	notifyCh chan core.PushNotification
	reads    chan struct{} // read slots (Config.MaxConcurrentReads)
	stats    counters
	hists    hists // metrics.go

	mu       sync.Mutex
	started  bool
	stopped  bool
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	shutOnce sync.Once
}

// Stats counts what the region did; read it with Region.Stats.
type Stats struct {
	Appended      uint64 // entries sequenced
	Duplicates    uint64 // appends that hit an idempotency key
	Rejected      uint64 // requests answered with an error
	Malformed     uint64 // ingress records that did not decode (dropped)
	EdgeRecords   uint64 // bus records produced for edges and links (a bundle counts once)
	Undeliverable uint64 // records dropped because their topic does not exist
	Notified      uint64 // push notifications handed to the notifier
	NotifyDropped uint64 // push notifications dropped: queue full
	NotifyFailed  uint64 // push notifications the notifier failed
	ReceiptsSent  uint64 // receipt records produced (one per edge per receipt frame)
	// ReceiptsCoalesced counts receipts merged into another receipt's
	// frame: n-1 per Receipts frame of n, plus those superseded by a
	// later receipt of the same reader in the same batch.
	ReceiptsCoalesced uint64
	// OutOfOrder counts sends refused because the predecessor they named
	// (after_client_msg_id) was not stored yet.
	OutOfOrder      uint64
	TypingFannedOut uint64 // typing records produced
	DeadLettered    uint64 // ingress records sent to the dead-letter topic
	Panics          uint64 // records whose handling panicked (then retried / dead-lettered)
	StateLoads      uint64 // conversation states loaded from the store (cache misses)
	ReceiptScans    uint64 // cursor moves that had to read entries to find senders
	Restarts        uint64 // times the sequencer's consumer stopped and was restarted
	ReadsRefused    uint64 // reads answered UNAVAILABLE: no free read slot in time
	Forwarded       uint64 // ingress records forwarded to another region (the conversation's home)
	HopsExceeded    uint64 // records refused after MaxHops forwards
	ForwardRefused  uint64 // records not forwarded because their home is silent (Lease.Silent); the sender retries
	Fenced          uint64 // appends the store fenced (a newer owner epoch): re-resolved and forwarded or retried
	Claims          uint64 // conversations homed here through the directory
	MovedIn         uint64 // conversations moved here (a directory epoch > 1 naming this region)
	MovedAway       uint64 // cached conversations that moved to another region
	// Group commit (Config.NoGroupCommit off and a core.Batcher store):
	Commits          uint64 // write batches committed with at least one entry
	CommittedEntries uint64 // entries they stored (÷ Commits = entries per sync)
	CommitNanos      uint64 // time spent in those commits
	BatchFallbacks   uint64 // batches redone without a write batch after a write broke it
	// IngressExpired counts ingress records the broker's retention deleted
	// before the sequencer read them (ErrBusExpired).
	IngressExpired uint64
}

type counters struct {
	appended, duplicates, rejected, malformed, edgeRecords, undeliverable atomic.Uint64
	notified, notifyDropped, notifyFailed, receipts, typing               atomic.Uint64
	deadLettered, panics, stateLoads, receiptScans, restarts              atomic.Uint64
	readsRefused, forwarded, hopsExceeded, fenced, claims, forwardRefused atomic.Uint64
	movedIn, movedAway                                                    atomic.Uint64
	commits, committedEntries, commitNanos, batchFallbacks                atomic.Uint64
	ingressExpired, receiptsCoalesced, outOfOrder                         atomic.Uint64
}

// New builds a region. Call Start to run the sequencer.
func New(cfg Config, store core.Store, bus core.Bus) (*Region, error) {
	if store == nil || bus == nil {
		return nil, errors.New("region: store and bus are required")
	}
	cfg.fill()
	if len(cfg.Name) > core.MaxRegionNameLen {
		return nil, fmt.Errorf("region: name %q longer than %d bytes", cfg.Name, core.MaxRegionNameLen)
	}
	r := &Region{
		cfg:      cfg,
		store:    store,
		bus:      bus,
		log:      cfg.Logger.With("component", "region", "region", cfg.Name),
		entropy:  ulid.Monotonic(rand.Reader, 0),
		members:  newMemberCache(),
		states:   newStateCache(cfg.StateCacheBytes),
		attempts: attempts{m: map[partKey]stuck{}, dead: map[partKey][]int64{}},

		deadReasons: map[string]uint64{},
		devices:     newDeviceCache(cfg.Now, 10*time.Second),
		presence:    newPresenceCache(cfg.Now),
		notifyCh:    make(chan core.PushNotification, cfg.NotifyQueue),
		reads:       make(chan struct{}, cfg.MaxConcurrentReads),
		bundles:     newBundleLimiter(cfg.PrekeyFetch),
		hists:       newHists(cfg.Name),
	}
	if _, ok := store.(core.Retainer); ok && !cfg.Retention.Disabled {
		w, err := NewRetention(store, cfg.Retention, r.log.With("component", "retention"))
		if err != nil {
			return nil, err
		}
		r.retention = w
	} else if !cfg.Retention.Disabled {
		r.log.Warn("retention off: the store cannot delete entries", "store", fmt.Sprintf("%T", store))
	}
	return r, nil
}

// Retention returns the region's retention worker (its Stats), or nil
// when retention is off.
func (r *Region) Retention() *Retention { return r.retention }

// API returns the read/session side of the region, which edges call.
func (r *Region) API() *API { return &API{r: r} }

// Start creates the topics and runs the sequencer and notifier until
// Shutdown. It returns once the sequencer holds its partitions.
func (r *Region) Start(ctx context.Context) error {
	r.mu.Lock()
	if r.started || r.stopped {
		r.mu.Unlock()
		return errors.New("region: already started or shut down")
	}
	r.started = true
	r.mu.Unlock()

	if err := r.checkData(ctx); err != nil { // integrity.go
		return err
	}
	if err := r.ensureTopic(ctx, r.bus, r.cfg.IngressTopic, r.cfg.IngressPartitions, r.cfg.TopicRetention.Ingress); err != nil {
		return fmt.Errorf("region: ensure %s: %w", r.cfg.IngressTopic, err)
	}
	if err := r.ensureTopic(ctx, r.bus, r.cfg.PresenceTopic, 1, r.cfg.TopicRetention.Live); err != nil {
		return fmt.Errorf("region: ensure %s: %w", r.cfg.PresenceTopic, err)
	}
	if err := r.ensureTopic(ctx, r.bus, r.cfg.DeadLetterTopic, 1, r.cfg.TopicRetention.DeadLetter); err != nil {
		return fmt.Errorf("region: ensure %s: %w", r.cfg.DeadLetterTopic, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	r.cancel = cancel
	stopped := r.stopped
	r.mu.Unlock()
	if stopped { // Shutdown ran while Start was checking and creating topics
		cancel()
	}
	ready := make(chan struct{})
	var once sync.Once
	errc := make(chan error, 1)
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		r.runSequencer(runCtx, func() { once.Do(func() { close(ready) }) }, errc)
	}()
	go func() {
		defer r.wg.Done()
		r.runNotifier(runCtx)
	}()
	if oi, ok := r.bus.(core.OffsetInspector); ok {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.watchIngress(runCtx, oi)
		}()
	}
	if r.retention != nil {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.retention.Run(runCtx, r.cfg.Now)
		}()
	}
	if w, ok := r.cfg.Placement.(HomeWatcher); ok {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.watchHomes(runCtx, w)
		}()
	}
	select {
	case <-ready:
		return nil
	case err := <-errc:
		cancel()
		return fmt.Errorf("region: sequencer: %w", err)
	case <-ctx.Done():
		cancel()
		return ctx.Err()
	}
}

// runSequencer runs the sequencer's consumer until ctx ends. A consumer
// that stops for any other reason is restarted after a backoff, counted
// (Stats.Restarts) and logged at error; while it is down Health reports
// it. The first failure before the consumer ever became ready goes to
// errc (Start fails).
func (r *Region) runSequencer(ctx context.Context, onReady func(), errc chan<- error) {
	var started atomic.Bool
	for attempt := 0; ; attempt++ {
		spec := core.ConsumeSpec{
			Topic: r.cfg.IngressTopic,
			Group: r.cfg.SequencerGroup,
			OnReady: func() {
				r.consuming.Store(true)
				started.Store(true)
				onReady()
			},
		}
		var err error
		if pc, ok := r.bus.(core.PipelinedConsumer); ok && !r.cfg.NoPipeline {
			err = pc.ConsumePipelined(ctx, spec, MaxBatch, r.handleBatchPipelined)
		} else if bc, ok := r.bus.(core.BatchConsumer); ok {
			err = bc.ConsumeBatch(ctx, spec, MaxBatch, r.handleBatch)
		} else {
			err = r.bus.Consume(ctx, spec, r.handleIngress)
		}
		r.consuming.Store(false)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("consumer returned without error")
		}
		r.lastErr.Store(&err)
		if !started.Load() {
			select {
			case errc <- err:
			default:
			}
			return
		}
		r.stats.restarts.Add(1)
		wait := min(time.Duration(1<<min(attempt, 5))*100*time.Millisecond, 5*time.Second)
		r.log.Error("sequencer consumer stopped; restarting", "err", err, "restarts", r.stats.restarts.Load(), "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Health reports whether the sequencer is consuming its ingress topic
// and, with a Lease, holds its lease: nil when it is, else why not.
func (r *Region) Health() error {
	if r.consuming.Load() {
		if l := r.cfg.Lease; l != nil {
			return l.Health()
		}
		return nil
	}
	if p := r.lastErr.Load(); p != nil {
		return fmt.Errorf("region: sequencer not consuming: %w", *p)
	}
	return errors.New("region: sequencer not consuming")
}

// Shutdown stops the sequencer and notifier and waits for them. Idempotent.
func (r *Region) Shutdown(ctx context.Context) error {
	r.shutOnce.Do(func() {
		r.mu.Lock()
		r.stopped = true
		cancel := r.cancel
		r.mu.Unlock()
		if cancel != nil {
			cancel()
		}
	})
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns a snapshot of the counters.
func (r *Region) Stats() Stats {
	c := &r.stats
	return Stats{
		Appended: c.appended.Load(), Duplicates: c.duplicates.Load(), Rejected: c.rejected.Load(),
		Malformed: c.malformed.Load(), EdgeRecords: c.edgeRecords.Load(), Undeliverable: c.undeliverable.Load(), Notified: c.notified.Load(),
		NotifyDropped: c.notifyDropped.Load(), NotifyFailed: c.notifyFailed.Load(),
		ReceiptsSent: c.receipts.Load(), TypingFannedOut: c.typing.Load(),
		DeadLettered: c.deadLettered.Load(), Panics: c.panics.Load(), StateLoads: c.stateLoads.Load(),
		ReceiptScans: c.receiptScans.Load(), Restarts: c.restarts.Load(),
		ReadsRefused: c.readsRefused.Load(), Forwarded: c.forwarded.Load(), HopsExceeded: c.hopsExceeded.Load(), ForwardRefused: c.forwardRefused.Load(),
		Fenced: c.fenced.Load(), Claims: c.claims.Load(), MovedIn: c.movedIn.Load(), MovedAway: c.movedAway.Load(),
		Commits: c.commits.Load(), CommittedEntries: c.committedEntries.Load(), CommitNanos: c.commitNanos.Load(),
		BatchFallbacks:    c.batchFallbacks.Load(),
		IngressExpired:    c.ingressExpired.Load(),
		ReceiptsCoalesced: c.receiptsCoalesced.Load(), OutOfOrder: c.outOfOrder.Load(),
	}
}

func (r *Region) newMsgID(now time.Time) string {
	r.ulidMu.Lock()
	defer r.ulidMu.Unlock()
	return ulid.MustNew(ulid.Timestamp(now), r.entropy).String()
}

func (r *Region) nowMs() int64 { return r.cfg.Now().UnixMilli() }
