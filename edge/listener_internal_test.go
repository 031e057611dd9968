package edge

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// failingListener is a real TCP listener whose Accept first returns the
// queued errors, one per call.
type failingListener struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

func (f *failingListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	return f.Listener.Accept()
}

// wsEdge serves WebSocket on ln with a one-device backend.
func wsEdge(t *testing.T, ln net.Listener) *Edge {
	t.Helper()
	e, err := New(Config{ID: "e1"}, oneDevice{core.DeviceKey{User: "a", Device: 1}}, &recordingBus{})
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.started = true
	if err := e.serveWSOn(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return e
}

// pingOver dials the edge's WebSocket, runs the Noise handshake and a ping.
func pingOver(t *testing.T, e *Edge) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, e.WSURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	key, _ := noiseconn.GenerateKeypair(nil)
	hello, _ := proto.Marshal(&pb.ClientHello{ProtocolVersion: 1})
	nc, err := noiseconn.Client(ctx, wsMsgConn{c}, noiseconn.ClientConfig{Static: key, Payload: hello})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := proto.Marshal(&pb.ClientFrame{ReqId: 1, Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{}}})
	if err := nc.Send(ctx, b); err != nil {
		t.Fatal(err)
	}
	for {
		b, err := nc.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f pb.ServerFrame
		if err := proto.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		if f.GetResponse().GetPong() != nil {
			return
		}
	}
}

type wsMsgConn struct{ c *websocket.Conn }

func (w wsMsgConn) ReadMessage(ctx context.Context) ([]byte, error) {
	_, b, err := w.c.Read(ctx)
	return b, err
}
func (w wsMsgConn) WriteMessage(ctx context.Context, b []byte) error {
	return w.c.Write(ctx, websocket.MessageBinary, b)
}
func (w wsMsgConn) Close() error { return w.c.CloseNow() }

// TestAcceptErrorsDoNotStopListener: Accept failing — out of file
// descriptors, or with an error net/http does not consider temporary —
// pauses the listener; it then accepts again, and nothing is reported as
// failed.
func TestAcceptErrorsDoNotStopListener(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	ln := &failingListener{Listener: tcp, errs: []error{emfile, emfile, errors.New("accept: something permanent-looking"), emfile}}
	e := wsEdge(t, ln)
	pingOver(t, e)
	pingOver(t, e)
	st := e.Stats()
	if st.AcceptErrors != 4 || st.ListenerFailures != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestListenerStopIsLoud: a listener that stops while the edge runs (here
// its socket is closed underneath it) is counted and reported on Failed.
func TestListenerStopIsLoud(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := wsEdge(t, tcp)
	pingOver(t, e)
	_ = tcp.Close()
	select {
	case err := <-e.Failed():
		if !strings.Contains(err.Error(), "websocket listener stopped") {
			t.Fatalf("error %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("listener stop not reported")
	}
	if st := e.Stats(); st.ListenerFailures != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestConnLimiter: the total and per-IP caps and their release.
func TestConnLimiter(t *testing.T) {
	l := newConnLimiter(3, 2)
	for _, c := range []struct{ ip, want string }{{"a", ""}, {"a", ""}, {"a", "per-ip"}, {"b", ""}, {"c", "total"}} {
		if got := l.acquire(c.ip); got != c.want {
			t.Fatalf("acquire %s: %q, want %q", c.ip, got, c.want)
		}
	}
	l.release("a")
	if got := l.acquire("c"); got != "" || l.open() != 3 || len(l.perIP) != 3 {
		t.Fatalf("after release: %q, open %d, %v", got, l.open(), l.perIP)
	}
}

// One IPv6 host holds a whole /64: addresses of one /64 share its per-IP
// cap (else ~80 addresses of one host would fill the total cap), and a
// v4-mapped address counts as its IPv4 address.
func TestConnLimiterIPv6Prefix(t *testing.T) {
	l := newConnLimiter(100, 2)
	for _, c := range []struct{ ip, want string }{
		{"2001:db8:1:2::1", ""}, {"2001:db8:1:2::ffff", ""}, {"2001:db8:1:2:aaaa::9", "per-ip"},
		{"2001:db8:1:3::1", ""}, {"::ffff:192.0.2.7", ""}, {"192.0.2.7", ""}, {"192.0.2.7", "per-ip"},
	} {
		if got := l.acquire(c.ip); got != c.want {
			t.Fatalf("acquire %s: %q, want %q", c.ip, got, c.want)
		}
	}
	l.release("2001:db8:1:2::5") // any address of the /64 releases its slot
	if got := l.acquire("2001:db8:1:2::77"); got != "" {
		t.Fatalf("after release: %q", got)
	}
}
