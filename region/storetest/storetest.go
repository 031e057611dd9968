package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Run runs the core.Store contract suite. open returns a new, empty store
// for one subtest (see the package documentation).
func Run(t *testing.T, open func(t *testing.T) core.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s core.Store)
	}{
		{"RegisterCreatesUserWithDeviceOne", testRegisterCreate},
		{"RegisterIdempotentSameStatic", testRegisterIdempotent},
		{"RegisterNextDeviceNumber", testRegisterNextDevice},
		{"RegisterExistingUser", testRegisterExistingUser},
		{"RegisterStaticOfAnotherUser", testRegisterStaticOtherUser},
		{"RegisterMissingUser", testRegisterMissingUser},
		{"RegisterInvalid", testRegisterInvalid},
		{"DeviceByStatic", testDeviceByStatic},
		{"AppendCreatesConversation", testAppendCreate},
		{"AppendGaplessSeqs", testAppendGapless},
		{"AppendMissingConversation", testAppendMissing},
		{"AppendInvalid", testAppendInvalid},
		{"AppendDuplicate", testAppendDuplicate},
		{"AppendDuplicateKeyParts", testAppendDuplicateKeyParts},
		{"Lookup", testLookup},
		{"AppendFencing", testAppendFencing},
		{"Membership", testMembership},
		{"UserConversations", testUserConversations},
		{"MemberRoles", testMemberRoles},
		{"Invitations", testInvitations},
		{"Title", testTitle},
		{"AppendDuplicateRolesAndTitle", testAppendDuplicateRoles},
		{"MessagesPaging", testMessagesPaging},
		{"MessagesByteBound", testMessagesByteBound},
		{"MessagesManyLarge", testMessagesManyLarge},
		{"AppendTooLarge", testAppendTooLarge},
		{"MessageRoundTrip", testRoundTrip},
		{"Cursors", testCursors},
		{"CursorListings", testCursorListings},
		{"Routes", testRoutes},
		{"ClearEdgeRoutes", testClearEdgeRoutes},
		{"Privacy", testPrivacy},
		{"ConcurrentAppend", testConcurrentAppend},
		{"ConcurrentAppendManyConversations", testConcurrentAppendMany},
		{"ConcurrentCursor", testConcurrentCursor},
		{"ConcurrentRegister", testConcurrentRegister},
		{"BatchCommit", testBatchCommit},
		{"BatchDiscard", testBatchDiscard},
		{"BatchConflict", testBatchConflict},
		{"BatchConflictAfterRefusal", testBatchConflictAfterRefusal},
		{"ConcurrentRoutes", testConcurrentRoutes},
		{"AdvanceCursors", testAdvanceCursors},
		{"RetentionPrimitives", testRetentionPrimitives},
		{"RetentionUnackedKept", testRetentionUnackedKept},
		{"RetentionHistory", testRetentionHistory},
		{"RetentionBounded", testRetentionBounded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// ------------------------------------------------------------------ helpers

func static(user string, n int) []byte {
	b := make([]byte, 32)
	copy(b, fmt.Sprintf("%s/%d", user, n))
	return b
}

func mkDevice(user string, n int) core.Device {
	return core.Device{
		Key:           core.DeviceKey{User: user},
		NoiseStatic:   static(user, n),
		IdentityKey:   bytes.Repeat([]byte{byte(n + 1)}, 32),
		LinkedBy:      uint32(n),
		LinkSignature: []byte(fmt.Sprintf("sig-%s-%d", user, n)),
		CreatedAtMs:   1700000000000 + int64(n),
	}
}

func register(t *testing.T, s core.Store, user string, n int, create bool) core.Device {
	t.Helper()
	d, err := s.RegisterDevice(t.Context(), core.User{ID: user, HomeRegion: "eu", CreatedAtMs: 1700000000000}, mkDevice(user, n), create)
	if err != nil {
		t.Fatalf("RegisterDevice(%s, %d, create=%v): %v", user, n, create, err)
	}
	return d
}

func userMsg(conv, user string, dev uint32, cmid string) *pb.Message {
	return &pb.Message{
		ConvId:      conv,
		MsgId:       "01J" + cmid,
		Sender:      &pb.DeviceAddr{UserId: user, DeviceId: dev},
		ClientMsgId: cmid,
		SentAtMs:    1700000000123,
		Kind:        pb.MessageKind_MESSAGE_KIND_USER,
		Envelope:    &pb.Envelope{Ciphertext: []byte("ct-" + cmid), ContentHint: 1},
	}
}

func group(id string) *core.Conversation {
	return &core.Conversation{
		ID: id, Kind: pb.ConversationKind_CONVERSATION_KIND_GROUP, Title: "title of " + id,
		HomeRegion: "eu", CreatedAtMs: 1700000000999,
	}
}

func mustAppend(t *testing.T, s core.Store, req core.AppendRequest) core.AppendResult {
	t.Helper()
	res, err := s.Append(t.Context(), req)
	if err != nil {
		t.Fatalf("Append(%s/%s): %v", req.Message.GetConvId(), req.Message.GetClientMsgId(), err)
	}
	if res.Message == nil {
		t.Fatalf("Append(%s/%s): nil Message in result", req.Message.GetConvId(), req.Message.GetClientMsgId())
	}
	return res
}

// appendN appends n user messages "m1".."mn" from a.1 to conv (created on the first).
func appendN(t *testing.T, s core.Store, conv string, n int) []*pb.Message {
	t.Helper()
	var out []*pb.Message
	for i := 1; i <= n; i++ {
		res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, fmt.Sprintf("m%d", i))})
		out = append(out, res.Message)
	}
	return out
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func conversation(t *testing.T, s core.Store, id string) core.Conversation {
	t.Helper()
	c, err := s.Conversation(t.Context(), id)
	if err != nil {
		t.Fatalf("Conversation(%s): %v", id, err)
	}
	return c
}

func messages(t *testing.T, s core.Store, conv string, after uint64, limit int) []*pb.Message {
	t.Helper()
	ms, err := s.Messages(t.Context(), conv, after, limit, 0)
	if err != nil {
		t.Fatalf("Messages(%s, %d, %d): %v", conv, after, limit, err)
	}
	return ms
}

func seqs(ms []*pb.Message) []uint64 {
	out := make([]uint64, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.GetSeq())
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	out := []uint64{}
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func equal(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

func protoEqual(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("%s:\n got  %v\n want %v", what, got, want)
	}
}

func members(t *testing.T, s core.Store, conv string) []core.Member {
	t.Helper()
	ms, err := s.Members(t.Context(), conv)
	if err != nil {
		t.Fatalf("Members(%s): %v", conv, err)
	}
	if ms == nil {
		ms = []core.Member{}
	}
	return ms
}

// ------------------------------------------------------------------ registration

func testRegisterCreate(t *testing.T, s core.Store) {
	ctx := t.Context()
	in := mkDevice("alice", 0)
	in.Key.Device = 7 // ignored on input
	d, err := s.RegisterDevice(ctx, core.User{ID: "alice", HomeRegion: "eu", CreatedAtMs: 42}, in, true)
	if err != nil {
		t.Fatal(err)
	}
	want := in
	want.Key = core.DeviceKey{User: "alice", Device: 1}
	equal(t, "registered device", d, want)

	u, err := s.User(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "user", u, core.User{ID: "alice", HomeRegion: "eu", CreatedAtMs: 42})

	ds, err := s.Devices(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "devices", ds, []core.Device{want})

	_, err = s.User(ctx, "bob")
	wantErr(t, "User(missing)", err, core.ErrNotFound)
	_, err = s.Devices(ctx, "bob")
	wantErr(t, "Devices(missing)", err, core.ErrNotFound)
}

func testRegisterIdempotent(t *testing.T, s core.Store) {
	ctx := t.Context()
	first := register(t, s, "alice", 0, true)
	second := register(t, s, "alice", 1, false)
	// Retrying the user-creating registration returns the stored device.
	again, err := s.RegisterDevice(ctx, core.User{ID: "alice", HomeRegion: "other", CreatedAtMs: 1}, mkDevice("alice", 0), true)
	if err != nil {
		t.Fatalf("retry with createUser: %v", err)
	}
	equal(t, "retry with createUser", again, first)
	// Retrying the second device's registration, with changed fields, returns it unchanged.
	changed := mkDevice("alice", 1)
	changed.IdentityKey = bytes.Repeat([]byte{0xEE}, 32)
	again, err = s.RegisterDevice(ctx, core.User{ID: "alice"}, changed, false)
	if err != nil {
		t.Fatalf("retry without createUser: %v", err)
	}
	equal(t, "retry without createUser", again, second)

	ds, err := s.Devices(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "devices after retries", ds, []core.Device{first, second})
	u, err := s.User(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if u.HomeRegion != "eu" {
		t.Fatalf("retry changed the user: %+v", u)
	}
}

func testRegisterNextDevice(t *testing.T, s core.Store) {
	ctx := t.Context()
	var want []core.Device
	for i := 0; i < 4; i++ {
		d := register(t, s, "alice", i, i == 0)
		if d.Key != (core.DeviceKey{User: "alice", Device: uint32(i + 1)}) {
			t.Fatalf("device %d got key %v", i, d.Key)
		}
		want = append(want, d)
	}
	// Another user's numbering is independent.
	b := register(t, s, "bob", 0, true)
	if b.Key.Device != 1 {
		t.Fatalf("bob's first device is %d", b.Key.Device)
	}
	ds, err := s.Devices(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "devices ordered by number", ds, want)
}

func testRegisterExistingUser(t *testing.T, s core.Store) {
	register(t, s, "alice", 0, true)
	_, err := s.RegisterDevice(t.Context(), core.User{ID: "alice"}, mkDevice("alice", 1), true)
	wantErr(t, "createUser for an existing user", err, core.ErrAlreadyExists)
	ds, err := s.Devices(t.Context(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 {
		t.Fatalf("failed registration stored a device: %+v", ds)
	}
}

func testRegisterStaticOtherUser(t *testing.T, s core.Store) {
	ctx := t.Context()
	register(t, s, "alice", 0, true)
	register(t, s, "bob", 0, true)
	stolen := mkDevice("alice", 0)
	stolen.Key.User = ""
	_, err := s.RegisterDevice(ctx, core.User{ID: "carol"}, stolen, true)
	wantErr(t, "alice's static for new user carol", err, core.ErrAlreadyExists)
	_, err = s.User(ctx, "carol")
	wantErr(t, "carol after failed creation", err, core.ErrNotFound)
	_, err = s.RegisterDevice(ctx, core.User{ID: "bob"}, stolen, false)
	wantErr(t, "alice's static for bob", err, core.ErrAlreadyExists)
	ds, err := s.Devices(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 {
		t.Fatalf("bob has %d devices", len(ds))
	}
	d, err := s.DeviceByStatic(ctx, static("alice", 0))
	if err != nil || d.Key != (core.DeviceKey{User: "alice", Device: 1}) {
		t.Fatalf("static owner changed: %+v %v", d, err)
	}
}

func testRegisterMissingUser(t *testing.T, s core.Store) {
	_, err := s.RegisterDevice(t.Context(), core.User{ID: "ghost"}, mkDevice("ghost", 0), false)
	wantErr(t, "device for missing user", err, core.ErrNotFound)
	_, err = s.DeviceByStatic(t.Context(), static("ghost", 0))
	wantErr(t, "static of failed registration", err, core.ErrNotFound)
}

func testRegisterInvalid(t *testing.T, s core.Store) {
	ctx := t.Context()
	d := mkDevice("alice", 0)
	d.NoiseStatic = nil
	_, err := s.RegisterDevice(ctx, core.User{ID: "alice"}, d, true)
	wantErr(t, "empty static", err, core.ErrInvalidArgument)
	_, err = s.RegisterDevice(ctx, core.User{ID: "alice"}, mkDevice("bob", 0), true)
	wantErr(t, "user mismatch", err, core.ErrInvalidArgument)
	_, err = s.RegisterDevice(ctx, core.User{}, core.Device{NoiseStatic: static("x", 0)}, true)
	wantErr(t, "empty user", err, core.ErrInvalidArgument)
}

func testDeviceByStatic(t *testing.T, s core.Store) {
	ctx := t.Context()
	a1 := register(t, s, "alice", 0, true)
	a2 := register(t, s, "alice", 1, false)
	b1 := register(t, s, "bob", 0, true)
	for _, want := range []core.Device{a1, a2, b1} {
		got, err := s.DeviceByStatic(ctx, want.NoiseStatic)
		if err != nil {
			t.Fatalf("DeviceByStatic(%v): %v", want.Key, err)
		}
		equal(t, "DeviceByStatic", got, want)
	}
	_, err := s.DeviceByStatic(ctx, static("nobody", 0))
	wantErr(t, "unknown static", err, core.ErrNotFound)
	_, err = s.DeviceByStatic(ctx, a1.NoiseStatic[:31]) // a prefix is not a match
	wantErr(t, "static prefix", err, core.ErrNotFound)
}

// ------------------------------------------------------------------ append

func testAppendCreate(t *testing.T, s core.Store) {
	ctx := t.Context()
	_, err := s.Conversation(ctx, "g:new")
	wantErr(t, "Conversation before create", err, core.ErrNotFound)

	c := group("g:new")
	c.Epoch = 99 // ignored: the conversation gets req.Epoch
	c.Head = 17  // ignored: it starts empty
	res := mustAppend(t, s, core.AppendRequest{Epoch: 3, Create: c, Message: userMsg("g:new", "a", 1, "x"), AddMembers: []string{"a"}})
	if res.Duplicate || res.Message.Seq != 1 || res.Message.Epoch != 3 {
		t.Fatalf("first append: dup=%v seq=%d epoch=%d", res.Duplicate, res.Message.Seq, res.Message.Epoch)
	}
	want := *c
	want.Epoch, want.Head = 3, 1
	equal(t, "created conversation", conversation(t, s, "g:new"), want)

	// Create is ignored once the conversation exists.
	other := group("g:new")
	other.Title, other.HomeRegion = "changed", "us"
	res = mustAppend(t, s, core.AppendRequest{Epoch: 3, Create: other, Message: userMsg("g:new", "a", 1, "y")})
	if res.Message.Seq != 2 {
		t.Fatalf("second append got seq %d", res.Message.Seq)
	}
	want.Head = 2
	equal(t, "conversation after ignored Create", conversation(t, s, "g:new"), want)

	// A direct conversation keeps its kind.
	d := &core.Conversation{ID: core.DirectConvID("a", "b"), Kind: pb.ConversationKind_CONVERSATION_KIND_DIRECT, HomeRegion: "us", CreatedAtMs: 5}
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: d, Message: userMsg(d.ID, "a", 1, "x")})
	equal(t, "direct conversation", conversation(t, s, d.ID), core.Conversation{ID: d.ID, Kind: d.Kind, HomeRegion: "us", Epoch: 1, Head: 1, CreatedAtMs: 5})
}

func testAppendGapless(t *testing.T, s core.Store) {
	const n = 20
	got := appendN(t, s, "g:gap", n)
	equal(t, "append results", seqs(got), seqRange(1, n))
	equal(t, "stored seqs", seqs(messages(t, s, "g:gap", 0, 0)), seqRange(1, n))
	for i, m := range messages(t, s, "g:gap", 0, 0) {
		if m.ClientMsgId != fmt.Sprintf("m%d", i+1) {
			t.Fatalf("seq %d holds %q", m.Seq, m.ClientMsgId)
		}
		protoEqual(t, "stored vs returned", m, got[i])
	}
	if h := conversation(t, s, "g:gap").Head; h != n {
		t.Fatalf("head %d, want %d", h, n)
	}
	// Another conversation has its own sequence.
	equal(t, "second conversation", seqs(appendN(t, s, "g:other", 3)), seqRange(1, 3))
}

func testAppendMissing(t *testing.T, s core.Store) {
	ctx := t.Context()
	_, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Message: userMsg("g:none", "a", 1, "x")})
	wantErr(t, "append without Create", err, core.ErrNotFound)
	_, err = s.Conversation(ctx, "g:none")
	wantErr(t, "Conversation after failed append", err, core.ErrNotFound)
	_, err = s.Members(ctx, "g:none")
	wantErr(t, "Members of missing", err, core.ErrNotFound)
	_, err = s.Messages(ctx, "g:none", 0, 10, 0)
	wantErr(t, "Messages of missing", err, core.ErrNotFound)
	// The failed append stored no idempotency key: creating now gives seq 1.
	res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group("g:none"), Message: userMsg("g:none", "a", 1, "x")})
	if res.Duplicate || res.Message.Seq != 1 {
		t.Fatalf("append after failed append: dup=%v seq=%d", res.Duplicate, res.Message.Seq)
	}
}

func testAppendInvalid(t *testing.T, s core.Store) {
	ctx := t.Context()
	_, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Create: group("g:a")})
	wantErr(t, "nil message", err, core.ErrInvalidArgument)
	_, err = s.Append(ctx, core.AppendRequest{Epoch: 1, Create: group("g:a"), Message: userMsg("", "a", 1, "x")})
	wantErr(t, "empty conv", err, core.ErrInvalidArgument)
	_, err = s.Append(ctx, core.AppendRequest{Epoch: 1, Create: group("g:a"), Message: userMsg("g:a", "a", 1, "")})
	wantErr(t, "empty client_msg_id", err, core.ErrInvalidArgument)
	_, err = s.Append(ctx, core.AppendRequest{Epoch: 1, Create: group("g:b"), Message: userMsg("g:a", "a", 1, "x")})
	wantErr(t, "Create.ID != ConvId", err, core.ErrInvalidArgument)
	_, err = s.Conversation(ctx, "g:a")
	wantErr(t, "conversation after invalid appends", err, core.ErrNotFound)
}

func testAppendDuplicate(t *testing.T, s core.Store) {
	ctx := t.Context()
	const conv = "g:dup"
	first := mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, "k1"), AddMembers: []string{"a", "b"}})
	appendN(t, s, conv, 3) // m1..m3 at seqs 2..4
	before := messages(t, s, conv, 0, 0)
	beforeMembers := members(t, s, conv)

	// Replay with different content, membership effects and a Create: the
	// first stored entry comes back and nothing changes.
	replay := userMsg(conv, "a", 1, "k1")
	replay.Envelope.Ciphertext = []byte("different")
	replay.MsgId = "another-id"
	res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: replay, AddMembers: []string{"c"}, RemoveMembers: []string{"a"}})
	if !res.Duplicate {
		t.Fatalf("replay not reported as duplicate")
	}
	protoEqual(t, "replay result", res.Message, first.Message)
	equal(t, "messages after replay", len(messages(t, s, conv, 0, 0)), len(before))
	for i, m := range messages(t, s, conv, 0, 0) {
		protoEqual(t, "message after replay", m, before[i])
	}
	equal(t, "members after replay", members(t, s, conv), beforeMembers)
	if h := conversation(t, s, conv).Head; h != 4 {
		t.Fatalf("head after replay %d", h)
	}

	// A replay of a later entry returns that entry.
	res = mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "m2")})
	if !res.Duplicate || res.Message.Seq != 3 {
		t.Fatalf("replay of m2: dup=%v seq=%d", res.Duplicate, res.Message.Seq)
	}

	// Duplicate detection precedes the epoch check: fence the conversation,
	// then replay with the stale epoch.
	mustAppend(t, s, core.AppendRequest{Epoch: 5, Message: userMsg(conv, "a", 1, "new-owner")})
	res, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "k1")})
	if err != nil {
		t.Fatalf("replay after fencing: %v", err)
	}
	if !res.Duplicate {
		t.Fatalf("replay after fencing not a duplicate")
	}
	protoEqual(t, "replay after fencing", res.Message, first.Message)
	// A new key at the stale epoch is fenced.
	_, err = s.Append(ctx, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "k-new")})
	wantErr(t, "new key at stale epoch", err, core.ErrFenced)
}

func testAppendDuplicateKeyParts(t *testing.T, s core.Store) {
	// The key is (conv, sender user, sender device, client_msg_id): changing
	// any part gives a new entry.
	const conv = "g:parts"
	r := mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, "k")})
	for _, m := range []*pb.Message{userMsg(conv, "a", 2, "k"), userMsg(conv, "b", 1, "k"), userMsg(conv, "a", 1, "k2")} {
		res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: m})
		if res.Duplicate {
			t.Fatalf("%v/%s reported as duplicate of %v", m.Sender, m.ClientMsgId, r.Message.Sender)
		}
	}
	res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group("g:parts2"), Message: userMsg("g:parts2", "a", 1, "k")})
	if res.Duplicate || res.Message.Seq != 1 {
		t.Fatalf("same key in another conversation: dup=%v seq=%d", res.Duplicate, res.Message.Seq)
	}
	// A key that differs from another only by where the user/device split
	// falls must not collide ("a"+"b1" vs "ab"+"1" style).
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group("g:split"), Message: userMsg("g:split", "ab", 1, "x")})
	res = mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg("g:split", "a", 1, "bx")})
	if res.Duplicate {
		t.Fatalf("key collision across field boundaries")
	}
	if h := conversation(t, s, conv).Head; h != 4 {
		t.Fatalf("head %d, want 4", h)
	}
}

func testAppendFencing(t *testing.T, s core.Store) {
	ctx := t.Context()
	const conv = "g:fence"
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, "e1")})
	res := mustAppend(t, s, core.AppendRequest{Epoch: 2, Message: userMsg(conv, "a", 1, "e2")})
	if res.Message.Epoch != 2 || res.Message.Seq != 2 {
		t.Fatalf("append at epoch 2: %v", res.Message)
	}
	if e := conversation(t, s, conv).Epoch; e != 2 {
		t.Fatalf("conversation epoch %d after a newer writer, want 2", e)
	}
	for _, epoch := range []uint64{0, 1} {
		_, err := s.Append(ctx, core.AppendRequest{Epoch: epoch, Message: userMsg(conv, "a", 1, fmt.Sprintf("stale%d", epoch)), AddMembers: []string{"z"}})
		wantErr(t, fmt.Sprintf("append at epoch %d", epoch), err, core.ErrFenced)
	}
	c := conversation(t, s, conv)
	if c.Head != 2 || c.Epoch != 2 {
		t.Fatalf("fenced append changed the conversation: %+v", c)
	}
	if len(members(t, s, conv)) != 0 {
		t.Fatalf("fenced append added members")
	}
	// The fenced keys were not recorded: the new owner may use them.
	res = mustAppend(t, s, core.AppendRequest{Epoch: 2, Message: userMsg(conv, "a", 1, "stale1")})
	if res.Duplicate || res.Message.Seq != 3 || res.Message.Epoch != 2 {
		t.Fatalf("append at the current epoch: dup=%v %v", res.Duplicate, res.Message)
	}
	// Creating with Create at a stale epoch of an existing conversation is fenced too.
	_, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, "stale-create")})
	wantErr(t, "stale append with Create", err, core.ErrFenced)
}

func testMembership(t *testing.T, s core.Store) {
	m := func(user string, joined uint64) core.Member { return core.Member{User: user, JoinedSeq: joined} }
	const conv = "g:mem"
	create := &pb.Message{ConvId: conv, MsgId: "01M1", Sender: &pb.DeviceAddr{UserId: "b", DeviceId: 1}, ClientMsgId: "create",
		Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP, Membership: &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_CREATE, Actor: "b", Users: []string{"c", "a"}}}
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: create, AddMembers: []string{"b", "c", "a"}})
	equal(t, "members after create", members(t, s, conv), []core.Member{m("a", 1), m("b", 1), m("c", 1)})

	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "hello")})
	// Adding an existing member is a no-op (its JoinedSeq stays).
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "b", 1, "add"), AddMembers: []string{"d", "a", "aa"}})
	equal(t, "members after add", members(t, s, conv), []core.Member{m("a", 1), m("aa", 3), m("b", 1), m("c", 1), m("d", 3)})
	// Removing a non-member is a no-op.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "b", 1, "rm"), RemoveMembers: []string{"c", "zz"}})
	equal(t, "members after remove", members(t, s, conv), []core.Member{m("a", 1), m("aa", 3), m("b", 1), m("d", 3)})
	// Re-adding a removed member gives the new seq.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "b", 1, "readd"), AddMembers: []string{"c"}})
	equal(t, "members after re-add", members(t, s, conv), []core.Member{m("a", 1), m("aa", 3), m("b", 1), m("c", 5), m("d", 3)})
	// Add and remove in one entry.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "b", 1, "both"), AddMembers: []string{"e"}, RemoveMembers: []string{"aa", "d"}})
	equal(t, "members after add+remove", members(t, s, conv), []core.Member{m("a", 1), m("b", 1), m("c", 5), m("e", 6)})

	// A conversation created without members has none.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group("g:empty"), Message: userMsg("g:empty", "a", 1, "x")})
	equal(t, "members of memberless conversation", members(t, s, "g:empty"), []core.Member{})
}

func testUserConversations(t *testing.T, s core.Store) {
	ctx := t.Context()
	for _, conv := range []string{"g:c", "d:a:b", "g:a", "g:b"} {
		mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, "x"), AddMembers: []string{"a", "b"}})
	}
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg("g:b", "a", 1, "y"), RemoveMembers: []string{"b"}})
	uc := func(user string) []string {
		ids, err := s.UserConversations(ctx, user)
		if err != nil {
			t.Fatalf("UserConversations(%s): %v", user, err)
		}
		if ids == nil {
			ids = []string{}
		}
		return ids
	}
	equal(t, "a's conversations", uc("a"), []string{"d:a:b", "g:a", "g:b", "g:c"})
	equal(t, "b's conversations", uc("b"), []string{"d:a:b", "g:a", "g:c"})
	equal(t, "unknown user's conversations", uc("nobody"), []string{})
	// "a" is a prefix of "ab": the listing must not mix them.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group("g:z"), Message: userMsg("g:z", "ab", 1, "x"), AddMembers: []string{"ab"}})
	equal(t, "ab's conversations", uc("ab"), []string{"g:z"})
	equal(t, "a's conversations after ab joined", uc("a"), []string{"d:a:b", "g:a", "g:b", "g:c"})
}

// membershipMsg is a MEMBERSHIP entry of conv by actor's device 1.
func membershipMsg(conv, actor, cmid string, op pb.MembershipOp, users ...string) *pb.Message {
	return &pb.Message{ConvId: conv, MsgId: "01M" + cmid, Sender: &pb.DeviceAddr{UserId: actor, DeviceId: 1}, ClientMsgId: cmid,
		Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP, Membership: &pb.MembershipChange{Op: op, Actor: actor, Users: users}}
}

func userConvs(t *testing.T, s core.Store, user string) []string {
	t.Helper()
	ids, err := s.UserConversations(t.Context(), user)
	if err != nil {
		t.Fatalf("UserConversations(%s): %v", user, err)
	}
	if ids == nil {
		ids = []string{}
	}
	return ids
}

func testMemberRoles(t *testing.T, s core.Store) {
	const conv = "g:roles"
	admin := func(u string, seq uint64) core.Member { return core.Member{User: u, JoinedSeq: seq, Admin: true} }
	plain := func(u string, seq uint64) core.Member { return core.Member{User: u, JoinedSeq: seq} }
	// CREATE: the creator is added and promoted in the same entry.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: membershipMsg(conv, "b", "c1", pb.MembershipOp_MEMBERSHIP_OP_CREATE, "a", "c"),
		AddMembers: []string{"b", "a", "c"}, Promote: []string{"b"}})
	equal(t, "members after create", members(t, s, conv), []core.Member{plain("a", 1), admin("b", 1), plain("c", 1)})

	// A user message changes no roles.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "hello")})
	// PROMOTE of a member, an admin (no-op) and a non-member (no-op: no row appears).
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "b", "p", pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "a", "b", "zz"),
		Promote: []string{"a", "b", "zz"}})
	equal(t, "members after promote", members(t, s, conv), []core.Member{admin("a", 1), admin("b", 1), plain("c", 1)})
	// DEMOTE of an admin and of a plain member (no-op).
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "d", pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, "b", "c"),
		Demote: []string{"b", "c"}})
	equal(t, "members after demote", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), plain("c", 1)})
	// The last admin leaves and the longest-standing member is promoted in
	// the same entry (the sequencer chooses; the store applies both).
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "leave", pb.MembershipOp_MEMBERSHIP_OP_LEAVE),
		RemoveMembers: []string{"a"}, Promote: []string{"b"}})
	equal(t, "members after last admin left", members(t, s, conv), []core.Member{admin("b", 1), plain("c", 1)})
	// A removed admin who is added again is a plain member from the new seq.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "b", "readd", pb.MembershipOp_MEMBERSHIP_OP_ADD, "a"),
		AddMembers: []string{"a"}})
	equal(t, "members after re-add", members(t, s, conv), []core.Member{plain("a", 6), admin("b", 1), plain("c", 1)})
	// Promote and demote of one user in one entry: demote wins.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "b", "both", pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, "c"),
		Promote: []string{"c"}, Demote: []string{"c"}})
	equal(t, "members after promote+demote", members(t, s, conv), []core.Member{plain("a", 6), admin("b", 1), plain("c", 1)})
	// Removing an admin removes the role with the membership.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "b", "p2", pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "c"), Promote: []string{"c"}})
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "b", "rm", pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "c"), RemoveMembers: []string{"c"}})
	equal(t, "members after removing an admin", members(t, s, conv), []core.Member{plain("a", 6), admin("b", 1)})
	if h := conversation(t, s, conv).Head; h != 9 {
		t.Fatalf("head %d, want 9", h)
	}
	// Fenced appends change no roles either.
	_, err := s.Append(t.Context(), core.AppendRequest{Epoch: 0, Message: membershipMsg(conv, "b", "stale", pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "a"), Promote: []string{"a"}})
	wantErr(t, "stale promote", err, core.ErrFenced)
	equal(t, "members after fenced promote", members(t, s, conv), []core.Member{plain("a", 6), admin("b", 1)})
}

func testInvitations(t *testing.T, s core.Store) {
	const conv = "g:inv"
	inv := func(u string, seq uint64) core.Member { return core.Member{User: u, JoinedSeq: seq, Invited: true} }
	plain := func(u string, seq uint64) core.Member { return core.Member{User: u, JoinedSeq: seq} }
	admin := func(u string, seq uint64) core.Member { return core.Member{User: u, JoinedSeq: seq, Admin: true} }
	// CREATE with one direct add and one invitation.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: membershipMsg(conv, "a", "c", pb.MembershipOp_MEMBERSHIP_OP_CREATE, "b"),
		AddMembers: []string{"a", "b"}, Invite: []string{"c"}, Promote: []string{"a"}})
	equal(t, "members after create", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), inv("c", 1)})
	// The invitee's conversation list includes the conversation (the
	// caller tells invitations from memberships by the flag).
	equal(t, "invitee's conversations", userConvs(t, s, "c"), []string{conv})

	// Inviting a member or an invited user changes nothing; promoting an
	// invited user neither.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "i2", pb.MembershipOp_MEMBERSHIP_OP_ADD), Invite: []string{"b", "c", "d"}, Promote: []string{"c"}})
	equal(t, "members after second invite", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), inv("c", 1), inv("d", 2)})

	// ACCEPT is AddMembers of the invited user: a member from the new seq.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "c", "acc", pb.MembershipOp_MEMBERSHIP_OP_ACCEPT, "c"), AddMembers: []string{"c"}})
	equal(t, "members after accept", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), plain("c", 3), inv("d", 2)})
	// Adding an existing member keeps its JoinedSeq (accept replayed as a
	// new entry is a no-op on the row).
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "add-c", pb.MembershipOp_MEMBERSHIP_OP_ADD, "c"), AddMembers: []string{"c"}})
	equal(t, "members after adding a member", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), plain("c", 3), inv("d", 2)})

	// DECLINE (or an admin's REMOVE) deletes the invitation, and the
	// conversation leaves the user's list.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "d", "dec", pb.MembershipOp_MEMBERSHIP_OP_DECLINE, "d"), RemoveMembers: []string{"d"}})
	equal(t, "members after decline", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), plain("c", 3)})
	equal(t, "decliner's conversations", userConvs(t, s, "d"), []string{})

	// Invited and removed in one entry: removed.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "ir", pb.MembershipOp_MEMBERSHIP_OP_ADD), Invite: []string{"e"}, RemoveMembers: []string{"e"}})
	equal(t, "members after invite+remove", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), plain("c", 3)})
	equal(t, "conversations of e", userConvs(t, s, "e"), []string{})

	// An invitation re-issued after a decline has the new seq.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "again", pb.MembershipOp_MEMBERSHIP_OP_ADD), Invite: []string{"d"}})
	equal(t, "members after re-invite", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), plain("c", 3), inv("d", 7)})
	equal(t, "re-invited user's conversations", userConvs(t, s, "d"), []string{conv})
	// An admin's REMOVE cancels it.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "cancel", pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "d"), RemoveMembers: []string{"d"}})
	equal(t, "members after cancel", members(t, s, conv), []core.Member{admin("a", 1), plain("b", 1), plain("c", 3)})
	equal(t, "cancelled invitee's conversations", userConvs(t, s, "d"), []string{})
}

func testTitle(t *testing.T, s core.Store) {
	const conv = "g:title"
	title := func(v string) *string { return &v }
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, "x")})
	equal(t, "title after create", conversation(t, s, conv).Title, "title of "+conv)
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "t1", pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE), Title: title("Ünïcode ✓")})
	c := conversation(t, s, conv)
	if c.Title != "Ünïcode ✓" || c.Head != 2 || c.Kind != pb.ConversationKind_CONVERSATION_KIND_GROUP || c.HomeRegion != "eu" || c.CreatedAtMs != 1700000000999 {
		t.Fatalf("conversation after SET_TITLE: %+v", c)
	}
	// Appends without Title keep it; an empty Title clears it.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "y")})
	equal(t, "title after a message", conversation(t, s, conv).Title, "Ünïcode ✓")
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "t2", pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE), Title: title("")})
	equal(t, "title after clearing", conversation(t, s, conv).Title, "")
	// Title on the creating append wins over Create.Title.
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group("g:t2"), Message: userMsg("g:t2", "a", 1, "x"), Title: title("given")})
	equal(t, "title of a conversation created with Title", conversation(t, s, "g:t2").Title, "given")
	// A fenced append does not change it.
	mustAppend(t, s, core.AppendRequest{Epoch: 3, Message: userMsg(conv, "a", 1, "owner3")})
	_, err := s.Append(t.Context(), core.AppendRequest{Epoch: 2, Message: membershipMsg(conv, "a", "t3", pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE), Title: title("stale")})
	wantErr(t, "stale SET_TITLE", err, core.ErrFenced)
	equal(t, "title after fenced SET_TITLE", conversation(t, s, conv).Title, "")
}

func testAppendDuplicateRoles(t *testing.T, s core.Store) {
	// Duplicate detection comes first: a replay of a membership entry with
	// different role, invitation and title effects changes nothing.
	const conv = "g:duproles"
	title := "first"
	first := mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: membershipMsg(conv, "a", "k", pb.MembershipOp_MEMBERSHIP_OP_CREATE, "b"),
		AddMembers: []string{"a", "b"}, Invite: []string{"c"}, Promote: []string{"a"}, Title: &title})
	before, beforeConv := members(t, s, conv), conversation(t, s, conv)
	other := "replayed"
	res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: membershipMsg(conv, "a", "k", pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "b"),
		AddMembers: []string{"c", "d"}, Invite: []string{"e"}, Promote: []string{"b"}, Demote: []string{"a"}, RemoveMembers: []string{"c"}, Title: &other})
	if !res.Duplicate {
		t.Fatalf("replay not reported as duplicate")
	}
	protoEqual(t, "replay result", res.Message, first.Message)
	equal(t, "members after replay", members(t, s, conv), before)
	equal(t, "conversation after replay", conversation(t, s, conv), beforeConv)
	equal(t, "conversations of e after replay", userConvs(t, s, "e"), []string{})
}

func testMessagesPaging(t *testing.T, s core.Store) {
	const conv = "g:page"
	appendN(t, s, conv, 10)
	cases := []struct {
		after uint64
		limit int
		want  []uint64
	}{
		{0, 3, seqRange(1, 3)},
		{3, 3, seqRange(4, 6)},
		{6, 100, seqRange(7, 10)},
		{9, 5, seqRange(10, 10)},
		{10, 5, []uint64{}},
		{50, 5, []uint64{}},
		{0, 0, seqRange(1, 10)},  // 0 = default page size
		{2, -1, seqRange(3, 10)}, // negative = default page size
		{0, 1, seqRange(1, 1)},
	}
	for _, c := range cases {
		equal(t, fmt.Sprintf("Messages(after=%d, limit=%d)", c.after, c.limit), seqs(messages(t, s, conv, c.after, c.limit)), c.want)
	}
	// Paging through the whole conversation visits every entry once.
	var all []uint64
	for after := uint64(0); ; {
		page := messages(t, s, conv, after, 4)
		if len(page) == 0 {
			break
		}
		all = append(all, seqs(page)...)
		after = page[len(page)-1].Seq
	}
	equal(t, "paged walk", all, seqRange(1, 10))
}

func testRoundTrip(t *testing.T, s core.Store) {
	const conv = "g:rt"
	create := &pb.Message{
		ConvId: conv, MsgId: "01HZY000000000000000000001", Sender: &pb.DeviceAddr{UserId: "alice", DeviceId: 2},
		ClientMsgId: "create-1", SentAtMs: 1700000000001, Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP,
		Membership: &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_CREATE, Actor: "alice", Users: []string{"bob", "carol"}, Title: "Ünïcode title ✓"},
	}
	user := &pb.Message{
		ConvId: conv, MsgId: "01HZY000000000000000000002", Sender: &pb.DeviceAddr{UserId: "bob", DeviceId: 4294967295},
		ClientMsgId: "c-\u00e9-2", SentAtMs: -5, Kind: pb.MessageKind_MESSAGE_KIND_USER,
		Envelope: &pb.Envelope{
			Ciphertext: []byte{0, 1, 2, 255, 0},
			PerDevice: []*pb.DeviceCiphertext{
				{Device: &pb.DeviceAddr{UserId: "carol", DeviceId: 1}, Ciphertext: []byte("to carol.1")},
				{Device: &pb.DeviceAddr{UserId: "alice", DeviceId: 2}, Ciphertext: []byte{}},
				{Device: &pb.DeviceAddr{UserId: "alice", DeviceId: 1}, Ciphertext: bytes.Repeat([]byte{0xAB}, 4096)},
			},
			ContentHint: 4000000000,
		},
	}
	remove := &pb.Message{
		ConvId: conv, MsgId: "01HZY000000000000000000003", Sender: &pb.DeviceAddr{UserId: "alice", DeviceId: 2},
		ClientMsgId: "rm", SentAtMs: 1700000000003, Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP,
		Membership: &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_REMOVE, Actor: "alice", Users: []string{"carol"}},
	}
	var want []*pb.Message
	for i, m := range []*pb.Message{create, user, remove} {
		in := proto.Clone(m).(*pb.Message)
		res := mustAppend(t, s, core.AppendRequest{Epoch: 7, Create: group(conv), Message: in})
		w := proto.Clone(m).(*pb.Message)
		w.Seq, w.Epoch = uint64(i+1), 7
		protoEqual(t, "append result", res.Message, w)
		want = append(want, w)
	}
	got := messages(t, s, conv, 0, 0)
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		protoEqual(t, fmt.Sprintf("stored message %d", i+1), got[i], want[i])
	}
	// The returned messages are the caller's: changing them changes nothing stored.
	got[1].Envelope.Ciphertext[0] = 99
	protoEqual(t, "stored message after caller mutation", messages(t, s, conv, 1, 1)[0], want[1])
}

// ------------------------------------------------------------------ cursors

func testCursors(t *testing.T, s core.Store) {
	ctx := t.Context()
	dev := core.DeviceKey{User: "alice", Device: 1}
	steps := []struct {
		kind  core.CursorKind
		seq   uint64
		prev  uint64
		moved bool
	}{
		{core.CursorDelivered, 5, 0, true},
		{core.CursorDelivered, 3, 5, false}, // never back
		{core.CursorDelivered, 5, 5, false}, // equal is not a move
		{core.CursorDelivered, 7, 5, true},
		{core.CursorRead, 2, 0, true}, // independent of delivered
		{core.CursorRead, 1, 2, false},
		{core.CursorRead, 9, 2, true},
		{core.CursorDelivered, 8, 7, true},
		{core.CursorDelivered, 0, 8, false},
	}
	for i, st := range steps {
		prev, moved, err := s.AdvanceCursor(ctx, "g:c", dev, st.kind, st.seq)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if prev != st.prev || moved != st.moved {
			t.Fatalf("step %d (kind %d to %d): prev=%d moved=%v, want prev=%d moved=%v", i, st.kind, st.seq, prev, moved, st.prev, st.moved)
		}
	}
	cs, err := s.Cursors(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "cursor", cs, []core.Cursor{{Conv: "g:c", Device: dev, Delivered: 8, Read: 9}})
	_, _, err = s.AdvanceCursor(ctx, "g:c", dev, core.CursorKind(9), 10)
	wantErr(t, "unknown cursor kind", err, core.ErrInvalidArgument)
	_, _, err = s.AdvanceCursor(ctx, "g:c", dev, 0, 10)
	wantErr(t, "zero cursor kind", err, core.ErrInvalidArgument)
	// A cursor with a huge seq round-trips.
	if _, moved, err := s.AdvanceCursor(ctx, "g:big", dev, core.CursorDelivered, 1<<63+5); err != nil || !moved {
		t.Fatalf("big cursor: moved=%v %v", moved, err)
	}
	if prev, moved, err := s.AdvanceCursor(ctx, "g:big", dev, core.CursorDelivered, 1<<62); err != nil || moved || prev != 1<<63+5 {
		t.Fatalf("big cursor compare: prev=%d moved=%v %v", prev, moved, err)
	}
}

func testCursorListings(t *testing.T, s core.Store) {
	ctx := t.Context()
	a1 := core.DeviceKey{User: "a", Device: 1}
	a2 := core.DeviceKey{User: "a", Device: 2}
	a10 := core.DeviceKey{User: "a", Device: 10}
	ab1 := core.DeviceKey{User: "ab", Device: 1}
	b1 := core.DeviceKey{User: "b", Device: 1}
	adv := func(conv string, dev core.DeviceKey, kind core.CursorKind, seq uint64) {
		if _, _, err := s.AdvanceCursor(ctx, conv, dev, kind, seq); err != nil {
			t.Fatal(err)
		}
	}
	adv("g:y", b1, core.CursorDelivered, 1)
	adv("g:y", a10, core.CursorDelivered, 2)
	adv("g:y", ab1, core.CursorRead, 3)
	adv("g:y", a2, core.CursorDelivered, 4)
	adv("g:y", a1, core.CursorDelivered, 5)
	adv("g:x", a1, core.CursorRead, 6)
	adv("d:a:b", a1, core.CursorDelivered, 7)
	adv("g:yy", a1, core.CursorDelivered, 8)

	cs, err := s.Cursors(ctx, a1)
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "Cursors(a.1) ordered by conversation", cs, []core.Cursor{
		{Conv: "d:a:b", Device: a1, Delivered: 7},
		{Conv: "g:x", Device: a1, Read: 6},
		{Conv: "g:y", Device: a1, Delivered: 5},
		{Conv: "g:yy", Device: a1, Delivered: 8},
	})
	cs, err = s.ConvCursors(ctx, "g:y")
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "ConvCursors(g:y) ordered by device", cs, []core.Cursor{
		{Conv: "g:y", Device: a1, Delivered: 5},
		{Conv: "g:y", Device: a2, Delivered: 4},
		{Conv: "g:y", Device: a10, Delivered: 2},
		{Conv: "g:y", Device: ab1, Read: 3},
		{Conv: "g:y", Device: b1, Delivered: 1},
	})
	cs, err = s.Cursors(ctx, core.DeviceKey{User: "nobody", Device: 1})
	if err != nil || len(cs) != 0 {
		t.Fatalf("Cursors(unknown) = %v, %v", cs, err)
	}
	cs, err = s.ConvCursors(ctx, "g:none")
	if err != nil || len(cs) != 0 {
		t.Fatalf("ConvCursors(unknown) = %v, %v", cs, err)
	}
}

// ------------------------------------------------------------------ routes

func routes(t *testing.T, s core.Store, users ...string) []core.Route {
	t.Helper()
	rs, err := s.Routes(t.Context(), users)
	if err != nil {
		t.Fatalf("Routes(%v): %v", users, err)
	}
	if rs == nil {
		rs = []core.Route{}
	}
	return rs
}

func lastSeen(t *testing.T, s core.Store, users ...string) map[string]int64 {
	t.Helper()
	m, err := s.LastSeen(t.Context(), users)
	if err != nil {
		t.Fatalf("LastSeen(%v): %v", users, err)
	}
	if m == nil {
		m = map[string]int64{}
	}
	return m
}

func testRoutes(t *testing.T, s core.Store) {
	ctx := t.Context()
	a1 := core.DeviceKey{User: "a", Device: 1}
	set := func(r core.Route) {
		if err := s.SetRoute(ctx, r); err != nil {
			t.Fatalf("SetRoute(%+v): %v", r, err)
		}
	}
	set(core.Route{Device: a1, Edge: "e1", Session: 1, SinceMs: 10})
	set(core.Route{Device: a1, Edge: "e2", Session: 1<<63 + 2, SinceMs: 20}) // replaces
	equal(t, "route replaced", routes(t, s, "a"), []core.Route{{Device: a1, Edge: "e2", Session: 1<<63 + 2, SinceMs: 20}})

	// Clearing with a stale session removes nothing and sets no last-seen.
	removed, err := s.ClearRoute(ctx, a1, 1, 100)
	if err != nil || removed {
		t.Fatalf("ClearRoute(stale session) = %v, %v", removed, err)
	}
	equal(t, "route after stale clear", len(routes(t, s, "a")), 1)
	equal(t, "last seen after stale clear", lastSeen(t, s, "a"), map[string]int64{})

	removed, err = s.ClearRoute(ctx, a1, 1<<63+2, 200)
	if err != nil || !removed {
		t.Fatalf("ClearRoute(current session) = %v, %v", removed, err)
	}
	equal(t, "routes after clear", routes(t, s, "a"), []core.Route{})
	equal(t, "last seen after clear", lastSeen(t, s, "a", "b"), map[string]int64{"a": 200})
	removed, err = s.ClearRoute(ctx, a1, 1<<63+2, 300)
	if err != nil || removed {
		t.Fatalf("second ClearRoute = %v, %v", removed, err)
	}
	equal(t, "last seen after no-op clear", lastSeen(t, s, "a"), map[string]int64{"a": 200})
	removed, err = s.ClearRoute(ctx, core.DeviceKey{User: "ghost", Device: 1}, 1, 5)
	if err != nil || removed {
		t.Fatalf("ClearRoute(unknown) = %v, %v", removed, err)
	}

	// Last seen never moves back.
	set(core.Route{Device: a1, Edge: "e1", Session: 3, SinceMs: 30})
	if removed, err := s.ClearRoute(ctx, a1, 3, 150); err != nil || !removed {
		t.Fatalf("ClearRoute: %v %v", removed, err)
	}
	equal(t, "last seen is not moved back", lastSeen(t, s, "a"), map[string]int64{"a": 200})
	set(core.Route{Device: a1, Edge: "e1", Session: 4, SinceMs: 40})
	if removed, err := s.ClearRoute(ctx, a1, 4, 400); err != nil || !removed {
		t.Fatalf("ClearRoute: %v %v", removed, err)
	}
	equal(t, "last seen moves forward", lastSeen(t, s, "a"), map[string]int64{"a": 400})

	// Ordering by device across users; only the named users.
	rs := []core.Route{
		{Device: core.DeviceKey{User: "c", Device: 1}, Edge: "e1", Session: 5, SinceMs: 1},
		{Device: core.DeviceKey{User: "b", Device: 1}, Edge: "e2", Session: 6, SinceMs: 2, Region: "us-east"},
		{Device: core.DeviceKey{User: "a", Device: 10}, Edge: "e1", Session: 7, SinceMs: 3, Region: "eu-central"},
		{Device: core.DeviceKey{User: "a", Device: 2}, Edge: "e1", Session: 8, SinceMs: 4},
		{Device: core.DeviceKey{User: "ab", Device: 1}, Edge: "e1", Session: 9, SinceMs: 5},
	}
	for _, r := range rs {
		set(r)
	}
	equal(t, "Routes(b, a) ordered by device", routes(t, s, "b", "a"), []core.Route{rs[3], rs[2], rs[1]})
	equal(t, "Routes(nobody)", routes(t, s, "nobody"), []core.Route{})
	equal(t, "Routes()", routes(t, s), []core.Route{})
}

func testClearEdgeRoutes(t *testing.T, s core.Store) {
	ctx := t.Context()
	rs := []core.Route{
		{Device: core.DeviceKey{User: "a", Device: 1}, Edge: "e1", Session: 1, SinceMs: 1},
		{Device: core.DeviceKey{User: "a", Device: 2}, Edge: "e2", Session: 2, SinceMs: 2},
		{Device: core.DeviceKey{User: "b", Device: 1}, Edge: "e1", Session: 3, SinceMs: 3},
		{Device: core.DeviceKey{User: "c", Device: 1}, Edge: "e10", Session: 4, SinceMs: 4},
		{Device: core.DeviceKey{User: "d", Device: 1}, Edge: "e1", Session: 5, SinceMs: 5},
	}
	for _, r := range rs {
		if err := s.SetRoute(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// d moves to e2 before e1 dies: its route no longer names e1.
	moved := core.Route{Device: core.DeviceKey{User: "d", Device: 1}, Edge: "e2", Session: 6, SinceMs: 6}
	if err := s.SetRoute(ctx, moved); err != nil {
		t.Fatal(err)
	}
	removed, err := s.ClearEdgeRoutes(ctx, "e1", 500)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(removed, func(i, j int) bool { return lessKey(removed[i].Device, removed[j].Device) })
	equal(t, "removed routes", removed, []core.Route{rs[0], rs[2]})
	equal(t, "remaining routes", routes(t, s, "a", "b", "c", "d"), []core.Route{rs[1], rs[3], moved})
	equal(t, "last seen", lastSeen(t, s, "a", "b", "c", "d"), map[string]int64{"a": 500, "b": 500})
	removed, err = s.ClearEdgeRoutes(ctx, "e1", 600)
	if err != nil || len(removed) != 0 {
		t.Fatalf("second ClearEdgeRoutes = %v, %v", removed, err)
	}
	equal(t, "last seen after no-op", lastSeen(t, s, "a", "b"), map[string]int64{"a": 500, "b": 500})
}

func lessKey(a, b core.DeviceKey) bool {
	if a.User != b.User {
		return a.User < b.User
	}
	return a.Device < b.Device
}

// ------------------------------------------------------------------ concurrency

// testConcurrentAppend: G goroutines append to one conversation (each passes
// Create, so creation races too). Every key is appended by two goroutines.
func testConcurrentAppend(t *testing.T, s core.Store) {
	for r := 0; r < concurrencyRounds; r++ {
		concurrentAppendRound(t, s, fmt.Sprintf("g:race%d", r))
	}
}

// concurrencyRounds repeats each concurrency scenario on fresh keys: a lost
// update shows up in a given round only if the racing calls overlap.
const concurrencyRounds = 3

func concurrentAppendRound(t *testing.T, s core.Store, conv string) {
	const (
		workers = 8
		perW    = 12
		shared  = workers * perW / 2 // each shared key twice
		keys    = shared + workers   // plus one own key per worker
	)
	type result struct {
		key string
		res core.AppendResult
		err error
	}
	out := make(chan result, workers*(perW+1))
	start := make(chan struct{}) // release all workers at once: more overlap
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// A key of its own, with a membership effect.
			join := fmt.Sprintf("join%02d", w)
			res, err := s.Append(t.Context(), core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, join), AddMembers: []string{fmt.Sprintf("u%02d", w)}})
			out <- result{join, res, err}
			for i := 0; i < perW; i++ {
				// Worker w and worker w^1 share keys; they walk them in opposite orders.
				k := (w/2)*perW + i
				if w%2 == 1 {
					k = (w/2)*perW + perW - 1 - i
				}
				k %= shared
				key := fmt.Sprintf("k%03d", k)
				res, err := s.Append(t.Context(), core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, key)})
				out <- result{key, res, err}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(out)
	seqOf := map[string]uint64{}
	firsts := map[string]int{}
	for r := range out {
		if r.err != nil {
			t.Fatalf("Append(%s): %v", r.key, r.err)
		}
		if r.res.Message.ClientMsgId != r.key {
			t.Fatalf("Append(%s) returned entry %q", r.key, r.res.Message.ClientMsgId)
		}
		if prev, ok := seqOf[r.key]; ok && prev != r.res.Message.Seq {
			t.Fatalf("key %s got seqs %d and %d", r.key, prev, r.res.Message.Seq)
		}
		seqOf[r.key] = r.res.Message.Seq
		if !r.res.Duplicate {
			firsts[r.key]++
		}
	}
	if len(seqOf) != keys {
		t.Fatalf("%d distinct keys, want %d", len(seqOf), keys)
	}
	for k, n := range firsts {
		if n != 1 {
			t.Fatalf("key %s stored %d times", k, n)
		}
	}
	if len(firsts) != keys {
		t.Fatalf("%d keys reported as first append, want %d", len(firsts), keys)
	}
	ms := messages(t, s, conv, 0, core.MaxPageSize)
	equal(t, "stored seqs", seqs(ms), seqRange(1, keys))
	seen := map[string]bool{}
	for _, m := range ms {
		if seen[m.ClientMsgId] {
			t.Fatalf("key %s stored twice", m.ClientMsgId)
		}
		seen[m.ClientMsgId] = true
		if seqOf[m.ClientMsgId] != m.Seq {
			t.Fatalf("key %s stored at %d but acked with %d", m.ClientMsgId, m.Seq, seqOf[m.ClientMsgId])
		}
	}
	if h := conversation(t, s, conv).Head; h != keys {
		t.Fatalf("head %d, want %d", h, keys)
	}
	// Every worker's AddMembers took effect, with the seq of its own key.
	ms2 := members(t, s, conv)
	if len(ms2) != workers {
		t.Fatalf("%d members, want %d", len(ms2), workers)
	}
	for w, m := range ms2 {
		if want := seqOf[fmt.Sprintf("join%02d", w)]; m.User != fmt.Sprintf("u%02d", w) || m.JoinedSeq != want {
			t.Fatalf("member %+v, want u%02d joined at %d", m, w, want)
		}
	}
}

// testConcurrentAppendMany: writers on distinct conversations do not disturb
// one another.
func testConcurrentAppendMany(t *testing.T, s core.Store) {
	const (
		convs = 6
		perC  = 15
	)
	var wg sync.WaitGroup
	errs := make(chan error, convs)
	for c := 0; c < convs; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := fmt.Sprintf("g:many%d", c)
			for i := 1; i <= perC; i++ {
				res, err := s.Append(t.Context(), core.AppendRequest{Epoch: 1, Create: group(conv), Message: userMsg(conv, "a", 1, fmt.Sprintf("m%d", i)), AddMembers: []string{"a"}})
				if err != nil {
					errs <- err
					return
				}
				if res.Message.Seq != uint64(i) {
					errs <- fmt.Errorf("%s: append %d got seq %d", conv, i, res.Message.Seq)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for c := 0; c < convs; c++ {
		conv := fmt.Sprintf("g:many%d", c)
		equal(t, conv, seqs(messages(t, s, conv, 0, 0)), seqRange(1, perC))
	}
	ids, err := s.UserConversations(t.Context(), "a")
	if err != nil || len(ids) != convs {
		t.Fatalf("UserConversations = %v, %v", ids, err)
	}
}

// testConcurrentCursor: the successful moves of concurrent advances form one
// chain 0 -> ... -> max, as if applied one at a time (no two moves to the
// same value, each move starting where the previous one ended).
func testConcurrentCursor(t *testing.T, s core.Store) {
	for r := 0; r < concurrencyRounds; r++ {
		concurrentCursorRound(t, s, fmt.Sprintf("g:cur%d", r))
	}
}

func concurrentCursorRound(t *testing.T, s core.Store, conv string) {
	const (
		workers = 8
		perW    = 40
		max     = perW
	)
	dev := core.DeviceKey{User: "a", Device: 1}
	type move struct{ prev, seq uint64 }
	moves := make(chan move, workers*perW)
	errs := make(chan error, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i < perW; i++ {
				// Every worker walks 1..max: each target is raced by all.
				seq := uint64(i + 1)
				prev, moved, err := s.AdvanceCursor(t.Context(), conv, dev, core.CursorDelivered, seq)
				if err != nil {
					errs <- err
					return
				}
				if moved {
					if prev >= seq {
						errs <- fmt.Errorf("moved from %d to %d", prev, seq)
						return
					}
					moves <- move{prev, seq}
				} else if prev < seq {
					errs <- fmt.Errorf("not moved to %d although prev was %d", seq, prev)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(moves)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var ms []move
	for m := range moves {
		ms = append(ms, m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].seq < ms[j].seq })
	last := uint64(0)
	for _, m := range ms {
		if m.seq == last {
			t.Fatalf("two advances both moved the cursor to %d", m.seq)
		}
		if m.prev != last {
			t.Fatalf("move %d->%d does not continue from %d: a lost update", m.prev, m.seq, last)
		}
		last = m.seq
	}
	if last != max {
		t.Fatalf("last move to %d, want %d", last, max)
	}
	cs, err := s.Cursors(t.Context(), dev)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) == 0 {
		t.Fatalf("no cursors")
	}
	var final *core.Cursor
	for i := range cs {
		if cs[i].Conv == conv {
			final = &cs[i]
		}
	}
	if final == nil || final.Delivered != max || final.Read != 0 {
		t.Fatalf("final cursors %+v, want %s delivered at %d", cs, conv, max)
	}
}

// testConcurrentRegister: concurrent registrations of distinct keys for one
// user get distinct numbers; concurrent retries of one key get one device.
func testConcurrentRegister(t *testing.T, s core.Store) {
	for r := 0; r < concurrencyRounds; r++ {
		concurrentRegisterRound(t, s, fmt.Sprintf("alice%d", r), fmt.Sprintf("bob%d", r))
	}
}

func concurrentRegisterRound(t *testing.T, s core.Store, alice, bob string) {
	register(t, s, alice, 0, true)
	const workers = 8
	got := make(chan core.Device, 2*workers)
	errs := make(chan error, 2*workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			d, err := s.RegisterDevice(t.Context(), core.User{ID: alice}, mkDevice(alice, w+1), false)
			if err != nil {
				errs <- err
				return
			}
			got <- d
		}()
		go func() { // everyone retries the same static for bob
			defer wg.Done()
			<-start
			d, err := s.RegisterDevice(t.Context(), core.User{ID: bob, HomeRegion: "eu"}, mkDevice(bob, 0), true)
			if err != nil {
				errs <- err
				return
			}
			got <- d
		}()
	}
	close(start)
	wg.Wait()
	close(got)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	numbers := map[uint32]bool{}
	for d := range got {
		if d.Key.User == bob {
			if d.Key.Device != 1 {
				t.Fatalf("%s's retried registration got device %d", bob, d.Key.Device)
			}
			continue
		}
		if numbers[d.Key.Device] {
			t.Fatalf("device number %d assigned twice", d.Key.Device)
		}
		numbers[d.Key.Device] = true
	}
	for n := uint32(2); n <= workers+1; n++ {
		if !numbers[n] {
			t.Fatalf("device numbers %v are not 2..%d", numbers, workers+1)
		}
	}
	for _, u := range []string{alice, bob} {
		ds, err := s.Devices(t.Context(), u)
		if want := map[string]int{alice: workers + 1, bob: 1}[u]; err != nil || len(ds) != want {
			t.Fatalf("%s has %d devices (%v), want %d", u, len(ds), err, want)
		}
	}
}

// Lookup finds an entry by its idempotency key, and nothing else.
func testLookup(t *testing.T, s core.Store) {
	ctx := t.Context()
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group("g:look"), Message: userMsg("g:look", "a", 1, "first"), AddMembers: []string{"a"}})
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg("g:look", "a", 1, "second")})
	m, err := s.Lookup(ctx, "g:look", core.DeviceKey{User: "a", Device: 1}, "second")
	if err != nil || m.GetSeq() != 2 || m.GetClientMsgId() != "second" {
		t.Fatalf("lookup: %v %v", m, err)
	}
	for _, miss := range []struct {
		conv string
		dev  core.DeviceKey
		key  string
	}{
		{"g:look", core.DeviceKey{User: "a", Device: 2}, "second"},
		{"g:look", core.DeviceKey{User: "b", Device: 1}, "second"},
		{"g:look", core.DeviceKey{User: "a", Device: 1}, "third"},
		{"g:other", core.DeviceKey{User: "a", Device: 1}, "second"},
		{"g:look", core.DeviceKey{User: "a", Device: 1}, ""},
	} {
		if _, err := s.Lookup(ctx, miss.conv, miss.dev, miss.key); !errors.Is(err, core.ErrNotFound) {
			t.Errorf("lookup %+v: %v, want not found", miss, err)
		}
	}
}
