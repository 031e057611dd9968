package core

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// TestCheckMemberOutsiderIndistinguishable: an outsider's answer for an
// existing conversation and for a missing one is byte-identical on the
// wire, and is NOT_FOUND; a member passes with their joined seq.
func TestCheckMemberOutsiderIndistinguishable(t *testing.T) {
	existing := MemberSet{"alice": 1, "bob": 3}
	if j, err := CheckMember("history", existing, "bob"); err != nil || j != 3 {
		t.Fatalf("member: CheckMember = %d, %v; want 3, nil", j, err)
	}
	_, errExisting := CheckMember("history", existing, "mallory")
	_, errMissing := CheckMember("history", nil, "mallory")
	if errExisting == nil || errMissing == nil {
		t.Fatalf("outsider allowed: %v, %v", errExisting, errMissing)
	}
	a, _ := proto.Marshal(ToWire(errExisting))
	b, _ := proto.Marshal(ToWire(errMissing))
	if string(a) != string(b) {
		t.Fatalf("outsider answers differ:\n existing %v\n missing  %v", ToWire(errExisting), ToWire(errMissing))
	}
	if Code(errExisting) != pb.ErrorCode_ERROR_CODE_NOT_FOUND || !errors.Is(errExisting, ErrNotFound) {
		t.Fatalf("outsider answer = %v, want NOT_FOUND", ToWire(errExisting))
	}
}
