package benchload

import (
	"context"
	"errors"
	"time"
)

// Target is a server under test, seen through cheap clients. The
// scenarios are written once against it, so that chatmesh and a peer
// server are measured by the same code.
type Target interface {
	// Name is a short label for reports ("chatmesh", "centrifugo").
	Name() string
	// Dial connects user's device and authenticates it, registering the
	// user on its first Dial where the server needs that (a later Dial of
	// the same user reuses its keys and device). onPush is called from the
	// connection's reader goroutine for every delivered message, in the
	// order the server sent them; it must not block for long.
	Dial(ctx context.Context, user string, onPush PushFunc) (Conn, error)
	// Direct returns where user from sends a 1:1 message to user to.
	Direct(from, to string) string
	// Group makes a group of users (users[0] its owner; conns[i] is
	// users[i]'s connection) and returns where its messages are sent.
	// Every member receives every message, the sender included.
	Group(ctx context.Context, name string, users []string, conns []Conn) (string, error)
	// SelfDelivery says whether a 1:1 sender receives its own message
	// too (chatmesh fans out to every member device; a personal channel
	// does not).
	SelfDelivery() bool
}

// Conn is one connected, authenticated device.
type Conn interface {
	// Publish sends body to dest without waiting; done is called once,
	// from the reader goroutine, with the server's acknowledgement (seq is
	// 0 where the server has none) or its error. An error returned by
	// Publish itself means nothing was sent and done is not called.
	Publish(ctx context.Context, dest string, body []byte, done func(seq uint64, err error)) error
	// Close drops the connection at once (no goodbye), as a device losing
	// its network would.
	Close() error
	// Done is closed when the connection has ended (Close, or the server
	// or the network ended it); Err then says why.
	Done() <-chan struct{}
	Err() error
}

// Push is a delivered message.
type Push struct {
	Dest string // conversation (chatmesh) or channel (peer)
	Seq  uint64 // the server's per-conversation seq, 0 where it has none
	Body []byte // the opaque body as sent
	At   time.Time
}

// PushFunc receives pushes; see Target.Dial.
type PushFunc func(Push)

// ErrRejected marks a publish the server refused for load (chatmesh
// RATE_LIMITED, a peer's equivalent): admission control, not a bug.
var ErrRejected = errors.New("benchload: rejected by the server")

// ErrClosed is the error of calls on a connection that has ended.
var ErrClosed = errors.New("benchload: connection closed")
