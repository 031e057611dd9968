package edge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// session is one authenticated-or-not client connection after the Noise
// handshake. The session goroutine (serveConn) reads; a drain goroutine,
// started only while there is something to write, empties out
// (outqueue.go). terminate has a drain send the final Disconnect and close
// the transport, which ends the reader.
type session struct {
	e      *Edge
	id     uint64
	tr     transport
	nc     *noiseconn.Conn
	static []byte
	ip     string                 // client network (ipKey: the IPv4 address or IPv6 /64), keyed once for the per-IP limits
	bucket atomic.Pointer[bucket] // replaced once if the session takes over an older one's
	// reads is the bucket of read requests (Config.ReadsPerSecond); nil
	// charges reads to bucket.
	readBucket atomic.Pointer[bucket]

	out        outQueue       // marshalled ServerFrames; bounded (outqueue.go)
	writers    sync.WaitGroup // the drain goroutines of out
	stop       chan struct{}  // closed by terminate
	stopOnce   sync.Once
	final      atomic.Pointer[pb.Disconnect] // sent by the writer on stop, if set
	finished   chan struct{}                 // closed when the session has fully ended
	lastActive atomic.Int64                  // unix nanos of the last frame received

	// gen orders the sessions of this edge by handshake completion; it is
	// assigned under e.mu before the session is visible and never changes.
	// Of two sessions of one device, the one with the larger gen wins.
	gen uint64
	// dev is set once, by the session goroutine, when the device is known;
	// afterwards it is read under e.mu by the dispatchers. opened says
	// SessionOpened was called for it (so SessionClosed must follow);
	// authed says it succeeded. Both belong to the session goroutine.
	dev    core.DeviceKey
	opened bool
	authed bool
	subs   map[string]struct{} // guarded by e.mu; presence: live subscriptions (presence.go)
	// pending (guarded by e.mu) is non-nil while a presence_subscribe
	// awaits its snapshot: the requested users, each with the latest event
	// held for it meanwhile (presence.go).
	pending map[string][]byte

	// Writes awaiting the region's answer (ingress.go), guarded by ifMu;
	// inflight is nil while there are none.
	ifMu     sync.Mutex
	inflight map[uint64]inflightEntry
	ifCount  int

	// reads run concurrently (at most cap(readSlots) at a time); the
	// session waits for them before it ends.
	readSlots chan struct{}
	reads     sync.WaitGroup
}

// serveConn runs one connection to the end: handshake, authentication,
// then the session (reading in this goroutine). It owns the writer
// goroutine and waits for it. The caller has counted the connection
// against its IP (admit); serveConn releases it.
//
// The set-up (open) returns before the session's long life begins, so its
// large frame is not under the read loop's: an idle session's stack holds
// only serve and the read loop (see onFreshStack).
func (e *Edge) serveConn(tr transport, ip string) {
	if s := e.open(tr, ip); s != nil {
		s.serve(ip)
	}
}

// open runs the handshake, authentication and session opening. It returns
// the session, which serve then runs and cleans up; or nil when the
// connection already ended (open cleaned up after it).
func (e *Edge) open(tr transport, ip string) *session {
	handed := false // the session goes on in serve, which cleans up after it
	ipHeld := true
	defer func() {
		if ipHeld {
			e.releaseIP(ip)
		}
	}()

	if !e.serving() {
		// Refused before any work: the client tries its next edge.
		e.n.notReadyRefused.Add(1)
		tr.closeWith(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, NotServingDetail)
		return nil
	}
	hctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	var (
		nc  *noiseconn.Conn
		err error
	)
	onFreshStack(func() {
		nc, err = noiseconn.Server(hctx, tr, noiseconn.ServerConfig{Static: e.cfg.Static, Payload: e.hello})
	})
	if err != nil {
		e.n.handshakeFailures.Add(1)
		e.log.Debug("handshake failed", "ip", ip, "err", err)
		tr.closeWith(pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED, "handshake failed")
		return nil
	}
	var hello pb.ClientHello
	if err := proto.Unmarshal(nc.PeerPayload(), &hello); err != nil || hello.GetProtocolVersion() != ProtocolVersion {
		e.n.handshakeFailures.Add(1)
		tr.closeWith(pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED, "bad client hello")
		return nil
	}
	s := &session{
		e: e, id: newSessionID(), tr: tr, nc: nc, static: nc.PeerStatic(), ip: ipKey(ip),
		stop:      make(chan struct{}),
		finished:  make(chan struct{}),
		readSlots: make(chan struct{}, maxConcurrentReads),
	}
	defer func() {
		if !handed {
			close(s.finished)
		}
	}()
	s.bucket.Store(newBucket(e.cfg.MessagesPerSecond, e.cfg.Burst, e.cfg.Now()))
	s.readBucket.Store(newBucket(e.cfg.ReadsPerSecond, e.cfg.ReadBurst, e.cfg.Now()))
	s.lastActive.Store(e.cfg.Now().UnixNano())
	e.mu.Lock()
	closing, notServing := e.closing, e.notServing
	if !closing && !notServing {
		e.nextGen++
		s.gen = e.nextGen
		e.live[s] = struct{}{}
	}
	e.mu.Unlock()
	if closing {
		s.closeEarly(pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "edge shutting down")
		return nil
	}
	if notServing { // stopped serving during the handshake
		e.n.notReadyRefused.Add(1)
		s.closeEarly(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, NotServingDetail)
		return nil
	}
	defer func() {
		if !handed {
			e.unregister(s)
		}
	}()

	var dev core.DeviceKey
	onFreshStack(func() { dev, err = e.be.Authenticate(hctx, s.static) })
	switch {
	case err == nil:
		if claimed := core.KeyOf(hello.GetDevice()); hello.GetDevice() != nil && claimed != dev {
			s.closeEarly(pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "static key belongs to another device")
			return nil
		}
	case errors.Is(err, core.ErrNotFound):
		if hello.GetDevice() != nil {
			s.closeEarly(pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "device not registered")
			return nil
		}
	default:
		e.log.Warn("authenticate failed", "err", err)
		s.closeEarly(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "authentication unavailable")
		return nil
	}

	s.enableWriter()
	e.n.sessions.Add(1)
	defer func() {
		if !handed {
			e.n.sessions.Add(-1)
		}
	}()

	if err == nil {
		var berr error
		onFreshStack(func() { berr = s.becomeDevice(hctx, dev) })
		if err := berr; err != nil {
			e.log.Warn("session open failed", "device", dev, "err", err)
			s.terminate(core.Code(err), "session could not be opened", true)
		}
	}
	cancel()
	handed, ipHeld = true, false
	return s
}

// serve runs an opened session to its end: the read loop, then the
// writer's end, the backend's report and the IP's release.
func (s *session) serve(ip string) {
	e := s.e
	defer close(s.finished)
	defer e.unregister(s)
	defer e.n.sessions.Add(-1)
	if s.live() {
		s.readLoop()
	}
	s.terminate(pb.ErrorCode_ERROR_CODE_OK, "", false)
	s.reads.Wait()
	s.writers.Wait()
	e.unregister(s)
	s.releaseInflight()
	if s.opened {
		onFreshStack(s.reportClosed) // deep (the store), once per session
	}
	// The IP's slot is free before the session stops counting in
	// Stats.Sessions (deferred above), so whoever sees the count drop can
	// connect again.
	e.releaseIP(ip)
}

// reportClosed tells the backend the session ended. It holds the device's
// lock, so it is ordered with the SessionOpened of a newer session on this
// edge: the route names the newer session by then, and the conditional
// clear leaves it alone.
func (s *session) reportClosed() {
	e := s.e
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.ctx), e.cfg.BackendTimeout)
	defer cancel()
	unlock, err := e.lockDevice(ctx, s.dev)
	if err != nil {
		// Clearing without the lock is still safe (it only removes a
		// route naming this session); it may just race a newer open.
		e.log.Warn("session closed without the device lock", "device", s.dev, "err", err)
		unlock = func() {}
	}
	defer unlock()
	if err := e.be.SessionClosed(ctx, s.dev, s.id); err != nil {
		e.log.Warn("session closed report failed", "device", s.dev, "err", err)
	}
}

// closeEarly sends a Disconnect and closes, before the writer exists.
func (s *session) closeEarly(code pb.ErrorCode, detail string) {
	if b, err := marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Disconnect{Disconnect: &pb.Disconnect{Code: code, Detail: detail, Reconnect: code == pb.ErrorCode_ERROR_CODE_UNAVAILABLE || code == pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN}}}); err == nil {
		ctx, cancel := context.WithTimeout(s.e.ctx, s.e.cfg.WriteTimeout)
		_ = s.nc.Send(ctx, b)
		cancel()
	}
	s.tr.closeWith(code, detail)
}

// becomeDevice reports the route and registers the session for pushes.
//
// Of the sessions of one device on this edge, the one with the largest gen
// (the latest completed handshake) always wins, whatever the order in
// which their backend calls return: the device's lock (lockDevice) orders
// SessionOpened, the swap in byDevice and SessionClosed, so the route the
// backend holds and the session the edge pushes to always agree. A session
// that finds a newer one already installed is ended with REPLACED without
// touching the route; an older installed one is ended with REPLACED after
// the route names s (so the route never disappears and presence does not
// flicker).
func (s *session) becomeDevice(ctx context.Context, dev core.DeviceKey) error {
	e := s.e
	unlock, err := e.lockDevice(ctx, dev)
	if err != nil {
		return fmt.Errorf("edge: open session of %s: %w", dev, core.ErrUnavailable)
	}
	defer unlock()
	e.mu.Lock()
	if cur := e.byDevice[dev]; cur != nil && cur.gen > s.gen {
		e.mu.Unlock()
		e.n.replaced.Add(1)
		s.terminate(pb.ErrorCode_ERROR_CODE_REPLACED, "a newer session of this device exists", false)
		return nil
	}
	// Known by id before the route names it: a Disconnect the region
	// sends this session meanwhile (the device connected on another edge)
	// finds it. Pushes to the device still go to the installed session.
	e.sessions[s.id] = s
	e.mu.Unlock()
	s.dev, s.opened = dev, true
	if err := e.be.SessionOpened(ctx, core.Route{Device: dev, Edge: e.cfg.ID, Session: s.id, SinceMs: e.cfg.Now().UnixMilli()}); err != nil {
		return err
	}
	s.authed = true
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		s.terminate(pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "edge shutting down", true)
		return nil
	}
	old := e.byDevice[dev] // older than s: a newer one would have stopped s above
	e.sessions[s.id] = s
	e.byDevice[dev] = s
	if old != nil {
		s.bucket.Store(old.bucket.Load()) // the device's budget survives a reconnect
		if rb := old.readBucket.Load(); rb != nil {
			s.readBucket.Store(rb)
		}
	}
	e.mu.Unlock()
	if old != nil {
		e.n.replaced.Add(1)
		old.terminate(pb.ErrorCode_ERROR_CODE_REPLACED, "the device connected again", false)
	}
	return nil
}

// devLock serializes the backend calls of one device's sessions on this
// edge; refs counts its holders and waiters (guarded by Edge.mu).
type devLock struct {
	ch   chan struct{}
	refs int
}

// lockDevice takes the device's lock, waiting at most until ctx ends, and
// returns the function that releases it.
func (e *Edge) lockDevice(ctx context.Context, dev core.DeviceKey) (func(), error) {
	e.mu.Lock()
	l := e.devLocks[dev]
	if l == nil {
		l = &devLock{ch: make(chan struct{}, 1)}
		e.devLocks[dev] = l
	}
	l.refs++
	e.mu.Unlock()
	release := func() {
		e.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(e.devLocks, dev)
		}
		e.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("edge: lock device %s: %w", dev, ctx.Err())
	}
}

// unregister removes s from every index; it is idempotent.
func (e *Edge) unregister(s *session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.live, s)
	if e.sessions[s.id] == s {
		delete(e.sessions, s.id)
	}
	if e.byDevice[s.dev] == s {
		delete(e.byDevice, s.dev)
	}
	e.clearSubscriptionsLocked(s)
}

func (e *Edge) unsubscribeLocked(s *session, user string) {
	if m := e.subs[user]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(e.subs, user)
		}
	}
}

func (s *session) live() bool {
	select {
	case <-s.stop:
		return false
	default:
		return true
	}
}

// terminate ends the session once: with code != OK the writer first sends
// Disconnect{code, detail, reconnect}. Safe from any goroutine.
func (s *session) terminate(code pb.ErrorCode, detail string, reconnect bool) {
	s.stopOnce.Do(func() {
		if code != pb.ErrorCode_ERROR_CODE_OK {
			s.final.Store(&pb.Disconnect{Code: code, Detail: detail, Reconnect: reconnect})
		}
		close(s.stop)
		s.kick() // a drain sends the Disconnect and closes
	})
}

// push queues a frame without blocking. A full queue (Config.SendQueue
// frames or SendQueueBytes bytes pending) closes the session (drop reason
// "slow consumer"): the client resyncs when it reconnects.
// A frame that would not fit one Noise transport message is never sent
// (sending it would end the session): it is counted and logged, a
// Response is replaced by an INTERNAL error for the same request, and any
// other frame is dropped (the client's sync repairs a missed delivery).
func (s *session) push(f *pb.ServerFrame) {
	b, err := marshal(f)
	if err != nil {
		s.e.log.Error("encode frame", "err", err)
		return
	}
	if len(b) > core.MaxFramePlaintext {
		s.tooLargeToSend(fmt.Sprintf("%T", f.GetBody()), len(b))
		if r := f.GetResponse(); r != nil {
			s.fail(r.GetReqId(), pb.ErrorCode_ERROR_CODE_INTERNAL, "response too large to send")
		}
		return
	}
	s.pushBytes(b)
}

// tooLargeToSend counts and logs a frame that cannot be sent (never its
// contents).
func (s *session) tooLargeToSend(kind string, n int) {
	s.e.n.tooLargeToSend.Add(1)
	s.e.log.Error("frame too large to send; dropped", "kind", kind, "bytes", n, "limit", core.MaxFramePlaintext, "device", s.dev)
}

func (s *session) pushBytes(b []byte) {
	if !s.live() {
		return
	}
	if len(b) > core.MaxFramePlaintext {
		s.tooLargeToSend("encoded", len(b))
		return
	}
	if !s.enqueue(b) {
		s.e.n.slowClient.Add(1)
		s.e.log.Info("session dropped", "reason", "slow consumer", "device", s.dev)
		s.terminate(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "slow consumer", true)
	}
}

func (s *session) respond(r *pb.Response) {
	s.push(&pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: r}})
}

func (s *session) fail(reqID uint64, code pb.ErrorCode, detail string) {
	s.respond(&pb.Response{ReqId: reqID, Error: &pb.Error{Code: code, Detail: detail}})
}

// finish sends the final Disconnect, if any, and closes the transport.
func (s *session) finish() {
	d := s.final.Load()
	if d == nil {
		_ = s.tr.Close()
		return
	}
	if b, err := marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Disconnect{Disconnect: d}}); err == nil {
		_ = s.write(b)
	}
	s.tr.closeWith(d.GetCode(), d.GetDetail())
}

func (s *session) write(b []byte) error {
	ctx, cancel := context.WithTimeout(s.e.ctx, s.e.cfg.WriteTimeout)
	defer cancel()
	if err := s.nc.Send(ctx, b); err != nil {
		return err
	}
	s.e.n.framesOut.Add(1)
	s.e.n.writesOut.Add(1)
	return nil
}

// readLoop receives frames until the transport fails or the session stops.
func (s *session) readLoop() {
	e := s.e
	idle, _ := s.tr.(interface{ waitReadable() })
	// Reads are not cancelled by a context: a session's read ends when its
	// transport closes (its drain closes it once the session stops, after
	// the final Disconnect or a failed or timed-out write; Shutdown waits
	// for that). With a cancellable context the WebSocket library
	// registers a callback with it on every read, under the edge-wide
	// context's lock: 4.5% of the server's CPU at 6,000 msg/s 1:1, and 8
	// of the 53 allocations of a ping's round trip.
	rctx := context.WithoutCancel(e.ctx)
	for {
		if idle != nil {
			idle.waitReadable()
		}
		pt, err := s.nc.Recv(rctx)
		if err != nil {
			switch {
			case errors.Is(err, noiseconn.ErrTooLarge):
				e.n.tooLarge.Add(1)
				s.terminate(pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, "message exceeds the Noise limit", false)
			case errors.Is(err, noiseconn.ErrDecrypt):
				e.n.malformed.Add(1)
				s.terminate(pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME, "transport message failed authentication", false)
			case errors.Is(err, errTextMessage):
				e.n.malformed.Add(1)
				s.terminate(pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME, "text message", false)
			}
			return
		}
		e.n.framesIn.Add(1)
		s.lastActive.Store(e.cfg.Now().UnixNano())
		s.handle(pt)
		if !s.live() {
			return
		}
	}
}

// reqIDOf extracts req_id (field 1) from an undecoded ClientFrame if it is
// the first field, as every standard encoder writes it; 0 otherwise.
func reqIDOf(b []byte) uint64 {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != 1 || typ != protowire.VarintType {
		return 0
	}
	v, m := protowire.ConsumeVarint(b[n:])
	if m < 0 {
		return 0
	}
	return v
}

func marshal(m proto.Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// onFreshStack runs f on another goroutine and waits for it. A session's
// goroutine lives as long as its connection, and a goroutine's stack keeps
// the size its deepest call needed until a GC finds less than a quarter of
// it in use. Work that is deep but rare — the handshake's cryptography,
// authentication and session opening, registration, key uploads, presence
// subscriptions — runs here, so it does not grow the session's stack
// (BenchmarkIdleConnections: stack 8,241 → 4,194 B per session). Frames
// that are frequent (messages, acks) stay on the session's goroutine.
//
// The goroutine is a stack worker: after f it waits up to stackIdle for
// the next call's work, so during a reconnect storm a few workers whose
// stacks have already grown to the handshake's depth run every handshake,
// instead of a new goroutine per call growing (copying) its stack several
// times on the way into X25519. A call never waits for a busy worker: it
// hands its work to an idle one or starts one, so there are never more
// workers than concurrent calls, and none once calls stop for stackIdle.
func onFreshStack(f func()) {
	done := make(chan struct{})
	goOnWorker(func() {
		defer close(done)
		f()
	})
	<-done
}

// goOnWorker runs f on a stack worker without waiting for it: the go
// statement for work that is deep, as onFreshStack's, but concurrent.
func goOnWorker(f func()) {
	select {
	case stackWork <- f:
	default:
		go stackWorker(f)
	}
}

// stackWork hands work to an idle stack worker (unbuffered: only a worker
// waiting in its receive takes it).
var stackWork = make(chan func())

// stackIdle is how long a stack worker waits for more work.
const stackIdle = time.Second

func stackWorker(w func()) {
	t := time.NewTimer(stackIdle)
	defer t.Stop()
	for {
		w()
		t.Reset(stackIdle)
		select {
		case w = <-stackWork:
		case <-t.C:
			return
		}
	}
}
