//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package edge

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// idleWaiter lets an idle WebSocket session wait for its client's next
// bytes in a shallow call. A session's goroutine lives as long as the
// connection, and the runtime keeps a goroutine's stack at the size its
// deepest call needed until a GC finds less than a quarter of it in use.
// Blocked inside the WebSocket library's read path (a dozen frames), a
// session never gets there and holds 8 KiB; waiting here (the session's
// loop, this method, the poller) it uses well under 1 KiB, so after a GC or
// two an idle session's stack is 2 KiB.
//
// wait returns at once when the hijacked reader already holds bytes (the
// client sent several messages together), and otherwise when the socket
// is readable, at its end, or failed; it reads nothing. Readiness is
// tested with a non-consuming MSG_PEEK read, so bytes that arrived before
// the wait began are seen (the poller only reports new readiness).
//
// The hijacked reader is read by the session's goroutine and, during a
// close handshake, by the library's Close: wait looks at how much it holds
// only under mu, and closing (set under mu before Close starts) turns that
// off, so the two never touch the reader at once.
type idleWaiter struct {
	rc syscall.RawConn
	br *bufio.Reader

	mu      sync.Mutex
	closing bool
	// failed turns the waiter off after a socket error: ReadMessage
	// reports it.
	failed atomic.Bool
}

// close is called before the library's Close, which reads the hijacked
// reader from another goroutine.
func (w *idleWaiter) close() {
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
}

// newIdleWaiter returns nil when conn has no socket of its own (TLS keeps
// its own buffer, which the socket's readiness does not show, and has no
// SyscallConn). A connection that exposes its socket must not buffer
// bytes of its own either (a wrapper that did — a PROXY-protocol reader,
// say — would need to hide SyscallConn): serveWSOn only wraps accepted
// TCP connections in limitedConn, which buffers nothing.
func newIdleWaiter(conn net.Conn, br *bufio.Reader) *idleWaiter {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &idleWaiter{rc: rc, br: br}
}

func (w *idleWaiter) wait() {
	if w.failed.Load() {
		return
	}
	w.mu.Lock()
	skip := w.closing || w.br.Buffered() > 0
	w.mu.Unlock()
	if skip {
		return
	}
	err := w.rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue // interrupted: look again (readiness already seen is not reported twice)
			}
			// EAGAIN: nothing yet, wait for readiness. Otherwise bytes,
			// the end of the stream or an error: ReadMessage reads or
			// reports it.
			return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK
		}
	})
	if err != nil {
		w.failed.Store(true)
	}
}
