package benchload

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// Chatmesh is a chatmesh edge as a Target. Its devices do the real
// transport work of a chatmesh client — WebSocket, the Noise XX handshake,
// registration with an identity proof, protobuf frames encrypted one per
// Noise message, delivery acks — but send opaque random bodies as the
// envelope (no end-to-end encryption) and keep their state in memory (no
// fsync). Use one Chatmesh per load process; it remembers every user's
// keys so that a user can connect again as the same device.
type Chatmesh struct {
	// Edge is the edge's WebSocket URL (ws://host:port/v1/ws).
	Edge string
	// RegistrationToken is sent with every registration: all load
	// clients come from one address, which the edge's per-IP registration
	// limit would refuse otherwise.
	RegistrationToken string
	// Acks makes devices acknowledge deliveries as the SDK does once it
	// has stored them: per conversation, a DeliveryAck for the highest seq
	// received, at most one in flight (the next goes when the region has
	// answered the last, for everything received meanwhile). false sends
	// none.
	Acks bool
	// AckInterval is the mean pause between two acks of one conversation
	// by one device, drawn as the SDK draws it (client.AckPause: from half
	// of it to one and a half times it) for client.Config.AckInterval
	// (whose default, 250 ms, a zero here also means); negative: none (the
	// next ack goes as soon as the last is answered).
	AckInterval time.Duration
	// Ordered makes each send name the device's previous send to the
	// same conversation (after_client_msg_id, PROTOCOL.md §7.1.2), as the
	// SDK does with many sends in flight: the region then checks per-sender
	// order. A refusal (OUT_OF_ORDER) counts as a failed send.
	Ordered bool
	// DialTimeout bounds one Dial (default 30 s).
	DialTimeout time.Duration

	mu      sync.Mutex
	devices map[string]*cmDevice

	// Receipts counts the receipts devices received; ReceiptFrames the
	// frames that carried them (a Receipts frame carries several).
	Receipts, ReceiptFrames atomic.Int64
}

type cmDevice struct {
	noise    noiseconn.Keypair
	identity ed25519.PrivateKey
	id       uint32 // 0 until registered
}

// Name implements Target.
func (t *Chatmesh) Name() string { return "chatmesh" }

// SelfDelivery implements Target: the region fans a message out to every
// member device, the sender's own included.
func (t *Chatmesh) SelfDelivery() bool { return true }

// Direct implements Target.
func (t *Chatmesh) Direct(from, to string) string { return core.DirectConvID(from, to) }

func (t *Chatmesh) device(user string) (*cmDevice, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.devices == nil {
		t.devices = map[string]*cmDevice{}
	}
	if d := t.devices[user]; d != nil {
		return d, nil
	}
	kp, err := noiseconn.GenerateKeypair(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("benchload: noise key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("benchload: identity key: %w", err)
	}
	d := &cmDevice{noise: kp, identity: priv}
	t.devices[user] = d
	return d, nil
}

// Dial implements Target: handshake, and registration on the user's
// first Dial (the registered session continues as the device).
func (t *Chatmesh) Dial(ctx context.Context, user string, onPush PushFunc) (Conn, error) {
	d, err := t.device(user)
	if err != nil {
		return nil, err
	}
	timeout := t.DialTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t.mu.Lock()
	devID := d.id
	t.mu.Unlock()
	hello := &pb.ClientHello{ProtocolVersion: 1, ClientName: "chatmesh-bench/1"}
	if devID != 0 {
		hello.Device = &pb.DeviceAddr{UserId: user, DeviceId: devID}
	}
	payload, err := proto.Marshal(hello)
	if err != nil {
		return nil, fmt.Errorf("benchload: hello: %w", err)
	}
	mc, err := client.Dial(dctx, t.Edge, client.DialOptions{})
	if err != nil {
		return nil, err
	}
	nc, err := noiseconn.Client(dctx, mc, noiseconn.ClientConfig{Static: d.noise, Payload: payload})
	if err != nil {
		_ = mc.Close()
		return nil, fmt.Errorf("benchload: handshake: %w", err)
	}
	c := &cmConn{t: t, user: user, nc: nc, onPush: onPush, pending: map[uint64]func(*pb.Response){}, done: make(chan struct{})}
	go c.read()
	if devID == 0 {
		req := &pb.RegisterRequest{
			UserId: user, IdentityKey: d.identity.Public().(ed25519.PublicKey),
			IdentityProof:     ed25519.Sign(d.identity, core.RegisterProofMessage(user, d.noise.Public)),
			RegistrationToken: t.RegistrationToken,
		}
		r, err := c.Request(dctx, &pb.ClientFrame{Body: &pb.ClientFrame_Register{Register: req}})
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("benchload: register %s: %w", user, err)
		}
		t.mu.Lock()
		d.id = r.GetRegister().GetDevice().GetDeviceId()
		t.mu.Unlock()
	}
	return c, nil
}

// Group implements Target: users[0] creates the group with the others
// as members.
func (t *Chatmesh) Group(ctx context.Context, name string, users []string, conns []Conn) (string, error) {
	if len(users) < 2 || len(conns) < 1 {
		return "", errors.New("benchload: a group needs two users")
	}
	conv := core.GroupID(users[0], name)
	owner, ok := conns[0].(*cmConn)
	if !ok {
		return "", errors.New("benchload: not a chatmesh connection")
	}
	_, err := owner.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_CreateGroup{CreateGroup: &pb.CreateGroupRequest{
		ConvId: conv, Title: "bench", Members: users[1:]}}})
	if err != nil {
		return "", fmt.Errorf("benchload: create group: %w", err)
	}
	return conv, nil
}

// cmConn is one chatmesh session. Its reader goroutine is the only
// goroutine it owns.
type cmConn struct {
	t      *Chatmesh
	user   string
	nc     *noiseconn.Conn
	onPush PushFunc

	mu      sync.Mutex
	next    uint64
	pending map[uint64]func(*pb.Response)
	err     error
	done    chan struct{}
	closing atomic.Bool

	ackMu sync.Mutex
	acks  map[string]*ackState

	// sendMu keeps an ordered send's predecessor and its place on the
	// wire together (Chatmesh.Ordered); last (under lastMu, which the
	// reader also takes) is the previous send's client_msg_id per
	// conversation.
	sendMu sync.Mutex
	lastMu sync.Mutex
	last   map[string]string
}

// ackState is one conversation's delivery acks (under cmConn.ackMu).
type ackState struct {
	want, sent uint64
	inflight   bool // an ack is in flight, or the interval since the last has not passed
}

func (c *cmConn) Done() <-chan struct{} { return c.done }

func (c *cmConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *cmConn) Close() error {
	c.closing.Store(true)
	return c.nc.Close()
}

func (c *cmConn) read() {
	ctx := context.Background()
	var err error
	for {
		var b []byte
		b, err = c.nc.Recv(ctx)
		if err != nil {
			break
		}
		if d, ok := leanDelivery(b); ok {
			c.delivered(d)
			continue
		}
		var f pb.ServerFrame
		if err = proto.Unmarshal(b, &f); err != nil {
			err = fmt.Errorf("benchload: malformed server frame: %w", err)
			break
		}
		c.handle(&f)
	}
	if c.closing.Load() {
		err = ErrClosed
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	pend := c.pending
	c.pending = nil
	c.mu.Unlock()
	_ = c.nc.Close()
	for _, fn := range pend {
		fn(nil)
	}
	close(c.done)
}

func (c *cmConn) handle(f *pb.ServerFrame) {
	switch b := f.GetBody().(type) {
	case *pb.ServerFrame_Response:
		c.mu.Lock()
		fn := c.pending[b.Response.GetReqId()]
		delete(c.pending, b.Response.GetReqId())
		c.mu.Unlock()
		if fn != nil {
			fn(b.Response)
		}
	case *pb.ServerFrame_Delivery:
		m := b.Delivery
		c.delivered(delivery{conv: m.GetConvId(), seq: m.GetSeq(), kind: m.GetKind(), body: m.GetEnvelope().GetCiphertext()})
	case *pb.ServerFrame_Receipt:
		c.t.Receipts.Add(1)
		c.t.ReceiptFrames.Add(1)
	case *pb.ServerFrame_Receipts:
		c.t.Receipts.Add(int64(len(b.Receipts.GetReceipts())))
		c.t.ReceiptFrames.Add(1)
	case *pb.ServerFrame_Disconnect:
		d := b.Disconnect
		c.mu.Lock()
		if c.err == nil {
			c.err = &core.WireError{Code: d.GetCode(), Detail: "disconnect: " + d.GetDetail()}
		}
		c.mu.Unlock()
	}
}

// delivered takes a pushed message: the checker sees it, and the device
// acknowledges it if it acks.
func (c *cmConn) delivered(d delivery) {
	if d.kind == pb.MessageKind_MESSAGE_KIND_USER && c.onPush != nil {
		c.onPush(Push{Dest: d.conv, Seq: d.seq, Body: d.body, At: time.Now()})
	}
	if c.t.Acks {
		c.ack(d.conv, d.seq)
	}
}

// ack acknowledges conv up to seq, coalesced: one ack in flight per
// conversation, and the next no earlier than the ack interval after it.
func (c *cmConn) ack(conv string, seq uint64) {
	c.ackMu.Lock()
	defer c.ackMu.Unlock()
	if c.acks == nil {
		c.acks = map[string]*ackState{}
	}
	st := c.acks[conv]
	if st == nil {
		st = &ackState{}
		c.acks[conv] = st
	}
	st.want = max(st.want, seq)
	if st.inflight || st.want <= st.sent {
		return
	}
	st.inflight, st.sent = true, st.want
	sentAt := time.Now()
	interval := c.t.AckInterval
	if interval == 0 {
		interval = client.DefaultAckInterval
	}
	f := &pb.ClientFrame{Body: &pb.ClientFrame_Ack{Ack: &pb.DeliveryAck{ConvId: conv, Seq: st.sent}}}
	err := c.begin(context.Background(), f, func(r *pb.Response) {
		if r == nil {
			c.ackMu.Lock()
			st.inflight = false
			c.ackMu.Unlock()
			return
		}
		next := func() {
			c.ackMu.Lock()
			st.inflight = false
			want := st.want
			c.ackMu.Unlock()
			c.ack(conv, want)
		}
		if d := client.AckPause(interval) - time.Since(sentAt); d > 0 {
			time.AfterFunc(d, next)
			return
		}
		next()
	})
	if err != nil {
		st.inflight = false
	}
}

func (c *cmConn) send(ctx context.Context, f *pb.ClientFrame) error {
	b, err := proto.Marshal(f)
	if err != nil {
		return fmt.Errorf("benchload: encode: %w", err)
	}
	if err := c.nc.Send(ctx, b); err != nil {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return nil
}

// begin registers fn for the response to f and sends f.
func (c *cmConn) begin(ctx context.Context, f *pb.ClientFrame, fn func(*pb.Response)) error {
	s := f.GetSend()
	if c.t.Ordered && s != nil {
		c.sendMu.Lock()
		defer c.sendMu.Unlock()
	}
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		return ErrClosed
	}
	c.next++
	id := c.next
	f.ReqId = id
	if s != nil && s.ClientMsgId == "" {
		s.ClientMsgId = strconv.FormatUint(id, 36) // unique per device, as req ids are
	}
	if c.t.Ordered && s != nil {
		c.lastMu.Lock()
		if c.last == nil {
			c.last = map[string]string{}
		}
		s.AfterClientMsgId = c.last[s.GetConvId()]
		c.last[s.GetConvId()] = s.GetClientMsgId()
		c.lastMu.Unlock()
	}
	c.pending[id] = fn
	c.mu.Unlock()
	if err := c.send(ctx, f); err != nil {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return err
	}
	return nil
}

// Request sends f and waits for its response; a server error is returned
// as a *core.WireError.
func (c *cmConn) Request(ctx context.Context, f *pb.ClientFrame) (*pb.Response, error) {
	ch := make(chan *pb.Response, 1)
	if err := c.begin(ctx, f, func(r *pb.Response) { ch <- r }); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if r == nil {
			return nil, fmt.Errorf("%w: %w", ErrClosed, c.Err())
		}
		if e := r.GetError(); e != nil {
			return r, &core.WireError{Code: e.GetCode(), Detail: e.GetDetail()}
		}
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Publish implements Conn: a SendRequest whose envelope ciphertext is
// body; done gets the SendAck's seq.
func (c *cmConn) Publish(ctx context.Context, dest string, body []byte, done func(uint64, error)) error {
	f := &pb.ClientFrame{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
		ConvId: dest, Envelope: &pb.Envelope{Ciphertext: body}}}}
	return c.begin(ctx, f, func(r *pb.Response) {
		switch {
		case r == nil:
			done(0, ErrClosed)
		case r.GetError() != nil:
			e := r.GetError()
			if c.t.Ordered {
				// Not stored: a later send must not name it (this client
				// never resends), or every send after it would be refused
				// OUT_OF_ORDER. Those already on the wire are refused once.
				c.lastMu.Lock()
				if c.last[dest] == f.GetSend().GetClientMsgId() {
					c.last[dest] = ""
				}
				c.lastMu.Unlock()
			}
			var err error = &core.WireError{Code: e.GetCode(), Detail: e.GetDetail()}
			if e.GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
				err = fmt.Errorf("%w: %w", ErrRejected, err)
			}
			done(0, err)
		default:
			done(r.GetSend().GetSeq(), nil)
		}
	})
}

// Sync asks for every entry after the given cursors (conversation →
// seq), following `more`, and returns how many user messages came back.
func (c *cmConn) Sync(ctx context.Context, cursors map[string]uint64) (int, error) {
	cur := map[string]uint64{}
	for k, v := range cursors {
		cur[k] = v
	}
	n := 0
	for round := 0; round < 1000; round++ {
		req := &pb.SyncRequest{}
		for conv, after := range cur {
			req.Cursors = append(req.Cursors, &pb.ConvCursor{ConvId: conv, AfterSeq: after})
		}
		r, err := c.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Sync{Sync: req}})
		if err != nil {
			return n, err
		}
		s := r.GetSync()
		for _, m := range s.GetMessages() {
			if m.GetKind() == pb.MessageKind_MESSAGE_KIND_USER {
				n++
			}
			if m.GetSeq() > cur[m.GetConvId()] {
				cur[m.GetConvId()] = m.GetSeq()
			}
		}
		if !s.GetMore() {
			return n, nil
		}
	}
	return n, errors.New("benchload: sync did not end")
}

// Syncer is a connection that can catch up after a reconnect (chatmesh).
type Syncer interface {
	Sync(ctx context.Context, cursors map[string]uint64) (int, error)
}
