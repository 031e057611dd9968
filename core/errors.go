package core

import (
	"errors"
	"fmt"
	"time"

	"github.com/chatmesh/chatmesh/core/pb"
)

// Sentinel errors. Store and service implementations wrap them with %w and
// the entity they concern; Code maps them to wire error codes.
var (
	ErrNotFound        = errors.New("core: not found")
	ErrAlreadyExists   = errors.New("core: already exists")
	ErrNotMember       = errors.New("core: not a member")
	ErrGroupFull       = errors.New("core: group full")
	ErrInvalidArgument = errors.New("core: invalid argument")
	ErrForbidden       = errors.New("core: forbidden")
	// ErrFenced means the writer's owner epoch is older than the stored one:
	// another sequencer owns the conversation now.
	ErrFenced      = errors.New("core: fenced by newer owner epoch")
	ErrUnavailable = errors.New("core: unavailable")
	// ErrLimitExceeded means a per-user limit is reached (LIMIT_EXCEEDED).
	ErrLimitExceeded = errors.New("core: limit exceeded")
	// ErrOutOfOrder means a send names a predecessor
	// (after_client_msg_id) that is not stored yet (OUT_OF_ORDER).
	ErrOutOfOrder = errors.New("core: out of order")
	// ErrRateLimited means the caller is over a rate or admission limit (RATE_LIMITED).
	ErrRateLimited = errors.New("core: rate limited")
	// ErrUnknownTopic is a bus error: the topic does not exist.
	ErrUnknownTopic = errors.New("core: unknown topic")
)

// WireError is an error that carries a wire error code.
type WireError struct {
	Code   pb.ErrorCode
	Detail string
	// RetryAfter is the server's Error.retry_after_ms (0: none given): the
	// earliest a retry of the same request can pass.
	RetryAfter time.Duration
}

func (e *WireError) Error() string {
	return fmt.Sprintf("chatmesh %s: %s", e.Code, e.Detail)
}

// Unwrap returns the sentinel that corresponds to the code, so errors
// decoded from the wire still match errors.Is(err, ErrNotFound) and so on.
func (e *WireError) Unwrap() error {
	switch e.Code {
	case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return ErrNotFound
	case pb.ErrorCode_ERROR_CODE_ALREADY_EXISTS:
		return ErrAlreadyExists
	case pb.ErrorCode_ERROR_CODE_NOT_MEMBER:
		return ErrNotMember
	case pb.ErrorCode_ERROR_CODE_GROUP_FULL:
		return ErrGroupFull
	case pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return ErrInvalidArgument
	case pb.ErrorCode_ERROR_CODE_FORBIDDEN:
		return ErrForbidden
	case pb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return ErrUnavailable
	case pb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED:
		return ErrLimitExceeded
	case pb.ErrorCode_ERROR_CODE_RATE_LIMITED:
		return ErrRateLimited
	case pb.ErrorCode_ERROR_CODE_OUT_OF_ORDER:
		return ErrOutOfOrder
	}
	return nil
}

// FromWire turns a wire error back into an error (nil for nil or OK).
func FromWire(e *pb.Error) error {
	if e == nil || e.GetCode() == pb.ErrorCode_ERROR_CODE_OK {
		return nil
	}
	return &WireError{Code: e.GetCode(), Detail: e.GetDetail(), RetryAfter: time.Duration(e.GetRetryAfterMs()) * time.Millisecond}
}

// Errorf builds a WireError.
func Errorf(code pb.ErrorCode, format string, args ...any) *WireError {
	return &WireError{Code: code, Detail: fmt.Sprintf(format, args...)}
}

// Code maps an error to the code a client sees.
func Code(err error) pb.ErrorCode {
	var we *WireError
	switch {
	case err == nil:
		return pb.ErrorCode_ERROR_CODE_OK
	case errors.As(err, &we):
		return we.Code
	case errors.Is(err, ErrNotFound):
		return pb.ErrorCode_ERROR_CODE_NOT_FOUND
	case errors.Is(err, ErrAlreadyExists):
		return pb.ErrorCode_ERROR_CODE_ALREADY_EXISTS
	case errors.Is(err, ErrNotMember):
		return pb.ErrorCode_ERROR_CODE_NOT_MEMBER
	case errors.Is(err, ErrGroupFull):
		return pb.ErrorCode_ERROR_CODE_GROUP_FULL
	case errors.Is(err, ErrInvalidArgument):
		return pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT
	case errors.Is(err, ErrForbidden):
		return pb.ErrorCode_ERROR_CODE_FORBIDDEN
	case errors.Is(err, ErrLimitExceeded):
		return pb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED
	case errors.Is(err, ErrRateLimited):
		return pb.ErrorCode_ERROR_CODE_RATE_LIMITED
	case errors.Is(err, ErrOutOfOrder):
		return pb.ErrorCode_ERROR_CODE_OUT_OF_ORDER
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrFenced):
		return pb.ErrorCode_ERROR_CODE_UNAVAILABLE
	default:
		return pb.ErrorCode_ERROR_CODE_INTERNAL
	}
}

// ToWire converts an error into its wire form (nil for nil). Internal
// errors lose their text: it may name hosts or queries.
func ToWire(err error) *pb.Error {
	if err == nil {
		return nil
	}
	c := Code(err)
	var we *WireError
	detail := ""
	switch {
	case errors.As(err, &we):
		detail = we.Detail
	case c == pb.ErrorCode_ERROR_CODE_INTERNAL:
		detail = "internal error"
	default:
		detail = err.Error()
	}
	return &pb.Error{Code: c, Detail: detail}
}
