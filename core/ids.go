package core

import (
	"cmp"
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
	// MaxRegionNameLen bounds a region's name: every stored entry carries
	// the name of the region that wrote it (pb.Message.region), inside
	// MaxMessageBytes.
	MaxRegionNameLen = 32
	DefaultPageSize  = 256
	MaxPageSize      = 1000
	// MaxPresenceUsers bounds one session's presence subscription set (and
	// one presence snapshot, which must fit in one frame: 500 events of
	// the longest user id take about 41 KB).
	MaxPresenceUsers = 500
	// MaxDevicesPerUser bounds a user's registered devices (a phone and
	// its linked devices); one more gets LIMIT_EXCEEDED.
	MaxDevicesPerUser = 16
)

// Size limits, in bytes. Every frame a server builds must fit one Noise
// transport message (MaxFramePlaintext); these limits are chosen so that
// anything an edge accepts can be stored, and anything stored can be
// delivered — pushed alone, or as the only entry of a sync or history page.
//
//	envelope          <= MaxEnvelopeBytes    (checked at the edge and by the sequencer)
//	stored entry      <= MaxMessageBytes     (envelope + the longest ids; checked by the stores)
//	delivery frame    <= MaxMessageBytes + 4 <= MaxFramePlaintext
//	a page of entries <= MaxPageBytes        (sync, history: bounded in bytes and in count)
const (
	// MaxFramePlaintext is the largest plaintext of one Noise transport
	// message: 65,535 minus the 16-byte tag (crypto/noiseconn.MaxPlaintext).
	MaxFramePlaintext = 65519
	// MaxEnvelopeBytes bounds proto.Size of a SendRequest's Envelope
	// (advertised as ServerHello.max_envelope_bytes).
	MaxEnvelopeBytes = 64000
	// MaxClientFrameBytes is the largest ClientFrame an edge accepts
	// (advertised as ServerHello.max_frame_bytes): a send carrying a
	// MaxEnvelopeBytes envelope with the longest ids takes 64,219 bytes.
	MaxClientFrameBytes = 64512
	// MaxMessageBytes bounds proto.Size of a stored entry (pb.Message): a
	// USER entry with a MaxEnvelopeBytes envelope, the longest ids (a 1:1
	// of two 64-byte user ids) and the longest region name is 64,353
	// bytes; a membership entry of a full group about 34 KB.
	MaxMessageBytes = 64512
	// MaxPageBytes bounds the encoded entries (messages plus per-
	// conversation heads) of one sync or history page; with the response
	// framing (req_id, tags, more) the frame stays within MaxFramePlaintext.
	MaxPageBytes = MaxFramePlaintext - 64
)

// DeviceKey identifies one device: the user and the per-user device number.
type DeviceKey struct {
	User   string
	Device uint32
}

// String renders "user.device".
func (k DeviceKey) String() string { return fmt.Sprintf("%s.%d", k.User, k.Device) }

// Compare orders keys by user, then device number (-1, 0, +1), the
// order both stores return routes and cursors in.
func (k DeviceKey) Compare(o DeviceKey) int {
	return cmp.Or(strings.Compare(k.User, o.User), cmp.Compare(k.Device, o.Device))
}

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
