package netproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Sentinel errors.
var (
	// ErrClosed is returned by Listen's accept loop after Close.
	ErrClosed = errors.New("netproxy: closed")
	// ErrNoRoute is returned by a DialVia function for an address that no
	// proxy covers.
	ErrNoRoute = errors.New("netproxy: no proxy routes this address")
)

// Config configures a Proxy. Only Upstream is required.
type Config struct {
	// Upstream is the host:port every connection is forwarded to.
	Upstream string
	// ListenAddr is where the proxy listens. Default "127.0.0.1:0" (a free
	// port; Addr tells which).
	ListenAddr string
	// Up and Down are the one-way latencies client → upstream and
	// upstream → client (SetLatency changes them at run time). Default 0.
	Up, Down time.Duration
	// MaxBuffered bounds the bytes one direction of one connection holds
	// while they wait for their release time. Default 1 MiB.
	MaxBuffered int
	// DialTimeout bounds dialing the upstream. Default 5s.
	DialTimeout time.Duration
	// Logger receives connection errors at debug level. Default: discard.
	Logger *slog.Logger
}

// Stats counts what a Proxy did since it started.
type Stats struct {
	Accepted   uint64 // connections accepted and forwarded
	Refused    uint64 // connections reset at once because of a partition
	Reset      uint64 // open connections reset by Partition(true), or by Drop ending on a connection that lost bytes
	Dropped    uint64 // bytes discarded by Drop
	DialFailed uint64 // connections closed because the upstream did not answer
	Active     int64  // connections open now
	BytesUp    uint64 // bytes written to the upstream
	BytesDown  uint64 // bytes written back to clients
}

// Proxy forwards TCP connections from its listener to one upstream with a
// one-way latency per direction. See the package documentation.
type Proxy struct {
	cfg Config
	log *slog.Logger
	ln  net.Listener

	up, down    atomic.Int64 // latencies in ns
	partitioned atomic.Bool
	drop        [2]atomic.Bool // per direction (up, down): discard what is read

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool
	wg     sync.WaitGroup
	once   sync.Once

	accepted, refused, reset, dialFailed, bytesUp, bytesDown, dropped atomic.Uint64
	active                                                            atomic.Int64
}

// Listen starts a proxy to upstream on a free loopback port, with no
// latency (SetLatency sets it).
func Listen(upstream string) (*Proxy, error) {
	return ListenConfig(Config{Upstream: upstream})
}

// ListenConfig starts a proxy as cfg describes.
func ListenConfig(cfg Config) (*Proxy, error) {
	if cfg.Upstream == "" {
		return nil, errors.New("netproxy: no upstream")
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = 1 << 20
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("netproxy: listen: %w", err)
	}
	p := &Proxy{cfg: cfg, ln: ln, conns: map[*conn]struct{}{},
		log: cfg.Logger.With("component", "netproxy", "upstream", cfg.Upstream)}
	p.SetLatency(cfg.Up, cfg.Down)
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's listening address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Upstream is the address the proxy forwards to.
func (p *Proxy) Upstream() string { return p.cfg.Upstream }

// SetLatency sets the one-way latencies client → upstream (up) and
// upstream → client (down). It applies to bytes read from now on; bytes
// already waiting keep their release time, and order is kept.
func (p *Proxy) SetLatency(up, down time.Duration) {
	p.up.Store(int64(max(up, 0)))
	p.down.Store(int64(max(down, 0)))
}

// Latency returns the current one-way latencies.
func (p *Proxy) Latency() (up, down time.Duration) {
	return time.Duration(p.up.Load()), time.Duration(p.down.Load())
}

// Partition turns the partition on (every open connection is reset, new
// ones are reset as soon as they are accepted) or off (new connections
// are forwarded again).
func (p *Proxy) Partition(on bool) {
	p.mu.Lock()
	p.partitioned.Store(on)
	var victims []*conn
	if on {
		for c := range p.conns {
			victims = append(victims, c)
		}
	}
	p.mu.Unlock()
	for _, c := range victims {
		if c.abort() {
			p.reset.Add(1)
		}
	}
}

// Drop turns one-way loss on or off per direction: while a direction is
// dropped, every byte read in it (and its end of stream) is discarded, on
// open and new connections alike, while the other direction flows. This is
// a one-way partition: with Drop(true, false) the client's requests never
// reach the upstream (nor does its FIN), the upstream's bytes still reach
// the client. A stream that lost bytes cannot be resumed, so when a
// direction stops being dropped every connection that lost bytes in it is
// reset; the others go on.
func (p *Proxy) Drop(up, down bool) {
	p.mu.Lock()
	wasUp, wasDown := p.drop[0].Swap(up), p.drop[1].Swap(down)
	var victims []*conn
	for c := range p.conns {
		if (wasUp && !up && c.lost[0].Load()) || (wasDown && !down && c.lost[1].Load()) {
			victims = append(victims, c)
		}
	}
	p.mu.Unlock()
	for _, c := range victims {
		if c.abort() {
			p.reset.Add(1)
		}
	}
}

// Dropping reports which directions Drop discards.
func (p *Proxy) Dropping() (up, down bool) { return p.drop[0].Load(), p.drop[1].Load() }

// Partitioned reports whether the partition is on.
func (p *Proxy) Partitioned() bool { return p.partitioned.Load() }

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{Accepted: p.accepted.Load(), Refused: p.refused.Load(), Reset: p.reset.Load(),
		DialFailed: p.dialFailed.Load(), Active: p.active.Load(), BytesUp: p.bytesUp.Load(), BytesDown: p.bytesDown.Load(),
		Dropped: p.dropped.Load()}
}

// Close stops listening, resets every connection and waits for the
// proxy's goroutines. Idempotent.
func (p *Proxy) Close() error {
	var err error
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		victims := make([]*conn, 0, len(p.conns))
		for c := range p.conns {
			victims = append(victims, c)
		}
		p.mu.Unlock()
		err = p.ln.Close()
		for _, c := range victims {
			c.abort()
		}
		p.wg.Wait()
	})
	if err != nil {
		return fmt.Errorf("netproxy: close: %w", err)
	}
	return nil
}

func (p *Proxy) accept() {
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.log.Debug("accept", "err", err)
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: do not spin
			continue
		}
		if p.partitioned.Load() {
			p.refused.Add(1)
			resetConn(cc)
			continue
		}
		p.wg.Go(func() { p.serve(cc) })
	}
}

// serve dials the upstream for one accepted connection and starts its two
// directions.
func (p *Proxy) serve(cc net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.DialTimeout)
	var d net.Dialer
	sc, err := d.DialContext(ctx, "tcp", p.cfg.Upstream)
	cancel()
	if err != nil {
		p.dialFailed.Add(1)
		p.log.Debug("dial upstream", "err", err)
		resetConn(cc)
		return
	}
	upQ, downQ := newQueue(p.cfg.MaxBuffered), newQueue(p.cfg.MaxBuffered)
	c := &conn{p: p, client: cc, server: sc, done: make(chan struct{}), queues: [2]*queue{upQ, downQ}}
	c.open.Store(2)
	p.mu.Lock()
	if p.closed || p.partitioned.Load() {
		p.mu.Unlock()
		p.refused.Add(1)
		resetConn(cc)
		resetConn(sc)
		return
	}
	p.conns[c] = struct{}{}
	p.accepted.Add(1)
	p.active.Add(1)
	p.mu.Unlock()

	p.wg.Go(func() { c.read(cc, 0, upQ, &p.up) })
	p.wg.Go(func() { c.write(sc, upQ, &p.bytesUp) })
	p.wg.Go(func() { c.read(sc, 1, downQ, &p.down) })
	p.wg.Go(func() { c.write(cc, downQ, &p.bytesDown) })
}

func (p *Proxy) forget(c *conn) {
	p.mu.Lock()
	if _, ok := p.conns[c]; ok {
		delete(p.conns, c)
		p.active.Add(-1)
	}
	p.mu.Unlock()
}

// resetConn closes a connection so that the peer sees a reset, not an
// orderly end of stream.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// conn is one proxied connection: two directions, each a reader that
// stamps chunks with their release time and a writer that releases them.
type conn struct {
	p              *Proxy
	client, server net.Conn
	queues         [2]*queue     // up, down; set before the conn is shared
	done           chan struct{} // closed by abort or finish
	once           sync.Once
	open           atomic.Int32   // directions that have not finished
	lost           [2]atomic.Bool // per direction: Drop discarded bytes of it
}

// abort resets both sides and stops both directions. It reports whether
// this call ended the connection.
func (c *conn) abort() bool {
	ended := false
	c.once.Do(func() {
		ended = true
		close(c.done)
		resetConn(c.client)
		resetConn(c.server)
		for _, q := range c.queues {
			q.close()
		}
		c.p.forget(c)
	})
	return ended
}

// finish closes both sides after both directions ended in order.
func (c *conn) finish() {
	c.once.Do(func() {
		close(c.done)
		_ = c.client.Close()
		_ = c.server.Close()
		c.p.forget(c)
	})
}

const readChunk = 32 << 10

// read copies src into q, each chunk stamped with now + the latency;
// dir is the direction (0 up, 1 down), whose bytes Drop may discard.
func (c *conn) read(src net.Conn, dir int, q *queue, latency *atomic.Int64) {
	buf := make([]byte, readChunk)
	for {
		n, err := src.Read(buf)
		if c.p.drop[dir].Load() && (n > 0 || errors.Is(err, io.EOF)) {
			c.lost[dir].Store(true)
			c.p.dropped.Add(uint64(n))
			if err != nil {
				return // the end of stream is lost too; Drop(false) resets the connection
			}
			continue
		}
		if n > 0 {
			at := time.Now().Add(time.Duration(latency.Load()))
			if !q.push(chunk{b: append([]byte(nil), buf[:n]...), at: at}) {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				q.push(chunk{eof: true, at: time.Now().Add(time.Duration(latency.Load()))})
				return
			}
			c.abort()
			return
		}
	}
}

// write releases q's chunks to dst at their release times, in order.
func (c *conn) write(dst net.Conn, q *queue, written *atomic.Uint64) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		ch, ok := q.pop()
		if !ok {
			return
		}
		if d := time.Until(ch.at); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-c.done:
				return
			}
		}
		if ch.eof {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			if c.open.Add(-1) == 0 {
				c.finish()
			}
			return
		}
		if _, err := dst.Write(ch.b); err != nil {
			c.abort()
			return
		}
		written.Add(uint64(len(ch.b)))
		q.release(len(ch.b))
	}
}

// chunk is bytes read at one time (or the end of the stream), with the
// time they may be written.
type chunk struct {
	b   []byte
	at  time.Time
	eof bool
}

// queue is a FIFO of chunks bounded in bytes. A chunk's bytes count
// until the writer has written them.
type queue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []chunk
	bytes  int
	max    int
	closed bool
}

func newQueue(max int) *queue {
	q := &queue{max: max}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// push appends ch, waiting while the queue is full (a chunk larger than
// the bound goes in alone). It reports false when the queue was closed.
func (q *queue) push(ch chunk) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && q.bytes > 0 && q.bytes+len(ch.b) > q.max {
		q.cond.Wait()
	}
	if q.closed {
		return false
	}
	q.items = append(q.items, ch)
	q.bytes += len(ch.b)
	q.cond.Broadcast()
	return true
}

// pop takes the oldest chunk, waiting for one; false once closed.
func (q *queue) pop() (chunk, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for !q.closed && len(q.items) == 0 {
		q.cond.Wait()
	}
	if q.closed {
		return chunk{}, false
	}
	ch := q.items[0]
	q.items[0] = chunk{}
	q.items = q.items[1:]
	return ch, true
}

// release frees n bytes once written.
func (q *queue) release(n int) {
	q.mu.Lock()
	q.bytes -= n
	q.cond.Broadcast()
	q.mu.Unlock()
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// buffered returns the bytes held (tests).
func (q *queue) buffered() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// DialVia returns a dial function that connects to each proxy's upstream
// address through that proxy, and refuses (ErrNoRoute) any address that
// no proxy covers. Give it to kafkabus.Config.Dial so that every broker
// connection, including those to brokers learned from metadata, crosses a
// proxy.
func DialVia(proxies ...*Proxy) func(ctx context.Context, network, addr string) (net.Conn, error) {
	routes := make(map[string]string, len(proxies))
	for _, p := range proxies {
		routes[canonical(p.Upstream())] = p.Addr()
	}
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		to, ok := routes[canonical(addr)]
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrNoRoute, addr)
		}
		c, err := d.DialContext(ctx, network, to)
		if err != nil {
			return nil, fmt.Errorf("netproxy: dial %s via %s: %w", addr, to, err)
		}
		return c, nil
	}
}

// canonical spells "localhost:N" as "127.0.0.1:N" so either name routes.
func canonical(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
