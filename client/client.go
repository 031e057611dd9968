package client

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

var keyOf = core.KeyOf

// Config configures a Client. Only StateDir is required (and Edges or
// LocateURL to connect); every other zero value picks the documented
// default.
type Config struct {
	// StateDir holds the device identity, the outbox and the local
	// message store. Created with mode 0700 when missing.
	StateDir string
	// Edges are edge URLs (ws://host:port, https://host:port for
	// WebTransport). The client uses them in order and moves to the next
	// one after a failure. With LocateURL they are the last resort (see
	// LocateURL).
	Edges []string
	// LocateURL, if set, is a locator (an edge's GET /v1/locate; https, or
	// http on loopback, see Locate). The client locates first, connects to
	// the first (nearest) edge of the answer and fails over down the list,
	// each attempt bounded by DialTimeout; it locates again when every
	// edge of the list failed in a row, or when the answer's TTL has
	// expired at reconnect time. A session that stayed up 30 s makes the
	// next reconnect start from the top of the list again. Edges, if also
	// set, follow the located edges and are used alone while the locator
	// cannot be reached. Each located edge is authenticated against the
	// Noise key of the answer unless ServerKey is set.
	LocateURL string
	// HTTPClient is used for LocateURL (TLS settings, proxies). nil: a
	// plain http.Client with the default transport.
	HTTPClient *http.Client
	// CertHash pins the SHA-256 of the edges' TLS certificate (dev edges).
	// A located edge's cert_hash, when the answer has one, replaces it.
	CertHash []byte
	// ServerKey pins the edges' Noise static public key (optional). When
	// set it is pinned for located edges too, instead of the answer's key.
	ServerKey []byte
	// Logger receives operational logs; never message bodies or keys.
	// Default: discard.
	Logger *slog.Logger
	// Sealer seals and opens message bodies. Default (nil): the
	// end-to-end sealer (package client/e2ee) with its state in
	// StateDir/e2ee. InsecurePlaintextSealer{} selects no encryption at all
	// (control runs and tests only; see its doc).
	Sealer Sealer
	// PrekeyBatch is the number of one-time prekeys uploaded at once
	// (end-to-end sealer). Default 50.
	PrekeyBatch int
	// DeviceListTTL is how long the end-to-end sealer uses a fetched
	// device list before fetching it again before a send. Default 30 s;
	// negative: before every send.
	DeviceListTTL time.Duration
	// ClientName is sent in the ClientHello. Default "chatmesh-go/0.1".
	ClientName string
	// EventBuffer is the capacity of the Events channel. Default 256.
	EventBuffer int
	// NoticeQueue bounds queued non-message events (acks, receipts,
	// presence, typing, connection changes) waiting for a slow app; more
	// are dropped and counted in DroppedNotices. Default 4096.
	NoticeQueue int
	// SendWindow is the number of messages per conversation in flight at
	// once. Default 32. Order holds at any window: each send names its
	// predecessor (after_client_msg_id, PROTOCOL.md §7.1.2) and the region
	// refuses it OUT_OF_ORDER until that predecessor is stored, so a
	// message refused transiently (RATE_LIMITED, UNAVAILABLE) is never
	// overtaken by a later one; the refused ones are sent again in order.
	SendWindow int
	// MaxInflight bounds in-flight sends over all conversations. Default 256.
	MaxInflight int
	// MaxOutbox and MaxOutboxBytes bound the messages waiting in the
	// outbox for their SendAck, and their bytes (the sealed envelopes):
	// Send fails with ErrOutboxFull, storing nothing, when a message would
	// take the outbox past either. They bound the device's disk and memory
	// while it is offline. Defaults 10,000 and 64 MiB; negative: no limit.
	MaxOutbox      int
	MaxOutboxBytes int
	// AckTimeout is how long a send waits for its SendAck before it is
	// sent again (the server deduplicates). Default 5 s: a send forwarded
	// to a region that is then lost waits this long before its resend
	// reaches the conversation's new home, so it bounds how long a
	// conversation stalls after a failover.
	AckTimeout time.Duration
	// AckInterval is the mean pause between two DeliveryAcks of one
	// conversation under a stream (acks are cumulative: the next covers
	// everything stored meanwhile). The first ack after a quiet spell goes at once; under a
	// steady stream — a busy group — a conversation is acked about once
	// per interval instead of once per message, which bounds the acks and
	// receipts a group costs the server: in a 500-member group at 100
	// msg/s the delivery p99 was 139–193 ms with no pause, 159 ms with 100 ms
	// and 94 ms with 300 ms (README, *Measured*). Each pause is drawn
	// around the interval (AckPause: from half of it to one and a half
	// times it), so that members do not ack in step. Default 250 ms: a
	// delivered receipt is at most 375 ms late under a stream; negative: no
	// pause (one ack in flight per conversation, the next when it is
	// answered).
	AckInterval time.Duration
	// DialTimeout bounds dialing plus the Noise handshake. Default 10 s.
	DialTimeout time.Duration
	// KeepAlive is the ping interval on an otherwise quiet session (edges
	// close sessions idle for 2 min by default); a ping unanswered for
	// another KeepAlive ends the session (dead-connection detection).
	// Default 30 s.
	KeepAlive time.Duration
	// MinBackoff and MaxBackoff bound reconnect and resend backoff
	// (exponential with full jitter). Defaults 100 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
	// ManualCommit: when false (default) the app cursor ("seen") is
	// persisted as soon as message events were handed to the app, so after
	// a crash a few events may be handed again. When true it only moves
	// through Commit, for apps that need exactly-once across crashes.
	ManualCommit bool
	// Rand is the source for key generation. Default crypto/rand.
	Rand io.Reader
	// RegistrationToken, if set, is sent with Register and RegisterLinked:
	// an operator-issued token that lets the registration past the edge's
	// per-IP registration limit and proof of work. Empty: none (the client
	// solves the proof of work when the edge asks for one).
	RegistrationToken string
}

// DefaultAckInterval is Config.AckInterval's default.
const DefaultAckInterval = 250 * time.Millisecond

// AckPause returns how long a conversation's next ack waits after the
// last one under a steady stream, for an AckInterval of interval: drawn
// uniformly from [interval/2, 3·interval/2), so interval on average; 0
// for an interval ≤ 0 (no pause). The spread keeps the members of a busy
// group, who receive each message at the same moment, from acking in
// step: members acking together every 250 ms arrive at the
// conversation's region as one burst of up to one ingress record per
// member, which every message behind it waits for (README, *Measured*).
func AckPause(interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	return interval/2 + time.Duration(mrand.Int64N(int64(interval)))
}

// Config.MaxOutbox's and MaxOutboxBytes' defaults.
const (
	DefaultMaxOutbox      = 10000
	DefaultMaxOutboxBytes = 64 << 20
)

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ClientName == "" {
		c.ClientName = "chatmesh-go/0.1"
	}
	if c.EventBuffer <= 0 {
		c.EventBuffer = 256
	}
	if c.NoticeQueue <= 0 {
		c.NoticeQueue = 4096
	}
	if c.SendWindow <= 0 {
		c.SendWindow = 32
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 256
	}
	if c.MaxOutbox == 0 {
		c.MaxOutbox = DefaultMaxOutbox
	}
	if c.MaxOutboxBytes == 0 {
		c.MaxOutboxBytes = DefaultMaxOutboxBytes
	}
	if c.AckInterval == 0 {
		c.AckInterval = DefaultAckInterval
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 5 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
}

// backoff returns the delay before retry number attempt (1-based):
// exponential from min to max with full jitter.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// SendResult is the outcome of one Send.
type SendResult struct {
	Conv        string
	ClientMsgID string
	Seq         uint64 // set when acked
	MsgID       string
	SentAtMs    int64
	Err         error // set when the server rejected the message for good
}

// maxResults bounds the remembered send outcomes (for WaitSent).
const maxResults = 10000

// Client is one device's connection to chatmesh. Open it, Register once,
// then Start (or Run) it; Close stops it. All methods are safe for
// concurrent use.
type Client struct {
	cfg    Config
	log    *slog.Logger
	store  *Store
	outbox *Outbox
	sealer Sealer
	e2ee   *e2ee.Sealer // the default sealer; nil when Config.Sealer was set

	mu       sync.Mutex
	id       *Identity
	sess     *session
	up       chan struct{} // closed while a session is up; replaced on loss
	presence []string
	results  map[string]SendResult
	resultQ  []string
	waiters  map[string][]chan struct{}
	// finishing holds the outbox entries being settled (finishSend): an
	// entry is settled once, by its SendAck or by its stored entry coming
	// back in a push or sync, whichever is first.
	finishing map[string]bool
	running   bool
	linking   bool // a watchLinks goroutine runs

	recvMu sync.Mutex
	recv   map[string]*recvState

	evMu         sync.Mutex
	notices      []Event
	dropped      uint64
	emitted      map[string]uint64
	dirty        map[string]struct{}
	events       chan Event
	dispatchWake chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	runErr error // guarded by mu; set when the started Run ends

	now func() time.Time // clock of the connection loop's edge list and session age (tests replace it before Start)

	closeOnce sync.Once
	closeErr  error
	lock      *stateLock // StateDir/lock, held until Close
}

// Open loads (or creates) the device state in cfg.StateDir and starts the
// event dispatcher. It does not connect: call Start or Run.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: StateDir is required", ErrBadArgument)
	}
	cfg.defaults()
	if err := mkdirPrivate(cfg.StateDir); err != nil {
		return nil, err
	}
	lock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	opened := false
	defer func() {
		if !opened {
			lock.release()
		}
	}()
	id, err := loadOrCreateIdentity(cfg.StateDir, cfg.Rand)
	if err != nil {
		return nil, err
	}
	store, err := OpenStore(filepath.Join(cfg.StateDir, "convs"))
	if err != nil {
		return nil, err
	}
	ob, err := OpenOutbox(filepath.Join(cfg.StateDir, "outbox"))
	if err != nil {
		return nil, err
	}
	ob.setLimits(max(cfg.MaxOutbox, 0), max(cfg.MaxOutboxBytes, 0))
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger, store: store, outbox: ob, sealer: cfg.Sealer,
		id: id, up: make(chan struct{}),
		results: map[string]SendResult{}, waiters: map[string][]chan struct{}{}, finishing: map[string]bool{},
		recv:    map[string]*recvState{},
		emitted: map[string]uint64{}, dirty: map[string]struct{}{},
		events: make(chan Event, cfg.EventBuffer), dispatchWake: make(chan struct{}, 1),
		now: time.Now, lock: lock,
	}
	if c.sealer == nil {
		sl, err := e2ee.New(e2ee.Config{
			Dir: filepath.Join(cfg.StateDir, "e2ee"), Identity: id.E2EE(),
			Self:      c.Device,
			Directory: e2ee.RequestDirectory{R: c},
			Logger:    cfg.Logger, Rand: cfg.Rand,
			OneTimeBatch: cfg.PrekeyBatch, ListTTL: cfg.DeviceListTTL,
			OnIdentityChange: func(user string) { c.notify(IdentityChangedEvent{User: user}) },
		})
		if err != nil {
			_ = ob.Close()
			return nil, err
		}
		c.e2ee, c.sealer = sl, sl
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Go(func() { c.dispatch(c.ctx) })
	opened = true
	return c, nil
}

// Close stops the connection loop and the dispatcher and waits for every
// goroutine of the client. Pending outbox entries stay on disk and are sent
// after the next Open. Close is idempotent.
func (c *Client) Close() error {
	c.cancel()
	c.wg.Wait()
	c.closeOnce.Do(func() {
		c.closeErr = c.outbox.Close()
		if c.e2ee != nil {
			if err := c.e2ee.Close(); c.closeErr == nil {
				c.closeErr = err
			}
		}
		c.lock.release()
	})
	return c.closeErr
}

// Events returns the event stream. See the package doc for the slow-app policy.
func (c *Client) Events() <-chan Event { return c.events }

// Store gives read access to the local message store (history offline).
func (c *Client) Store() *Store { return c.store }

// Outbox gives read access to the pending messages.
func (c *Client) Outbox() *Outbox { return c.outbox }

// Device returns the device key and whether the device is registered.
func (c *Client) Device() (core.DeviceKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id.Key(), c.id.Registered()
}

// NoisePublicKey returns the device's Noise static public key.
func (c *Client) NoisePublicKey() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.id.NoisePublic)
}

// ---------------------------------------------------------------- registration

// Register registers this device as the first device of a new user. It
// opens its own short session (the edge authenticates an unregistered
// device for Register only) and stores the assigned device number.
func (c *Client) Register(ctx context.Context, userID string) (core.DeviceKey, error) {
	if !core.ValidUserID(userID) {
		return core.DeviceKey{}, fmt.Errorf("%w: user id %q", ErrBadArgument, userID)
	}
	return c.register(ctx, &pb.RegisterRequest{UserId: userID})
}

// LinkRequest returns the token a new, unregistered device shows an
// existing device of its user (see Link).
func (c *Client) LinkRequest() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	pub, _ := c.id.E2EE().Public().MarshalBinary() // cannot fail for a parsed identity
	return EncodeLinkRequest(LinkRequest{NoiseStatic: slices.Clone(c.id.NoisePublic), IdentityKey: c.id.IdentityPublic(), E2EEIdentity: pub})
}

// Link signs a link request token from a new device with this (registered)
// device's identity key and returns the link token for RegisterLinked.
func (c *Client) Link(requestToken string) (string, error) {
	req, err := DecodeLinkRequest(requestToken)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	l, err := signLink(c.id, req)
	c.mu.Unlock()
	if err != nil {
		return "", err
	}
	if c.e2ee != nil {
		// Remember the device for the device list, which this device
		// publishes once the new device has registered.
		pub, err := identity.ParsePublic(req.E2EEIdentity)
		if err != nil || !slices.Equal(pub.Sign, req.IdentityKey) {
			return "", fmt.Errorf("%w: link request without a valid end-to-end identity", ErrBadToken)
		}
		if err := c.e2ee.AddLinkedDevice(pub, req.NoiseStatic); err != nil {
			return "", err
		}
		c.watchLinks()
	}
	return EncodeLink(l), nil
}

// RegisterLinked registers this device as a further device of the user
// named in the link token made by Link on an existing device.
func (c *Client) RegisterLinked(ctx context.Context, linkToken string) (core.DeviceKey, error) {
	l, err := DecodeLink(linkToken)
	if err != nil {
		return core.DeviceKey{}, err
	}
	c.mu.Lock()
	mine := slices.Equal(l.NoiseStatic, c.id.NoisePublic) && slices.Equal(l.IdentityKey, c.id.IdentityPublic())
	c.mu.Unlock()
	if !mine {
		return core.DeviceKey{}, fmt.Errorf("%w: the link was made for another device", ErrBadToken)
	}
	return c.register(ctx, &pb.RegisterRequest{UserId: l.User, LinkedByDevice: l.LinkedBy, LinkSignature: l.Signature})
}

func (c *Client) register(ctx context.Context, req *pb.RegisterRequest) (core.DeviceKey, error) {
	c.mu.Lock()
	if c.id.Registered() {
		c.mu.Unlock()
		return core.DeviceKey{}, ErrAlreadyRegistered
	}
	req.IdentityKey = c.id.IdentityPublic()
	noiseStatic := slices.Clone(c.id.NoisePublic)
	req.IdentityProof = c.id.RegisterProof(req.GetUserId())
	c.mu.Unlock()
	req.RegistrationToken = c.cfg.RegistrationToken
	if len(c.cfg.Edges) == 0 && c.cfg.LocateURL == "" {
		return core.DeviceKey{}, ErrNoEdges
	}
	edges := c.newEdgeList()
	var lastErr error
	for attempt := 1; ; attempt++ {
		round, err := edges.all(ctx)
		if err != nil {
			lastErr = err
		}
		for _, edge := range round {
			r, err := c.registerAt(ctx, edge, noiseStatic, req)
			if err == nil {
				key := keyOf(r.GetRegister().GetDevice())
				if key.User == "" || key.Device == 0 {
					return core.DeviceKey{}, fmt.Errorf("client: register: server returned no device")
				}
				c.mu.Lock()
				c.id.User, c.id.Device = key.User, key.Device
				err = saveIdentity(c.cfg.StateDir, c.id)
				noise := slices.Clone(c.id.NoisePublic)
				c.mu.Unlock()
				if err != nil {
					return core.DeviceKey{}, err
				}
				if c.e2ee != nil {
					if req.GetLinkedByDevice() == 0 {
						if err := c.e2ee.InitFirstDevice(noise); err != nil {
							return core.DeviceKey{}, err
						}
					}
					c.setupAfterRegister(ctx, edge)
				}
				c.log.Info("client: registered", "device", key.String())
				return key, nil
			}
			lastErr = err
			var we *core.WireError
			if errors.As(err, &we) && !retryable(we.Code) {
				return core.DeviceKey{}, fmt.Errorf("client: register: %w", err)
			}
			edges.done(false)
		}
		if attempt >= 3 {
			return core.DeviceKey{}, fmt.Errorf("client: register: %w", lastErr)
		}
		if err := waitRetry(ctx, max(backoff(attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff), retryAfter(lastErr)), lastErr); err != nil {
			return core.DeviceKey{}, fmt.Errorf("client: register: %w", err)
		}
	}
}

// registerAt sends req to edge on a short session of its own. When the
// edge's ServerHello asks for a proof of work and no registration token is
// configured, it first solves it (the nonce depends on the device's Noise
// key and the user only, so it is kept for the next edge).
func (c *Client) registerAt(ctx context.Context, edge edgeTarget, noiseStatic []byte, req *pb.RegisterRequest) (*pb.Response, error) {
	nc, hello, err := c.handshake(ctx, edge)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if bits := hello.GetRegisterPowBits(); bits > 0 && req.GetRegistrationToken() == "" &&
		!core.CheckPow(bits, noiseStatic, req.GetUserId(), req.GetPowNonce()) {
		c.log.Info("client: solving the edge's registration proof of work", "bits", bits)
		if req.PowNonce, err = core.SolvePow(ctx, bits, noiseStatic, req.GetUserId()); err != nil {
			return nil, fmt.Errorf("client: register: %w", err)
		}
	}
	return (&connRequester{nc: nc}).Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Register{Register: req}})
}

// connRequester runs requests one at a time over a bare Noise session
// (registration, and the end-to-end setup right after it). Frames other
// than the awaited response are ignored.
type connRequester struct {
	nc   *noiseconn.Conn
	next uint64
}

// Request implements e2ee.Requester.
func (r *connRequester) Request(ctx context.Context, f *pb.ClientFrame) (*pb.Response, error) {
	r.next++
	f.ReqId = r.next
	b, err := proto.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("client: encode: %w", err)
	}
	if err := r.nc.Send(ctx, b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSessionLost, err)
	}
	for {
		b, err := r.nc.Recv(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSessionLost, err)
		}
		var sf pb.ServerFrame
		if err := proto.Unmarshal(b, &sf); err != nil {
			return nil, fmt.Errorf("%w: malformed server frame: %w", ErrSessionLost, err)
		}
		if d := sf.GetDisconnect(); d != nil {
			return nil, &DisconnectError{Code: d.GetCode(), Detail: d.GetDetail(), Reconnect: d.GetReconnect()}
		}
		if r := sf.GetResponse(); r != nil && r.GetReqId() == f.GetReqId() {
			if err := wireErr(r.GetError()); err != nil {
				return r, err
			}
			return r, nil
		}
	}
}

// setupAfterRegister opens a short session as the newly registered device
// and publishes its end-to-end keys (device list, prekeys), so others can
// write to it before it ever connects for good. A failure is logged and
// repeated on the next connect.
func (c *Client) setupAfterRegister(ctx context.Context, edge edgeTarget) {
	nc, _, err := c.handshake(ctx, edge)
	if err == nil {
		defer nc.Close()
		err = c.e2ee.Setup(ctx, e2ee.RequestDirectory{R: &connRequester{nc: nc}})
	}
	if err != nil {
		c.log.Warn("client: end-to-end setup after registration failed; retried on connect", "err", err)
	}
}

// handshake dials an edge and runs the Noise handshake, pinning the
// target's Noise key and certificate hash when it has them.
func (c *Client) handshake(ctx context.Context, edge edgeTarget) (*noiseconn.Conn, *pb.ServerHello, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	c.mu.Lock()
	hello := &pb.ClientHello{ProtocolVersion: 1, ClientName: c.cfg.ClientName}
	if c.id.Registered() {
		hello.Device = c.id.Key().Addr()
	}
	kp := c.id.noiseKeypair()
	c.mu.Unlock()
	payload, err := proto.Marshal(hello)
	if err != nil {
		return nil, nil, fmt.Errorf("client: encode hello: %w", err)
	}
	mc, err := Dial(ctx, edge.url, DialOptions{CertHash: edge.certHash})
	if err != nil {
		return nil, nil, err
	}
	nc, err := noiseconn.Client(ctx, mc, noiseconn.ClientConfig{Static: kp, Payload: payload, ServerStatic: edge.key})
	if err != nil {
		_ = mc.Close()
		return nil, nil, fmt.Errorf("client: %s: %w", edge.url, err)
	}
	sh := new(pb.ServerHello)
	if err := proto.Unmarshal(nc.PeerPayload(), sh); err != nil {
		_ = nc.Close()
		return nil, nil, fmt.Errorf("client: %s: malformed ServerHello: %w", edge.url, err)
	}
	return nc, sh, nil
}

// ---------------------------------------------------------------- connection loop

// Start runs Run in a goroutine owned by the client until Close. Its
// error, if it ends on its own (a fatal rejection), is reported by Err.
func (c *Client) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	if !c.id.Registered() {
		return ErrNotRegistered
	}
	c.running = true
	c.wg.Go(func() {
		err := c.run(c.ctx)
		c.mu.Lock()
		c.runErr = err
		c.running = false
		c.mu.Unlock()
	})
	return nil
}

// Err returns why a started connection loop ended (nil while running).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runErr
}

// Run connects, keeps the device connected (reconnecting with backoff,
// rotating through Config.Edges, or down the located edges with
// Config.LocateURL) and returns when ctx ends, the client is
// closed, or an edge rejects the device for good (UNAUTHENTICATED,
// REPLACED, FORBIDDEN). Run at most once at a time; Start is the managed form.
func (c *Client) Run(ctx context.Context) error {
	if _, ok := c.Device(); !ok {
		return ErrNotRegistered
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	return c.run(ctx)
}

// healthySession is how long a session must have lasted for its end not to
// count as a failure of its edge: the backoff starts over, and with a
// locator the next attempt starts from the top of the list.
const healthySession = 30 * time.Second

func (c *Client) run(ctx context.Context) error {
	if len(c.cfg.Edges) == 0 && c.cfg.LocateURL == "" {
		return ErrNoEdges
	}
	edges := c.newEdgeList()
	attempt := 0
	for {
		started := c.now()
		edge, err := edges.pick(ctx)
		if err == nil {
			err = c.runSession(ctx, edge)
		}
		if ctx.Err() != nil {
			if c.ctx.Err() != nil {
				return ErrClosed
			}
			return ctx.Err()
		}
		if fatal(err) {
			c.log.Error("client: rejected by edge; not reconnecting", "edge", edge.url, "err", err)
			return err
		}
		healthy := c.now().Sub(started) > healthySession
		if healthy {
			attempt = 0
		}
		if edge.url != "" {
			edges.done(healthy)
		}
		attempt++
		d := max(backoff(attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff), retryAfter(err))
		c.log.Info("client: session ended; reconnecting", "edge", edge.url, "err", err, "in", d)
		if sleepCtx(ctx, d) != nil {
			if c.ctx.Err() != nil {
				return ErrClosed
			}
			return ctx.Err()
		}
	}
}

// fatal reports whether a session error means "do not reconnect": the
// edge does not accept this device (UNAUTHENTICATED, FORBIDDEN) or another
// connection of the same device replaced this one (REPLACED). Everything
// else — including a Disconnect without the reconnect flag for other codes
// (frame too large, malformed, too many connections) — is retried with
// backoff, so a transient condition never stops the client for good.
func fatal(err error) bool {
	code := pb.ErrorCode_ERROR_CODE_OK
	var de *DisconnectError
	var we *core.WireError
	switch {
	case errors.As(err, &de):
		code = de.Code
	case errors.As(err, &we):
		code = we.Code
	}
	switch code {
	case pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, pb.ErrorCode_ERROR_CODE_REPLACED, pb.ErrorCode_ERROR_CODE_FORBIDDEN:
		return true
	}
	return false
}

// waitRetry sleeps d before a retry of a request that failed with last.
// When ctx would end first (the server asked for a longer wait than the
// caller has), it returns last at once instead of sleeping into the
// deadline, so the caller sees the server's answer (RATE_LIMITED with its
// retry_after_ms), not a timeout.
func waitRetry(ctx context.Context, d time.Duration, last error) error {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return last
	}
	return sleepCtx(ctx, d)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runSession runs one session to its end and returns why it ended.
func (c *Client) runSession(ctx context.Context, target edgeTarget) error {
	edge := target.url
	nc, hello, err := c.handshake(ctx, target)
	if err != nil {
		return err
	}
	s := newSession(ctx, c, nc, edge, hello)
	s.wg.Go(s.syncer)
	s.wg.Go(s.acker)
	s.wg.Go(func() { c.sender(s) })
	s.wg.Go(func() { c.keepalive(s) })
	s.wg.Go(func() { c.e2eeSetup(s) })
	c.mu.Lock()
	c.sess = s
	close(c.up)
	subs := slices.Clone(c.presence)
	c.mu.Unlock()
	c.log.Info("client: connected", "edge", edge, "edge_id", hello.GetEdgeId(), "region", hello.GetRegion())
	c.notify(ConnectedEvent{Edge: edge, Hello: hello})
	if len(subs) > 0 {
		s.wg.Go(func() {
			r, err := s.call(s.ctx, presenceFrame(subs))
			if err != nil {
				if s.ctx.Err() == nil {
					c.log.Warn("client: presence resubscribe failed", "err", err)
				}
				return
			}
			// The snapshot covers what changed while no session was up.
			for _, p := range r.GetPresence().GetUsers() {
				c.notify(PresenceEvent{User: p.GetUserId(), Online: p.GetOnline(), LastSeenMs: p.GetLastSeenMs()})
			}
		})
	}

	err = s.read()

	s.mu.Lock()
	s.dead = true
	s.mu.Unlock()
	s.cancel(err)
	_ = nc.Close()
	c.mu.Lock()
	c.sess = nil
	c.up = make(chan struct{})
	c.mu.Unlock()
	s.wg.Wait()
	c.outbox.resetInflight()
	c.notify(DisconnectedEvent{Edge: edge, Err: err})
	return err
}

// keepalive pings the edge every KeepAlive and ends the session when a
// ping goes unanswered for another KeepAlive.
func (c *Client) keepalive(s *session) {
	t := time.NewTicker(c.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx, c.cfg.KeepAlive)
		_, err := s.call(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{ClientTimeMs: time.Now().UnixMilli()}}})
		cancel()
		if err != nil && s.ctx.Err() == nil {
			s.cancel(fmt.Errorf("%w: keepalive: %w", ErrSessionLost, err))
			return
		}
	}
}

// current waits until a session is up and returns it.
func (c *Client) current(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		s, up := c.sess, c.up
		c.mu.Unlock()
		if s != nil && s.ctx.Err() == nil {
			return s, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.ctx.Done():
			return nil, ErrClosed
		}
		if s != nil {
			// The session we saw is dying; wait for its replacement.
			if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
}

// WaitConnected waits until a session is up, its first sync finished and
// its end-to-end setup (prekey upload, device list) was attempted.
func (c *Client) WaitConnected(ctx context.Context) error {
	for {
		s, err := c.current(ctx)
		if err != nil {
			return err
		}
		select {
		case <-s.synced:
			select {
			case <-s.keysReady:
				return nil
			case <-s.ctx.Done():
			case <-ctx.Done():
				return ctx.Err()
			}
		case <-s.ctx.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// request sends f on the current session and waits for its response. With
// retry, a lost session or a transient server error (UNAVAILABLE,
// RATE_LIMITED, ...) sends it again (same content) until ctx ends; use it
// only for idempotent requests.
func (c *Client) request(ctx context.Context, op string, f *pb.ClientFrame, retry bool) (*pb.Response, error) {
	for attempt := 1; ; attempt++ {
		s, err := c.current(ctx)
		if err != nil {
			return nil, fmt.Errorf("client: %s: %w", op, err)
		}
		r, err := s.call(ctx, f)
		if err == nil {
			return r, nil
		}
		if ctx.Err() != nil || !retry {
			return r, fmt.Errorf("client: %s: %w", op, err)
		}
		var we *core.WireError
		switch {
		case errors.Is(err, ErrSessionLost):
		case errors.As(err, &we) && retryable(we.Code):
			if err := waitRetry(ctx, max(backoff(attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff), retryAfter(err)), err); err != nil {
				return nil, fmt.Errorf("client: %s: %w", op, err)
			}
		default:
			return r, fmt.Errorf("client: %s: %w", op, err)
		}
	}
}

// ---------------------------------------------------------------- receive path

// ingest runs received entries (live pushes, sync and history pages)
// through the per-conversation receive state, stores what became
// contiguous, schedules acks and triggers a sync on a gap. It reports
// whether anything new was stored.
//
// fromSync marks a sync page. The server answers a sync with the entries
// after the device's cursor that its user may read, contiguously: when a
// conversation's first entry in the page lies beyond head+1, the seqs in
// between were written before the user joined (a member added later, an
// invitation, an accepted invitation, a re-admission). They are recorded
// as skipped (Store.Skip) and the conversation continues from there. Live
// pushes and history pages never skip: their gaps are filled by a sync.
func (c *Client) ingest(s *session, msgs []*pb.Message, fromSync bool) bool {
	byConv := map[string][]*pb.Message{}
	var order []string
	for _, m := range msgs {
		conv := m.GetConvId()
		if core.KindOf(conv) == pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED || m.GetSeq() == 0 {
			c.log.Warn("client: dropping malformed entry from server", "conv", conv, "seq", m.GetSeq())
			continue
		}
		if _, ok := byConv[conv]; !ok {
			order = append(order, conv)
		}
		byConv[conv] = append(byConv[conv], m)
	}
	stored, gap := false, false
	self, _ := c.Device()
	var own []*pb.Message // this device's user entries now stored
	c.recvMu.Lock()
	for _, conv := range order {
		rs := c.recv[conv]
		if rs == nil {
			rs = &recvState{head: c.store.Head(conv)}
			c.recv[conv] = rs
		}
		if fromSync {
			first := slices.MinFunc(byConv[conv], func(a, b *pb.Message) int { return cmp.Compare(a.GetSeq(), b.GetSeq()) }).GetSeq()
			if first > rs.head+1 {
				if err := c.store.Skip(conv, first-1); err != nil {
					c.log.Error("client: store join point", "conv", conv, "err", err)
					continue
				}
				rs.reset(first - 1)
			}
		}
		res := rs.offer(byConv[conv]...)
		if len(res.Ready) > 0 {
			if err := c.store.Append(conv, res.Ready); err != nil {
				c.log.Error("client: store entries", "conv", conv, "err", err)
				rs.reset(c.store.Head(conv))
				gap = true
				continue
			}
			stored = true
			c.markDirty(conv)
			for _, m := range res.Ready {
				if m.GetKind() == pb.MessageKind_MESSAGE_KIND_USER && core.KeyOf(m.GetSender()) == self {
					own = append(own, m)
				}
			}
		}
		if len(res.Ready) > 0 || res.Duplicates > 0 {
			s.markAck(conv)
		}
		gap = gap || res.Gap
	}
	c.recvMu.Unlock()
	for _, m := range own {
		// Stored, so sent: an outbox entry still waiting for its SendAck
		// (lost with a session, or a resend not answered yet) is settled
		// now, with what the SendAck would have said.
		if c.outbox.has(m.GetClientMsgId()) {
			c.finishSend(SendResult{Conv: m.GetConvId(), ClientMsgID: m.GetClientMsgId(), Seq: m.GetSeq(), MsgID: m.GetMsgId(), SentAtMs: m.GetSentAtMs()})
		}
	}
	if stored {
		c.kickDispatcher()
	}
	if gap {
		kick(s.syncKick)
	}
	return stored
}

// expire records the seqs the server's retention deleted before this
// device stored them (SyncResponse.expired, PROTOCOL.md §7.4) as skipped,
// as for a join point, so the conversation continues after them and the
// device acks past them.
func (c *Client) expire(s *session, expired []*pb.ConvCursor) {
	if len(expired) == 0 {
		return
	}
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	for _, e := range expired {
		conv, through := e.GetConvId(), e.GetAfterSeq()
		if core.KindOf(conv) == pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED || through <= c.store.Head(conv) {
			continue
		}
		c.log.Warn("client: entries expired on the server before this device stored them", "conv", conv, "through", through)
		if err := c.store.Skip(conv, through); err != nil {
			c.log.Error("client: store expiry", "conv", conv, "err", err)
			continue
		}
		if rs := c.recv[conv]; rs != nil {
			rs.reset(through)
		}
		s.markAck(conv)
	}
}

// maxSyncPages bounds one sync run.
const maxSyncPages = 100000

// syncAll pages through SyncRequest with every known cursor until the
// server says there is no more. A page may consist of duplicates only
// (live pushes got there first); it must still move some cursor.
func (c *Client) syncAll(s *session) error {
	var prev map[string]uint64
	for page := 0; page < maxSyncPages; page++ {
		cur := map[string]uint64{}
		var cursors []*pb.ConvCursor
		for _, cs := range c.store.Conversations() {
			cur[cs.Conv] = cs.Head
			cursors = append(cursors, &pb.ConvCursor{ConvId: cs.Conv, AfterSeq: cs.Head})
		}
		if prev != nil && maps.Equal(prev, cur) {
			return fmt.Errorf("client: sync: server says more but no cursor moved")
		}
		prev = cur
		r, err := s.call(s.ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Sync{Sync: &pb.SyncRequest{Cursors: cursors}}})
		if err != nil {
			return fmt.Errorf("client: sync: %w", err)
		}
		sr := r.GetSync()
		c.expire(s, sr.GetExpired())
		c.ingest(s, sr.GetMessages(), true)
		if !sr.GetMore() {
			return nil
		}
	}
	return fmt.Errorf("client: sync: more than %d pages", maxSyncPages)
}

// ---------------------------------------------------------------- send path

// sender puts outbox entries on the wire for one session. It writes them
// itself, in outbox order, and hands each to a goroutine that waits for
// its SendAck, so the wire order is the outbox order.
func (c *Client) sender(s *session) {
	if c.outbox.Len() > 0 {
		// Entries left from before this session may be stored already
		// (their acks lost with the session, or the device was away longer
		// than the server's resend window, after which a resend would be
		// stored twice): the session's first sync brings this device's own
		// stored entries back and settles those (ingest), and only the rest
		// are sent (PROTOCOL.md §7.1).
		select {
		case <-s.synced:
		case <-s.ctx.Done():
			return
		}
	}
	var inflight sync.WaitGroup
	defer inflight.Wait()
	sem := make(chan struct{}, c.cfg.MaxInflight)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		picks, wake := c.outbox.sendable(time.Now(), c.cfg.SendWindow, c.cfg.MaxInflight-len(sem))
		for _, req := range picks {
			f := &pb.ClientFrame{ReqId: 1 << 62, Body: &pb.ClientFrame_Send{Send: req}}
			if lim := s.hello.GetMaxFrameBytes(); lim > 0 && proto.Size(f) > int(lim) {
				// The edge would end the session over it, again and again.
				c.finishSend(SendResult{Conv: req.GetConvId(), ClientMsgID: req.GetClientMsgId(),
					Err: core.Errorf(pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, "message of %d bytes exceeds the edge's limit of %d", proto.Size(f), lim)})
				continue
			}
			sem <- struct{}{}
			ctx, cancel := context.WithTimeout(s.ctx, c.cfg.AckTimeout)
			p, err := s.begin(ctx, f)
			inflight.Go(func() {
				// Free the slot, then wake the loop: a wake-up before the
				// slot is free finds no room, and nothing would wake it again.
				defer func() { <-sem; c.outbox.signal() }()
				defer cancel()
				var r *pb.Response
				if err == nil {
					r, err = p.await(ctx)
				}
				c.sendDone(s, req, r, err)
			})
		}
		if !wake.IsZero() {
			timer.Reset(time.Until(wake))
		}
		select {
		case <-c.outbox.Changed():
		case <-timer.C:
		case <-s.ctx.Done():
			return
		}
	}
}

// sendDone decides what a send attempt's outcome means for the entry.
func (c *Client) sendDone(s *session, req *pb.SendRequest, r *pb.Response, err error) {
	id := req.GetClientMsgId()
	var we *core.WireError
	switch {
	case err == nil:
		ack := r.GetSend()
		c.outbox.acked(req.GetConvId(), c.cfg.SendWindow)
		c.finishSend(SendResult{Conv: req.GetConvId(), ClientMsgID: id, Seq: ack.GetSeq(), MsgID: ack.GetMsgId(), SentAtMs: ack.GetSentAtMs()})
	case s.ctx.Err() != nil || errors.Is(err, ErrSessionLost):
		c.outbox.release(id, time.Time{}) // sent again on the next session
	case errors.As(err, &we) && we.Code == pb.ErrorCode_ERROR_CODE_OUT_OF_ORDER:
		// Its predecessor was not stored when it arrived: it goes again
		// once the predecessor's answer is in (a predecessor refused
		// transiently holds back everything after it until its retry).
		c.outbox.releaseOutOfOrder(id)
	case errors.As(err, &we) && !retryable(we.Code):
		c.finishSend(SendResult{Conv: req.GetConvId(), ClientMsgID: id, Err: err})
	default: // transient server error or ack timeout
		c.outbox.congested(req.GetConvId())
		ra := retryAfter(err)
		d := max(backoff(c.outbox.attempts(id), c.cfg.MinBackoff, c.cfg.MaxBackoff), ra)
		if ra > 0 && core.Code(err) == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
			// The edge said when its budget lets this through: that, not
			// an exponential backoff grown by earlier refusals of a
			// pipelined burst (the window is one now, so nothing piles up).
			d = ra
		}
		c.log.Debug("client: send will be retried", "conv", req.GetConvId(), "client_msg_id", id, "err", err, "in", d)
		c.outbox.release(id, time.Now().Add(d))
	}
}

func (c *Client) finishSend(res SendResult) {
	// Record the result before removing the entry, so WaitSent always finds
	// the message in one of the two places.
	c.mu.Lock()
	if c.finishing[res.ClientMsgID] || !c.outbox.has(res.ClientMsgID) {
		// Settled already: its stored entry came back in a push or a sync
		// before this attempt's answer (or the other way round). The first
		// outcome stands; an error of a later attempt of a stored message
		// must not turn it into a failure.
		c.mu.Unlock()
		return
	}
	c.finishing[res.ClientMsgID] = true
	if _, ok := c.results[res.ClientMsgID]; !ok {
		c.resultQ = append(c.resultQ, res.ClientMsgID)
		if len(c.resultQ) > maxResults {
			delete(c.results, c.resultQ[0])
			c.resultQ = c.resultQ[1:]
		}
	}
	c.results[res.ClientMsgID] = res
	ws := c.waiters[res.ClientMsgID]
	delete(c.waiters, res.ClientMsgID)
	c.mu.Unlock()
	if _, err := c.outbox.Remove(res.ClientMsgID); err != nil {
		c.log.Error("client: outbox remove", "err", err)
	}
	c.mu.Lock()
	delete(c.finishing, res.ClientMsgID)
	c.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
	if res.Err != nil {
		c.notify(SendFailedEvent{Conv: res.Conv, ClientMsgID: res.ClientMsgID, Err: res.Err})
	} else {
		c.notify(SendAckedEvent{Conv: res.Conv, ClientMsgID: res.ClientMsgID, MsgID: res.MsgID, Seq: res.Seq, SentAtMs: res.SentAtMs})
	}
}

// Send seals body for conv, stores it durably in the outbox and returns its
// client message id. Delivery to the server happens in the background
// (retried until acked or rejected for good); see WaitSent, WaitIdle and the
// SendAcked/SendFailed events. Send needs no connection except when the
// end-to-end sealer encrypts to a device for the first time (it then waits
// for a session, bounded by ctx). It fails with ErrOutboxFull, storing
// nothing, when the outbox holds Config.MaxOutbox messages or
// MaxOutboxBytes bytes waiting for their acks.
func (c *Client) Send(ctx context.Context, conv string, body []byte) (string, error) {
	if core.KindOf(conv) == pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED {
		return "", fmt.Errorf("%w: conversation id %q", ErrBadArgument, conv)
	}
	id := ulid.Make().String()
	var envs []*pb.Envelope
	var err error
	if ms, ok := c.sealer.(MessageSealer); ok {
		envs, err = ms.SealMessages(ctx, conv, id, body)
	} else {
		var env *pb.Envelope
		env, err = c.sealer.Seal(ctx, conv, body)
		envs = []*pb.Envelope{env}
	}
	if err != nil {
		return "", fmt.Errorf("client: seal: %w", err)
	}
	if len(envs) == 0 {
		return "", fmt.Errorf("client: seal: no envelope")
	}
	// Key-distribution envelopes first, each under its own id; the
	// message itself last, under id.
	reqs := make([]*pb.SendRequest, len(envs))
	for i, env := range envs {
		rid := id
		if i < len(envs)-1 {
			rid = ulid.Make().String()
		}
		reqs[i] = &pb.SendRequest{ConvId: conv, ClientMsgId: rid, Envelope: env}
		// Frame overhead: req_id, oneof tag and lengths stay well below 64 bytes.
		if n := proto.Size(reqs[i]) + 64; n > noiseconn.MaxPlaintext {
			return "", fmt.Errorf("%w: message of %d bytes is too large", ErrBadArgument, n)
		}
	}
	// All or none: a key distribution without its message is no use.
	if err := c.outbox.Add(reqs...); err != nil {
		return "", err
	}
	return id, nil
}

// SendDirect sends body to the direct conversation with user.
func (c *Client) SendDirect(ctx context.Context, user string, body []byte) (string, error) {
	me, ok := c.Device()
	if !ok {
		return "", ErrNotRegistered
	}
	if !core.ValidUserID(user) {
		return "", fmt.Errorf("%w: user id %q", ErrBadArgument, user)
	}
	return c.Send(ctx, core.DirectConvID(me.User, user), body)
}

// WaitSent waits until the message is acked or rejected for good.
func (c *Client) WaitSent(ctx context.Context, clientMsgID string) (SendResult, error) {
	c.mu.Lock()
	if r, ok := c.results[clientMsgID]; ok {
		c.mu.Unlock()
		return r, r.Err
	}
	pending := c.outbox.has(clientMsgID)
	if !pending {
		c.mu.Unlock()
		return SendResult{}, fmt.Errorf("%w: %s", ErrUnknownMessage, clientMsgID)
	}
	w := make(chan struct{})
	c.waiters[clientMsgID] = append(c.waiters[clientMsgID], w)
	c.mu.Unlock()
	select {
	case <-w:
	case <-ctx.Done():
		return SendResult{}, ctx.Err()
	case <-c.ctx.Done():
		return SendResult{}, ErrClosed
	}
	c.mu.Lock()
	r := c.results[clientMsgID]
	c.mu.Unlock()
	return r, r.Err
}

// WaitIdle waits until the outbox is empty: every message sent so far was
// acked or failed.
func (c *Client) WaitIdle(ctx context.Context) error {
	select {
	case <-c.outbox.Empty():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}

// ---------------------------------------------------------------- other requests

// Commit durably marks conv as seen by the app up to seq (ManualCommit).
func (c *Client) Commit(conv string, seq uint64) error { return c.store.SetSeen(conv, seq) }

// MarkRead tells the server (and so the senders) that the user has read
// conv up to seq. It returns when the region confirmed the marker, retrying
// across reconnects until ctx ends.
func (c *Client) MarkRead(ctx context.Context, conv string, seq uint64) error {
	f := &pb.ClientFrame{Body: &pb.ClientFrame_Read{Read: &pb.ReadMarker{ConvId: conv, Seq: seq}}}
	_, err := c.request(ctx, "mark read", f, true)
	return err
}

// SetTyping tells conv's members that the user is (not) typing. Best
// effort: nothing is retried.
func (c *Client) SetTyping(ctx context.Context, conv string, typing bool) error {
	s, err := c.current(ctx)
	if err != nil {
		return fmt.Errorf("client: typing: %w", err)
	}
	return s.send(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Typing{Typing: &pb.TypingRequest{ConvId: conv, Typing: typing}}})
}

func presenceFrame(users []string) *pb.ClientFrame {
	return &pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: users}}}
}

// SubscribePresence replaces the presence subscription set (kept across
// reconnects: after each reconnect the users' state then arrives as
// PresenceEvents, covering changes while no session was up) and returns
// the current presence of those users that the
// server lets the user see: the user themselves and their conversation
// peers (users sharing a 1:1 or group conversation with them). Others are
// left out of the result, and no events about them arrive.
func (c *Client) SubscribePresence(ctx context.Context, users []string) ([]PresenceEvent, error) {
	c.mu.Lock()
	c.presence = slices.Clone(users)
	c.mu.Unlock()
	r, err := c.request(ctx, "presence subscribe", presenceFrame(users), true)
	if err != nil {
		return nil, err
	}
	var out []PresenceEvent
	for _, p := range r.GetPresence().GetUsers() {
		out = append(out, PresenceEvent{User: p.GetUserId(), Online: p.GetOnline(), LastSeenMs: p.GetLastSeenMs()})
	}
	return out, nil
}

// SetPrivacy replaces the user's privacy settings (shared by all the
// user's devices): with p.HideLastSeen, everyone else sees the user online
// or offline but with no last-seen time; p.AddPolicy says who may add the
// user to a group directly. Retried across reconnects until ctx ends (it
// is idempotent).
func (c *Client) SetPrivacy(ctx context.Context, p core.Privacy) error {
	f := &pb.ClientFrame{Body: &pb.ClientFrame_SetPrivacy{SetPrivacy: &pb.SetPrivacyRequest{
		HideLastSeen: p.HideLastSeen, AddPolicy: p.AddPolicy,
	}}}
	_, err := c.request(ctx, "set privacy", f, true)
	return err
}

// NewGroupID returns a fresh id for a group the user creates: a ULID
// bound to its creator (core.GroupID), so only they can create it.
func NewGroupID(creator string) string { return core.GroupID(creator, ulid.Make().String()) }

// CreateGroup creates a group with the given title and other members (the
// caller is added) and returns its info. The id is chosen here, so the
// request is safely retried.
func (c *Client) CreateGroup(ctx context.Context, title string, members []string) (*pb.ConversationInfo, error) {
	dev, ok := c.Device()
	if !ok {
		return nil, fmt.Errorf("%w: register before creating groups", ErrBadArgument)
	}
	return c.CreateGroupWithID(ctx, NewGroupID(dev.User), title, members)
}

// CreateGroupWithID is CreateGroup with a caller-chosen id (see NewGroupID).
func (c *Client) CreateGroupWithID(ctx context.Context, conv, title string, members []string) (*pb.ConversationInfo, error) {
	if !core.IsGroupID(conv) {
		return nil, fmt.Errorf("%w: group id %q", ErrBadArgument, conv)
	}
	f := &pb.ClientFrame{Body: &pb.ClientFrame_CreateGroup{CreateGroup: &pb.CreateGroupRequest{ConvId: conv, Title: title, Members: members}}}
	r, err := c.request(ctx, "create group", f, true)
	if err != nil {
		return nil, err
	}
	return r.GetConversation(), nil
}

// ModifyMembers sends one group change (ADD, REMOVE, LEAVE, PROMOTE,
// DEMOTE, SET_TITLE, ACCEPT or DECLINE) and returns the group's info after
// it. req.ClientMsgId is the change's idempotency key: when empty, a fresh
// one is chosen here, and every resend of this call (after a lost session
// or a transient error) carries the same key, so the region applies the
// change once and answers a resend as it answered the first. A caller that
// must survive its own restart mid-call sets the key itself and reuses it.
// Who may do what is in PROTOCOL.md ("Groups: roles and consent"); a
// refusal is a *core.WireError (FORBIDDEN, NOT_MEMBER, NOT_FOUND,
// GROUP_FULL, INVALID_ARGUMENT).
func (c *Client) ModifyMembers(ctx context.Context, req *pb.ModifyMembersRequest) (*pb.ConversationInfo, error) {
	if !core.IsGroupID(req.GetConvId()) {
		return nil, fmt.Errorf("%w: group id %q", ErrBadArgument, req.GetConvId())
	}
	for _, u := range req.GetUsers() {
		if !core.ValidUserID(u) {
			return nil, fmt.Errorf("%w: user id %q", ErrBadArgument, u)
		}
	}
	if len(req.GetTitle()) > core.MaxTitleLen {
		return nil, fmt.Errorf("%w: title longer than %d bytes", ErrBadArgument, core.MaxTitleLen)
	}
	req = proto.Clone(req).(*pb.ModifyMembersRequest)
	if req.ClientMsgId == "" {
		req.ClientMsgId = ulid.Make().String()
	}
	f := &pb.ClientFrame{Body: &pb.ClientFrame_ModifyMembers{ModifyMembers: req}}
	r, err := c.request(ctx, "modify members", f, true)
	if err != nil {
		return nil, err
	}
	return r.GetConversation(), nil
}

func (c *Client) modify(ctx context.Context, op pb.MembershipOp, conv string, users []string) (*pb.ConversationInfo, error) {
	return c.ModifyMembers(ctx, &pb.ModifyMembersRequest{ConvId: conv, Op: op, Users: users})
}

// AddMembers adds users to a group (admins only). A user whose add policy
// admits only contacts, and who shares no 1:1 conversation with the
// caller, is invited instead (ConversationInfo.invited).
func (c *Client) AddMembers(ctx context.Context, conv string, users ...string) (*pb.ConversationInfo, error) {
	return c.modify(ctx, pb.MembershipOp_MEMBERSHIP_OP_ADD, conv, users)
}

// RemoveMembers removes members from a group, or cancels their pending
// invitations (admins only).
func (c *Client) RemoveMembers(ctx context.Context, conv string, users ...string) (*pb.ConversationInfo, error) {
	return c.modify(ctx, pb.MembershipOp_MEMBERSHIP_OP_REMOVE, conv, users)
}

// Leave removes the caller from a group (any member). When the last admin
// leaves, the longest-standing member becomes admin.
func (c *Client) Leave(ctx context.Context, conv string) (*pb.ConversationInfo, error) {
	return c.modify(ctx, pb.MembershipOp_MEMBERSHIP_OP_LEAVE, conv, nil)
}

// Promote makes members admins (admins only).
func (c *Client) Promote(ctx context.Context, conv string, users ...string) (*pb.ConversationInfo, error) {
	return c.modify(ctx, pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, conv, users)
}

// Demote takes admin rights away (admins only; an admin may demote
// themself, but not the last admin).
func (c *Client) Demote(ctx context.Context, conv string, users ...string) (*pb.ConversationInfo, error) {
	return c.modify(ctx, pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, conv, users)
}

// SetTitle changes a group's title (admins only; at most core.MaxTitleLen
// bytes). The title is server-visible metadata, not end-to-end encrypted.
func (c *Client) SetTitle(ctx context.Context, conv, title string) (*pb.ConversationInfo, error) {
	return c.ModifyMembers(ctx, &pb.ModifyMembersRequest{ConvId: conv, Op: pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE, Title: title})
}

// AcceptInvite joins a group the caller was invited to; the caller reads
// the group from the ACCEPT entry on.
func (c *Client) AcceptInvite(ctx context.Context, conv string) (*pb.ConversationInfo, error) {
	return c.modify(ctx, pb.MembershipOp_MEMBERSHIP_OP_ACCEPT, conv, nil)
}

// DeclineInvite refuses an invitation to a group.
func (c *Client) DeclineInvite(ctx context.Context, conv string) (*pb.ConversationInfo, error) {
	return c.modify(ctx, pb.MembershipOp_MEMBERSHIP_OP_DECLINE, conv, nil)
}

// GroupAdmins returns the admins of a group from its info (the members at
// info.admin_indexes; indexes out of range are ignored).
func GroupAdmins(info *pb.ConversationInfo) []string {
	ms := info.GetMembers()
	var out []string
	for _, i := range info.GetAdminIndexes() {
		if int(i) < len(ms) {
			out = append(out, ms[i])
		}
	}
	return out
}

// History returns locally stored entries of conv with seq > after (limit <= 0: all).
func (c *Client) History(conv string, after uint64, limit int) ([]*pb.Message, error) {
	return c.store.Messages(conv, after, limit)
}

// FetchHistory asks the server for the newest entries of conv before
// beforeSeq (0: the newest), up to limit of them (limit <= 0: one page of
// the server's default size). The server bounds each page in bytes as
// well as in count (a page of large messages may hold only one), so
// FetchHistory pages further back with before_seq = the lowest seq
// returned until it has limit entries or reaches the start of what the
// device may read. The result is ascending. Returned entries also feed
// the local store when they continue it.
func (c *Client) FetchHistory(ctx context.Context, conv string, beforeSeq uint64, limit int) ([]*pb.Message, error) {
	var out []*pb.Message
	for page := 0; page < maxHistoryPages; page++ {
		want := 0
		if limit > 0 {
			want = limit - len(out)
		}
		f := &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{ConvId: conv, BeforeSeq: beforeSeq, Limit: uint32(min(want, core.MaxPageSize))}}}
		r, err := c.request(ctx, "history", f, true)
		if err != nil {
			return nil, err
		}
		msgs := r.GetHistory().GetMessages()
		c.mu.Lock()
		s := c.sess
		c.mu.Unlock()
		if s != nil {
			c.ingest(s, msgs, false)
		}
		if len(msgs) == 0 {
			break
		}
		lowest := msgs[0].GetSeq()
		if beforeSeq != 0 && lowest >= beforeSeq {
			return nil, fmt.Errorf("client: history of %s: page before %d starts at %d", conv, beforeSeq, lowest)
		}
		out = append(msgs, out...)
		if limit <= 0 || len(out) >= limit || lowest <= 1 {
			break
		}
		beforeSeq = lowest
	}
	return out, nil
}

// maxHistoryPages bounds one FetchHistory.
const maxHistoryPages = 10000

// maxListPages bounds one ListConversations.
const maxListPages = 10000

// Conversations lists the locally stored conversations.
func (c *Client) Conversations() []ConvSummary { return c.store.Conversations() }

// ListConversations asks the server for the user's conversations and
// pending group invitations (the user is then in ConversationInfo.invited), page
// by page (after_conv_id = the last id of the previous page while the
// server says more), in id order.
func (c *Client) ListConversations(ctx context.Context) ([]*pb.ConversationInfo, error) {
	var out []*pb.ConversationInfo
	after := ""
	for range maxListPages {
		f := &pb.ClientFrame{Body: &pb.ClientFrame_ListConversations{ListConversations: &pb.ListConversationsRequest{AfterConvId: after}}}
		r, err := c.request(ctx, "list conversations", f, true)
		if err != nil {
			return nil, err
		}
		page := r.GetConversations()
		out = append(out, page.GetConversations()...)
		if !page.GetMore() {
			return out, nil
		}
		if n := len(page.GetConversations()); n == 0 || page.GetConversations()[n-1].GetConvId() <= after {
			return nil, fmt.Errorf("client: list conversations: server says more but the page does not advance")
		}
		after = page.GetConversations()[len(page.GetConversations())-1].GetConvId()
	}
	return nil, fmt.Errorf("client: list conversations: more than %d pages", maxListPages)
}

// LookupUser returns a user's devices.
func (c *Client) LookupUser(ctx context.Context, user string) (*pb.LookupUserResponse, error) {
	f := &pb.ClientFrame{Body: &pb.ClientFrame_LookupUser{LookupUser: &pb.LookupUserRequest{UserId: user}}}
	r, err := c.request(ctx, "lookup user", f, true)
	if err != nil {
		return nil, err
	}
	return r.GetUser(), nil
}

// Ping measures the round trip to the edge.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	f := &pb.ClientFrame{Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{ClientTimeMs: start.UnixMilli()}}}
	if _, err := c.request(ctx, "ping", f, false); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
