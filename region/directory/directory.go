package directory

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Peer is one voter: its raft id, its raft TCP address and the address of
// its forwarding HTTP endpoint.
type Peer struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"` // host:port, concrete (not 0.0.0.0, not port 0)
	HTTPAddr string `json:"http_addr"` // host:port, concrete
}

// Config configures one voter. Zero durations take the defaults noted.
type Config struct {
	ID    string // this voter; must be one of Peers
	Dir   string // data dir: raft.db (bolt log + stable store) and snapshots/
	Peers []Peer // every voter, this one included; identical on every voter

	ApplyTimeout       time.Duration // per raft.Apply/Barrier; default 5s
	HeartbeatTimeout   time.Duration // default raft's (1s)
	ElectionTimeout    time.Duration // default raft's (1s)
	LeaderLeaseTimeout time.Duration // default raft's (500ms)
	CommitTimeout      time.Duration // default raft's (50ms)
	SnapshotThreshold  uint64        // default raft's (8192)
	SnapshotInterval   time.Duration // default raft's (120s)
	TrailingLogs       uint64        // log entries kept after a snapshot; default raft's (10240)
	WatchBuffer        int           // per watcher; default 256

	// Token is the shared secret of the HTTP endpoints (forwarding, admin,
	// reads): every request must carry "Authorization: Bearer <Token>", and
	// this voter sends it when it forwards to the leader, so every voter
	// needs the same Token. Empty means no authentication, which Open
	// accepts only when Peer.HTTPAddr is a loopback address (CheckListen).
	Token string

	// DetectFailures runs the failure detector on whichever voter leads:
	// a healthy region that has not heartbeaten for FailAfter is failed
	// (fail_region). Off by default: only once every region heartbeats
	// (Heartbeat) may it be turned on, or silent regions are failed.
	DetectFailures bool
	// FailAfter is the silence after which the detector fails a region;
	// default DefaultFailAfter (5s). A new leader also waits FailAfter
	// before judging anyone.
	FailAfter time.Duration
	// Lease is how long a region may sequence without a successful
	// heartbeat reply (the region side enforces it; HeartbeatReply
	// carries it); default DefaultLease (2s), or FailAfter/2 when that is
	// shorter. Must be below FailAfter.
	Lease time.Duration
	// DetectInterval is how often the detector judges; default
	// FailAfter/10.
	DetectInterval time.Duration
	// Now is the detector's clock; default time.Now.
	Now func() time.Time

	// Dial, if set, opens every connection this voter makes to another
	// voter: raft's (to Peer.RaftAddr) and the forwarding client's (to
	// Peer.HTTPAddr). The peer set stays the same on every voter (raft
	// replicates it); Dial only decides how this voter reaches an address
	// — the region simulator sends each path through its own fault proxy
	// (`chatmesh region --directory-via`). Default: a plain TCP dial.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	Logger *slog.Logger // default slog.Default()
}

// Directory is one voter of the directory plus the client API. Reads are
// served from the local applied copy; writes and Sync go through the leader.
type Directory struct {
	cfg     Config
	self    Peer
	log     *slog.Logger
	fsm     *FSM
	raft    *raft.Raft
	trans   *raft.NetworkTransport
	store   *raftboltdb.BoltStore
	httpLn  net.Listener
	httpSrv *http.Server
	client  *http.Client
	peers   map[raft.ServerID]Peer
	det     *detector // heartbeats and failure detection (failover.go)
	// detMu orders failure-detector steps and heartbeat answers (failover.go).
	detMu sync.Mutex

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}

	wmu      sync.Mutex
	watchers map[*watcher]struct{}

	connMu   sync.Mutex
	newConns map[net.Conn]struct{} // HTTP connections that have not sent a request yet
}

type watcher struct{ ch chan Change }

// Open starts (or restarts from cfg.Dir) one voter.
//
// Bootstrap: when cfg.Dir holds no raft state, the voter bootstraps the
// cluster with the full cfg.Peers as voters. Every voter does the same with
// the same configuration, which raft accepts as one bootstrap.
func Open(ctx context.Context, cfg Config) (*Directory, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = 5 * time.Second
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = 256
	}
	if cfg.FailAfter <= 0 {
		cfg.FailAfter = DefaultFailAfter
	}
	if cfg.Lease <= 0 {
		cfg.Lease = min(DefaultLease, cfg.FailAfter*2/5)
	}
	if cfg.Lease*5 > cfg.FailAfter*2 {
		return nil, fmt.Errorf("directory: lease %v must be at most 2/5 of fail-after %v (a region renews its lease only from a heartbeat sent within fail-after - 2 x lease of the previous reply)", cfg.Lease, cfg.FailAfter)
	}
	if cfg.DetectInterval <= 0 {
		cfg.DetectInterval = cfg.FailAfter / 10
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Directory{cfg: cfg, log: cfg.Logger.With("component", "directory", "node", cfg.ID), closed: make(chan struct{}),
		watchers: map[*watcher]struct{}{}, peers: map[raft.ServerID]Peer{}, det: newDetector(cfg.FailAfter)}
	found := false
	var servers []raft.Server
	for _, p := range cfg.Peers {
		if p.ID == "" || p.RaftAddr == "" || p.HTTPAddr == "" {
			return nil, fmt.Errorf("directory: peer %+v: id, raft and http addresses are required", p)
		}
		d.peers[raft.ServerID(p.ID)] = p
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
		if p.ID == cfg.ID {
			d.self, found = p, true
		}
	}
	if !found {
		return nil, fmt.Errorf("directory: node %q is not in the peer set", cfg.ID)
	}
	if err := CheckListen(d.self.HTTPAddr, cfg.Token); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("directory: data dir: %w", err)
	}
	d.fsm = NewFSM(d.broadcast)

	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: &slogWriter{log: d.log}, DisableTime: true})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hl
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	}
	if cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	if cfg.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	}
	if cfg.CommitTimeout > 0 {
		rc.CommitTimeout = cfg.CommitTimeout
	}
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}

	ok := false
	defer func() {
		if !ok {
			d.release()
		}
	}()
	var err error
	d.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("directory: open log store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl)
	if err != nil {
		return nil, fmt.Errorf("directory: open snapshot store: %w", err)
	}
	stream, err := listenStream(ctx, d.self.RaftAddr, cfg.Dial)
	if err != nil {
		return nil, err
	}
	d.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: stream, MaxPool: 3, Timeout: 2 * time.Second, Logger: hl})
	existing, err := raft.HasExistingState(d.store, d.store, snaps)
	if err != nil {
		return nil, fmt.Errorf("directory: inspect state: %w", err)
	}
	if !existing {
		if err := raft.BootstrapCluster(rc, d.store, d.store, snaps, d.trans, raft.Configuration{Servers: servers}); err != nil {
			return nil, fmt.Errorf("directory: bootstrap: %w", err)
		}
	}
	d.httpLn, err = (&net.ListenConfig{}).Listen(ctx, "tcp", d.self.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("directory: forwarding listener: %w", err)
	}
	d.raft, err = raft.NewRaft(rc, d.fsm, d.store, d.store, snaps, d.trans)
	if err != nil {
		return nil, fmt.Errorf("directory: start raft: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+pathApply, d.handleApply)
	mux.HandleFunc("POST "+pathBarrier, d.handleBarrier)
	mux.HandleFunc("POST "+pathHeartbeat, d.handleHeartbeat)
	d.adminRoutes(mux)
	d.newConns = map[net.Conn]struct{}{}
	d.httpSrv = &http.Server{Handler: d.authorize(mux), ReadHeaderTimeout: 5 * time.Second, ConnState: d.trackConn}
	d.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second, DialContext: cfg.Dial}}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.httpSrv.Serve(d.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("forwarding server stopped", "err", err)
		}
	}()
	if cfg.DetectFailures {
		d.wg.Add(1)
		go d.detect()
	}
	ok = true
	d.log.Info("directory voter started", "raft", d.self.RaftAddr, "http", d.self.HTTPAddr, "bootstrapped", !existing)
	return d, nil
}

// Close stops the voter: raft, the forwarding server, the transport and the
// log store; every watch channel is closed. Idempotent.
func (d *Directory) Close() error {
	d.closeOnce.Do(func() {
		close(d.closed)
		d.closeErr = d.release()
		d.wmu.Lock()
		for w := range d.watchers {
			close(w.ch)
			delete(d.watchers, w)
		}
		d.wmu.Unlock()
	})
	return d.closeErr
}

// release closes whatever Open created, in reverse order.
func (d *Directory) release() error {
	var errs []error
	// Raft first: forwarded requests still in flight fail fast (their
	// callers see ErrUncertain) instead of holding up the server shutdown.
	if d.raft != nil {
		errs = append(errs, d.raft.Shutdown().Error())
	}
	if d.httpSrv != nil {
		errs = append(errs, d.shutdownHTTP())
	} else if d.httpLn != nil {
		errs = append(errs, d.httpLn.Close())
	}
	if d.trans != nil {
		errs = append(errs, d.trans.Close())
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	if d.client != nil {
		d.client.CloseIdleConnections()
	}
	d.wg.Wait()
	return errors.Join(errs...)
}

// trackConn (http.Server.ConnState) keeps the connections that have not
// sent a request yet.
func (d *Directory) trackConn(c net.Conn, st http.ConnState) {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if st == http.StateNew {
		d.newConns[c] = struct{}{}
	} else {
		delete(d.newConns, c)
	}
}

// shutdownHTTP stops the HTTP server, waiting up to 5 s for requests in
// flight. http.Server.Shutdown counts a connection that has not sent a
// request as busy for its first 5 s (Go's Transport leaves such a
// connection behind when a request is cancelled while it dials, and anyone
// can open one), so those are closed while Shutdown waits: no request is
// lost by it, the client sees its connection close.
func (d *Directory) shutdownHTTP() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.httpSrv.Shutdown(ctx) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			d.connMu.Lock()
			for c := range d.newConns {
				c.Close()
				delete(d.newConns, c)
			}
			d.connMu.Unlock()
		}
	}
}

// ID returns this voter's id.
func (d *Directory) ID() string { return d.cfg.ID }

// IsLeader reports whether this voter currently believes it leads.
func (d *Directory) IsLeader() bool { return d.raft.State() == raft.Leader }

// Leader returns the id of the leader this voter knows of ("" if none).
func (d *Directory) Leader() string {
	_, id := d.raft.LeaderWithID()
	return string(id)
}

// --- local (stale but monotonic) reads ---

// Region returns a region from the local applied copy.
func (d *Directory) Region(name string) (Region, bool) { return d.fsm.Region(name) }

// Regions returns every region from the local applied copy.
func (d *Directory) Regions() []Region { return d.fsm.Regions() }

// UserHome returns a user's home region from the local applied copy.
func (d *Directory) UserHome(user string) (string, bool) { return d.fsm.UserHome(user) }

// Conv returns a conversation's home and epoch from the local applied copy.
func (d *Directory) Conv(conv string) (ConvHome, bool) { return d.fsm.Conv(conv) }

// State returns a deep copy of the local applied state.
func (d *Directory) State() State { return d.fsm.State() }

// AppliedIndex returns the index of the last command applied locally.
func (d *Directory) AppliedIndex() uint64 {
	i, _ := d.fsm.Index()
	return i
}

// WaitApplied waits until the local copy has applied index idx (for
// example a HeartbeatReply's AppliedIndex: the copy then reflects every
// failover the leader had applied when it answered).
func (d *Directory) WaitApplied(ctx context.Context, idx uint64) error {
	for {
		cur, next := d.fsm.Index()
		if cur >= idx {
			return nil
		}
		select {
		case <-next:
		case <-ctx.Done():
			return fmt.Errorf("wait for index %d (at %d): %w", idx, cur, ctx.Err())
		case <-d.closed:
			return ErrClosed
		}
	}
}

// --- writes ---

// PutRegion creates or replaces a region.
func (d *Directory) PutRegion(ctx context.Context, r Region) error {
	_, err := d.write(ctx, Command{Op: OpPutRegion, Region: &r})
	return err
}

// SetUserHome homes user in region. With ifAbsent, a user already homed is
// left alone and ErrExists is returned with the stored home.
func (d *Directory) SetUserHome(ctx context.Context, user, region string, ifAbsent bool) (string, error) {
	r, err := d.write(ctx, Command{Op: OpSetUserHome, User: user, Home: region, IfAbsent: ifAbsent})
	return r.Home, err
}

// SetConvHome sets conv's home if its stored epoch is expectEpoch (0 for a
// conversation not yet in the directory) and returns the new epoch,
// expectEpoch+1. Otherwise it returns an *EpochError (errors.Is
// core.ErrFenced) carrying the stored epoch.
func (d *Directory) SetConvHome(ctx context.Context, conv, region string, expectEpoch uint64) (uint64, error) {
	return d.ClaimConvHome(ctx, conv, region, expectEpoch, "")
}

// ClaimConvHome is SetConvHome that records owner (the user whose home
// placed the conversation) when it creates the entry (expectEpoch 0).
func (d *Directory) ClaimConvHome(ctx context.Context, conv, region string, expectEpoch uint64, owner string) (uint64, error) {
	r, err := d.write(ctx, Command{Op: OpSetConvHome, Conv: conv, Home: region, ExpectEpoch: expectEpoch, Owner: owner})
	if err != nil {
		return 0, err
	}
	return r.Epoch, nil
}

// MoveUser homes user in region and moves every conversation the user
// owns there, each at its epoch + 1, in one replicated step; it returns
// how many conversations moved. Unconditional, so repeating it is safe.
func (d *Directory) MoveUser(ctx context.Context, user, region string) (int, error) {
	r, err := d.write(ctx, Command{Op: OpMoveUser, User: user, Home: region})
	return r.Moved, err
}

// PutEdge creates or replaces (by ID) an edge of region. Edge IDs are
// global: an edge stored under another region moves to this one.
func (d *Directory) PutEdge(ctx context.Context, region string, e Edge) error {
	_, err := d.write(ctx, Command{Op: OpPutEdge, Name: region, Edge: &e})
	return err
}

// SetEdgeHealth marks one edge of region healthy or not. An edge the
// region does not hold gives ErrUnknownEdge.
func (d *Directory) SetEdgeHealth(ctx context.Context, region, id string, healthy bool) error {
	_, err := d.write(ctx, Command{Op: OpSetEdgeHealth, Name: region, EdgeID: id, Healthy: &healthy})
	return err
}

// SetRegionHealth marks a region healthy or not, keeping everything else.
func (d *Directory) SetRegionHealth(ctx context.Context, region string, healthy bool) error {
	_, err := d.write(ctx, Command{Op: OpSetRegionHealth, Name: region, Healthy: &healthy})
	return err
}

// errRetry marks an attempt that certainly did not apply and may be retried.
var errRetry = errors.New("directory: retry")

func (d *Directory) write(ctx context.Context, c Command) (Result, error) {
	b, err := EncodeCommand(c)
	if err != nil {
		return Result{}, err
	}
	res, err := d.applyAnywhere(ctx, b)
	if err != nil {
		return Result{}, fmt.Errorf("directory: %s: %w", c.Op, err)
	}
	return res, res.err(c)
}

// applyAnywhere applies an encoded command through the leader, wherever it
// is: locally when this voter leads, else forwarded, retried while it
// certainly did not apply.
func (d *Directory) applyAnywhere(ctx context.Context, b []byte) (Result, error) {
	var res Result
	err := d.retry(ctx, func(ctx context.Context) error {
		var err error
		if d.IsLeader() {
			res, err = d.applyLocal(ctx, b)
		} else {
			res, err = d.forwardApply(ctx, b)
		}
		return err
	})
	return res, err
}

// retry runs attempt until it returns something other than errRetry,
// backing off a little, until ctx ends or the Directory closes.
func (d *Directory) retry(ctx context.Context, attempt func(context.Context) error) error {
	backoff := 10 * time.Millisecond
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		}
		select {
		case <-d.closed:
			return ErrClosed
		default:
		}
		err := attempt(ctx)
		if !errors.Is(err, errRetry) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-d.closed:
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// waitFuture is f.Error() that also gives up when ctx ends or the
// Directory closes. hashicorp/raft (v1.7.3) never answers the future of a
// committed entry that was still queued for the FSM when raft shut down
// (runFSM returns without draining its queue, and log futures have no
// shutdown channel), so f.Error() alone can block forever: a local writer
// would hang and a forwarding handler would hold up Close. The goroutine
// left waiting on such a future ends if raft ever answers it; there is at
// most one per request in flight at Close.
func (d *Directory) waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-d.closed:
		return raft.ErrRaftShutdown
	case <-ctx.Done():
		return fmt.Errorf("directory: gave up waiting for raft: %w", ctx.Err())
	}
}

// applyLocal applies an encoded command on this (leader) voter once.
func (d *Directory) applyLocal(ctx context.Context, b []byte) (Result, error) {
	f := d.raft.Apply(b, d.cfg.ApplyTimeout)
	if err := d.waitFuture(ctx, f); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrEnqueueTimeout):
			return Result{}, errRetry // never entered the log
		case errors.Is(err, raft.ErrRaftShutdown): // it may be in the log already
			return Result{}, fmt.Errorf("%w: %w", ErrUncertain, ErrClosed)
		default: // leadership lost and the like: it may still commit
			return Result{}, fmt.Errorf("%w: %w", ErrUncertain, err)
		}
	}
	res, ok := f.Response().(Result)
	if !ok {
		return Result{}, fmt.Errorf("%w: unexpected FSM response %T", ErrBadCommand, f.Response())
	}
	return res, nil
}

// --- linearizable reads ---

// Sync waits until the local applied copy reflects every write that
// completed before Sync was called (a read index through the leader). Reads
// made after Sync returns are linearizable.
func (d *Directory) Sync(ctx context.Context) error {
	var idx uint64
	err := d.retry(ctx, func(ctx context.Context) error {
		var err error
		if d.IsLeader() {
			idx, err = d.barrierLocal(ctx)
		} else {
			idx, err = d.forwardBarrier(ctx)
		}
		if errors.Is(err, ErrUncertain) {
			return errRetry // a barrier is a read: always safe to repeat
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("directory: sync: %w", err)
	}
	if err := d.WaitApplied(ctx, idx); err != nil {
		return fmt.Errorf("directory: sync: %w", err)
	}
	return nil
}

// ConvLinearizable is Sync followed by Conv.
func (d *Directory) ConvLinearizable(ctx context.Context, conv string) (ConvHome, bool, error) {
	if err := d.Sync(ctx); err != nil {
		return ConvHome{}, false, err
	}
	h, ok := d.Conv(conv)
	return h, ok, nil
}

// UserHomeLinearizable is Sync followed by UserHome.
func (d *Directory) UserHomeLinearizable(ctx context.Context, user string) (string, bool, error) {
	if err := d.Sync(ctx); err != nil {
		return "", false, err
	}
	h, ok := d.UserHome(user)
	return h, ok, nil
}

// barrierLocal commits a barrier as leader and returns the applied index
// after it: every write acknowledged before the call is at or below it.
func (d *Directory) barrierLocal(ctx context.Context) (uint64, error) {
	if err := d.waitFuture(ctx, d.raft.Barrier(d.cfg.ApplyTimeout)); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrEnqueueTimeout):
			return 0, errRetry
		case errors.Is(err, raft.ErrRaftShutdown):
			return 0, ErrClosed
		default:
			return 0, fmt.Errorf("%w: %w", ErrUncertain, err)
		}
	}
	i, _ := d.fsm.Index()
	return i, nil
}

// --- forwarding ---

const (
	pathApply   = "/directory/v1/apply"
	pathBarrier = "/directory/v1/barrier"
	// hdrForwarded marks a request one voter forwards to the one it
	// believes leads: a receiver that does not lead answers 421 instead of
	// forwarding again.
	hdrForwarded = "X-Chatmesh-Directory-Forwarded"
)

type barrierReply struct {
	Index uint64 `json:"index"`
}

// Forwarding status codes: 200 done (body is the reply), 421 this node is
// not the leader (nothing applied), 503 outcome unknown, 400 bad request.
//
// A request without hdrForwarded (an operator's, through AdminClient) is
// applied through the leader wherever it is, like a local write; its
// errors are JSON (see writeAdminError).
func (d *Directory) handleApply(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCommandBytes))
	if err != nil {
		http.Error(w, "body", http.StatusBadRequest)
		return
	}
	if _, err := DecodeCommand(b); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.Header.Get(hdrForwarded) == "" {
		d.handleAdminApply(w, r, b)
		return
	}
	if !d.IsLeader() {
		http.Error(w, "not leader", http.StatusMisdirectedRequest)
		return
	}
	res, err := d.applyLocal(r.Context(), b)
	d.reply(w, res, err)
}

func (d *Directory) handleBarrier(w http.ResponseWriter, r *http.Request) {
	if !d.IsLeader() {
		http.Error(w, "not leader", http.StatusMisdirectedRequest)
		return
	}
	idx, err := d.barrierLocal(r.Context())
	d.reply(w, barrierReply{Index: idx}, err)
}

func (d *Directory) reply(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, errRetry):
		http.Error(w, "not leader", http.StatusMisdirectedRequest)
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	default:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

func (d *Directory) forwardApply(ctx context.Context, b []byte) (Result, error) {
	var res Result
	err := d.forward(ctx, pathApply, b, &res)
	return res, err
}

func (d *Directory) forwardBarrier(ctx context.Context) (uint64, error) {
	var rep barrierReply
	err := d.forward(ctx, pathBarrier, nil, &rep)
	return rep.Index, err
}

// forward posts body to the leader's forwarding endpoint. It returns
// errRetry when the request certainly did nothing (no leader known, the
// connection was refused, the peer is not the leader) and ErrUncertain when
// it may have been applied.
func (d *Directory) forward(ctx context.Context, path string, body []byte, out any) error {
	_, id := d.raft.LeaderWithID()
	p, ok := d.peers[id]
	if id == "" || !ok {
		return errRetry
	}
	actx, cancel := context.WithTimeout(ctx, d.cfg.ApplyTimeout+time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, "http://"+p.HTTPAddr+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("directory: forward: %w", err)
	}
	req.Header.Set(hdrForwarded, "1")
	if d.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+d.cfg.Token)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return errRetry
		}
		return fmt.Errorf("%w: forward to %s: %w", ErrUncertain, id, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, maxCommandBytes))
	if err != nil {
		return fmt.Errorf("%w: forward to %s: %w", ErrUncertain, id, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if err := json.Unmarshal(rb, out); err != nil {
			return fmt.Errorf("%w: forward to %s: reply: %w", ErrUncertain, id, err)
		}
		return nil
	case http.StatusMisdirectedRequest:
		return errRetry
	case http.StatusUnauthorized: // nothing was applied; retrying will not help
		return fmt.Errorf("%w: forward to %s: the voters' tokens differ", ErrUnauthorized, id)
	case http.StatusBadRequest:
		return fmt.Errorf("%w: %s", ErrBadCommand, strings.TrimSpace(string(rb)))
	default:
		return fmt.Errorf("%w: forward to %s: %s: %s", ErrUncertain, id, resp.Status, strings.TrimSpace(string(rb)))
	}
}

// --- watch ---

// Watch returns a channel of changes applied on this voter from now on. The
// channel is bounded (Config.WatchBuffer); a watcher that falls behind loses
// its buffered changes and receives one ChangeResync instead, as it does
// when a snapshot replaces the state. The channel is closed when ctx ends
// or the Directory closes.
func (d *Directory) Watch(ctx context.Context) <-chan Change {
	w := &watcher{ch: make(chan Change, d.cfg.WatchBuffer)}
	d.wmu.Lock()
	select {
	case <-d.closed:
		close(w.ch)
		d.wmu.Unlock()
		return w.ch
	default:
	}
	d.watchers[w] = struct{}{}
	d.wmu.Unlock()
	context.AfterFunc(ctx, func() {
		d.wmu.Lock()
		defer d.wmu.Unlock()
		if _, ok := d.watchers[w]; ok {
			delete(d.watchers, w)
			close(w.ch)
		}
	})
	return w.ch
}

// broadcast is the FSM's notify hook; it never blocks.
func (d *Directory) broadcast(c Change) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	for w := range d.watchers {
		select {
		case w.ch <- c:
			continue
		default:
		}
	drain: // full: drop what is buffered, tell the watcher to resync
		for {
			select {
			case <-w.ch:
			default:
				break drain
			}
		}
		select {
		case w.ch <- Change{Index: c.Index, Kind: ChangeResync}:
		default:
		}
	}
}

// slogWriter routes hclog lines (already filtered to warn and above) to slog.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		lvl := slog.LevelWarn
		if strings.Contains(line, "[ERROR]") {
			lvl = slog.LevelError
		}
		w.log.Log(context.Background(), lvl, "raft", "line", line)
	}
	return len(p), nil
}

// streamLayer is raft's TCP stream layer (as raft.NewTCPTransport builds
// it: a listener on the voter's concrete raft address, which it
// advertises) whose outgoing connections go through Config.Dial.
type streamLayer struct {
	net.Listener
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// listenStream listens on addr (a concrete host:port, as raft advertises
// it to the other voters).
func listenStream(ctx context.Context, addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*streamLayer, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("directory: raft transport: %w", err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); !ok || ta.IP == nil || ta.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("directory: raft transport: %q is not an address other voters can dial", addr)
	}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return &streamLayer{Listener: ln, dial: dial}, nil
}

// Dial implements raft.StreamLayer.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.dial(ctx, "tcp", string(address))
}
