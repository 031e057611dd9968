package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// DisconnectError is the edge's Disconnect frame as an error.
type DisconnectError struct {
	Code      pb.ErrorCode
	Detail    string
	Reconnect bool
}

func (e *DisconnectError) Error() string {
	return fmt.Sprintf("client: edge disconnected the session: %s: %s (reconnect=%t)", e.Code, e.Detail, e.Reconnect)
}

// session is one Noise session with one edge. Its reader runs in the
// goroutine that called run; its helpers (sender, syncer, acker) run in wg
// and are cancelled and awaited before run returns.
type session struct {
	c     *Client
	nc    *noiseconn.Conn
	edge  string
	hello *pb.ServerHello

	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	nextReq atomic.Uint64
	mu      sync.Mutex
	pending map[uint64]chan *pb.Response
	dead    bool
	disc    *DisconnectError

	ackDirty map[string]struct{} // guarded by mu
	ackKick  chan struct{}
	syncKick chan struct{}
	synced   chan struct{} // closed after the first full sync
	// keysReady is closed after the end-to-end setup (prekey upload,
	// device list) of this session was attempted.
	keysReady    chan struct{}
	replenishing atomic.Bool
}

func newSession(parent context.Context, c *Client, nc *noiseconn.Conn, edge string, hello *pb.ServerHello) *session {
	ctx, cancel := context.WithCancelCause(parent)
	return &session{
		c: c, nc: nc, edge: edge, hello: hello, ctx: ctx, cancel: cancel,
		pending:   map[uint64]chan *pb.Response{},
		ackDirty:  map[string]struct{}{},
		ackKick:   make(chan struct{}, 1),
		syncKick:  make(chan struct{}, 1),
		synced:    make(chan struct{}),
		keysReady: make(chan struct{}),
	}
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// send writes one frame. A write failure kills the session.
func (s *session) send(ctx context.Context, f *pb.ClientFrame) error {
	b, err := proto.Marshal(f)
	if err != nil {
		return fmt.Errorf("client: encode frame: %w", err)
	}
	if len(b) > noiseconn.MaxPlaintext {
		return fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrBadArgument, len(b), noiseconn.MaxPlaintext)
	}
	if err := s.nc.Send(ctx, b); err != nil {
		if ctx.Err() == nil {
			s.cancel(fmt.Errorf("%w: %w", ErrSessionLost, err))
		}
		return fmt.Errorf("%w: %w", ErrSessionLost, err)
	}
	return nil
}

// call sends f with a fresh req_id and waits for its Response. A server
// error comes back as a *core.WireError (with the response).
func (s *session) call(ctx context.Context, f *pb.ClientFrame) (*pb.Response, error) {
	p, err := s.begin(ctx, f)
	if err != nil {
		return nil, err
	}
	return p.await(ctx)
}

// pendingCall is a request on the wire whose response has not been read.
type pendingCall struct {
	s  *session
	id uint64
	ch chan *pb.Response
}

// begin registers a reply slot for f and writes it; the frame is on the
// wire (in call order for callers of one goroutine) when begin returns.
func (s *session) begin(ctx context.Context, f *pb.ClientFrame) (*pendingCall, error) {
	id := s.nextReq.Add(1)
	f.ReqId = id
	p := &pendingCall{s: s, id: id, ch: make(chan *pb.Response, 1)}
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return nil, ErrSessionLost
	}
	s.pending[id] = p.ch
	s.mu.Unlock()
	if err := s.send(ctx, f); err != nil {
		p.done()
		return nil, err
	}
	return p, nil
}

func (p *pendingCall) done() {
	p.s.mu.Lock()
	delete(p.s.pending, p.id)
	p.s.mu.Unlock()
}

// await waits for the response of a begun call.
func (p *pendingCall) await(ctx context.Context) (*pb.Response, error) {
	defer p.done()
	select {
	case r := <-p.ch:
		if err := wireErr(r.GetError()); err != nil {
			return r, err
		}
		return r, nil
	case <-p.s.ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrSessionLost, context.Cause(p.s.ctx))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// read is the session's reader loop; it returns why the session ended.
// The session's end (its context) closes the connection, which ends the
// read: one registration with the context per session, where a
// cancellable context handed to every read makes the WebSocket library
// register (and unregister) a callback per received frame.
func (s *session) read() error {
	stop := context.AfterFunc(s.ctx, func() { _ = s.nc.Close() })
	defer stop()
	rctx := context.WithoutCancel(s.ctx)
	for {
		b, err := s.nc.Recv(rctx)
		if err != nil {
			s.mu.Lock()
			d := s.disc
			s.mu.Unlock()
			if d != nil {
				return d
			}
			if cause := context.Cause(s.ctx); cause != nil {
				return cause
			}
			return fmt.Errorf("%w: %w", ErrSessionLost, err)
		}
		var f pb.ServerFrame
		if err := proto.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("%w: malformed server frame: %w", ErrSessionLost, err)
		}
		s.handle(&f)
	}
}

func (s *session) handle(f *pb.ServerFrame) {
	c := s.c
	switch b := f.GetBody().(type) {
	case *pb.ServerFrame_Response:
		s.mu.Lock()
		ch := s.pending[b.Response.GetReqId()]
		s.mu.Unlock()
		if ch != nil {
			select {
			case ch <- b.Response:
			default:
			}
		}
	case *pb.ServerFrame_Delivery:
		c.ingest(s, []*pb.Message{b.Delivery}, false)
	case *pb.ServerFrame_Receipt:
		r := b.Receipt
		c.notify(ReceiptEvent{Conv: r.GetConvId(), From: keyOf(r.GetFrom()), Kind: r.GetKind(), Seq: r.GetSeq()})
	case *pb.ServerFrame_Receipts:
		for _, r := range b.Receipts.GetReceipts() {
			c.notify(ReceiptEvent{Conv: r.GetConvId(), From: keyOf(r.GetFrom()), Kind: r.GetKind(), Seq: r.GetSeq()})
		}
	case *pb.ServerFrame_Presence:
		p := b.Presence
		c.notify(PresenceEvent{User: p.GetUserId(), Online: p.GetOnline(), LastSeenMs: p.GetLastSeenMs()})
	case *pb.ServerFrame_Typing:
		t := b.Typing
		c.notify(TypingEvent{Conv: t.GetConvId(), From: keyOf(t.GetFrom()), Typing: t.GetTyping()})
	case *pb.ServerFrame_PrekeyStatus:
		if b.PrekeyStatus.GetLow() {
			c.replenish(s)
		}
	case *pb.ServerFrame_Disconnect:
		d := b.Disconnect
		s.mu.Lock()
		s.disc = &DisconnectError{Code: d.GetCode(), Detail: d.GetDetail(), Reconnect: d.GetReconnect()}
		s.mu.Unlock()
	}
}

// markAck notes that conv has new stored entries to acknowledge.
func (s *session) markAck(conv string) {
	s.mu.Lock()
	s.ackDirty[conv] = struct{}{}
	s.mu.Unlock()
	kick(s.ackKick)
}

// acker sends coalesced DeliveryAcks: for each conversation touched since
// the last round, one ack for the highest contiguous stored seq, at most
// one in flight per conversation and, under a steady stream, one per
// Config.AckInterval (the conversation stays busy until the interval
// since its last ack has passed). The region confirms each ack; the
// confirmed cursor is recorded in the store, and whatever is stored but
// unconfirmed is acked again on the next session (see syncer).
func (s *session) acker() {
	var waits sync.WaitGroup
	defer waits.Wait()
	var mu sync.Mutex
	inflight := map[string]uint64{}
	for {
		select {
		case <-s.ackKick:
		case <-s.ctx.Done():
			return
		}
		s.mu.Lock()
		dirty := s.ackDirty
		s.ackDirty = map[string]struct{}{}
		s.mu.Unlock()
		for conv := range dirty {
			head := s.c.store.Head(conv)
			mu.Lock()
			busy := inflight[conv] != 0
			if !busy && head > s.c.store.Acked(conv) {
				inflight[conv] = head
			}
			mu.Unlock()
			if busy {
				// Re-examined when the ack in flight is answered.
				continue
			}
			if head <= s.c.store.Acked(conv) {
				continue
			}
			sentAt := time.Now()
			p, err := s.begin(s.ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: head}}})
			if err != nil {
				return
			}
			waits.Go(func() {
				_, err := p.await(s.ctx)
				defer func() {
					// Entries stored meanwhile are acked no earlier than
					// AckPause(AckInterval) after this ack.
					if d := AckPause(s.c.cfg.AckInterval) - time.Since(sentAt); d > 0 {
						t := time.NewTimer(d)
						select {
						case <-t.C:
						case <-s.ctx.Done():
						}
						t.Stop()
					}
					mu.Lock()
					delete(inflight, conv)
					mu.Unlock()
					s.markAck(conv) // newer entries may have arrived meanwhile
				}()
				var we *core.WireError
				switch {
				case err == nil, errors.As(err, &we) && !retryable(we.Code):
					// Confirmed, or refused for good (e.g. no longer a
					// member): either way, do not ack this seq again.
					if err := s.c.store.SetAcked(conv, head); err != nil {
						s.c.log.Warn("client: record ack", "conv", conv, "err", err)
					}
				}
			})
		}
	}
}

// ackUnconfirmed marks every conversation whose stored head is beyond the
// confirmed delivery cursor, so the acker acks it on this session.
func (s *session) ackUnconfirmed() {
	for _, cs := range s.c.store.Conversations() {
		if cs.Head > cs.Acked {
			s.markAck(cs.Conv)
		}
	}
}

// syncer runs a full sync when the session starts and whenever a gap is found.
func (s *session) syncer() {
	kick(s.syncKick)
	first := true
	for {
		select {
		case <-s.syncKick:
		case <-s.ctx.Done():
			return
		}
		if err := s.c.syncAll(s); err != nil {
			if s.ctx.Err() != nil || errors.Is(err, ErrSessionLost) {
				return
			}
			s.c.log.Warn("client: sync failed", "edge", s.edge, "err", err)
			// A failed sync must not leave the session looking healthy
			// with a hole: end it; the reconnect syncs again.
			s.cancel(fmt.Errorf("%w: sync: %w", ErrSessionLost, err))
			return
		}
		if first {
			first = false
			s.ackUnconfirmed()
			close(s.synced)
		}
	}
}
