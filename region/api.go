package region

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"hash/fnv"

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
		if p := a.r.cfg.Placement; p != nil {
			// A user's home is the region they first register in. Best
			// effort: without it their conversations are homed where
			// they are first used.
			cctx, cancel := context.WithTimeout(ctx, claimTimeout)
			if _, err := p.ClaimUser(cctx, user, a.r.cfg.Name); err != nil {
				a.r.log.Warn("directory: homing a new user failed", "user", user, "err", err)
			}
			cancel()
		}
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
	// Reading the previous route and writing the new one are one step per
	// user in this process, so of two sessions opening at once on two
	// edges, the second always sees (and replaces) the first.
	h := fnv.New32a()
	h.Write([]byte(rt.Device.User))
	mu := &a.r.routeLocks[h.Sum32()%uint32(len(a.r.routeLocks))]
	mu.Lock()
	defer mu.Unlock()
	rt.Region = a.r.cfg.Name // the edge calling us is one of ours
	prev, err := a.r.store.Routes(ctx, []string{rt.Device.User})
	if err != nil {
		return fmt.Errorf("session opened %s: %w", rt.Device, err)
	}
	if err := a.r.store.SetRoute(ctx, rt); err != nil {
		return fmt.Errorf("session opened %s: %w", rt.Device, err)
	}
	// A session of the device on another edge is no longer the routed one:
	// it must not live on without pushes. Its edge ends it (REPLACED).
	// (Sessions on the same edge are replaced by the edge itself.)
	for _, old := range prev {
		if old.Device != rt.Device || old.Edge == rt.Edge {
			continue
		}
		b, err := proto.Marshal(&pb.EdgeRecord{
			Targets: []*pb.DeviceAddr{old.Device.Addr()}, SessionId: old.Session,
			Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Disconnect{Disconnect: &pb.Disconnect{
				Code: pb.ErrorCode_ERROR_CODE_REPLACED, Detail: "the device connected again elsewhere",
			}}},
		})
		if err != nil {
			return fmt.Errorf("session opened %s: %w", rt.Device, err)
		}
		if err := a.r.produceNow(ctx, a.r.edgeOut(old.Region, old.Edge, b)); err != nil {
			// Best effort: the old session still idles out; log it.
			a.r.log.Warn("replacing a session on another edge failed", "device", rt.Device.String(), "edge", old.Edge, "err", err)
		}
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

// publishPresence broadcasts ev to every edge, last seen cleared when its
// user hides it (presence.go).
func (a *API) publishPresence(ctx context.Context, ev *pb.PresenceEvent) error {
	a.hideLastSeen(ctx, ev)
	b, err := proto.Marshal(&pb.PresenceRecord{Event: ev})
	if err != nil {
		return fmt.Errorf("presence: encode: %w", err)
	}
	// Presence is best effort: a lost event is corrected by the next one or
	// by a snapshot; do not fail the session for it.
	if err := a.r.bus.Produce(ctx, core.BusRecord{Topic: a.r.cfg.PresenceTopic, Key: []byte(ev.GetUserId()), Value: b}); err != nil {
		a.r.log.Warn("presence publish failed", "err", err)
	}
	if p := a.r.cfg.Placement; p != nil {
		// Every region's edges serve subscribers of this user.
		var recs []core.BusRecord
		for _, other := range p.Regions() {
			if other != a.r.cfg.Name {
				recs = append(recs, a.r.linkOut(other, &pb.LinkRecord{Dest: pb.LinkRecord_DEST_PRESENCE, Key: []byte(ev.GetUserId()), Value: b}))
			}
		}
		err := a.r.ensureLinks(ctx, recs)
		if err == nil {
			err = a.r.bus.Produce(ctx, recs...)
		}
		if err != nil {
			a.r.log.Warn("presence publish to other regions failed", "err", err)
		}
	}
	return nil
}

// Query answers a read request of device dev. At most
// Config.MaxConcurrentReads run at once in a process (see reads.go); a
// read that finds no free slot in time is answered UNAVAILABLE with
// retry_after_ms.
func (a *API) Query(ctx context.Context, dev core.DeviceKey, f *pb.ClientFrame) (*pb.Response, error) {
	release, ok := a.acquireRead(ctx)
	if !ok {
		return busy(f.GetReqId()), nil
	}
	defer release()
	var resp *pb.Response
	var err error
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_Sync:
		resp, err = a.sync(ctx, dev, b.Sync)
	case *pb.ClientFrame_History:
		resp, err = a.history(ctx, dev, b.History)
	case *pb.ClientFrame_ListConversations:
		resp, err = a.listConversations(ctx, dev, b.ListConversations)
	case *pb.ClientFrame_LookupUser:
		resp, err = a.lookupUser(ctx, b.LookupUser.GetUserId())
	case *pb.ClientFrame_PresenceSubscribe:
		resp, err = a.presenceSnapshot(ctx, dev, b.PresenceSubscribe.GetUsers())
	case *pb.ClientFrame_SetPrivacy:
		resp, err = a.setPrivacy(ctx, dev, b.SetPrivacy)
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

// sync returns the entries after the device's cursors in each of the
// user's conversations, in (conversation, seq) order, one page at a time:
// at most limit entries and core.MaxPageBytes of entries and heads (see
// reads.go). heads carries the head of each conversation the page has
// entries of. more says that entries are left: the client asks again with
// its advanced cursors. A page always holds at least one entry when any
// is left, so every page moves a cursor.
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
	budget := core.MaxPageBytes - moreBytes
	for _, conv := range convs {
		c, e, err := a.r.loadConv(ctx, conv)
		if errors.Is(err, core.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sync %s: %w", conv, err)
		}
		joined, ok := e.set[dev.User]
		if !ok {
			// A pending invitation shows the invitee only the entry that
			// invited them: the conversation ends there for them.
			at, invited := invitedAt(e.members, dev.User)
			if !invited {
				continue
			}
			joined, c.Head = at, at
		}
		from := after[conv]
		if joined > 0 && from < joined-1 {
			from = joined - 1
		}
		if from >= c.Head {
			continue
		}
		head := &pb.ConvCursor{ConvId: conv, AfterSeq: c.Head}
		room, left := limit-len(out.Messages), budget-fieldBytes(proto.Size(head))
		if room <= 0 || left <= 0 {
			out.More = true
			break
		}
		msgs, err := a.r.store.Messages(ctx, conv, from, min(room, int(c.Head-from)), left)
		if err != nil {
			return nil, fmt.Errorf("sync %s: %w", conv, err)
		}
		through, err := a.expiredThrough(ctx, conv, from, c.Head, msgs)
		if err != nil {
			return nil, fmt.Errorf("sync %s: %w", conv, err)
		}
		if through > from {
			// Retention deleted the entries after the cursor: say so,
			// and go on from the first entry still stored.
			exp := &pb.ConvCursor{ConvId: conv, AfterSeq: through}
			n := fieldBytes(proto.Size(exp))
			if n >= left {
				out.More = true // the marker goes first on the next page
				break
			}
			out.Expired = append(out.Expired, exp)
			budget -= n
			left -= n
			if through >= c.Head {
				continue
			}
			if len(msgs) == 0 {
				from = through
				if msgs, err = a.r.store.Messages(ctx, conv, from, min(room, int(c.Head-from)), left); err != nil {
					return nil, fmt.Errorf("sync %s: %w", conv, err)
				}
			}
		}
		var used, took int
		out.Messages, used, took = fitUp(out.Messages, msgs, dev, left)
		if took == 0 {
			if len(out.Heads) > 0 {
				out.More = true // the next page starts with this conversation
				break
			}
			m, err := a.oversized(ctx, conv, from)
			if err != nil {
				return nil, fmt.Errorf("sync %s: %w", conv, err)
			}
			if out.Messages, used, took = fitUp(out.Messages, []*pb.Message{m}, dev, left); took == 0 {
				return nil, fmt.Errorf("sync %s: entry %d fits no page: %w", conv, m.GetSeq(), core.ErrLimitExceeded)
			}
		}
		out.Heads = append(out.Heads, head)
		budget -= fieldBytes(proto.Size(head)) + used
		if last := out.Messages[len(out.Messages)-1].GetSeq(); last < c.Head {
			out.More = true // bytes or count ran out inside this conversation
			break
		}
	}
	return &pb.Response{Body: &pb.Response_Sync{Sync: out}}, nil
}

// markReader is the part of core.Retainer that reads use.
type markReader interface {
	RetentionMark(ctx context.Context, conv string) (core.RetentionMark, error)
}

// expiredThrough reports up to which seq the entries after from were
// deleted by retention (from itself when none were): the first entry a
// page holds lies beyond from+1 (seqs are gapless, and sync starts at the
// join point, so only retention makes such a gap), or the page is empty
// and the store's trim mark lies beyond from.
func (a *API) expiredThrough(ctx context.Context, conv string, from, head uint64, msgs []*pb.Message) (uint64, error) {
	if len(msgs) > 0 {
		return max(from, msgs[0].GetSeq()-1), nil
	}
	rt, ok := a.r.store.(markReader)
	if !ok {
		return from, nil
	}
	m, err := rt.RetentionMark(ctx, conv)
	if err != nil {
		return 0, err
	}
	return max(from, min(m.Trimmed, head)), nil
}

// oversized reads the single entry after from, which does not fit an empty
// page (see withoutEnvelope), and logs it.
func (a *API) oversized(ctx context.Context, conv string, from uint64) (*pb.Message, error) {
	ms, err := a.r.store.Messages(ctx, conv, from, 1, unboundedBytes)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("entry %d of %s missing: %w", from+1, conv, core.ErrUnavailable)
	}
	a.r.log.Warn("stored entry larger than a frame: delivered without its envelope",
		"conv", conv, "seq", ms[0].GetSeq(), "bytes", proto.Size(ms[0]))
	return withoutEnvelope(ms[0]), nil
}

// history returns the newest entries of a conversation below before_seq
// (0: the head) that fit one page: at most limit entries and
// core.MaxPageBytes of them, never from before the caller joined. The
// client pages further back with before_seq = the lowest seq returned;
// an empty page (or seq 1, or the caller's join point) is the start.
func (a *API) history(ctx context.Context, dev core.DeviceKey, req *pb.HistoryRequest) (*pb.Response, error) {
	conv := req.GetConvId()
	c, e, err := a.r.loadConv(ctx, conv)
	if err != nil && !errors.Is(err, core.ErrNotFound) {
		return nil, fmt.Errorf("history %s: %w", conv, err)
	}
	if _, invited := invitedAt(e.members, dev.User); invited {
		return nil, fmt.Errorf("history %s: %s is invited; accept first: %w", conv, dev.User, core.ErrNotMember)
	}
	// A non-member gets the same answer whether conv exists or not.
	joined, err := core.CheckMember("history", e.set, dev.User)
	if err != nil {
		return nil, err
	}
	limit := clampLimit(req.GetLimit())
	before := req.GetBeforeSeq()
	if before == 0 || before > c.Head+1 {
		before = c.Head + 1
	}
	var floor uint64 // entries after floor
	if joined > 0 {
		floor = joined - 1
	}
	// Entries up to the trim mark were deleted by retention: the page
	// ends there and says so (expired_through).
	var trimmed uint64
	if rt, ok := a.r.store.(markReader); ok {
		m, err := rt.RetentionMark(ctx, conv)
		if err != nil && !errors.Is(err, core.ErrNotFound) {
			return nil, fmt.Errorf("history %s: %w", conv, err)
		}
		trimmed = m.Trimmed
	}
	expiredBelow := trimmed > floor
	floor = max(floor, trimmed)
	out := &pb.HistoryResponse{}
	if before > floor+1 {
		msgs, err := a.r.store.MessagesBefore(ctx, conv, before, floor, limit, core.MaxPageBytes)
		if err != nil {
			return nil, fmt.Errorf("history %s: %w", conv, err)
		}
		out.Messages = fitDown(msgs, dev, core.MaxPageBytes)
		if len(out.Messages) == 0 {
			m, err := a.oversizedBefore(ctx, conv, before, floor)
			if err != nil {
				return nil, fmt.Errorf("history %s: %w", conv, err)
			}
			out.Messages = fitDown([]*pb.Message{m}, dev, core.MaxPageBytes)
		}
	}
	if expiredBelow && (len(out.Messages) == 0 || out.Messages[0].GetSeq() == floor+1) {
		out.ExpiredThrough = floor
	}
	return &pb.Response{Body: &pb.Response_History{History: out}}, nil
}

// oversizedBefore is oversized for the entry just below before.
func (a *API) oversizedBefore(ctx context.Context, conv string, before, floor uint64) (*pb.Message, error) {
	ms, err := a.r.store.MessagesBefore(ctx, conv, before, floor, 1, unboundedBytes)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("entry %d of %s missing: %w", before-1, conv, core.ErrUnavailable)
	}
	a.r.log.Warn("stored entry larger than a frame: delivered without its envelope",
		"conv", conv, "seq", ms[0].GetSeq(), "bytes", proto.Size(ms[0]))
	return withoutEnvelope(ms[0]), nil
}

// listConversations returns the user's conversations with id >
// after_conv_id, in id order, one page at a time: at most
// core.DefaultPageSize of them and core.MaxPageBytes of encoded infos;
// more says the client should ask again from the last id returned.
func (a *API) listConversations(ctx context.Context, dev core.DeviceKey, req *pb.ListConversationsRequest) (*pb.Response, error) {
	convs, err := a.r.store.UserConversations(ctx, dev.User)
	if err != nil {
		return nil, fmt.Errorf("list conversations: %w", err)
	}
	out := &pb.ListConversationsResponse{}
	budget := core.MaxPageBytes - moreBytes
	for _, conv := range convs {
		if conv <= req.GetAfterConvId() {
			continue
		}
		if len(out.Conversations) >= core.DefaultPageSize {
			out.More = true
			break
		}
		c, e, err := a.r.loadConv(ctx, conv)
		if errors.Is(err, core.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list conversations: %s: %w", conv, err)
		}
		info := core.ConvInfo(c, e.members)
		n := fieldBytes(proto.Size(info))
		if n > budget {
			if len(out.Conversations) == 0 {
				return nil, fmt.Errorf("list conversations: info of %s takes %d bytes, more than a page: %w", conv, n, core.ErrLimitExceeded)
			}
			out.More = true
			break
		}
		budget -= n
		out.Conversations = append(out.Conversations, info)
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
