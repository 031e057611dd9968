package edge

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// handle processes one decrypted ClientFrame, in the session goroutine.
func (s *session) handle(pt []byte) {
	e := s.e
	if len(pt) > e.cfg.MaxFrameBytes {
		e.n.tooLarge.Add(1)
		s.fail(reqIDOf(pt), pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, fmt.Sprintf("frame exceeds %d bytes", e.cfg.MaxFrameBytes))
		return
	}
	var f pb.ClientFrame
	if err := proto.Unmarshal(pt, &f); err != nil {
		e.n.malformed.Add(1)
		s.fail(reqIDOf(pt), pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME, "frame did not decode")
		return
	}
	if f.GetBody() == nil { // empty, or a body type this edge does not know
		e.n.malformed.Add(1)
		s.fail(f.GetReqId(), pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME, "frame has no known body")
		return
	}
	// A frame whose size-dependent cost would exceed any budget is refused
	// for its shape first (typed, charged nothing): 10x too many users is
	// INVALID_ARGUMENT / GROUP_FULL, never RATE_LIMITED.
	if err := shapeError(&f); err != nil {
		s.fail(f.GetReqId(), core.Code(err), err.Error())
		return
	}
	// Charged by the cost table (admission.go) to the session's and its
	// IP's budgets.
	if ok, wait := s.charge(&f); !ok {
		if _, ok := f.GetBody().(*pb.ClientFrame_Typing); ok {
			e.n.typingDropped.Add(1)
			return
		}
		e.n.rateLimited.Add(1)
		s.respond(&pb.Response{ReqId: f.GetReqId(), Error: rateLimited("too many requests per second", wait)})
		return
	}
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_Ping:
		s.respond(&pb.Response{ReqId: f.GetReqId(), Body: &pb.Response_Pong{Pong: &pb.Pong{
			ClientTimeMs: b.Ping.GetClientTimeMs(), ServerTimeMs: e.cfg.Now().UnixMilli()}}})
		return
	case *pb.ClientFrame_Register:
		// Rare and deep (store writes, the device's session opening): off
		// the session's stack (onFreshStack), which an idle session keeps.
		onFreshStack(func() { s.register(f.GetReqId(), b.Register) })
		return
	}
	if !s.authed {
		s.fail(f.GetReqId(), pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED, "register first")
		return
	}
	switch f.GetBody().(type) {
	case *pb.ClientFrame_Sync, *pb.ClientFrame_History, *pb.ClientFrame_ListConversations, *pb.ClientFrame_LookupUser,
		*pb.ClientFrame_FetchBundle, *pb.ClientFrame_FetchDeviceList:
		// Pure reads run concurrently: a client starting sessions with the
		// 499 other members of a group fetches hundreds of bundles, and one
		// at a time each waits a full round trip to the region.
		s.queryConcurrently(&f)
	case *pb.ClientFrame_UploadPrekeys, *pb.ClientFrame_PublishDeviceList, *pb.ClientFrame_SetPrivacy:
		// End-to-end key material: reads and writes of the region's store,
		// answered synchronously like sync, charged by size above. How many
		// one-time prekeys fetch_bundle may take is the region's limit.
		onFreshStack(func() { s.query(&f) })
	case *pb.ClientFrame_PresenceSubscribe:
		onFreshStack(func() { s.presenceSubscribe(&f) }) // presence.go
	default:
		rec, err := s.ingress(&f)
		if err != nil {
			s.fail(f.GetReqId(), core.Code(err), err.Error())
			return
		}
		s.produce(f.GetReqId(), rec, answered(&f))
	}
}

func (s *session) register(reqID uint64, req *pb.RegisterRequest) {
	e := s.e
	if !s.authed { // a new device: the registration limits apply
		if werr := s.admitRegistration(req); werr != nil {
			s.respond(&pb.Response{ReqId: reqID, Error: werr})
			return
		}
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.BackendTimeout)
	defer cancel()
	resp, err := e.be.Register(ctx, s.static, req)
	if err != nil {
		s.respond(&pb.Response{ReqId: reqID, Error: core.ToWire(err)})
		return
	}
	dev := core.KeyOf(resp.GetDevice())
	if s.authed && dev != s.dev {
		s.fail(reqID, pb.ErrorCode_ERROR_CODE_INTERNAL, "registration returned another device")
		return
	}
	if !s.authed {
		if err := s.becomeDevice(ctx, dev); err != nil {
			s.respond(&pb.Response{ReqId: reqID, Error: core.ToWire(err)})
			return
		}
	}
	s.respond(&pb.Response{ReqId: reqID, Body: &pb.Response_Register{Register: resp}})
}

// maxConcurrentReads bounds the reads of one session in flight at once.
const maxConcurrentReads = 8

// queryConcurrently runs a read in its own goroutine once one of the
// session's read slots is free (the reader blocks meanwhile, which bounds
// a session's reads). Responses carry req_id, so their order is free. A
// session without read slots answers reads in line.
func (s *session) queryConcurrently(f *pb.ClientFrame) {
	if s.readSlots == nil {
		s.query(f)
		return
	}
	select {
	case s.readSlots <- struct{}{}:
	case <-s.stop:
		return
	}
	s.reads.Add(1)
	goOnWorker(func() {
		defer func() { <-s.readSlots; s.reads.Done() }()
		s.query(f)
	})
}

func (s *session) query(f *pb.ClientFrame) {
	e := s.e
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.BackendTimeout)
	defer cancel()
	resp, err := e.be.Query(ctx, s.dev, f)
	if err != nil {
		resp = &pb.Response{Error: core.ToWire(err)}
	}
	if resp == nil {
		resp = &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}}
	}
	resp.ReqId = f.GetReqId()
	s.respond(resp)
}

var errInvalid = core.ErrInvalidArgument

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errInvalid}, args...)...)
}

func checkConv(conv string) error {
	if core.KindOf(conv) == pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED {
		return invalid("malformed conversation id")
	}
	return nil
}

func checkUsers(users []string) error {
	for _, u := range users {
		if !core.ValidUserID(u) {
			return invalid("malformed user id")
		}
	}
	return nil
}

// ingress validates a write and wraps it as an IngressRecord; the error
// carries the wire code (INVALID_ARGUMENT, GROUP_FULL, MESSAGE_TOO_LARGE).
func (s *session) ingress(f *pb.ClientFrame) (*pb.IngressRecord, error) {
	rec := &pb.IngressRecord{
		Origin:       &pb.Origin{EdgeId: s.e.cfg.ID, SessionId: s.id, ReqId: f.GetReqId(), Device: s.dev.Addr(), Region: s.e.cfg.Region},
		ReceivedAtMs: s.e.cfg.Now().UnixMilli(),
	}
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_Send:
		// INVALID_ARGUMENT, or MESSAGE_TOO_LARGE for an envelope above
		// core.MaxEnvelopeBytes (ServerHello.max_envelope_bytes).
		if err := core.ValidateSend(b.Send); err != nil {
			return nil, err
		}
		rec.Op = &pb.IngressRecord_Send{Send: b.Send}
	case *pb.ClientFrame_Ack:
		if err := checkConv(b.Ack.GetConvId()); err != nil {
			return nil, err
		}
		rec.Op = &pb.IngressRecord_Ack{Ack: b.Ack}
	case *pb.ClientFrame_Read:
		if err := checkConv(b.Read.GetConvId()); err != nil {
			return nil, err
		}
		rec.Op = &pb.IngressRecord_Read{Read: b.Read}
	case *pb.ClientFrame_CreateGroup:
		m := b.CreateGroup
		if !core.IsGroupID(m.GetConvId()) {
			return nil, invalid("malformed group id")
		}
		if len(m.GetTitle()) > core.MaxTitleLen {
			return nil, invalid("title longer than %d bytes", core.MaxTitleLen)
		}
		if err := checkUsers(m.GetMembers()); err != nil {
			return nil, err
		}
		if !core.GroupCreatedBy(m.GetConvId(), s.dev.User) {
			return nil, invalid("group id not bound to its creator (PROTOCOL.md §7.5)")
		}
		rec.Op = &pb.IngressRecord_CreateGroup{CreateGroup: m}
	case *pb.ClientFrame_ModifyMembers:
		m := b.ModifyMembers
		if !core.IsGroupID(m.GetConvId()) {
			return nil, invalid("malformed group id")
		}
		if !core.ValidClientMsgID(m.GetClientMsgId()) {
			return nil, invalid("client_msg_id must be 1..%d bytes without control characters", core.MaxClientMsgIDLen)
		}
		switch m.GetOp() {
		case pb.MembershipOp_MEMBERSHIP_OP_ADD, pb.MembershipOp_MEMBERSHIP_OP_REMOVE,
			pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, pb.MembershipOp_MEMBERSHIP_OP_DEMOTE:
			if len(m.GetUsers()) == 0 {
				return nil, invalid("%v names no users", m.GetOp())
			}
		case pb.MembershipOp_MEMBERSHIP_OP_LEAVE, pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE,
			pb.MembershipOp_MEMBERSHIP_OP_ACCEPT, pb.MembershipOp_MEMBERSHIP_OP_DECLINE:
			if len(m.GetUsers()) != 0 {
				return nil, invalid("%v takes no users", m.GetOp())
			}
		default:
			return nil, invalid("op must be ADD, REMOVE, LEAVE, PROMOTE, DEMOTE, SET_TITLE, ACCEPT or DECLINE")
		}
		if len(m.GetTitle()) > core.MaxTitleLen {
			return nil, invalid("title longer than %d bytes", core.MaxTitleLen)
		}
		if err := checkUsers(m.GetUsers()); err != nil {
			return nil, err
		}
		rec.Op = &pb.IngressRecord_ModifyMembers{ModifyMembers: m}
	case *pb.ClientFrame_Typing:
		if err := checkConv(b.Typing.GetConvId()); err != nil {
			return nil, err
		}
		rec.Op = &pb.IngressRecord_Typing{Typing: b.Typing}
	default:
		return nil, invalid("unknown frame type")
	}
	return rec, nil
}

// produce writes rec to the ingress topic keyed by its conversation. The
// reply arrives later on the edge topic; only a failure, or a refusal by
// the in-flight bounds (ingress.go), is answered here. ans says the
// region answers the write.
func (s *session) produce(reqID uint64, rec *pb.IngressRecord, ans bool) {
	e := s.e
	b, err := marshal(rec)
	if err != nil {
		s.fail(reqID, pb.ErrorCode_ERROR_CODE_INTERNAL, "encode failed")
		return
	}
	if werr := s.enterWrite(reqID, ans); werr != nil {
		e.n.rateLimited.Add(1)
		s.respond(&pb.Response{ReqId: reqID, Error: werr})
		return
	}
	produced := false
	defer func() { s.leaveWrite(reqID, ans, produced) }()
	start := time.Now()
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.WriteTimeout)
	defer cancel()
	if err := e.bus.Produce(ctx, core.BusRecord{Topic: e.cfg.IngressTopic, Key: []byte(core.IngressConv(rec)), Value: b}); err != nil {
		e.n.produceErrors.Add(1)
		e.log.Warn("produce failed", "session", s.id, "req_id", reqID, "conv", core.IngressConv(rec), "err", err)
		s.fail(reqID, pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "ingress unavailable; retry with the same ids")
		return
	}
	produced = true
	e.n.produced.Add(1)
	e.stages.produce.Observe(since(start))
}

// ---------------------------------------------------------------- bus → sessions

// handleEdgeRecord pushes one EdgeRecord to its sessions. Undecodable
// records are logged and skipped (retrying cannot fix them).
//
// The record is read in place (core.ParseEdgeRecord: no message per
// target device), the frame is encoded once for all targets — its bytes
// are taken as they are from the record — and only a delivery with
// per-device ciphertexts is encoded again for each device (frameFor).
//
// A bundle (pb.EdgeRecord.bundle: what a region batch has for this edge)
// is handled record by record, in order; a bad record of a bundle is
// skipped alone.
func (e *Edge) handleEdgeRecord(_ context.Context, rec core.BusRecord) error {
	r, err := core.ParseEdgeRecord(rec.Value)
	if err != nil {
		e.log.Warn("bad edge record skipped", "partition", rec.Partition, "offset", rec.Offset, "err", err)
		return nil
	}
	if len(r.Bundle) == 0 {
		e.handleEdgeView(rec, r)
		return nil
	}
	e.n.edgeBundles.Add(1)
	bad, first := 0, error(nil)
	for _, b := range r.Bundle {
		v, err := core.ParseBundled(b)
		if err != nil {
			if bad++; first == nil {
				first = err
			}
			continue
		}
		e.handleEdgeView(rec, v)
	}
	if bad > 0 { // one line per bundle, however many of its records are bad
		e.log.Warn("bad edge records skipped", "partition", rec.Partition, "offset", rec.Offset, "bundled", len(r.Bundle), "bad", bad, "err", first)
	}
	return nil
}

// handleEdgeView pushes one record (on its own or from a bundle) to its
// sessions.
func (e *Edge) handleEdgeView(rec core.BusRecord, r core.EdgeRecordView) {
	var f pb.ServerFrame
	var err error
	if r.HasFrame {
		err = proto.Unmarshal(r.Frame, &f)
	}
	if err != nil || !r.HasFrame {
		e.log.Warn("bad edge record skipped", "partition", rec.Partition, "offset", rec.Offset, "err", err)
		return
	}
	e.n.edgeRecords.Add(1)
	if d := f.GetDisconnect(); d != nil && r.SessionID != 0 {
		// The region ends a session: the device connected again on
		// another edge, whose session is now the routed one.
		for _, t := range e.targets(r) {
			e.n.replaced.Add(1)
			t.s.terminate(d.GetCode(), d.GetDetail(), d.GetReconnect())
		}
		return
	}
	targets := e.targets(r)
	if len(targets) == 0 {
		return
	}
	if resp := f.GetResponse(); resp != nil && r.SessionID != 0 {
		// The region answered a write: its slots are free.
		if at := targets[0].s.settle(resp.GetReqId()); !at.IsZero() {
			e.stages.answer.Observe(max(e.cfg.Now().Sub(at), 0).Seconds())
		}
	}
	if !rec.Time.IsZero() {
		defer e.stages.push.Observe(since(rec.Time))
	}
	var shared []byte
	if len(f.GetDelivery().GetEnvelope().GetPerDevice()) == 0 {
		// A copy: the queues keep it after the handler returns, and the
		// bus does not promise that rec.Value stays untouched.
		shared = bytes.Clone(r.Frame)
	}
	for _, t := range targets {
		if shared != nil && len(shared) <= core.MaxFramePlaintext {
			t.s.pushBytes(shared)
			continue
		}
		t.s.push(frameFor(&f, t.dev)) // encodes, and handles a frame too large to send
	}
}

type target struct {
	s   *session
	dev core.DeviceKey
}

// targets returns the sessions r is for: the one named by its session id,
// or those of its target devices (read in place: the map lookup with a
// key converted from the record's bytes allocates nothing).
func (e *Edge) targets(r core.EdgeRecordView) []target {
	e.mu.Lock()
	defer e.mu.Unlock()
	if id := r.SessionID; id != 0 {
		if s := e.sessions[id]; s != nil {
			return []target{{s, s.dev}}
		}
		return nil
	}
	var out []target
	r.Targets(func(user []byte, dev uint32) bool {
		if s := e.byDevice[core.DeviceKey{User: string(user), Device: dev}]; s != nil {
			out = append(out, target{s, s.dev})
		}
		return true
	})
	return out
}

// frameFor returns the frame as dev may see it: a delivery's envelope keeps
// only the per-device ciphertext addressed to dev (core.ForDevice, the same
// rule sync applies). The shared frame is never modified.
func frameFor(f *pb.ServerFrame, dev core.DeviceKey) *pb.ServerFrame {
	m := f.GetDelivery()
	if m == nil || len(m.GetEnvelope().GetPerDevice()) == 0 {
		return f
	}
	return &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: core.ForDevice(m, dev)}}
}
