//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package edge

import (
	"bufio"
	"net"
)

// idleWaiter is the shallow idle wait of waitread_unix.go; elsewhere an
// idle session waits in the WebSocket library's read path.
type idleWaiter struct{}

func newIdleWaiter(net.Conn, *bufio.Reader) *idleWaiter { return nil }

func (*idleWaiter) wait()  {}
func (*idleWaiter) close() {}
