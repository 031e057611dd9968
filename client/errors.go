package client

import (
	"errors"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Sentinel errors. Errors the server returns are *core.WireError (wrapped
// with the operation); use core.Code(err) to act on them.
var (
	// ErrClosed: the client has been closed.
	ErrClosed = errors.New("client: closed")
	// ErrNotRegistered: the device has no user yet; call Register or RegisterLinked.
	ErrNotRegistered = errors.New("client: device not registered")
	// ErrAlreadyRegistered: Register on a device that already has a user.
	ErrAlreadyRegistered = errors.New("client: device already registered")
	// ErrNoEdges: Config.Edges and Config.LocateURL are both empty.
	ErrNoEdges = errors.New("client: no edge urls configured")
	// ErrDial: the transport to an edge could not be opened.
	ErrDial = errors.New("client: dial failed")
	// ErrSessionLost: the session ended while a request was waiting for its reply.
	ErrSessionLost = errors.New("client: session lost")
	// ErrBadToken: a link or link-request token did not parse or does not fit.
	ErrBadToken = errors.New("client: bad token")
	// ErrStore: the local store failed (disk full, corruption).
	ErrStore = errors.New("client: local store")
	// ErrNoSuchMessage: the local store holds no such entry.
	ErrNoSuchMessage = errors.New("client: no such message")
	// ErrBadArgument: an argument was rejected locally before reaching the server.
	ErrBadArgument = errors.New("client: invalid argument")
	// ErrStateInUse: another Client (in this or another process) has the
	// state dir open; one device's state is used by one Client at a time.
	ErrStateInUse = errors.New("client: state dir in use by another client")
	// ErrUnknownMessage: WaitSent was asked about a client message id this
	// client neither has pending nor saw acked.
	ErrUnknownMessage = errors.New("client: unknown client message id")
)

// retryable reports whether a server error code means "send the same
// request again later".
func retryable(code pb.ErrorCode) bool {
	switch code {
	case pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
		pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, pb.ErrorCode_ERROR_CODE_INTERNAL,
		pb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT:
		return true
	}
	return false
}

func wireErr(e *pb.Error) error {
	if e == nil || e.GetCode() == pb.ErrorCode_ERROR_CODE_OK {
		return nil
	}
	return &core.WireError{Code: e.GetCode(), Detail: e.GetDetail(), RetryAfter: time.Duration(e.GetRetryAfterMs()) * time.Millisecond}
}
