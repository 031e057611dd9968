package edge

import (
	"context"
	"errors"
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
// handshake. The session goroutine (serveConn) reads; the writer goroutine
// drains queue. terminate asks the writer to send a final Disconnect and
// close the transport, which ends the reader.
type session struct {
	e      *Edge
	id     uint64
	tr     transport
	nc     *noiseconn.Conn
	static []byte
	ip     string                 // client IP, for the per-IP limits (admission.go)
	bucket atomic.Pointer[bucket] // replaced once if the session takes over an older one's
	// reads is the bucket of read requests (Config.ReadsPerSecond); nil
	// charges reads to bucket.
	readBucket atomic.Pointer[bucket]

	queue      chan []byte   // marshalled ServerFrames; bounded
	stop       chan struct{} // closed by terminate
	stopOnce   sync.Once
	final      atomic.Pointer[pb.Disconnect] // sent by the writer on stop, if set
	finished   chan struct{}                 // closed when the session has fully ended
	lastActive atomic.Int64                  // unix nanos of the last frame received

	// dev is set once, by the session goroutine, when the device is known;
	// afterwards it is read under e.mu by the dispatchers.
	dev    core.DeviceKey
	authed bool
	subs   map[string]struct{} // guarded by e.mu

	// reads run concurrently (at most cap(readSlots) at a time); the
	// session waits for them before it ends.
	readSlots chan struct{}
	reads     sync.WaitGroup
}

// serveConn runs one connection to the end: handshake, authentication,
// then the session (reading in this goroutine). It owns the writer
// goroutine and waits for it. The caller has counted the connection
// against its IP (admit); serveConn releases it.
func (e *Edge) serveConn(tr transport, ip string) {
	defer e.releaseIP(ip)

	hctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	defer cancel()
	nc, err := noiseconn.Server(hctx, tr, noiseconn.ServerConfig{Static: e.cfg.Static, Payload: e.hello})
	if err != nil {
		e.n.handshakeFailures.Add(1)
		e.log.Debug("handshake failed", "ip", ip, "err", err)
		tr.closeWith(pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED, "handshake failed")
		return
	}
	var hello pb.ClientHello
	if err := proto.Unmarshal(nc.PeerPayload(), &hello); err != nil || hello.GetProtocolVersion() != ProtocolVersion {
		e.n.handshakeFailures.Add(1)
		tr.closeWith(pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED, "bad client hello")
		return
	}
	s := &session{
		e: e, id: newSessionID(), tr: tr, nc: nc, static: nc.PeerStatic(), ip: ip,
		queue:     make(chan []byte, e.cfg.SendQueue),
		stop:      make(chan struct{}),
		finished:  make(chan struct{}),
		readSlots: make(chan struct{}, maxConcurrentReads),
	}
	defer close(s.finished)
	s.bucket.Store(newBucket(e.cfg.MessagesPerSecond, e.cfg.Burst, e.cfg.Now()))
	s.readBucket.Store(newBucket(e.cfg.ReadsPerSecond, e.cfg.ReadBurst, e.cfg.Now()))
	s.lastActive.Store(e.cfg.Now().UnixNano())
	e.mu.Lock()
	closing := e.closing
	if !closing {
		e.live[s] = struct{}{}
	}
	e.mu.Unlock()
	if closing {
		s.closeEarly(pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "edge shutting down")
		return
	}
	defer e.unregister(s)

	dev, err := e.be.Authenticate(hctx, s.static)
	switch {
	case err == nil:
		if claimed := core.KeyOf(hello.GetDevice()); hello.GetDevice() != nil && claimed != dev {
			s.closeEarly(pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "static key belongs to another device")
			return
		}
	case errors.Is(err, core.ErrNotFound):
		if hello.GetDevice() != nil {
			s.closeEarly(pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "device not registered")
			return
		}
	default:
		e.log.Warn("authenticate failed", "err", err)
		s.closeEarly(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "authentication unavailable")
		return
	}

	var writer sync.WaitGroup
	writer.Go(s.writeLoop)
	e.n.sessions.Add(1)
	defer e.n.sessions.Add(-1)

	if err == nil {
		if err := s.becomeDevice(hctx, dev); err != nil {
			e.log.Warn("session open failed", "device", dev, "err", err)
			s.terminate(core.Code(err), "session could not be opened", true)
		}
	}
	cancel()
	if s.live() {
		s.readLoop()
	}
	s.terminate(pb.ErrorCode_ERROR_CODE_OK, "", false)
	s.reads.Wait()
	writer.Wait()
	e.unregister(s)
	if s.authed {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(e.ctx), e.cfg.BackendTimeout)
		if err := e.be.SessionClosed(ctx, s.dev, s.id); err != nil {
			e.log.Warn("session closed report failed", "device", s.dev, "err", err)
		}
		cancel()
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

// becomeDevice reports the route and registers the session for pushes; an
// older session of the same device on this edge is closed with REPLACED.
func (s *session) becomeDevice(ctx context.Context, dev core.DeviceKey) error {
	e := s.e
	if err := e.be.SessionOpened(ctx, core.Route{Device: dev, Edge: e.cfg.ID, Session: s.id, SinceMs: e.cfg.Now().UnixMilli()}); err != nil {
		return err
	}
	s.dev, s.authed = dev, true
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		s.terminate(pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "edge shutting down", true)
		return nil
	}
	old := e.byDevice[dev]
	e.sessions[s.id] = s
	e.byDevice[dev] = map[uint64]*session{s.id: s}
	for _, o := range old {
		s.bucket.Store(o.bucket.Load()) // the device's budget survives a reconnect
		if rb := o.readBucket.Load(); rb != nil {
			s.readBucket.Store(rb)
		}
	}
	e.mu.Unlock()
	for _, o := range old {
		e.n.replaced.Add(1)
		o.terminate(pb.ErrorCode_ERROR_CODE_REPLACED, "the device connected again", false)
	}
	return nil
}

// unregister removes s from every index; it is idempotent.
func (e *Edge) unregister(s *session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.live, s)
	if e.sessions[s.id] == s {
		delete(e.sessions, s.id)
	}
	if m := e.byDevice[s.dev]; m != nil && m[s.id] == s {
		delete(m, s.id)
		if len(m) == 0 {
			delete(e.byDevice, s.dev)
		}
	}
	for u := range s.subs {
		e.unsubscribeLocked(s, u)
	}
	s.subs = nil
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
	})
}

// push queues a frame without blocking. A full queue closes the session
// (drop reason "slow consumer"): the client resyncs when it reconnects.
func (s *session) push(f *pb.ServerFrame) {
	b, err := marshal(f)
	if err != nil {
		s.e.log.Error("encode frame", "err", err)
		return
	}
	s.pushBytes(b)
}

func (s *session) pushBytes(b []byte) {
	if !s.live() {
		return
	}
	select {
	case s.queue <- b:
	default:
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

// writeLoop drains the queue, watches for idleness, and on stop sends the
// final Disconnect (if any) and closes the transport.
func (s *session) writeLoop() {
	e := s.e
	tick := time.NewTicker(max(e.cfg.IdleTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		// A stop outranks queued frames: the final Disconnect goes next
		// and the rest is abandoned (the client resyncs).
		select {
		case <-s.stop:
			s.finish()
			return
		default:
		}
		select {
		case b := <-s.queue:
			if err := s.write(b); err != nil {
				s.terminate(pb.ErrorCode_ERROR_CODE_OK, "", false)
				_ = s.tr.Close()
				return
			}
		case <-tick.C:
			idle := e.cfg.Now().Sub(time.Unix(0, s.lastActive.Load()))
			if idle >= e.cfg.IdleTimeout {
				e.n.idle.Add(1)
				s.terminate(pb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT, "idle timeout", true)
			}
		case <-s.stop:
			s.finish()
			return
		}
	}
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
	return nil
}

// readLoop receives frames until the transport fails or the session stops.
func (s *session) readLoop() {
	e := s.e
	for {
		pt, err := s.nc.Recv(e.ctx)
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
