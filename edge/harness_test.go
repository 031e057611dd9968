package edge_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/quic-go/webtransport-go"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// regionDouble is a test double of the *region* side of edge.Backend: an
// in-memory device registry plus a log of the calls the edge made. The
// edge under test (transports, handshake, limits, sessions) is real.
type regionDouble struct {
	mu       sync.Mutex
	devices  map[string]core.DeviceKey // by static key
	next     map[string]uint32
	opened   []core.Route
	closed   []core.Route
	started  []string
	queries  []string
	snapshot *pb.PresenceSnapshot // presence_subscribe answer; nil: permit (below)
	// permit, when non-nil, is the set of users a presence_subscribe may
	// see (the region's peer rule); nil permits everyone. beforeSnapshot,
	// if set, runs (without mu) before a presence_subscribe is answered.
	permit         map[string]bool
	beforeSnapshot func()
	// routes behaves like core.Store's routes: SessionOpened overwrites,
	// SessionClosed removes only a route that still names its session. A
	// device with a route is online.
	routes map[core.DeviceKey]core.Route
	// jitter, if set, delays each route call by up to this long before it
	// takes effect and again before it returns, as a real backend's latency
	// varies.
	jitter time.Duration
}

func newRegionDouble() *regionDouble {
	return &regionDouble{devices: map[string]core.DeviceKey{}, next: map[string]uint32{}, routes: map[core.DeviceKey]core.Route{}}
}

func (r *regionDouble) delay() {
	r.mu.Lock()
	j := r.jitter
	r.mu.Unlock()
	if j > 0 {
		time.Sleep(time.Duration(mrand.Int64N(int64(j))))
	}
}

// route is the device's current route (false: offline).
func (r *regionDouble) route(dev core.DeviceKey) (core.Route, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.routes[dev]
	return rt, ok
}

func (r *regionDouble) Authenticate(_ context.Context, static []byte) (core.DeviceKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.devices[string(static)]
	if !ok {
		return core.DeviceKey{}, fmt.Errorf("device: %w", core.ErrNotFound)
	}
	return d, nil
}

func (r *regionDouble) Register(_ context.Context, static []byte, req *pb.RegisterRequest) (*pb.RegisterResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !core.ValidUserID(req.GetUserId()) {
		return nil, fmt.Errorf("user id: %w", core.ErrInvalidArgument)
	}
	if d, ok := r.devices[string(static)]; ok {
		return &pb.RegisterResponse{Device: d.Addr()}, nil
	}
	r.next[req.GetUserId()]++
	d := core.DeviceKey{User: req.GetUserId(), Device: r.next[req.GetUserId()]}
	r.devices[string(static)] = d
	return &pb.RegisterResponse{Device: d.Addr()}, nil
}

func (r *regionDouble) SessionOpened(_ context.Context, rt core.Route) error {
	r.delay()
	defer r.delay()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opened = append(r.opened, rt)
	r.routes[rt.Device] = rt
	return nil
}

func (r *regionDouble) SessionClosed(_ context.Context, dev core.DeviceKey, session uint64) error {
	r.delay()
	defer r.delay()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = append(r.closed, core.Route{Device: dev, Session: session})
	if r.routes[dev].Session == session {
		delete(r.routes, dev)
	}
	return nil
}

func (r *regionDouble) EdgeStarted(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started = append(r.started, id)
	return nil
}

func (r *regionDouble) Query(_ context.Context, dev core.DeviceKey, f *pb.ClientFrame) (*pb.Response, error) {
	r.mu.Lock()
	hook := r.beforeSnapshot
	r.mu.Unlock()
	if f.GetPresenceSubscribe() != nil && hook != nil {
		hook()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queries = append(r.queries, dev.String())
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_ListConversations:
		return &pb.Response{Body: &pb.Response_Conversations{Conversations: &pb.ListConversationsResponse{
			Conversations: []*pb.ConversationInfo{{ConvId: "g:owned" + dev.User}}}}}, nil
	case *pb.ClientFrame_PresenceSubscribe:
		if r.snapshot != nil {
			return &pb.Response{Body: &pb.Response_Presence{Presence: r.snapshot}}, nil
		}
		snap := &pb.PresenceSnapshot{}
		for _, u := range b.PresenceSubscribe.GetUsers() {
			if r.permit == nil || r.permit[u] {
				snap.Users = append(snap.Users, &pb.PresenceEvent{UserId: u})
			}
		}
		return &pb.Response{Body: &pb.Response_Presence{Presence: snap}}, nil
	case *pb.ClientFrame_LookupUser:
		return nil, fmt.Errorf("user: %w", core.ErrNotFound)
	}
	return &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}}, nil
}

func (r *regionDouble) routeOf(dev core.DeviceKey) (core.Route, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.opened) - 1; i >= 0; i-- {
		if r.opened[i].Device == dev {
			return r.opened[i], true
		}
	}
	return core.Route{}, false
}

func (r *regionDouble) closedRoutes() []core.Route {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]core.Route(nil), r.closed...)
}

// env is one edge on loopback with a real (embedded, Kafka-protocol) bus.
type env struct {
	t   testing.TB
	e   *edge.Edge
	be  *regionDouble
	bus *kafkabus.Bus
	cfg edge.Config
	ik  bool // clients use the one-round-trip IK handshake
}

func newEnv(t testing.TB, mutate func(*edge.Config)) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	broker, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = broker.Close() })
	bus, err := kafkabus.New(kafkabus.Config{Brokers: broker.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	for _, tp := range []string{"ingress", "presence"} {
		if err := bus.EnsureTopic(ctx, tp, 2); err != nil {
			t.Fatal(err)
		}
	}
	cfg := edge.Config{ID: "e1", Region: "r1", WSAddr: "127.0.0.1:0", WTAddr: "127.0.0.1:0"}
	if mutate != nil {
		mutate(&cfg)
	}
	be := newRegionDouble()
	e, err := edge.New(cfg, be, bus)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return &env{t: t, e: e, be: be, bus: bus, cfg: cfg}
}

// tail consumes topic from its end; records arrive on the returned channel.
func (v *env) tail(topic string) <-chan core.BusRecord {
	v.t.Helper()
	ch := make(chan core.BusRecord, 1000)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = v.bus.Consume(ctx, core.ConsumeSpec{Topic: topic, OnReady: func() { close(ready) }},
			func(_ context.Context, r core.BusRecord) error { ch <- r; return nil })
	}()
	v.t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		v.t.Fatal("consumer not ready")
	}
	return ch
}

func (v *env) produce(topic string, key string, m proto.Message) {
	v.t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		v.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.bus.Produce(ctx, core.BusRecord{Topic: topic, Key: []byte(key), Value: b}); err != nil {
		v.t.Fatal(err)
	}
}

// ------------------------------------------------------------------ clients

type client struct {
	t      testing.TB
	key    noiseconn.Keypair
	nc     *noiseconn.Conn
	ws     *websocket.Conn
	wt     *webtransport.Session
	hello  *pb.ServerHello
	nextID uint64
}

type wsClientConn struct{ c *websocket.Conn }

func (w wsClientConn) ReadMessage(ctx context.Context) ([]byte, error) {
	_, b, err := w.c.Read(ctx)
	return b, err
}
func (w wsClientConn) WriteMessage(ctx context.Context, b []byte) error {
	return w.c.Write(ctx, websocket.MessageBinary, b)
}
func (w wsClientConn) Close() error { return w.c.CloseNow() }

type wtClientConn struct {
	s   *webtransport.Session
	str *webtransport.Stream
}

func (w wtClientConn) ReadMessage(ctx context.Context) ([]byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = w.str.SetReadDeadline(dl)
	}
	var h [2]byte
	if _, err := io.ReadFull(w.str, h[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(h[:]))
	_, err := io.ReadFull(w.str, b)
	return b, err
}
func (w wtClientConn) WriteMessage(_ context.Context, b []byte) error {
	buf := binary.BigEndian.AppendUint16(nil, uint16(len(b)))
	_, err := w.str.Write(append(buf, b...))
	return err
}
func (w wtClientConn) Close() error { return w.s.CloseWithError(0, "") }

func newKey(t testing.TB) noiseconn.Keypair {
	k, err := noiseconn.GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func clientHello(dev *pb.DeviceAddr) []byte {
	b, _ := proto.Marshal(&pb.ClientHello{ProtocolVersion: 1, Device: dev, ClientName: "edge-test"})
	return b
}

func (v *env) dialWSRaw() *websocket.Conn {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, v.e.WSURL(), nil)
	if err != nil {
		v.t.Fatal(err)
	}
	c.SetReadLimit(1 << 20)
	v.t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func (v *env) dialWTRaw() (*webtransport.Session, *webtransport.Stream) {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := v.e.CertHash()
	d := &webtransport.Transport{TLSClientConfig: &tls.Config{
		// Like a browser's serverCertificateHashes: trust the pinned hash.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no certificate")
			}
			h := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if !bytes.Equal(h[:], want) {
				return errors.New("certificate hash mismatch")
			}
			return nil
		},
	}}
	v.t.Cleanup(func() { _ = d.Close() })
	_, sess, err := d.Dial(ctx, v.e.WTURL(), nil)
	if err != nil {
		v.t.Fatal(err)
	}
	v.t.Cleanup(func() { _ = sess.CloseWithError(0, "") })
	str, err := sess.OpenStreamSync(ctx)
	var se *webtransport.SessionError
	if errors.As(err, &se) {
		// The edge refused the session at once (a connection limit, not
		// serving) before the stream was opened: no stream; the caller
		// reads the refusal with wtCode.
		return sess, nil
	}
	if err != nil {
		v.t.Fatal(err)
	}
	return sess, str
}

// connect dials over WebSocket ("ws") or WebTransport ("wt") and runs the
// Noise handshake with key.
func (v *env) connect(kind string, key noiseconn.Keypair, dev *pb.DeviceAddr) *client {
	v.t.Helper()
	c := &client{t: v.t, key: key}
	var mc noiseconn.MsgConn
	switch kind {
	case "ws":
		c.ws = v.dialWSRaw()
		mc = wsClientConn{c.ws}
	case "wt":
		var str *webtransport.Stream
		c.wt, str = v.dialWTRaw()
		mc = wtClientConn{c.wt, str}
	}
	if err := c.handshake(v, mc, dev); err != nil {
		v.t.Fatal(err)
	}
	return c
}

// connectWS is connect over WebSocket for other goroutines than the
// test's: it returns its error instead of failing the test.
func (v *env) connectWS(key noiseconn.Keypair, dev *pb.DeviceAddr) (*client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, v.e.WSURL(), nil)
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	v.t.Cleanup(func() { _ = ws.CloseNow() })
	c := &client{t: v.t, key: key, ws: ws}
	if err := c.handshake(v, wsClientConn{ws}, dev); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *client) handshake(v *env, mc noiseconn.MsgConn, dev *pb.DeviceAddr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := noiseconn.Client(ctx, mc, noiseconn.ClientConfig{Static: c.key, Payload: clientHello(dev), ServerStatic: v.e.PublicKey(), UseIK: v.ik})
	if err != nil {
		return err
	}
	c.nc = nc
	c.hello = new(pb.ServerHello)
	return proto.Unmarshal(nc.PeerPayload(), c.hello)
}

// registered connects a new key and registers it as a device of user.
func (v *env) registered(kind, user string) (*client, core.DeviceKey) {
	v.t.Helper()
	c := v.connect(kind, newKey(v.t), nil)
	r := c.call(&pb.ClientFrame{Body: &pb.ClientFrame_Register{Register: &pb.RegisterRequest{UserId: user, IdentityKey: make([]byte, 32)}}})
	if r.GetError() != nil {
		v.t.Fatalf("register: %v", r.GetError())
	}
	return c, core.KeyOf(r.GetRegister().GetDevice())
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.nc.Send(ctx, b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) send(f *pb.ClientFrame) {
	c.t.Helper()
	b, err := proto.Marshal(f)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(b)
}

// recv returns the next frame (failing the test after 10 s).
func (c *client) recv() *pb.ServerFrame {
	c.t.Helper()
	f, err := c.tryRecv()
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

func (c *client) tryRecv() (*pb.ServerFrame, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := c.nc.Recv(ctx)
	if err != nil {
		return nil, err
	}
	f := new(pb.ServerFrame)
	if err := proto.Unmarshal(b, f); err != nil {
		return nil, err
	}
	return f, nil
}

// call sends f with a fresh req id and returns the response to it,
// failing on any other frame in between.
func (c *client) call(f *pb.ClientFrame) *pb.Response {
	c.t.Helper()
	c.nextID++
	f.ReqId = c.nextID
	c.send(f)
	r := c.recv().GetResponse()
	if r == nil || r.GetReqId() != f.ReqId {
		c.t.Fatalf("want response to %d, got %v", f.ReqId, r)
	}
	return r
}

func (c *client) ping() {
	c.t.Helper()
	r := c.call(&pb.ClientFrame{Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{ClientTimeMs: 42}}})
	if r.GetPong().GetClientTimeMs() != 42 {
		c.t.Fatalf("bad pong %v", r)
	}
}

// expectClosed reads until the connection ends and returns the transport's
// close code (WebSocket status - 4000, or WebTransport session error code)
// and the Disconnect seen before, if any.
func (c *client) expectClosed() (pb.ErrorCode, *pb.Disconnect) {
	c.t.Helper()
	var disc *pb.Disconnect
	for range 1000 {
		f, err := c.tryRecv()
		if err == nil {
			if d := f.GetDisconnect(); d != nil {
				disc = d
			}
			continue
		}
		return c.closeCode(err), disc
	}
	c.t.Fatal("connection did not close")
	return 0, nil
}

func (c *client) closeCode(err error) pb.ErrorCode {
	c.t.Helper()
	if c.ws != nil {
		s := websocket.CloseStatus(err)
		if s < edge.CloseCodeBase {
			c.t.Fatalf("websocket closed with %d (%v)", s, err)
		}
		return pb.ErrorCode(int(s) - edge.CloseCodeBase)
	}
	return wtCode(c.t, c.wt)
}

// wtCode waits for the session to end and returns its session error code,
// or -1 when the QUIC connection ended without one.
func wtCode(t testing.TB, s *webtransport.Session) pb.ErrorCode {
	t.Helper()
	select {
	case <-s.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("webtransport session not closed")
	}
	_, err := s.OpenStream()
	var se *webtransport.SessionError
	if !errors.As(err, &se) {
		return -1
	}
	return pb.ErrorCode(se.ErrorCode)
}
