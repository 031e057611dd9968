package loadgen_test

// BenchmarkHonestUnderAbuse measures honest clients' ack and delivery p99
// while an abuser on another client IP (127.0.0.2) runs one of the
// abuses of issue 6, with the edge's admission control on (defaults) and
// off (limits lifted, the behaviour before it existed). It reports
// honest_ack_p99_ms and honest_delivery_p99_ms per case. Run it with
//
//	go test ./internal/loadgen/ -run '^$' -bench HonestUnderAbuse -benchtime 1x
//
// It is a benchmark, not a test: nothing asserts a timing.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/loadgen"
	"github.com/chatmesh/chatmesh/internal/stack"
)

const abuserIP = "127.0.0.2"

// rawClient is an abuser: a bare Noise session from abuserIP.
type rawClient struct {
	nc     *noiseconn.Conn
	static []byte
	next   uint64
	frames atomic.Int64 // responses read
	limit  atomic.Int64 // of which RATE_LIMITED
}

func dialRaw(ctx context.Context, wsURL string) (*rawClient, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(abuserIP)}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	ws, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	key, err := noiseconn.GenerateKeypair(rand.Reader)
	if err != nil {
		return nil, err
	}
	hello, _ := proto.Marshal(&pb.ClientHello{ProtocolVersion: 1, ClientName: "abuser"})
	nc, err := noiseconn.Client(ctx, wsConn{ws}, noiseconn.ClientConfig{Static: key, Payload: hello})
	if err != nil {
		return nil, err
	}
	return &rawClient{nc: nc, static: key.Public}, nil
}

type wsConn struct{ c *websocket.Conn }

func (w wsConn) ReadMessage(ctx context.Context) ([]byte, error) {
	_, b, err := w.c.Read(ctx)
	return b, err
}
func (w wsConn) WriteMessage(ctx context.Context, b []byte) error {
	return w.c.Write(ctx, websocket.MessageBinary, b)
}
func (w wsConn) Close() error { return w.c.CloseNow() }

func (c *rawClient) send(ctx context.Context, f *pb.ClientFrame) error {
	c.next++
	f.ReqId = c.next
	b, err := proto.Marshal(f)
	if err != nil {
		return err
	}
	return c.nc.Send(ctx, b)
}

// register registers the raw client as user (identity proof included) and
// waits for the answer.
func (c *rawClient) register(ctx context.Context, user, token string) (*pb.Response, error) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	req := &pb.RegisterRequest{UserId: user, IdentityKey: pub, IdentityProof: ed25519.Sign(priv, core.RegisterProofMessage(user, c.static)),
		RegistrationToken: token}
	if err := c.send(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Register{Register: req}}); err != nil {
		return nil, err
	}
	for {
		b, err := c.nc.Recv(ctx)
		if err != nil {
			return nil, err
		}
		var f pb.ServerFrame
		if proto.Unmarshal(b, &f) == nil && f.GetResponse() != nil {
			return f.GetResponse(), nil
		}
	}
}

// drain reads and counts responses until the connection ends.
func (c *rawClient) drain(ctx context.Context) {
	for {
		b, err := c.nc.Recv(ctx)
		if err != nil {
			return
		}
		var f pb.ServerFrame
		if proto.Unmarshal(b, &f) == nil && f.GetResponse() != nil {
			c.frames.Add(1)
			if f.GetResponse().GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
				c.limit.Add(1)
			}
		}
	}
}

// abuse runs one abuse until ctx ends; it returns a short description of
// what it achieved.
// The flood and presence abusers' accounts were made earlier (here: with
// the token), as from many addresses; they then all run from abuserIP.
// An abuse that cannot start returns why instead of failing the run.
type abuse func(ctx context.Context, wsURL, token string) string

// flood: 20 accounts, each at the per-session limit of 50 messages/s.
func flood(ctx context.Context, wsURL, token string) string {
	const accounts, rate = 20, 50
	var sent atomic.Int64
	var wg sync.WaitGroup
	var clients []*rawClient
	for i := range accounts {
		c, err := dialRaw(ctx, wsURL)
		if err != nil {
			return fmt.Sprintf("flood: dial: %v", err)
		}
		if r, err := c.register(ctx, fmt.Sprintf("flood%d", i), token); err != nil || r.GetError() != nil {
			return fmt.Sprintf("flood: register: %v %v", err, r.GetError())
		}
		clients = append(clients, c)
	}
	for i, c := range clients {
		conv := core.DirectConvID(fmt.Sprintf("flood%d", i), fmt.Sprintf("flood%d", (i+1)%accounts))
		wg.Go(func() { c.drain(ctx) })
		wg.Go(func() {
			t := time.NewTicker(time.Second / rate)
			defer t.Stop()
			for n := 0; ; n++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				body := make([]byte, 256)
				err := c.send(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
					ConvId: conv, ClientMsgId: fmt.Sprintf("m%d", n), Envelope: &pb.Envelope{Ciphertext: body}}}})
				if err != nil {
					return
				}
				sent.Add(1)
			}
		})
	}
	<-ctx.Done()
	for _, c := range clients {
		c.nc.Close()
	}
	wg.Wait()
	var limited int64
	for _, c := range clients {
		limited += c.limit.Load()
	}
	return fmt.Sprintf("flood: %d sends, %d rate limited", sent.Load(), limited)
}

// presence: 20 accounts re-subscribing to 500 users as fast as answered.
func presence(ctx context.Context, wsURL, token string) string {
	const accounts = 20
	users := make([]string, core.MaxPresenceUsers)
	for i := range users {
		users[i] = fmt.Sprintf("lgpres%04d", i)
	}
	var subs, limited atomic.Int64
	var wg sync.WaitGroup
	for i := range accounts {
		c, err := dialRaw(ctx, wsURL)
		if err != nil {
			return fmt.Sprintf("presence: dial: %v", err)
		}
		if r, err := c.register(ctx, fmt.Sprintf("watch%d", i), token); err != nil || r.GetError() != nil {
			return fmt.Sprintf("presence: register: %v %v", err, r.GetError())
		}
		wg.Go(func() {
			defer c.nc.Close()
			for ctx.Err() == nil {
				if err := c.send(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: users}}}); err != nil {
					return
				}
				for { // one request in flight: wait for its answer
					raw, err := c.nc.Recv(ctx)
					if err != nil {
						return
					}
					var f pb.ServerFrame
					if proto.Unmarshal(raw, &f) == nil && f.GetResponse() != nil {
						subs.Add(1)
						if f.GetResponse().GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
							limited.Add(1)
						}
						break
					}
				}
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	return fmt.Sprintf("presence: %d re-subscriptions answered, %d rate limited", subs.Load(), limited.Load())
}

// register: fresh accounts registered as fast as answered, 8 at a time.
func register(ctx context.Context, wsURL, _ string) string {
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				c, err := dialRaw(ctx, wsURL)
				if err != nil {
					return
				}
				r, err := c.register(ctx, fmt.Sprintf("reg%d-%d", w, n), "")
				c.nc.Close()
				if err != nil {
					return
				}
				if r.GetError() == nil {
					ok.Add(1)
				} else {
					refused.Add(1)
				}
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	return fmt.Sprintf("register: %d accounts created, %d refused", ok.Load(), refused.Load())
}

func BenchmarkHonestUnderAbuse(b *testing.B) {
	cases := []struct {
		name  string
		abuse abuse
	}{{"none", nil}, {"flood", flood}, {"presence", presence}, {"register", register}}
	for _, admission := range []string{"off", "on"} {
		for _, c := range cases {
			b.Run(c.name+"/admission-"+admission, func(b *testing.B) {
				for range b.N {
					runAbuseCase(b, c.abuse, admission == "on")
				}
			})
		}
	}
}

func runAbuseCase(b *testing.B, ab abuse, admission bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	token := "honest-" + rand.Text()
	s, err := stack.Start(ctx, stack.Config{DataDir: b.TempDir(), WTAddr: "-", MaxConnsPerIP: 200, Partitions: 4,
		EdgeConfig: func(c *edge.Config) {
			c.Admission.RegistrationTokens = []string{token}
			if !admission {
				c.Admission.RegisterBurst, c.Admission.RegisterPerHour = 1e9, 1e9
				c.Admission.IPMessagesPerSecond, c.Admission.IPMessageBurst = 1e9, 1e9
				c.Admission.IPReadsPerSecond, c.Admission.IPReadBurst = 1e9, 1e9
				c.ReadBurst = 1e9 // presence re-subscriptions were one message token each
			}
		}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ws := s.Endpoints().WS
	actx, stopAbuse := context.WithCancel(ctx)
	what := make(chan string, 1)
	if ab != nil {
		go func() { what <- ab(actx, ws, token) }()
		time.Sleep(time.Second) // let the abuse ramp up
	} else {
		what <- "none"
	}
	res, err := loadgen.Run(ctx, loadgen.Config{Edges: []string{ws}, Users: 6, Groups: 0, DirectRate: 20,
		Duration: 8 * time.Second, Drain: 60 * time.Second, RegistrationToken: token})
	stopAbuse()
	desc := <-what
	if err != nil {
		b.Logf("honest run: %v", err)
	}
	b.ReportMetric(res.AckLatency.P99, "honest_ack_p99_ms")
	b.ReportMetric(res.DeliveryLatency.P99, "honest_delivery_p99_ms")
	b.ReportMetric(float64(res.Acked), "honest_acked")
	b.Logf("admission=%v %s; honest: %d sent, %d acked, ack p50 %.1f p99 %.1f ms, delivery p99 %.1f ms",
		admission, desc, res.Sent, res.Acked, res.AckLatency.P50, res.AckLatency.P99, res.DeliveryLatency.P99)
}
