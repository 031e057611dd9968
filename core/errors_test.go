package core

import (
	"errors"
	"fmt"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

func TestErrorRoundTrip(t *testing.T) {
	for _, sentinel := range []error{ErrNotFound, ErrAlreadyExists, ErrNotMember, ErrGroupFull, ErrInvalidArgument, ErrForbidden, ErrUnavailable, ErrLimitExceeded, ErrRateLimited, ErrOutOfOrder} {
		wrapped := fmt.Errorf("op on x: %w", sentinel)
		back := FromWire(ToWire(wrapped))
		if !errors.Is(back, sentinel) {
			t.Errorf("%v: round trip lost the sentinel: %v", sentinel, back)
		}
		if Code(back) != Code(wrapped) {
			t.Errorf("%v: code %v != %v", sentinel, Code(back), Code(wrapped))
		}
	}
	internal := ToWire(errors.New("dial tcp 10.1.2.3: secret host"))
	if internal.GetCode() != pb.ErrorCode_ERROR_CODE_INTERNAL || internal.GetDetail() != "internal error" {
		t.Errorf("internal error leaked detail: %v", internal)
	}
	if FromWire(nil) != nil || FromWire(&pb.Error{}) != nil {
		t.Error("nil/OK must decode to nil")
	}
}
