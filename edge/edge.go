package edge

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/webtransport-go"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// Paths served by an edge.
const (
	WSPath = "/v1/ws"
	WTPath = "/v1/wt"
	// ProtocolVersion is the ClientHello/ServerHello protocol version.
	ProtocolVersion = 1
	// CloseCodeBase is added to an ErrorCode to form a WebSocket close status.
	CloseCodeBase = 4000
	// MaxPresenceSubscriptions bounds one session's presence subscription set.
	MaxPresenceSubscriptions = core.MaxPresenceUsers
)

// Errors returned by New, Start and Shutdown.
var (
	ErrConfig  = errors.New("edge: bad config")
	ErrStarted = errors.New("edge: already started")
	ErrClosed  = errors.New("edge: shut down")
)

// Backend is what an edge needs from its region, synchronously. The region
// implements it (region.API); every method is called concurrently from
// many sessions.
type Backend interface {
	// Authenticate maps a handshake-proven Noise static key to its device;
	// core.ErrNotFound means unregistered.
	Authenticate(ctx context.Context, static []byte) (core.DeviceKey, error)
	// Register registers the device whose static key is static.
	Register(ctx context.Context, static []byte, req *pb.RegisterRequest) (*pb.RegisterResponse, error)
	// SessionOpened records the route; it must finish before the session
	// serves requests, so the client's first sync and later pushes overlap.
	SessionOpened(ctx context.Context, r core.Route) error
	// SessionClosed removes the route if it still names session.
	SessionClosed(ctx context.Context, dev core.DeviceKey, session uint64) error
	// EdgeStarted clears stale routes of this edge id (a previous process).
	EdgeStarted(ctx context.Context, edgeID string) error
	// Query answers reads, the end-to-end key-material calls and settings:
	// sync, history, list_conversations, lookup_user, presence_subscribe
	// (snapshot: the edge subscribes the session to exactly the users it
	// returns), upload_prekeys, fetch_bundle, publish_device_list,
	// fetch_device_list, set_privacy.
	Query(ctx context.Context, dev core.DeviceKey, f *pb.ClientFrame) (*pb.Response, error)
}

// Config configures an Edge. The zero value works except for ID (required);
// every other field has a default named next to it.
type Config struct {
	ID, Region string
	// Static is the edge's Noise key pair (zero: generated at New).
	Static noiseconn.Keypair
	// WSAddr is the TCP listen address of the WebSocket transport, e.g.
	// "127.0.0.1:0"; "" disables it.
	WSAddr string
	// WSTLS serves WebSocket over TLS (wss://) with TLSConfig. Off by
	// default: the Noise layer authenticates and encrypts either way.
	WSTLS bool
	// WTAddr is the UDP listen address of the WebTransport transport; ""
	// disables it.
	WTAddr string
	// TLSConfig is used by WebTransport (and WebSocket with WSTLS). nil: a
	// self-signed ECDSA P-256 certificate valid for 13 days, usable with the
	// browser's serverCertificateHashes (see CertHash).
	TLSConfig *tls.Config
	// OriginPatterns lists the host patterns (path.Match syntax) of
	// browser origins allowed to connect cross-origin. Requests without an
	// Origin header (native clients) are always allowed.
	OriginPatterns []string
	// MaxFrameBytes is the largest ClientFrame accepted, advertised as
	// ServerHello.max_frame_bytes (default and maximum
	// core.MaxClientFrameBytes, which leaves room for the framing the
	// region adds: whatever is accepted can be delivered).
	MaxFrameBytes int
	// MessagesPerSecond and Burst form each session's token bucket
	// (default 50/s, burst 100). With one session per device (see REPLACED
	// in the package doc) this is the per-device limit.
	MessagesPerSecond float64
	Burst             int
	// ReadsPerSecond and ReadBurst form a second bucket for reads (sync,
	// history, conversation list, user lookup, device-list and bundle
	// fetches), so that starting sessions with every device of a 500-member
	// group (about a thousand fetches) does not eat the message budget or
	// wait on it (default 200/s, burst 2000). Frames are charged by cost
	// (frameCost). How many one-time prekeys fetches may take is limited
	// by the region (region.PrekeyFetchLimits).
	ReadsPerSecond float64
	ReadBurst      int
	// MaxConnsPerIP bounds the sessions of one client IP (default 64); one
	// more is refused with TOO_MANY_CONNECTIONS after the upgrade.
	MaxConnsPerIP int
	// MaxConns and MaxAcceptPerIP bound the open transport connections
	// (TCP connections of the WebSocket listener, QUIC connections of the
	// WebTransport one) in total and per client IP, counted from accept,
	// before a byte is read; a connection over either is closed at once.
	// Defaults: 10,000 (keep it well below the process's file descriptor
	// limit) and 2×MaxConnsPerIP (so that a client at its session limit
	// still gets the typed refusal).
	MaxConns, MaxAcceptPerIP int
	// Admission: registration limits (per IP, proof of work, operator
	// tokens), per-IP budgets shared by all sessions of an IP, and the
	// process-wide ingress limit (see AdmissionConfig, admission.go).
	Admission AdmissionConfig
	// Locate, if set, is served at LocatePath (GET /v1/locate) on the
	// WebSocket listener, beside WSPath: normally a region/geo Locator's
	// Handler. nil: that path is 404, as any other. Locate requests pass
	// the listener's connection limits and timeouts and are charged to a
	// per-client budget (AdmissionConfig.LocatePerSecond, LocateBurst);
	// over it they are answered 429 with Retry-After and Locate is not
	// called. Nothing is served there when WSAddr is "".
	Locate http.Handler
	// LocateClientAddr, if set, names the client a locate request is
	// charged to: pass the locator's ClientAddr (geo.Locator.ClientAddr),
	// which believes X-Forwarded-For only from its trusted proxies, so
	// that clients behind a trusted load balancer get a budget each. nil
	// (or an invalid result): the TCP peer.
	LocateClientAddr func(*http.Request) netip.Addr
	// IdleTimeout closes a session that sent nothing for this long (default
	// 2 min; clients ping). HandshakeTimeout bounds everything before a
	// session exists (default 10 s): the HTTP request that upgrades to a
	// WebSocket (read header and read timeout), an idle keep-alive HTTP
	// connection (idle timeout), the QUIC handshake, and the Noise
	// handshake and the authentication that follows.
	IdleTimeout, HandshakeTimeout time.Duration
	// WriteTimeout bounds one write to a client and one produce to the bus
	// (default 10 s). BackendTimeout bounds one Backend call made for a
	// request (default 10 s).
	WriteTimeout, BackendTimeout time.Duration
	// SendQueue and SendQueueBytes bound each session's outgoing queue:
	// frames queued or being written to the client (defaults 1024 frames
	// and 8 MiB; at least core.MaxFramePlaintext, so that any frame
	// fits). A push beyond either closes the session with
	// Disconnect{UNAVAILABLE, "slow consumer"}. The queue takes memory
	// only while it holds frames.
	SendQueue      int
	SendQueueBytes int
	// IngressTopic (default "ingress") and PresenceTopic (default "presence").
	IngressTopic, PresenceTopic string
	// Ready, if set, says whether the edge's region can sequence what the
	// edge produces: nil when it can, else why not (region.API.Ready, or
	// region.RemoteAPI.Ready across processes). nil Ready: always. The
	// edge calls it every ReadyInterval (default 250 ms), each call bounded
	// by ReadyTimeout (default 1 s; a call that times out counts as not
	// ready). When every call for NotReadyGrace (default 1 s, so that a
	// blip does not churn sessions) has said not ready, the edge stops
	// serving: new connections are refused before the Noise handshake with
	// close code UNAVAILABLE, and every session is ended with
	// Disconnect{UNAVAILABLE, NotServingDetail, reconnect=true}, so clients
	// move down their edge list to another region. The first call that
	// succeeds serves again. Counted in Stats (NotServing, NotReadyStops,
	// NotReadyRefused, NotReadyClosed); each transition is logged once.
	Ready                                      func(ctx context.Context) error
	NotReadyGrace, ReadyInterval, ReadyTimeout time.Duration
	// Logger (default: discard) and Now (default time.Now).
	Logger *slog.Logger
	Now    func() time.Time
}

func (c *Config) defaults() error {
	if c.ID == "" {
		return fmt.Errorf("%w: ID is required", ErrConfig)
	}
	if c.MaxFrameBytes <= 0 || c.MaxFrameBytes > core.MaxClientFrameBytes {
		c.MaxFrameBytes = core.MaxClientFrameBytes
	}
	if c.MessagesPerSecond <= 0 {
		c.MessagesPerSecond = 50
	}
	if c.ReadsPerSecond <= 0 {
		c.ReadsPerSecond = 200
	}
	if c.ReadBurst <= 0 {
		c.ReadBurst = 2000
	}
	if c.Burst <= 0 {
		c.Burst = 100
	}
	if c.MaxConnsPerIP <= 0 {
		c.MaxConnsPerIP = 64
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 10000
	}
	if c.MaxAcceptPerIP <= 0 {
		c.MaxAcceptPerIP = 2 * c.MaxConnsPerIP
	}
	if err := c.Admission.defaults(); err != nil {
		return err
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 2 * time.Minute
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.BackendTimeout <= 0 {
		c.BackendTimeout = 10 * time.Second
	}
	if c.SendQueue <= 0 {
		c.SendQueue = 1024
	}
	if c.SendQueueBytes <= 0 {
		c.SendQueueBytes = 8 << 20
	}
	if c.SendQueueBytes < core.MaxFramePlaintext {
		c.SendQueueBytes = core.MaxFramePlaintext // one frame of any size fits
	}
	if c.IngressTopic == "" {
		c.IngressTopic = "ingress"
	}
	if c.PresenceTopic == "" {
		c.PresenceTopic = "presence"
	}
	if c.NotReadyGrace <= 0 {
		c.NotReadyGrace = time.Second
	}
	if c.ReadyInterval <= 0 {
		c.ReadyInterval = 250 * time.Millisecond
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Stats are cumulative counters (Sessions is a gauge).
type Stats struct {
	Connections        uint64 // transport connections accepted
	OpenConns          int64  // transport connections open now (gauge)
	RejectedAtAccept   uint64 // closed at accept: over MaxConns or MaxAcceptPerIP
	AcceptErrors       uint64 // failed Accept calls, retried after a backoff
	ListenerFailures   uint64 // listeners that stopped while the edge was running (see Failed)
	RejectedPerIP      uint64 // sessions refused: too many from one IP
	HandshakeFailures  uint64
	Sessions           int64 // currently established
	FramesIn           uint64
	FramesOut          uint64
	WritesOut          uint64 // batches of frames written to clients (one flush each)
	Produced           uint64 // ingress records produced
	ProduceErrors      uint64
	RateLimited        uint64
	TypingDropped      uint64 // typing frames dropped silently over budget
	Malformed          uint64
	TooLarge           uint64 // client frames above MaxFrameBytes or the Noise limit
	TooLargeToSend     uint64 // server frames above core.MaxFramePlaintext, not sent (see push)
	WriteErrors        uint64 // sessions ended because a write to the client failed
	DroppedSlowClient  uint64 // sessions closed because their queue was full ("slow consumer")
	IdleTimeouts       uint64
	Replaced           uint64 // sessions closed because the device connected again
	EdgeRecordsHandled uint64
	// EdgeBundles counts the bundles among the edge-topic records
	// consumed (each of their records counts in EdgeRecordsHandled).
	EdgeBundles     uint64
	PresenceHandled uint64
	LocateRequests  uint64 // GET /v1/locate requests received (Config.Locate set)
	LocateLimited   uint64 // locate requests answered 429 (per-client budget)
	NotServing      bool   // the edge refuses and closes sessions now: its region cannot sequence (Config.Ready)
	NotReadyStops   uint64 // times the edge stopped serving (region not ready for NotReadyGrace)
	NotReadyRefused uint64 // connections refused because the edge was not serving
	NotReadyClosed  uint64 // sessions ended because the edge stopped serving
}

type counters struct {
	connections, rejectedPerIP, handshakeFailures                                       atomic.Uint64
	sessions                                                                            atomic.Int64
	framesIn, framesOut, writesOut, produced, produceErrors, rateLimited, typingDropped atomic.Uint64
	malformed, tooLarge, slowClient, idle, replaced, edgeRecords, edgeBundles, presence atomic.Uint64
	tooLargeToSend, writeErrors                                                         atomic.Uint64
	rejectedAtAccept, acceptErrors, listenerFailures                                    atomic.Uint64
	locateRequests, locateLimited                                                       atomic.Uint64
	notReadyStops, notReadyRefused, notReadyClosed                                      atomic.Uint64
}

// Edge terminates client connections. Create it with New, then Start, then
// Shutdown. Its methods are safe for concurrent use.
type Edge struct {
	cfg   Config
	be    Backend
	bus   core.Bus
	log   *slog.Logger
	hello []byte // serialized ServerHello
	adm   *admission
	tls   *tls.Config
	cert  []byte // sha256 of the leaf certificate

	ctx    context.Context // lives from Start to Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup // consumers, servers, sessions
	// drainPool hands a session with frames to send to an idle drain
	// goroutine (outqueue.go). drainers counts those goroutines; Shutdown
	// waits for them once every session has finished (no drain starts
	// after that).
	drainPool drainPool
	drainers  sync.WaitGroup

	mu        sync.Mutex
	started   bool
	closing   bool
	live      map[*session]struct{}            // every session past the handshake
	sessions  map[uint64]*session              // authenticated sessions by id
	byDevice  map[core.DeviceKey]*session      // the one session of each device
	devLocks  map[core.DeviceKey]*devLock      // see lockDevice
	nextGen   uint64                           // last session.gen given out
	subs      map[string]map[*session]struct{} // presence subscriptions by user
	perIP     map[string]int
	wsURL     string
	wtURL     string
	httpSrv   *http.Server
	wtSrv     *webtransport.Server
	quicLn    *quic.EarlyListener
	udpConn   net.PacketConn
	conns     *connLimiter // open transport connections (MaxConns, MaxAcceptPerIP)
	failed    chan error   // see Failed
	shutOnce  sync.Once
	shutDone  chan struct{}
	shutError error
	// notServing (guarded by mu) is set while the region cannot sequence
	// (ready.go); notServingSince is when that stretch began.
	notServing      bool
	notServingSince time.Time

	n      counters
	stages *stages // latency histograms (metrics.go)
}

// New checks cfg and prepares an edge; nothing listens until Start.
func New(cfg Config, be Backend, bus core.Bus) (*Edge, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if be == nil || bus == nil {
		return nil, fmt.Errorf("%w: backend and bus are required", ErrConfig)
	}
	if len(cfg.Static.Private) == 0 {
		k, err := noiseconn.GenerateKeypair(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
		cfg.Static = k
	} else if len(cfg.Static.Private) != noiseconn.KeyLen || len(cfg.Static.Public) != noiseconn.KeyLen {
		return nil, fmt.Errorf("%w: static key must be 32-byte X25519", ErrConfig)
	}
	hello, err := marshal(&pb.ServerHello{
		ProtocolVersion:      ProtocolVersion,
		EdgeId:               cfg.ID,
		Region:               cfg.Region,
		MaxFrameBytes:        uint32(cfg.MaxFrameBytes),
		MaxMessagesPerSecond: uint32(cfg.MessagesPerSecond),
		MaxEnvelopeBytes:     core.MaxEnvelopeBytes,
		RegisterPowBits:      cfg.Admission.RegisterPowBits,
	})
	if err != nil {
		return nil, fmt.Errorf("edge: server hello: %w", err)
	}
	e := &Edge{
		cfg: cfg, be: be, bus: bus, log: cfg.Logger.With("edge", cfg.ID), hello: hello,
		adm:      newAdmission(cfg.Admission),
		live:     map[*session]struct{}{},
		sessions: map[uint64]*session{},
		byDevice: map[core.DeviceKey]*session{},
		devLocks: map[core.DeviceKey]*devLock{},
		subs:     map[string]map[*session]struct{}{},
		perIP:    map[string]int{},
		shutDone: make(chan struct{}),
		conns:    newConnLimiter(cfg.MaxConns, cfg.MaxAcceptPerIP),
		failed:   make(chan error, 2),
		stages:   newStages(cfg.ID),
	}
	e.tls = cfg.TLSConfig
	if e.tls == nil {
		e.tls, err = selfSignedTLS(cfg.Now())
		if err != nil {
			return nil, err
		}
	}
	if len(e.tls.Certificates) > 0 && len(e.tls.Certificates[0].Certificate) > 0 {
		h := sha256.Sum256(e.tls.Certificates[0].Certificate[0])
		e.cert = h[:]
	}
	return e, nil
}

// PublicKey is the edge's Noise static public key (clients may pin it).
func (e *Edge) PublicKey() []byte { return append([]byte(nil), e.cfg.Static.Public...) }

// CertHash is the SHA-256 of the TLS leaf certificate (for the browser's
// WebTransport serverCertificateHashes), nil if there is none.
func (e *Edge) CertHash() []byte { return append([]byte(nil), e.cert...) }

// WSURL is the WebSocket URL ("" before Start or when disabled).
func (e *Edge) WSURL() string { e.mu.Lock(); defer e.mu.Unlock(); return e.wsURL }

// WTURL is the WebTransport URL ("" before Start or when disabled).
func (e *Edge) WTURL() string { e.mu.Lock(); defer e.mu.Unlock(); return e.wtURL }

// Stats returns a snapshot of the counters.
func (e *Edge) Stats() Stats {
	n := &e.n
	return Stats{
		Connections: n.connections.Load(), RejectedPerIP: n.rejectedPerIP.Load(),
		HandshakeFailures: n.handshakeFailures.Load(), Sessions: n.sessions.Load(),
		FramesIn: n.framesIn.Load(), FramesOut: n.framesOut.Load(), WritesOut: n.writesOut.Load(), Produced: n.produced.Load(),
		ProduceErrors: n.produceErrors.Load(), RateLimited: n.rateLimited.Load(),
		TypingDropped: n.typingDropped.Load(), Malformed: n.malformed.Load(), TooLarge: n.tooLarge.Load(),
		DroppedSlowClient: n.slowClient.Load(), IdleTimeouts: n.idle.Load(), Replaced: n.replaced.Load(),
		EdgeRecordsHandled: n.edgeRecords.Load(), EdgeBundles: n.edgeBundles.Load(), PresenceHandled: n.presence.Load(),
		TooLargeToSend: n.tooLargeToSend.Load(), WriteErrors: n.writeErrors.Load(),
		OpenConns: int64(e.conns.open()), RejectedAtAccept: n.rejectedAtAccept.Load(),
		AcceptErrors: n.acceptErrors.Load(), ListenerFailures: n.listenerFailures.Load(),
		LocateRequests: n.locateRequests.Load(), LocateLimited: n.locateLimited.Load(),
		NotServing: !e.serving(), NotReadyStops: n.notReadyStops.Load(),
		NotReadyRefused: n.notReadyRefused.Load(), NotReadyClosed: n.notReadyClosed.Load(),
	}
}

// Failed delivers the error of a listener that stopped while the edge was
// running (the edge then no longer accepts connections on it). Such a
// stop is also logged at error and counted (Stats.ListenerFailures). The
// process should treat it as fatal: shut down and exit non-zero, or
// restart the edge. Accept errors alone never stop a listener.
func (e *Edge) Failed() <-chan error { return e.failed }

// serveUntilShutdown runs serve, a listener's accept loop, and reports it
// loudly if it returns before Shutdown.
func (e *Edge) serveUntilShutdown(name string, serve func() error) {
	err := serve()
	e.mu.Lock()
	closing := e.closing
	e.mu.Unlock()
	if closing {
		return
	}
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		err = errors.New("stopped without an error")
	}
	err = fmt.Errorf("edge: %s listener stopped: %w", name, err)
	e.n.listenerFailures.Add(1)
	e.log.Error("listener stopped; the edge accepts no more connections on it", "listener", name, "err", err)
	select {
	case e.failed <- err:
	default:
	}
}

// EdgeTopic is the bus topic that carries an edge's EdgeRecords.
func EdgeTopic(id string) string { return "edge." + id }

// Start creates and subscribes to the edge topic and the presence topic
// (live tail, no consumer group), tells the backend the edge (re)started,
// and then listens. ctx bounds start-up only; the edge runs until Shutdown.
func (e *Edge) Start(ctx context.Context) error {
	e.mu.Lock()
	if e.started || e.closing {
		e.mu.Unlock()
		return ErrStarted
	}
	e.started = true
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.mu.Unlock()

	if err := e.start(ctx); err != nil {
		_ = e.Shutdown(context.Background())
		return err
	}
	return nil
}

func (e *Edge) start(ctx context.Context) error {
	// The edge reads its topic live: a delivery missed is repaired by
	// sync, so the topic keeps records ten minutes (core.LiveTopicRetention).
	ensure := func() error { return e.bus.EnsureTopic(ctx, EdgeTopic(e.cfg.ID), 1) }
	if tc, ok := e.bus.(core.TopicConfigurer); ok {
		ensure = func() error { return tc.EnsureTopicRetention(ctx, EdgeTopic(e.cfg.ID), 1, core.LiveTopicRetention) }
	}
	if err := ensure(); err != nil {
		return fmt.Errorf("edge: ensure topic: %w", err)
	}
	ready := make(chan string, 2)
	failed := make(chan error, 2)
	consume := func(topic string, h core.Handler, onRestart func()) {
		e.wg.Go(func() { e.runConsumer(topic, h, ready, failed, onRestart) })
	}
	consume(EdgeTopic(e.cfg.ID), e.handleEdgeRecord, e.pushFeedLost)
	consume(e.cfg.PresenceTopic, e.handlePresence, nil)
	for range 2 {
		select {
		case <-ready:
		case err := <-failed:
			return err
		case <-ctx.Done():
			return fmt.Errorf("edge: start: %w", ctx.Err())
		}
	}
	if err := e.be.EdgeStarted(ctx, e.cfg.ID); err != nil {
		return fmt.Errorf("edge: edge started: %w", err)
	}
	e.wg.Go(e.sweepIdle)
	e.drainPool.open()
	e.wg.Go(e.retireDrainers)
	if e.cfg.Ready != nil {
		// Serving until the region has been not ready for the grace.
		e.wg.Go(e.watchReady)
	}
	if e.cfg.WSAddr != "" {
		if err := e.listenWS(); err != nil {
			return err
		}
	}
	if e.cfg.WTAddr != "" {
		if err := e.listenWT(); err != nil {
			return err
		}
	}
	e.log.Info("edge started", "ws", e.WSURL(), "wt", e.WTURL())
	return nil
}

// consumerBackoff is the pause before a failed tail consumer is restarted.
const consumerBackoff = time.Second

// runConsumer tails topic until the edge stops. Before the first OnReady a
// failure is reported on failed (Start fails); afterwards the consumer is
// restarted after a pause, and onRestart (if set) runs once it is positioned
// again, because records produced in between were missed.
func (e *Edge) runConsumer(topic string, h core.Handler, ready chan<- string, failed chan<- error, onRestart func()) {
	var positioned atomic.Bool // set at the first OnReady of any attempt
	for {
		var once sync.Once
		err := e.bus.Consume(e.ctx, core.ConsumeSpec{Topic: topic, OnReady: func() {
			once.Do(func() {
				if !positioned.Swap(true) {
					ready <- topic
				} else if onRestart != nil {
					onRestart()
				}
			})
		}}, h)
		if e.ctx.Err() != nil {
			return
		}
		if !positioned.Load() {
			failed <- fmt.Errorf("edge: consume %s: %w", topic, err)
			return
		}
		e.log.Error("consumer stopped; restarting", "topic", topic, "err", err)
		t := time.NewTimer(consumerBackoff)
		select {
		case <-e.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// sweepIdle ends, every IdleTimeout/4 (at least 10 ms), the sessions that
// have received nothing for IdleTimeout: one goroutine and one ticker for
// the edge instead of a timer per session. It also frees the in-flight
// slots of writes whose answer is overdue (ingress.go), ticking at least
// every IngressAnswerTimeout/4 for them.
func (e *Edge) sweepIdle() {
	tick := time.NewTicker(max(min(e.cfg.IdleTimeout, e.cfg.Admission.IngressAnswerTimeout)/4, 10*time.Millisecond))
	defer tick.Stop()
	var idle []*session
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
		}
		now := e.cfg.Now()
		idle = idle[:0]
		e.mu.Lock()
		for s := range e.live {
			if now.Sub(time.Unix(0, s.lastActive.Load())) >= e.cfg.IdleTimeout && s.live() {
				idle = append(idle, s)
			}
			s.expireInflight(now) // answers lost (ingress.go)
		}
		e.mu.Unlock()
		for _, s := range idle {
			if s.live() {
				e.n.idle.Add(1)
				s.terminate(pb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT, "idle timeout", true)
			}
		}
		clear(idle)
	}
}

// pushFeedLost ends every session with Disconnect{UNAVAILABLE, reconnect}
// after the edge-topic consumer had to be restarted: pushes produced while
// it was down are lost, and a reconnecting client syncs them.
func (e *Edge) pushFeedLost() {
	e.mu.Lock()
	var all []*session
	for s := range e.live {
		all = append(all, s)
	}
	e.mu.Unlock()
	for _, s := range all {
		s.terminate(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "edge lost its push feed; reconnect and sync", true)
	}
}

// Shutdown stops accepting, sends every session Disconnect{SHUTTING_DOWN,
// reconnect}, closes them (reporting SessionClosed for each), stops the
// consumers and waits for every goroutine. It is idempotent; if ctx ends
// first, remaining connections are closed abruptly and ctx's error is
// returned once everything has stopped.
func (e *Edge) Shutdown(ctx context.Context) error {
	e.shutOnce.Do(func() {
		defer close(e.shutDone)
		e.mu.Lock()
		e.closing = true
		httpSrv, wtSrv, quicLn, udp := e.httpSrv, e.wtSrv, e.quicLn, e.udpConn
		var all []*session
		for s := range e.live {
			all = append(all, s)
		}
		cancel := e.cancel
		e.mu.Unlock()
		if httpSrv != nil {
			_ = httpSrv.Close() // listeners; hijacked WebSockets stay up
		}
		if quicLn != nil {
			_ = quicLn.Close() // accepts no more; open connections stay up
		}
		for _, s := range all {
			s.terminate(pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "edge shutting down", true)
		}
		sessionsDone := make(chan struct{})
		go func() { // waits on the sessions only; ends when they do
			for _, s := range all {
				<-s.finished
			}
			close(sessionsDone)
		}()
		select {
		case <-sessionsDone:
		case <-ctx.Done():
			e.shutError = fmt.Errorf("edge: shutdown: %w", ctx.Err())
		}
		if wtSrv != nil {
			_ = wtSrv.Close()
		}
		if udp != nil {
			_ = udp.Close()
		}
		if cancel != nil {
			cancel() // consumers, sessions still running
		}
		e.wg.Wait()
		<-sessionsDone
		e.drainers.Wait() // idle ones saw the cancel; no session is left to start one
	})
	<-e.shutDone
	return e.shutError
}

// goTracked runs f on a goroutine tracked by e.wg unless the edge is
// closing; it reports whether f was started.
func (e *Edge) goTracked(f func()) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closing {
		return false
	}
	e.wg.Go(f)
	return true
}

// admit counts a new connection from ip; false (and counted as rejected)
// when the IP is at its limit. Every admitted connection is released with
// releaseIP.
func (e *Edge) admit(ip string) bool {
	ip = ipKey(ip) // an IPv6 /64 counts as one client
	e.n.connections.Add(1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.perIP[ip] >= e.cfg.MaxConnsPerIP {
		e.n.rejectedPerIP.Add(1)
		return false
	}
	e.perIP[ip]++
	return true
}

func (e *Edge) releaseIP(ip string) {
	ip = ipKey(ip)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.perIP[ip]--; e.perIP[ip] <= 0 {
		delete(e.perIP, ip)
	}
}

func newSessionID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}
