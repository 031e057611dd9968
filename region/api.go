package region

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// LinkContext is the domain-separation prefix of a device link signature.
const LinkContext = "chatmesh-link-v1"

// LinkMessage is what an existing device signs to link a new device.
func LinkMessage(user string, noiseStatic, identityKey []byte) []byte {
	var b bytes.Buffer
	b.WriteString(LinkContext)
	b.WriteString(user)
	b.Write(noiseStatic)
	b.Write(identityKey)
	return b.Bytes()
}

// API is what edges call synchronously: authentication, registration,
// session routes and reads. It is safe for concurrent use.
type API struct{ r *Region }

// Authenticate maps a handshake-proven Noise static key to its device.
func (a *API) Authenticate(ctx context.Context, static []byte) (core.DeviceKey, error) {
	d, err := a.r.store.DeviceByStatic(ctx, static)
	if err != nil {
		return core.DeviceKey{}, fmt.Errorf("authenticate: %w", err)
	}
	return d.Key, nil
}

// Register registers the device whose Noise static key is static. Every
// request must carry identity_proof, the Ed25519 signature by identity_key
// over core.RegisterProofMessage (INVALID_ARGUMENT when missing, FORBIDDEN
// when wrong; nothing is stored). A user's first device creates the user;
// any further device must carry a link signature by an existing device of
// the user, and a user has at most core.MaxDevicesPerUser devices
// (LIMIT_EXCEEDED). Per-IP limits, proof of work and registration tokens
// are the edge's (edge/admission.go).
func (a *API) Register(ctx context.Context, static []byte, req *pb.RegisterRequest) (*pb.RegisterResponse, error) {
	user := req.GetUserId()
	if !core.ValidUserID(user) {
		return nil, fmt.Errorf("register: bad user id: %w", core.ErrInvalidArgument)
	}
	if len(static) != 32 || len(req.GetIdentityKey()) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("register: keys must be 32 bytes: %w", core.ErrInvalidArgument)
	}
	// Proof of possession: without it anyone could register (or link)
	// someone else's identity key as their own.
	if len(req.GetIdentityProof()) != ed25519.SignatureSize {
		return nil, fmt.Errorf("register: identity_proof (a %d-byte Ed25519 signature) is required: %w", ed25519.SignatureSize, core.ErrInvalidArgument)
	}
	if !ed25519.Verify(req.GetIdentityKey(), core.RegisterProofMessage(user, static), req.GetIdentityProof()) {
		return nil, fmt.Errorf("register: identity_proof does not verify with identity_key: %w", core.ErrForbidden)
	}
	if d, err := a.r.store.DeviceByStatic(ctx, static); err == nil {
		if d.Key.User != user {
			return nil, fmt.Errorf("register: key belongs to another user: %w", core.ErrAlreadyExists)
		}
		return &pb.RegisterResponse{Device: d.Key.Addr()}, nil
	} else if !errors.Is(err, core.ErrNotFound) {
		return nil, fmt.Errorf("register: %w", err)
	}
	now := a.r.nowMs()
	dev := core.Device{NoiseStatic: static, IdentityKey: req.GetIdentityKey(), CreatedAtMs: now}
	_, err := a.r.store.User(ctx, user)
	switch {
	case errors.Is(err, core.ErrNotFound):
		d, err := a.r.store.RegisterDevice(ctx, core.User{ID: user, HomeRegion: a.r.cfg.Name, CreatedAtMs: now}, dev, true)
		if err != nil {
			return nil, fmt.Errorf("register %s: %w", user, err)
		}
		a.r.devices.forget(user)
		return &pb.RegisterResponse{Device: d.Key.Addr()}, nil
	case err != nil:
		return nil, fmt.Errorf("register %s: %w", user, err)
	}
	// An existing user: the new device must be linked by one of its devices.
	if req.GetLinkedByDevice() == 0 || len(req.GetLinkSignature()) == 0 {
		return nil, fmt.Errorf("register %s: user exists; a device link is required: %w", user, core.ErrAlreadyExists)
	}
	devs, err := a.r.store.Devices(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", user, err)
	}
	// Checked before the insert: two racing links of one user may pass it
	// together, but both need signatures by the user's own devices.
	if len(devs) >= core.MaxDevicesPerUser {
		return nil, fmt.Errorf("register %s: already %d devices (at most %d): %w", user, len(devs), core.MaxDevicesPerUser, core.ErrLimitExceeded)
	}
	var signer *core.Device
	for i := range devs {
		if devs[i].Key.Device == req.GetLinkedByDevice() {
			signer = &devs[i]
		}
	}
	if signer == nil || len(signer.IdentityKey) != ed25519.PublicKeySize ||
		!ed25519.Verify(signer.IdentityKey, LinkMessage(user, static, req.GetIdentityKey()), req.GetLinkSignature()) {
		return nil, fmt.Errorf("register %s: bad device link: %w", user, core.ErrForbidden)
	}
	dev.LinkedBy = signer.Key.Device
	dev.LinkSignature = req.GetLinkSignature()
	d, err := a.r.store.RegisterDevice(ctx, core.User{ID: user}, dev, false)
	if err != nil {
		return nil, fmt.Errorf("register %s: %w", user, err)
	}
	a.r.devices.forget(user)
	return &pb.RegisterResponse{Device: d.Key.Addr()}, nil
}

// SessionOpened stores the device's route and announces the user online.
// It returns after the route is durable, so the session's first sync and
// the live pushes that follow cover every entry between them.
func (a *API) SessionOpened(ctx context.Context, rt core.Route) error {
	if err := a.r.store.SetRoute(ctx, rt); err != nil {
		return fmt.Errorf("session opened %s: %w", rt.Device, err)
	}
	return a.publishPresence(ctx, &pb.PresenceEvent{UserId: rt.Device.User, Online: true, LastSeenMs: rt.SinceMs})
}

// SessionClosed removes the route (if it still names the session) and
// announces the user offline when no device of theirs is left online.
func (a *API) SessionClosed(ctx context.Context, dev core.DeviceKey, session uint64) error {
	now := a.r.nowMs()
	removed, err := a.r.store.ClearRoute(ctx, dev, session, now)
	if err != nil {
		return fmt.Errorf("session closed %s: %w", dev, err)
	}
	if !removed {
		return nil
	}
	return a.announceIfOffline(ctx, []string{dev.User}, now)
}

// EdgeStarted forgets every route of a restarted edge.
func (a *API) EdgeStarted(ctx context.Context, edgeID string) error {
	now := a.r.nowMs()
	removed, err := a.r.store.ClearEdgeRoutes(ctx, edgeID, now)
	if err != nil {
		return fmt.Errorf("edge started %s: %w", edgeID, err)
	}
	seen := map[string]bool{}
	var users []string
	for _, rt := range removed {
		if !seen[rt.Device.User] {
			seen[rt.Device.User] = true
			users = append(users, rt.Device.User)
		}
	}
	return a.announceIfOffline(ctx, users, now)
}

func (a *API) announceIfOffline(ctx context.Context, users []string, now int64) error {
	if len(users) == 0 {
		return nil
	}
	routes, err := a.r.store.Routes(ctx, users)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	online := map[string]bool{}
	for _, rt := range routes {
		online[rt.Device.User] = true
	}
	for _, u := range users {
		if !online[u] {
			if err := a.publishPresence(ctx, &pb.PresenceEvent{UserId: u, Online: false, LastSeenMs: now}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *API) publishPresence(ctx context.Context, ev *pb.PresenceEvent) error {
	b, err := proto.Marshal(&pb.PresenceRecord{Event: ev})
	if err != nil {
		return fmt.Errorf("presence: encode: %w", err)
	}
	// Presence is best effort: a lost event is corrected by the next one or
	// by a snapshot; do not fail the session for it.
	if err := a.r.bus.Produce(ctx, core.BusRecord{Topic: a.r.cfg.PresenceTopic, Key: []byte(ev.GetUserId()), Value: b}); err != nil {
		a.r.log.Warn("presence publish failed", "err", err)
	}
	return nil
}

// Query answers a read request of device dev.
func (a *API) Query(ctx context.Context, dev core.DeviceKey, f *pb.ClientFrame) (*pb.Response, error) {
	var resp *pb.Response
	var err error
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_Sync:
		resp, err = a.sync(ctx, dev, b.Sync)
	case *pb.ClientFrame_History:
		resp, err = a.history(ctx, dev, b.History)
	case *pb.ClientFrame_ListConversations:
		resp, err = a.listConversations(ctx, dev)
	case *pb.ClientFrame_LookupUser:
		resp, err = a.lookupUser(ctx, b.LookupUser.GetUserId())
	case *pb.ClientFrame_PresenceSubscribe:
		resp, err = a.presenceSnapshot(ctx, b.PresenceSubscribe.GetUsers())
	case *pb.ClientFrame_UploadPrekeys:
		resp, err = a.uploadPrekeys(ctx, dev, b.UploadPrekeys)
	case *pb.ClientFrame_FetchBundle:
		resp, err = a.fetchBundle(ctx, dev, b.FetchBundle)
	case *pb.ClientFrame_PublishDeviceList:
		resp, err = a.publishDeviceList(ctx, dev, b.PublishDeviceList)
	case *pb.ClientFrame_FetchDeviceList:
		resp, err = a.fetchDeviceList(ctx, b.FetchDeviceList)
	default:
		err = fmt.Errorf("query: not a read request: %w", core.ErrInvalidArgument)
	}
	if err != nil {
		return &pb.Response{ReqId: f.GetReqId(), Error: core.ToWire(err)}, nil
	}
	resp.ReqId = f.GetReqId()
	return resp, nil
}

func clampLimit(n uint32) int {
	switch {
	case n == 0:
		return core.DefaultPageSize
	case n > core.MaxPageSize:
		return core.MaxPageSize
	default:
		return int(n)
	}
}

// sync returns every entry after the device's cursors in each of the
// user's conversations, in (conversation, seq) order, one page at a time.
func (a *API) sync(ctx context.Context, dev core.DeviceKey, req *pb.SyncRequest) (*pb.Response, error) {
	limit := clampLimit(req.GetLimit())
	after := map[string]uint64{}
	for _, c := range req.GetCursors() {
		after[c.GetConvId()] = c.GetAfterSeq()
	}
	convs, err := a.r.store.UserConversations(ctx, dev.User)
	if err != nil {
		return nil, fmt.Errorf("sync %s: %w", dev, err)
	}
	out := &pb.SyncResponse{}
	for _, conv := range convs {
		c, set, err := a.r.loadMembers(ctx, conv)
		if errors.Is(err, core.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sync %s: %w", conv, err)
		}
		joined, ok := set[dev.User]
		if !ok {
			continue
		}
		from := after[conv]
		if joined > 0 && from < joined-1 {
			from = joined - 1
		}
		out.Heads = append(out.Heads, &pb.ConvCursor{ConvId: conv, AfterSeq: c.Head})
		if from >= c.Head {
			continue
		}
		room := limit - len(out.Messages)
		if room <= 0 {
			out.More = true
			break
		}
		msgs, err := a.r.store.Messages(ctx, conv, from, room)
		if err != nil {
			return nil, fmt.Errorf("sync %s: %w", conv, err)
		}
		for _, m := range msgs {
			out.Messages = append(out.Messages, core.ForDevice(m, dev))
		}
		if len(msgs) == room && from+uint64(room) < c.Head {
			out.More = true
			break
		}
	}
	return &pb.Response{Body: &pb.Response_Sync{Sync: out}}, nil
}

func (a *API) history(ctx context.Context, dev core.DeviceKey, req *pb.HistoryRequest) (*pb.Response, error) {
	conv := req.GetConvId()
	c, set, err := a.r.loadMembers(ctx, conv)
	if err != nil {
		return nil, fmt.Errorf("history %s: %w", conv, err)
	}
	joined, ok := set[dev.User]
	if !ok {
		return nil, fmt.Errorf("history %s: %s: %w", conv, dev.User, core.ErrNotMember)
	}
	limit := uint64(clampLimit(req.GetLimit()))
	before := req.GetBeforeSeq()
	if before == 0 || before > c.Head+1 {
		before = c.Head + 1
	}
	var from uint64
	if before > limit+1 {
		from = before - 1 - limit
	}
	if joined > 0 && from < joined-1 {
		from = joined - 1
	}
	out := &pb.HistoryResponse{}
	if before > from+1 {
		msgs, err := a.r.store.Messages(ctx, conv, from, int(before-1-from))
		if err != nil {
			return nil, fmt.Errorf("history %s: %w", conv, err)
		}
		for _, m := range msgs {
			out.Messages = append(out.Messages, core.ForDevice(m, dev))
		}
	}
	return &pb.Response{Body: &pb.Response_History{History: out}}, nil
}

func (a *API) listConversations(ctx context.Context, dev core.DeviceKey) (*pb.Response, error) {
	convs, err := a.r.store.UserConversations(ctx, dev.User)
	if err != nil {
		return nil, fmt.Errorf("list conversations: %w", err)
	}
	out := &pb.ListConversationsResponse{}
	for _, conv := range convs {
		c, set, err := a.r.loadMembers(ctx, conv)
		if errors.Is(err, core.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list conversations: %s: %w", conv, err)
		}
		out.Conversations = append(out.Conversations, convInfo(c, set))
	}
	return &pb.Response{Body: &pb.Response_Conversations{Conversations: out}}, nil
}

func (a *API) lookupUser(ctx context.Context, user string) (*pb.Response, error) {
	devs, err := a.r.store.Devices(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("lookup %s: %w", user, err)
	}
	out := &pb.LookupUserResponse{UserId: user}
	for _, d := range devs {
		out.Devices = append(out.Devices, &pb.DeviceInfo{DeviceId: d.Key.Device, IdentityKey: d.IdentityKey, NoiseStatic: d.NoiseStatic})
	}
	return &pb.Response{Body: &pb.Response_User{User: out}}, nil
}

func (a *API) presenceSnapshot(ctx context.Context, users []string) (*pb.Response, error) {
	if len(users) > core.MaxPresenceUsers {
		return nil, fmt.Errorf("presence: more than %d users: %w", core.MaxPresenceUsers, core.ErrInvalidArgument)
	}
	routes, err := a.r.store.Routes(ctx, users)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	seen, err := a.r.store.LastSeen(ctx, users)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	online := map[string]bool{}
	for _, rt := range routes {
		online[rt.Device.User] = true
	}
	out := &pb.PresenceSnapshot{}
	for _, u := range users {
		out.Users = append(out.Users, &pb.PresenceEvent{UserId: u, Online: online[u], LastSeenMs: seen[u]})
	}
	return &pb.Response{Body: &pb.Response_Presence{Presence: out}}, nil
}
