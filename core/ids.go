package core

import (
	"fmt"
	"strings"

	"github.com/chatmesh/chatmesh/core/pb"
)

// Limits that are part of the protocol.
const (
	MaxGroupMembers   = 500 // members of one group, creator included
	MaxUserIDLen      = 64
	MaxClientMsgIDLen = 64
	MaxTitleLen       = 200
	DefaultPageSize   = 256
	MaxPageSize       = 1000
	// MaxPresenceUsers bounds one session's presence subscription set.
	MaxPresenceUsers = 1000
)

// DeviceKey identifies one device: the user and the per-user device number.
type DeviceKey struct {
	User   string
	Device uint32
}

// String renders "user.device".
func (k DeviceKey) String() string { return fmt.Sprintf("%s.%d", k.User, k.Device) }

// Addr converts the key to its wire form.
func (k DeviceKey) Addr() *pb.DeviceAddr {
	return &pb.DeviceAddr{UserId: k.User, DeviceId: k.Device}
}

// KeyOf converts a wire address to a DeviceKey; nil gives the zero key.
func KeyOf(a *pb.DeviceAddr) DeviceKey {
	if a == nil {
		return DeviceKey{}
	}
	return DeviceKey{User: a.GetUserId(), Device: a.GetDeviceId()}
}

// ValidUserID reports whether id is a legal user id: 1..64 bytes of
// [a-z0-9_.-], starting with a letter or digit. Colons are excluded because
// they separate the parts of a direct conversation id.
func ValidUserID(id string) bool {
	if len(id) == 0 || len(id) > MaxUserIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '.' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// DirectConvID returns the id of the 1:1 conversation between a and b.
func DirectConvID(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return "d:" + a + ":" + b
}

// ParseDirect returns the two users of a direct conversation id.
func ParseDirect(conv string) (a, b string, ok bool) {
	rest, found := strings.CutPrefix(conv, "d:")
	if !found {
		return "", "", false
	}
	a, b, found = strings.Cut(rest, ":")
	if !found || !ValidUserID(a) || !ValidUserID(b) || a >= b {
		return "", "", false
	}
	return a, b, true
}

// IsGroupID reports whether conv is a well-formed group id ("g:" + 26-char ULID
// or any 1..64 char token of [0-9A-Za-z]).
func IsGroupID(conv string) bool {
	rest, found := strings.CutPrefix(conv, "g:")
	if !found || len(rest) == 0 || len(rest) > 64 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// KindOf classifies a conversation id; UNSPECIFIED means malformed.
func KindOf(conv string) pb.ConversationKind {
	if _, _, ok := ParseDirect(conv); ok {
		return pb.ConversationKind_CONVERSATION_KIND_DIRECT
	}
	if IsGroupID(conv) {
		return pb.ConversationKind_CONVERSATION_KIND_GROUP
	}
	return pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED
}

// UserPartitionKey is the Kafka key for records scoped to a user rather than
// a conversation.
func UserPartitionKey(user string) string { return "u:" + user }
