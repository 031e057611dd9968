package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Process exit statuses. Every command exits 0 on success, ExitUsage on a
// command-line mistake and ExitFailure on any other failure; `chatmesh
// chat` also uses the finer statuses below (see CLI.md, "Exit status").
const (
	ExitOK      = 0
	ExitFailure = 1 // the server refused the request, or a local failure
	ExitUsage   = 2 // bad flags or arguments, or no --edge/--locate
	// ExitAuth: the device is not registered, the edge does not accept it
	// (UNAUTHENTICATED), or a registration was refused.
	ExitAuth = 3
	// ExitUnavailable: no edge could be reached, a request found no
	// session (UNAVAILABLE, SHUTTING_DOWN, RATE_LIMITED, ...), or nothing
	// answered within --timeout (queued sends stay in the outbox).
	ExitUnavailable = 4
	// ExitPartial: `send --stdin` sent some lines but not all.
	ExitPartial = 5
	// ExitIdentity: a peer's identity changed; sending to them is blocked
	// until `chat trust USER`.
	ExitIdentity = 6
	// ExitReplaced: another session of this device (another process with
	// the same state dir, or a copy of it) took over (REPLACED).
	ExitReplaced = 7
	// ExitBusy: another process has this device's state dir open (one
	// process per device at a time).
	ExitBusy = 8
	// ExitInterrupted: SIGINT or SIGTERM ended a one-shot command
	// (`receive --follow` ends with ExitOK instead).
	ExitInterrupted = 130
)

// exitError carries the exit status chosen for err.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// withExit attaches the exit status code to err (nil stays nil).
func withExit(code int, err error) error {
	if err == nil {
		return nil
	}
	return exitError{code: code, err: err}
}

// exitCode is the process exit status for run's error: an exitError's
// code, ExitUsage for a usage error, ExitFailure for anything else.
func exitCode(err error) int {
	var ee exitError
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		return ExitUsage
	default:
		return ExitFailure
	}
}

// chatExitCode classifies an error of a chat command into an exit status.
func chatExitCode(err error) int {
	var ee exitError
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue), errors.Is(err, errNoEdge):
		return ExitUsage
	case errors.Is(err, e2ee.ErrIdentityChanged):
		return ExitIdentity
	case errors.Is(err, client.ErrStateInUse):
		return ExitBusy
	case errors.Is(err, client.ErrNotRegistered), errors.Is(err, e2ee.ErrNotRegistered):
		return ExitAuth
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, client.ErrDial),
		errors.Is(err, client.ErrSessionLost), errors.Is(err, client.ErrNoEdges),
		errors.Is(err, client.ErrOutboxFull):
		return ExitUnavailable
	}
	if code, ok := wireCode(err); ok {
		switch code {
		case pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED:
			return ExitAuth
		case pb.ErrorCode_ERROR_CODE_REPLACED:
			return ExitReplaced
		case pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN,
			pb.ErrorCode_ERROR_CODE_RATE_LIMITED, pb.ErrorCode_ERROR_CODE_TOO_MANY_CONNECTIONS,
			pb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT, pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED:
			return ExitUnavailable
		}
	}
	return ExitFailure
}

// chatError gives err (from a chat command) its exit status.
func chatError(err error) error {
	if err == nil {
		return nil
	}
	var ee exitError
	if errors.As(err, &ee) {
		return err
	}
	return exitError{code: chatExitCode(err), err: err}
}

// errCode is the code of err in the JSON output: the wire error code's
// name (NOT_FOUND, MESSAGE_TOO_LARGE, ...) when err is or maps to one,
// else one of the client-side codes IDENTITY_CHANGED, STATE_IN_USE,
// OUTBOX_FULL, TIMEOUT, INTERRUPTED or CLIENT (see CLI.md, "Error codes").
func errCode(err error) string {
	if code, ok := wireCode(err); ok {
		return codeName(code)
	}
	switch {
	case err == nil:
		return ""
	case errors.Is(err, errLineTooLong), errors.Is(err, e2ee.ErrTooLarge):
		return codeName(pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE)
	case errors.Is(err, e2ee.ErrIdentityChanged):
		return "IDENTITY_CHANGED"
	case errors.Is(err, client.ErrStateInUse):
		return "STATE_IN_USE"
	case errors.Is(err, client.ErrOutboxFull):
		return "OUTBOX_FULL"
	case errors.Is(err, client.ErrNotRegistered), errors.Is(err, e2ee.ErrNotRegistered):
		return codeName(pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED)
	case errors.Is(err, client.ErrBadArgument):
		return codeName(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT)
	case errors.Is(err, client.ErrDial), errors.Is(err, client.ErrSessionLost):
		return codeName(pb.ErrorCode_ERROR_CODE_UNAVAILABLE)
	case errors.Is(err, context.DeadlineExceeded):
		return "TIMEOUT"
	case errors.Is(err, context.Canceled):
		return "INTERRUPTED"
	}
	if c := core.Code(err); c != pb.ErrorCode_ERROR_CODE_INTERNAL {
		return codeName(c)
	}
	return "CLIENT"
}

// codeName is a wire code's name without the ERROR_CODE_ prefix.
func codeName(c pb.ErrorCode) string {
	n := c.String()
	if len(n) > len("ERROR_CODE_") {
		return n[len("ERROR_CODE_"):]
	}
	return fmt.Sprint(int32(c))
}

// wireCode returns the wire error code err carries: a server's error
// answer (*core.WireError) or the edge's Disconnect (*client.DisconnectError).
func wireCode(err error) (pb.ErrorCode, bool) {
	var we *core.WireError
	var de *client.DisconnectError
	switch {
	case errors.As(err, &we):
		return we.Code, true
	case errors.As(err, &de):
		return de.Code, true
	}
	return 0, false
}
