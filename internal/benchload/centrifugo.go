package benchload

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/encoding/protowire"
)

// Centrifugo is a Centrifugo v6 server as a Target, spoken to with its
// bidirectional client protocol over WebSocket in the protobuf format
// (ws://host:port/connection/websocket?cf_protocol=protobuf): a stream of
// uvarint-length-prefixed Command and Reply messages, several per
// WebSocket message allowed. It is written here from the protocol's
// definition (centrifugal/protocol client.proto: Command, Reply, Push,
// Publication, ConnectRequest, SubscribeRequest, PublishRequest) so that
// chatmesh's module does not depend on a Centrifugo SDK.
//
// Users connect with an HS256 JWT (claim sub = user) signed with
// HMACSecret; each subscribes to its personal channel (Direct's
// destination); a group is one channel every member subscribes to. The
// server needs, in its v6 configuration, client.token.hmac_secret_key and
// channel.without_namespace.allow_subscribe_for_client and
// allow_publish_for_client (scripts/bench-compare.sh writes it).
type Centrifugo struct {
	// URL is the WebSocket endpoint, e.g.
	// ws://127.0.0.1:8100/connection/websocket.
	URL string
	// HMACSecret signs connection tokens (client.token.hmac_secret_key).
	HMACSecret string
	// DialTimeout bounds one Dial (default 30 s).
	DialTimeout time.Duration
}

// Name implements Target.
func (t *Centrifugo) Name() string { return "centrifugo" }

// SelfDelivery implements Target: a 1:1 message goes to the receiver's
// personal channel only.
func (t *Centrifugo) SelfDelivery() bool { return false }

// Direct implements Target: the receiver's personal channel.
func (t *Centrifugo) Direct(_, to string) string { return personalChannel(to) }

func personalChannel(user string) string { return "u." + user }

// Group implements Target: every member subscribes to one channel.
func (t *Centrifugo) Group(ctx context.Context, name string, _ []string, conns []Conn) (string, error) {
	ch := "g." + name
	for _, c := range conns {
		cc, ok := c.(*cfConn)
		if !ok {
			return "", errors.New("benchload: not a centrifugo connection")
		}
		if err := cc.subscribe(ctx, ch); err != nil {
			return "", err
		}
	}
	return ch, nil
}

// token is an HS256 JWT with the claim sub = user.
func (t *Centrifugo) token(user string) string {
	enc := base64.RawURLEncoding
	head := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	body := enc.EncodeToString(fmt.Appendf(nil, `{"sub":%q}`, user))
	m := hmac.New(sha256.New, []byte(t.HMACSecret))
	m.Write([]byte(head + "." + body))
	return head + "." + body + "." + enc.EncodeToString(m.Sum(nil))
}

// Protocol field numbers (centrifugal/protocol client.proto).
const (
	cmdID        = 1
	cmdConnect   = 4
	cmdSubscribe = 5
	cmdPublish   = 7

	replyID      = 1
	replyError   = 2
	replyPush    = 4
	replyConnect = 5

	errorCode    = 1
	errorMessage = 2

	pushChannel = 2
	pushPub     = 4
	pubData     = 4
	pubOffset   = 6

	connectToken = 1
	connectName  = 4
	subChannel   = 1
	publishChan  = 1
	publishData  = 2

	// cfTooManyRequests is Centrifugo's error code for a rate limit.
	cfTooManyRequests = 111
)

// Dial implements Target: connect with a token, then subscribe to the
// user's personal channel.
func (t *Centrifugo) Dial(ctx context.Context, user string, onPush PushFunc) (Conn, error) {
	timeout := t.DialTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ws, _, err := websocket.Dial(dctx, t.URL+"?cf_protocol=protobuf", &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil, fmt.Errorf("benchload: centrifugo dial: %w", err)
	}
	ws.SetReadLimit(1 << 20)
	c := &cfConn{ws: ws, onPush: onPush, pending: map[uint32]func(cfReply){}, done: make(chan struct{})}
	go c.read()
	var req []byte
	req = protowire.AppendTag(req, connectToken, protowire.BytesType)
	req = protowire.AppendString(req, t.token(user))
	req = protowire.AppendTag(req, connectName, protowire.BytesType)
	req = protowire.AppendString(req, "chatmesh-bench")
	if _, err := c.call(dctx, cmdConnect, req); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("benchload: centrifugo connect %s: %w", user, err)
	}
	if err := c.subscribe(dctx, personalChannel(user)); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// cfReply is the part of a Reply the bench reads.
type cfReply struct {
	id      uint32
	errCode uint64
	errMsg  string
	closed  bool
}

type cfConn struct {
	ws     *websocket.Conn
	onPush PushFunc

	mu      sync.Mutex
	next    uint32
	pending map[uint32]func(cfReply)
	err     error
	done    chan struct{}
	closing atomic.Bool
}

func (c *cfConn) Done() <-chan struct{} { return c.done }

func (c *cfConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *cfConn) Close() error {
	c.closing.Store(true)
	return c.ws.CloseNow()
}

func (c *cfConn) subscribe(ctx context.Context, ch string) error {
	var req []byte
	req = protowire.AppendTag(req, subChannel, protowire.BytesType)
	req = protowire.AppendString(req, ch)
	if _, err := c.call(ctx, cmdSubscribe, req); err != nil {
		return fmt.Errorf("benchload: centrifugo subscribe %s: %w", ch, err)
	}
	return nil
}

// write sends one Command (uvarint length + Command) as one WebSocket
// message; an empty cmd is a pong.
func (c *cfConn) write(ctx context.Context, cmd []byte) error {
	buf := make([]byte, 0, len(cmd)+binary.MaxVarintLen32)
	buf = binary.AppendUvarint(buf, uint64(len(cmd)))
	buf = append(buf, cmd...)
	if err := c.ws.Write(ctx, websocket.MessageBinary, buf); err != nil {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return nil
}

func (c *cfConn) begin(ctx context.Context, field protowire.Number, req []byte, fn func(cfReply)) error {
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		return ErrClosed
	}
	c.next++
	id := c.next
	c.pending[id] = fn
	c.mu.Unlock()
	cmd := make([]byte, 0, len(req)+16)
	cmd = protowire.AppendTag(cmd, cmdID, protowire.VarintType)
	cmd = protowire.AppendVarint(cmd, uint64(id))
	cmd = protowire.AppendTag(cmd, field, protowire.BytesType)
	cmd = protowire.AppendBytes(cmd, req)
	if err := c.write(ctx, cmd); err != nil {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return err
	}
	return nil
}

func (c *cfConn) call(ctx context.Context, field protowire.Number, req []byte) (cfReply, error) {
	ch := make(chan cfReply, 1)
	if err := c.begin(ctx, field, req, func(r cfReply) { ch <- r }); err != nil {
		return cfReply{}, err
	}
	select {
	case r := <-ch:
		return r, r.error()
	case <-ctx.Done():
		return cfReply{}, ctx.Err()
	}
}

func (r cfReply) error() error {
	switch {
	case r.closed:
		return ErrClosed
	case r.errCode == cfTooManyRequests:
		return fmt.Errorf("%w: centrifugo error %d: %s", ErrRejected, r.errCode, r.errMsg)
	case r.errCode != 0:
		return fmt.Errorf("benchload: centrifugo error %d: %s", r.errCode, r.errMsg)
	}
	return nil
}

// Publish implements Conn.
func (c *cfConn) Publish(ctx context.Context, dest string, body []byte, done func(uint64, error)) error {
	req := make([]byte, 0, len(dest)+len(body)+8)
	req = protowire.AppendTag(req, publishChan, protowire.BytesType)
	req = protowire.AppendString(req, dest)
	req = protowire.AppendTag(req, publishData, protowire.BytesType)
	req = protowire.AppendBytes(req, body)
	return c.begin(ctx, cmdPublish, req, func(r cfReply) { done(0, r.error()) })
}

func (c *cfConn) read() {
	ctx := context.Background()
	var err error
	for err == nil {
		var b []byte
		_, b, err = c.ws.Read(ctx)
		for err == nil && len(b) > 0 {
			n, k := protowire.ConsumeVarint(b)
			if k < 0 || uint64(len(b)-k) < n {
				err = errors.New("benchload: centrifugo: bad reply framing")
				break
			}
			msg := b[k : k+int(n)]
			b = b[k+int(n):]
			if len(msg) == 0 { // a ping: answer with an empty command
				err = c.write(ctx, nil)
				continue
			}
			err = c.handle(msg)
		}
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
	_ = c.ws.CloseNow()
	for _, fn := range pend {
		fn(cfReply{closed: true})
	}
	close(c.done)
}

// handle decodes one Reply: a response to a command, or a push.
func (c *cfConn) handle(msg []byte) error {
	var r cfReply
	var push []byte
	err := eachField(msg, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == replyID && typ == protowire.VarintType:
			r.id = uint32(x)
		case num == replyError && typ == protowire.BytesType:
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch num {
				case errorCode:
					r.errCode = x
				case errorMessage:
					r.errMsg = string(v)
				}
				return nil
			})
		case num == replyPush && typ == protowire.BytesType:
			push = v
		}
		return nil
	})
	if err != nil {
		return err
	}
	if push != nil {
		return c.onPushMsg(push)
	}
	if r.id == 0 {
		return nil
	}
	c.mu.Lock()
	fn := c.pending[r.id]
	delete(c.pending, r.id)
	c.mu.Unlock()
	if fn != nil {
		fn(r)
	}
	return nil
}

func (c *cfConn) onPushMsg(push []byte) error {
	var ch string
	var pub []byte
	err := eachField(push, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		switch {
		case num == pushChannel && typ == protowire.BytesType:
			ch = string(v)
		case num == pushPub && typ == protowire.BytesType:
			pub = v
		}
		return nil
	})
	if err != nil || pub == nil || c.onPush == nil {
		return err
	}
	p := Push{Dest: ch, At: time.Now()}
	err = eachField(pub, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == pubData && typ == protowire.BytesType:
			p.Body = v
		case num == pubOffset && typ == protowire.VarintType:
			p.Seq = x
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.onPush(p)
	return nil
}

// eachField walks the fields of one protobuf message; v is a bytes
// field's value, x a varint's.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("benchload: protobuf: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("benchload: protobuf: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}
