package edge

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// connLimiter counts the open transport connections (TCP connections of
// the WebSocket listener, QUIC connections of the WebTransport one) in
// total and per client IP. It is consulted at accept, before any byte is
// read, so idle or half-open connections cannot exhaust the process's
// file descriptors.
type connLimiter struct {
	maxTotal, maxPerIP int

	mu    sync.Mutex
	total int
	perIP map[string]int
}

func newConnLimiter(maxTotal, maxPerIP int) *connLimiter {
	return &connLimiter{maxTotal: maxTotal, maxPerIP: maxPerIP, perIP: map[string]int{}}
}

// acquire takes a slot for ip; it returns "" or the reason it refused.
// acquire and release count per client network: an IPv4 address or an
// IPv6 /64 (ipKey), since one IPv6 host holds a whole /64.
func (l *connLimiter) acquire(ip string) string {
	ip = ipKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.maxTotal {
		return "total"
	}
	if l.perIP[ip] >= l.maxPerIP {
		return "per-ip"
	}
	l.total++
	l.perIP[ip]++
	return ""
}

func (l *connLimiter) release(ip string) {
	ip = ipKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

func (l *connLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Accept backoff bounds: after a failed Accept (EMFILE, ENFILE, ECONNABORTED,
// ...) the listener waits, doubling from the first to the last, and tries
// again.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// limitListener wraps the WebSocket listener. Accept never fails while
// the listener is open: an accept error is counted, logged and retried
// after a backoff (so running out of file descriptors during a flood
// pauses accepting instead of ending it). A connection over the total or
// per-IP limit is closed at once, before the HTTP server sees it.
type limitListener struct {
	net.Listener
	lim       *connLimiter
	log       *slog.Logger
	rejected  *atomic.Uint64 // connections closed at accept
	acceptErr *atomic.Uint64 // failed Accept calls (retried)

	closeOnce sync.Once
	closed    chan struct{}
}

func newLimitListener(ln net.Listener, lim *connLimiter, log *slog.Logger, rejected, acceptErr *atomic.Uint64) *limitListener {
	return &limitListener{Listener: ln, lim: lim, log: log, rejected: rejected, acceptErr: acceptErr, closed: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return nil, err
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return nil, err // closed underneath us: the caller reports it
			}
			l.acceptErr.Add(1)
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			l.log.Warn("accept failed; retrying", "err", err, "backoff", delay)
			t := time.NewTimer(delay)
			select {
			case <-l.closed:
				t.Stop()
				return nil, net.ErrClosed
			case <-t.C:
			}
			continue
		}
		delay = 0
		ip := clientIP(c.RemoteAddr().String())
		if reason := l.lim.acquire(ip); reason != "" {
			l.rejected.Add(1)
			l.log.Debug("connection refused at accept", "ip", ip, "limit", reason)
			_ = c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: sync.OnceFunc(func() { l.lim.release(ip) })}, nil
	}
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// limitedConn gives its slot back when closed (once, however often Close
// is called: by net/http, by the WebSocket library after a hijack, or by
// TLS).
type limitedConn struct {
	net.Conn
	release func()
}

// SyscallConn exposes the socket of a plain TCP connection (the idle wait
// of a WebSocket session, waitread_unix.go); an error for anything else.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errNoSyscallConn
}

var errNoSyscallConn = errors.New("edge: connection has no socket")

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// CloseWrite lets net/http half-close a TCP connection as it does without
// the wrapper.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
