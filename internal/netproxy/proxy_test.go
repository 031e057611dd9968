package netproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// upstream is a test server: it echoes every byte back and records when
// each read arrived.
type upstream struct {
	ln   net.Listener
	mu   sync.Mutex
	got  []arrival
	eofs []time.Time
	wg   sync.WaitGroup
}

type arrival struct {
	at time.Time
	b  []byte
}

func startUpstream(t *testing.T, echo bool) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{ln: ln}
	u.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						u.mu.Lock()
						u.got = append(u.got, arrival{time.Now(), append([]byte(nil), buf[:n]...)})
						u.mu.Unlock()
						if echo {
							if _, werr := c.Write(buf[:n]); werr != nil {
								return
							}
						}
					}
					if err != nil {
						if errors.Is(err, io.EOF) {
							u.mu.Lock()
							u.eofs = append(u.eofs, time.Now())
							u.mu.Unlock()
						}
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *upstream) addr() string { return u.ln.Addr().String() }

// firstArrival returns when the upstream first read bytes (zero if never).
func (u *upstream) firstArrival() time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.got) == 0 {
		return time.Time{}
	}
	return u.got[0].at
}

func (u *upstream) received() []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	var b []byte
	for _, a := range u.got {
		b = append(b, a.b...)
	}
	return b
}

func startProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	p, err := ListenConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Each direction is delayed by at least its configured latency (lower
// bounds only: a loaded machine may add more).
func TestLatencyEachDirection(t *testing.T) {
	u := startUpstream(t, true)
	const up, down = 60 * time.Millisecond, 40 * time.Millisecond
	p := startProxy(t, Config{Upstream: u.addr(), Up: up, Down: down})
	c := dial(t, p.Addr())
	for i := range 3 {
		sent := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		rtt := time.Since(sent)
		u.mu.Lock()
		arrived := u.got[len(u.got)-1].at
		u.mu.Unlock()
		if one := arrived.Sub(sent); one < up {
			t.Fatalf("round %d: the upstream got the bytes %v after they were sent, want ≥ %v", i, one, up)
		}
		if rtt < up+down {
			t.Fatalf("round %d: round trip %v, want ≥ %v", i, rtt, up+down)
		}
	}
	// The counters move just after the write that the client has read.
	waitFor(t, "the byte counters", func() bool { s := p.Stats(); return s.BytesUp == 12 && s.BytesDown == 12 })
	if s := p.Stats(); s.Accepted != 1 || s.Active != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// The latency changes at run time, for bytes read after the change.
func TestSetLatencyAtRunTime(t *testing.T) {
	u := startUpstream(t, true)
	p := startProxy(t, Config{Upstream: u.addr()})
	c := dial(t, p.Addr())
	roundTrip := func() time.Duration {
		sent := time.Now()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		return time.Since(sent)
	}
	roundTrip()
	p.SetLatency(50*time.Millisecond, 70*time.Millisecond)
	if up, down := p.Latency(); up != 50*time.Millisecond || down != 70*time.Millisecond {
		t.Fatalf("Latency() = %v, %v", up, down)
	}
	if rtt := roundTrip(); rtt < 120*time.Millisecond {
		t.Fatalf("round trip after SetLatency %v, want ≥ 120ms", rtt)
	}
}

// A delayed direction keeps reading while earlier bytes wait (pipelined,
// no throughput cap from the delay): with an hour of latency, every
// chunk sent is held in the queue at once, none written yet.
func TestPipelinedWhileDelayed(t *testing.T) {
	u := startUpstream(t, false)
	p := startProxy(t, Config{Upstream: u.addr(), Up: time.Hour})
	c := dial(t, p.Addr())
	const n, size = 20, 1000
	for i := range n {
		if _, err := c.Write(bytes.Repeat([]byte{byte(i)}, size)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	q := onlyConn(t, p).queues[0]
	waitFor(t, "every chunk read into the delay queue", func() bool { return q.buffered() == n*size })
	if got := u.received(); len(got) != 0 {
		t.Fatalf("the upstream got %d bytes before their release time", len(got))
	}
}

func onlyConn(t *testing.T, p *Proxy) *conn {
	t.Helper()
	var c *conn
	waitFor(t, "the proxied connection", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for k := range p.conns {
			c = k
		}
		return c != nil
	})
	return c
}

// A slow reader (here: an upstream that never gets the bytes, an hour
// away) cannot grow the proxy's memory: the queue stops at MaxBuffered
// and the sender is pushed back through TCP.
func TestBufferBounded(t *testing.T) {
	u := startUpstream(t, false)
	const limit = 64 << 10
	p := startProxy(t, Config{Upstream: u.addr(), Up: time.Hour, MaxBuffered: limit})
	c := dial(t, p.Addr())
	written := make(chan error, 1)
	go func() {
		// Far more than the socket buffers on both sides can hold.
		_, err := c.Write(make([]byte, 64<<20))
		written <- err
	}()
	q := onlyConn(t, p).queues[0]
	waitFor(t, "the queue to fill", func() bool { return q.buffered() > limit-readChunk })
	time.Sleep(300 * time.Millisecond)
	if b := q.buffered(); b > limit {
		t.Fatalf("queue holds %d bytes, bound %d", b, limit)
	}
	select {
	case err := <-written:
		t.Fatalf("a 64 MiB write finished (%v) through a proxy that holds %d bytes and never releases them", err, limit)
	default:
	}
	p.Close() // unblocks the writer
	<-written
}

// Bytes arrive complete and in order, also when the latency drops in the
// middle of the stream (later chunks wait for earlier ones).
func TestOrderKeptAcrossLatencyChanges(t *testing.T) {
	u := startUpstream(t, false)
	p := startProxy(t, Config{Upstream: u.addr(), Up: 80 * time.Millisecond, MaxBuffered: 256 << 10})
	c := dial(t, p.Addr())
	var want []byte
	for i := range 200 {
		b := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 1+i*37%2000)
		want = append(want, b...)
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 50:
			p.SetLatency(0, 0)
		case 100:
			p.SetLatency(30*time.Millisecond, 0)
		case 150:
			p.SetLatency(0, 0)
		}
	}
	waitFor(t, "every byte upstream", func() bool { return len(u.received()) >= len(want) })
	if !bytes.Equal(u.received(), want) {
		t.Fatal("the upstream got the bytes out of order or changed")
	}
}

// A half-close is forwarded after the latency too; once both sides are
// done the connection is gone.
func TestEndOfStreamDelayedAndClosed(t *testing.T) {
	u := startUpstream(t, true)
	const lat = 50 * time.Millisecond
	p := startProxy(t, Config{Upstream: u.addr(), Up: lat, Down: lat})
	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c) // the echo, then the upstream's close
	if err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v", got, err)
	}
	u.mu.Lock()
	eof := u.eofs[0]
	u.mu.Unlock()
	if d := eof.Sub(sent); d < lat {
		t.Fatalf("the upstream saw the end of stream %v after it was sent, want ≥ %v", d, lat)
	}
	waitFor(t, "the connection to be forgotten", func() bool { return p.Stats().Active == 0 })
}

// Partition(true) resets open connections and refuses new ones;
// Partition(false) lets connections through again.
func TestPartition(t *testing.T) {
	u := startUpstream(t, true)
	p := startProxy(t, Config{Upstream: u.addr(), Up: 10 * time.Millisecond})
	echo := func(c net.Conn) error {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("hi")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 2))
		return err
	}
	open := dial(t, p.Addr())
	if err := echo(open); err != nil {
		t.Fatal(err)
	}
	p.Partition(true)
	if !p.Partitioned() {
		t.Fatal("Partitioned() = false")
	}
	if err := echo(open); err == nil {
		t.Fatal("an open connection still works across the partition")
	}
	// Accepted by the kernel, reset by the proxy (the reset may already
	// reach the client's connect).
	if fresh, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second); err == nil {
		err = echo(fresh)
		fresh.Close()
		if err == nil {
			t.Fatal("a new connection works across the partition")
		}
	}
	waitFor(t, "the refusal counted", func() bool { return p.Stats().Refused >= 1 })
	s := p.Stats()
	if s.Reset != 1 || s.Refused < 1 || s.Active != 0 {
		t.Fatalf("stats during the partition: %+v", s)
	}
	p.Partition(false)
	healed := dial(t, p.Addr())
	if err := echo(healed); err != nil {
		t.Fatalf("after the partition: %v", err)
	}
}

// Close resets every connection, waits for the goroutines and is
// idempotent; an unreachable upstream resets the client.
func TestCloseAndDialFailure(t *testing.T) {
	u := startUpstream(t, true)
	p := startProxy(t, Config{Upstream: u.addr(), Down: time.Hour})
	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the echo held in the proxy", func() bool { return len(u.received()) == 4 })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 4)); err == nil || n != 0 {
		t.Fatalf("read after Close: %d bytes, %v (want an error and nothing: the echo was an hour away)", n, err)
	}
	if s := p.Stats(); s.Active != 0 {
		t.Fatalf("active after Close: %d", s.Active)
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	q := startProxy(t, Config{Upstream: dead})
	// The reset may already reach the client's connect.
	if d, err := net.DialTimeout("tcp", q.Addr(), 5*time.Second); err == nil {
		_ = d.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = d.Read(make([]byte, 1))
		d.Close()
		if err == nil {
			t.Fatal("read through a proxy to a dead upstream succeeded")
		}
	}
	waitFor(t, "the dial failure counted", func() bool { return q.Stats().DialFailed == 1 })
}

// DialVia sends each upstream's connections through its proxy and
// refuses addresses no proxy covers.
func TestDialVia(t *testing.T) {
	u1, u2 := startUpstream(t, true), startUpstream(t, true)
	p1 := startProxy(t, Config{Upstream: u1.addr()})
	p2 := startProxy(t, Config{Upstream: u2.addr()})
	dialFn := DialVia(p1, p2)
	ctx := context.Background()
	for _, p := range []*Proxy{p1, p2} {
		c, err := dialFn(ctx, "tcp", p.Upstream())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if s := p.Stats(); s.Accepted != 1 {
			t.Fatalf("proxy of %s accepted %d connections, want 1", p.Upstream(), s.Accepted)
		}
	}
	_, port, _ := net.SplitHostPort(u1.addr())
	if c, err := dialFn(ctx, "tcp", "localhost:"+port); err != nil {
		t.Fatalf("localhost spelling: %v", err)
	} else {
		c.Close()
	}
	if _, err := dialFn(ctx, "tcp", "127.0.0.1:1"); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("unrouted address: %v, want ErrNoRoute", err)
	}
}

// Drop discards one direction while the other flows: with the down
// direction dropped the upstream gets the client's bytes but its echo is
// lost; with the up direction dropped nothing reaches the upstream. When
// the drop ends, a connection that lost bytes is reset and one that lost
// nothing goes on.
func TestDropOneWay(t *testing.T) {
	u := startUpstream(t, true)
	p := startProxy(t, Config{Upstream: u.addr()})
	echo := func(c net.Conn, msg string, wait time.Duration) error {
		_ = c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != msg {
			return errors.New("echo mismatch: " + string(b))
		}
		return nil
	}
	lossy, idle := dial(t, p.Addr()), dial(t, p.Addr())
	if err := echo(lossy, "a", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := echo(idle, "b", 10*time.Second); err != nil {
		t.Fatal(err)
	}

	p.Drop(false, true)
	if up, down := p.Dropping(); up || !down {
		t.Fatalf("Dropping() = %v, %v", up, down)
	}
	if err := echo(lossy, "c", 500*time.Millisecond); err == nil {
		t.Fatal("the echo crossed a dropped down direction")
	}
	waitFor(t, "c reaches the upstream", func() bool { return bytes.Equal(u.received(), []byte("abc")) })
	if s := p.Stats(); s.Dropped != 1 {
		t.Fatalf("dropped %d bytes, want 1", s.Dropped)
	}

	p.Drop(false, false)
	waitFor(t, "the lossy connection reset", func() bool { return p.Stats().Reset == 1 })
	_ = lossy.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := lossy.Read(make([]byte, 8)); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("read on the lossy connection after the drop: %v, want a reset", err)
	}
	if err := echo(idle, "d", 10*time.Second); err != nil {
		t.Fatalf("a connection that lost nothing after the drop: %v", err)
	}

	lossy = dial(t, p.Addr())
	p.Drop(true, false)
	if err := echo(lossy, "e", 500*time.Millisecond); err == nil {
		t.Fatal("an echo crossed a dropped up direction")
	}
	waitFor(t, "e counted as dropped", func() bool { return p.Stats().Dropped == 2 })
	if got := string(u.received()); got != "abcd" {
		t.Fatalf("upstream received %q across a dropped up direction", got)
	}
	p.Drop(false, false)
	waitFor(t, "the second lossy connection reset", func() bool { return p.Stats().Reset == 2 })
	if err := echo(idle, "f", 10*time.Second); err != nil {
		t.Fatalf("a connection that lost nothing after the drop: %v", err)
	}
	if err := echo(dial(t, p.Addr()), "g", 10*time.Second); err != nil {
		t.Fatalf("a new connection after the drop: %v", err)
	}
}
