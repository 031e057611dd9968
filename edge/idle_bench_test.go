package edge_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
	"github.com/chatmesh/chatmesh/edge"
)

// Idle connections are measured with the clients in a child process (this
// test binary, re-executed to run TestIdleClientsChild), so that the
// parent's memory is the edge's alone.
const (
	idleChildEnv = "CHATMESH_EDGE_IDLE_CHILD"
	idleURLEnv   = "CHATMESH_EDGE_IDLE_URL"
	idleNEnv     = "CHATMESH_EDGE_IDLE_N"
	idleKeyEnv   = "CHATMESH_EDGE_IDLE_SERVER_KEY"
)

// idleKey is the static key of idle client i (derived, so the child and
// the parent agree without passing keys around).
func idleKey(i int) noiseconn.Keypair {
	h := sha256.Sum256([]byte("chatmesh edge idle client " + strconv.Itoa(i)))
	pub, err := noiseconn.PublicKey(h[:])
	if err != nil {
		panic(err)
	}
	return noiseconn.Keypair{Private: h[:], Public: pub}
}

// idleFootprint is what one idle authenticated WebSocket session costs the
// edge process: heap and stack in use, and goroutines, per session.
type idleFootprint struct {
	bytesPerConn, heapPerConn, stackPerConn, goroutinesPerConn float64
	// connsPerSec is n over the time from starting the child to the last
	// session established (handshakes included; a rough set-up rate, the
	// child competing for the same cores).
	connsPerSec float64
}

func (f idleFootprint) String() string {
	return fmt.Sprintf("%.0f B/conn (heap %.0f, stack %.0f), %.2f goroutines/conn",
		f.bytesPerConn, f.heapPerConn, f.stackPerConn, f.goroutinesPerConn)
}

func memNow() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, m.StackInuse, runtime.NumGoroutine()
}

// measureIdle opens n authenticated WebSocket sessions from a child
// process and returns the edge process's footprint per session. Bounded:
// it fails after 2 minutes.
func measureIdle(t testing.TB, n int) idleFootprint {
	t.Helper()
	v := newEnv(t, func(c *edge.Config) {
		c.WTAddr = ""
		c.MaxConnsPerIP, c.MaxAcceptPerIP, c.MaxConns = n+16, 2*n+32, 2*n+32
		c.IdleTimeout = 10 * time.Minute
	})
	v.be.mu.Lock()
	for i := range n {
		v.be.devices[string(idleKey(i).Public)] = core.DeviceKey{User: "idle" + strconv.Itoa(i), Device: 1}
	}
	v.be.mu.Unlock()

	heap0, stack0, g0 := memNow()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClientsChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), idleChildEnv+"=1", idleURLEnv+"="+v.e.WSURL(), idleNEnv+"="+strconv.Itoa(n),
		idleKeyEnv+"="+fmt.Sprintf("%x", v.e.PublicKey()))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	cmd.Stdout = io.Discard // the child's test output; its errors go to stderr
	started := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = stdin.Close() // the child closes its connections and exits
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for v.e.Stats().Sessions < int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d sessions after 2 min", v.e.Stats().Sessions, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	setup := time.Since(started)
	time.Sleep(200 * time.Millisecond) // let post-handshake work settle
	heap1, stack1, g1 := memNow()
	if p := os.Getenv("CHATMESH_EDGE_IDLE_HEAPPROFILE"); p != "" {
		if fh, err := os.Create(p); err == nil {
			_ = pprof.WriteHeapProfile(fh)
			_ = fh.Close()
		}
	}
	fn := float64(n)
	f := idleFootprint{
		heapPerConn:       (float64(heap1) - float64(heap0)) / fn,
		stackPerConn:      (float64(stack1) - float64(stack0)) / fn,
		goroutinesPerConn: float64(g1-g0) / fn,
		connsPerSec:       fn / setup.Seconds(),
	}
	f.bytesPerConn = f.heapPerConn + f.stackPerConn
	return f
}

// BenchmarkIdleConnections reports the edge's memory and goroutines per
// idle authenticated WebSocket session (2,000 sessions; set
// CHATMESH_EDGE_IDLE_N for another count). b.N is ignored: run it with
// -benchtime=1x.
//
//	go test ./edge/ -run '^$' -bench BenchmarkIdleConnections -benchtime=1x
func BenchmarkIdleConnections(b *testing.B) {
	n := 2000
	if s := os.Getenv(idleNEnv); s != "" {
		n, _ = strconv.Atoi(s)
	}
	f := measureIdle(b, n)
	for b.Loop() {
	}
	b.ReportMetric(f.bytesPerConn, "B/conn")
	b.ReportMetric(f.heapPerConn, "heapB/conn")
	b.ReportMetric(f.stackPerConn, "stackB/conn")
	b.ReportMetric(f.goroutinesPerConn, "goroutines/conn")
	b.ReportMetric(f.connsPerSec, "setup-conn/s")
}

// TestIdleClientsChild is the client side of measureIdle; it does nothing
// unless run as that child. It connects the sessions, holds them until
// its stdin closes, then exits.
func TestIdleClientsChild(t *testing.T) {
	if os.Getenv(idleChildEnv) != "1" {
		t.Skip("helper process of measureIdle")
	}
	url := os.Getenv(idleURLEnv)
	n, _ := strconv.Atoi(os.Getenv(idleNEnv))
	var serverKey []byte
	if _, err := fmt.Sscanf(os.Getenv(idleKeyEnv), "%x", &serverKey); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conns := make([]*websocket.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				ws, _, err := websocket.Dial(ctx, url, nil)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = ws
				if _, err := noiseconn.Client(ctx, wsClientConn{ws}, noiseconn.ClientConfig{
					Static: idleKey(i), Payload: clientHello(nil), ServerStatic: serverKey}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Hold until the parent has measured (it closes our stdin).
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	for _, c := range conns {
		_ = c.CloseNow()
	}
}

// TestIdleSessionGoroutines: an idle authenticated session costs the edge
// one goroutine (its reader) — no writer, no timer, no handler goroutine
// held by net/http — and a push starts a drain that ends once the queue
// is empty. (The clients here are idle in this process and run none.)
func TestIdleSessionGoroutines(t *testing.T) {
	const n = 40
	v := newEnv(t, func(c *edge.Config) { c.WTAddr = "" })
	_, _, g0 := memNow()
	clients := make([]*client, n)
	devs := make([]core.DeviceKey, n)
	for i := range n {
		devs[i] = core.DeviceKey{User: "idle" + strconv.Itoa(i), Device: 1}
		v.be.mu.Lock()
		v.be.devices[string(idleKey(i).Public)] = devs[i]
		v.be.mu.Unlock()
		clients[i] = v.connect("ws", idleKey(i), devs[i].Addr())
	}
	for _, d := range devs { // wait (bounded) until each is routed
		for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
			if _, ok := v.be.route(d); ok {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s never routed", d)
			}
		}
	}
	settle := func() int {
		// Goroutines that end asynchronously (net/http's, a drain) may
		// take a moment: wait, at most 5 s, for the count to reach the
		// bound.
		g := runtime.NumGoroutine()
		for start := time.Now(); g-g0 > n+n/5 && time.Since(start) < 5*time.Second; g = runtime.NumGoroutine() {
			time.Sleep(20 * time.Millisecond)
		}
		return g
	}
	if g := settle() - g0; g > n+n/5 {
		t.Fatalf("%d idle sessions hold %d goroutines, want about %d", n, g, n)
	}
	// A push to every session, read by every client: the drains end.
	for _, d := range devs {
		v.produce(edge.EdgeTopic("e1"), "k", &pb.EdgeRecord{Targets: []*pb.DeviceAddr{d.Addr()},
			Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Typing{Typing: &pb.TypingEvent{ConvId: "g:x"}}}})
	}
	for _, c := range clients {
		if f := c.recv(); f.GetTyping() == nil {
			t.Fatalf("got %v", f)
		}
	}
	if g := settle() - g0; g > n+n/5 {
		t.Fatalf("after a push each, %d sessions hold %d goroutines, want about %d", n, g, n)
	}
}
