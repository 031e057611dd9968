package region

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// MaxBatch is the most ingress records the sequencer handles per batch.
const MaxBatch = 256

// handleBatch handles consecutive records of one partition: each is
// validated and stored in order exactly as handleIngress would, but their
// outputs (acks, deliveries, receipts) are produced together, in order, in
// one produce call once all are stored. Under load this turns one Kafka
// round trip per record into one per batch; when idle, batches hold one
// record. If anything fails transiently the bus retries the whole batch;
// the records already stored dedupe and re-emit their outputs.
func (r *Region) handleBatch(ctx context.Context, recs []core.BusRecord) error {
	out := &batchOut{}
	bctx := context.WithValue(ctx, batchOutKey{}, out)
	for _, rec := range recs {
		if err := r.handleIngress(bctx, rec); err != nil {
			return err
		}
	}
	return r.produceNow(ctx, out.recs...)
}

// handleIngress is the sequencer's bus handler. It returns an error only for
// transient failures (the bus retries the record); requests that are
// invalid are answered with an error to their origin and consumed.
func (r *Region) handleIngress(ctx context.Context, rec core.BusRecord) error {
	var in pb.IngressRecord
	if err := proto.Unmarshal(rec.Value, &in); err != nil {
		r.stats.malformed.Add(1)
		r.log.Warn("dropping malformed ingress record", "partition", rec.Partition, "offset", rec.Offset, "err", err)
		return nil
	}
	var err error
	switch op := in.Op.(type) {
	case *pb.IngressRecord_Send:
		err = r.seqSend(ctx, &in, op.Send)
	case *pb.IngressRecord_Ack:
		err = r.seqCursor(ctx, &in, op.Ack.GetConvId(), op.Ack.GetSeq(), core.CursorDelivered)
	case *pb.IngressRecord_Read:
		err = r.seqCursor(ctx, &in, op.Read.GetConvId(), op.Read.GetSeq(), core.CursorRead)
	case *pb.IngressRecord_CreateGroup:
		err = r.seqCreateGroup(ctx, &in, op.CreateGroup)
	case *pb.IngressRecord_ModifyMembers:
		err = r.seqModify(ctx, &in, op.ModifyMembers)
	case *pb.IngressRecord_Typing:
		err = r.seqTyping(ctx, &in, op.Typing)
	default:
		err = fmt.Errorf("region: ingress record without op: %w", core.ErrInvalidArgument)
	}
	if err == nil {
		return nil
	}
	if isRequestError(err) {
		r.stats.rejected.Add(1)
		return r.reply(ctx, in.GetOrigin(), &pb.Response{Error: core.ToWire(err)})
	}
	return err
}

// isRequestError tells errors that are the request's fault (answered to the
// client) from transient ones (retried).
func isRequestError(err error) bool {
	var we *core.WireError
	return errors.As(err, &we) ||
		errors.Is(err, core.ErrNotFound) || errors.Is(err, core.ErrNotMember) ||
		errors.Is(err, core.ErrGroupFull) || errors.Is(err, core.ErrInvalidArgument) ||
		errors.Is(err, core.ErrForbidden) || errors.Is(err, core.ErrAlreadyExists) ||
		errors.Is(err, core.ErrFenced)
}

// loadMembers returns the conversation and its member set, from cache when
// the head has not moved.
func (r *Region) loadMembers(ctx context.Context, conv string) (core.Conversation, core.MemberSet, error) {
	c, err := r.store.Conversation(ctx, conv)
	if err != nil {
		return core.Conversation{}, nil, err
	}
	if set, ok := r.members.get(conv, c.Head); ok {
		return c, set, nil
	}
	ms, err := r.store.Members(ctx, conv)
	if err != nil {
		return core.Conversation{}, nil, err
	}
	set := core.NewMemberSet(ms)
	r.members.put(conv, c.Head, set)
	return c, set, nil
}

func (r *Region) seqSend(ctx context.Context, in *pb.IngressRecord, s *pb.SendRequest) error {
	if err := core.ValidateSend(s); err != nil {
		return err
	}
	sender := core.KeyOf(in.GetOrigin().GetDevice())
	conv := s.GetConvId()
	req := core.AppendRequest{Epoch: r.cfg.Epoch}
	var members core.MemberSet
	_, set, err := r.loadMembers(ctx, conv)
	switch {
	case err == nil:
		if _, ok := set[sender.User]; !ok {
			return fmt.Errorf("send to %s: %s: %w", conv, sender.User, core.ErrNotMember)
		}
		members = set
	case errors.Is(err, core.ErrNotFound):
		a, b, direct := core.ParseDirect(conv)
		if !direct {
			return fmt.Errorf("send to %s: %w", conv, core.ErrNotFound)
		}
		if sender.User != a && sender.User != b {
			return fmt.Errorf("send to %s: %s: %w", conv, sender.User, core.ErrNotMember)
		}
		other := a
		if other == sender.User {
			other = b
		}
		if _, err := r.store.User(ctx, other); err != nil {
			return fmt.Errorf("send to %s: user %s: %w", conv, other, err)
		}
		req.Create = &core.Conversation{
			ID: conv, Kind: pb.ConversationKind_CONVERSATION_KIND_DIRECT,
			HomeRegion: r.cfg.Name, Epoch: r.cfg.Epoch, CreatedAtMs: r.nowMs(),
		}
		req.AddMembers = []string{a, b}
		members = core.MemberSet{a: 1, b: 1}
	default:
		return err
	}
	now := r.cfg.Now()
	req.Message = &pb.Message{
		ConvId: conv, MsgId: r.newMsgID(now), Sender: sender.Addr(),
		ClientMsgId: s.GetClientMsgId(), SentAtMs: now.UnixMilli(),
		Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: s.GetEnvelope(),
	}
	res, err := r.append(ctx, req)
	if err != nil {
		return err
	}
	m := res.Message
	ack := &pb.Response{ReqId: in.GetOrigin().GetReqId(), Body: &pb.Response_Send{Send: &pb.SendAck{
		ConvId: conv, ClientMsgId: m.GetClientMsgId(), Seq: m.GetSeq(), MsgId: m.GetMsgId(), SentAtMs: m.GetSentAtMs(),
	}}}
	recs, err := r.fanout(ctx, m, members.Users())
	if err != nil {
		return err
	}
	recs = append(recs, r.replyRecord(in.GetOrigin(), ack))
	return r.produce(ctx, recs...)
}

// append calls the store and keeps the member cache in step.
func (r *Region) append(ctx context.Context, req core.AppendRequest) (core.AppendResult, error) {
	res, err := r.store.Append(ctx, req)
	if err != nil {
		return res, fmt.Errorf("append to %s: %w", req.Message.GetConvId(), err)
	}
	if res.Duplicate {
		r.stats.duplicates.Add(1)
	} else {
		r.stats.appended.Add(1)
	}
	return res, nil
}

func (r *Region) seqCreateGroup(ctx context.Context, in *pb.IngressRecord, cg *pb.CreateGroupRequest) error {
	actor := core.KeyOf(in.GetOrigin().GetDevice())
	plan, err := core.PlanCreateGroup(actor.User, cg)
	if err != nil {
		return err
	}
	conv := cg.GetConvId()
	const createKey = "create"
	if c, err := r.store.Conversation(ctx, conv); err == nil {
		// Idempotent retry by the creator, or a clash.
		first, err := r.store.Messages(ctx, conv, 0, 1, 0)
		if err != nil {
			return err
		}
		if len(first) == 1 && core.KeyOf(first[0].GetSender()) == actor && first[0].GetClientMsgId() == createKey {
			recs, err := r.membershipOutputs(ctx, in, first[0], c)
			if err != nil {
				return err
			}
			return r.produce(ctx, recs...)
		}
		return fmt.Errorf("create group %s: %w", conv, core.ErrAlreadyExists)
	} else if !errors.Is(err, core.ErrNotFound) {
		return err
	}
	for _, u := range plan.Add {
		if u == actor.User {
			continue
		}
		if _, err := r.store.User(ctx, u); err != nil {
			return fmt.Errorf("create group %s: member %s: %w", conv, u, err)
		}
	}
	now := r.cfg.Now()
	c := core.Conversation{
		ID: conv, Kind: pb.ConversationKind_CONVERSATION_KIND_GROUP, Title: cg.GetTitle(),
		HomeRegion: r.cfg.Name, Epoch: r.cfg.Epoch, CreatedAtMs: now.UnixMilli(),
	}
	res, err := r.append(ctx, core.AppendRequest{
		Epoch: r.cfg.Epoch,
		Message: &pb.Message{
			ConvId: conv, MsgId: r.newMsgID(now), Sender: actor.Addr(), ClientMsgId: createKey,
			SentAtMs: now.UnixMilli(), Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP,
			Membership: &pb.MembershipChange{
				Op: pb.MembershipOp_MEMBERSHIP_OP_CREATE, Actor: actor.User, Users: plan.Add, Title: cg.GetTitle(),
			},
		},
		Create:     &c,
		AddMembers: plan.Add,
	})
	if err != nil {
		return err
	}
	recs, err := r.membershipOutputs(ctx, in, res.Message, c)
	if err != nil {
		return err
	}
	return r.produce(ctx, recs...)
}

func (r *Region) seqModify(ctx context.Context, in *pb.IngressRecord, mm *pb.ModifyMembersRequest) error {
	actor := core.KeyOf(in.GetOrigin().GetDevice())
	conv := mm.GetConvId()
	if !core.IsGroupID(conv) {
		return fmt.Errorf("modify %s: not a group: %w", conv, core.ErrInvalidArgument)
	}
	c, set, err := r.loadMembers(ctx, conv)
	if err != nil {
		return err
	}
	plan, err := core.PlanModify(actor.User, set, mm)
	if err != nil {
		return err
	}
	if plan.NoOp {
		return r.reply(ctx, in.GetOrigin(), &pb.Response{Body: &pb.Response_Conversation{Conversation: convInfo(c, set)}})
	}
	for _, u := range plan.Add {
		if _, err := r.store.User(ctx, u); err != nil {
			return fmt.Errorf("modify %s: user %s: %w", conv, u, err)
		}
	}
	users := plan.Add
	if len(plan.Remove) > 0 {
		users = plan.Remove
	}
	now := r.cfg.Now()
	// The idempotency key names the change and the head it applies to, so
	// a replay of this record dedupes and a later identical change does not.
	key := fmt.Sprintf("m%d:%s", c.Head+1, mm.GetOp().String())
	res, err := r.append(ctx, core.AppendRequest{
		Epoch: r.cfg.Epoch,
		Message: &pb.Message{
			ConvId: conv, MsgId: r.newMsgID(now), Sender: actor.Addr(), ClientMsgId: key,
			SentAtMs: now.UnixMilli(), Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP,
			Membership: &pb.MembershipChange{Op: mm.GetOp(), Actor: actor.User, Users: users},
		},
		AddMembers:    plan.Add,
		RemoveMembers: plan.Remove,
	})
	if err != nil {
		return err
	}
	recs, err := r.membershipOutputs(ctx, in, res.Message, c, plan.Remove...)
	if err != nil {
		return err
	}
	return r.produce(ctx, recs...)
}

// membershipOutputs builds the deliveries of a membership entry (to the
// members after the change plus the removed users) and the reply.
func (r *Region) membershipOutputs(ctx context.Context, in *pb.IngressRecord, m *pb.Message, c core.Conversation, removed ...string) ([]core.BusRecord, error) {
	c2, set, err := r.loadMembers(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	users := set.Users()
	for _, u := range removed {
		if !slices.Contains(users, u) {
			users = append(users, u)
		}
	}
	recs, err := r.fanout(ctx, m, users)
	if err != nil {
		return nil, err
	}
	reply := &pb.Response{ReqId: in.GetOrigin().GetReqId(), Body: &pb.Response_Conversation{Conversation: convInfo(c2, set)}}
	return append(recs, r.replyRecord(in.GetOrigin(), reply)), nil
}

func convInfo(c core.Conversation, set core.MemberSet) *pb.ConversationInfo {
	return &pb.ConversationInfo{
		ConvId: c.ID, Kind: c.Kind, Title: c.Title, Members: set.Users(),
		HeadSeq: c.Head, HomeRegion: c.HomeRegion, Epoch: c.Epoch,
	}
}

func (r *Region) seqCursor(ctx context.Context, in *pb.IngressRecord, conv string, seq uint64, kind core.CursorKind) error {
	dev := core.KeyOf(in.GetOrigin().GetDevice())
	c, set, err := r.loadMembers(ctx, conv)
	if err != nil {
		return err
	}
	if _, ok := set[dev.User]; !ok {
		return fmt.Errorf("cursor %s: %s: %w", conv, dev.User, core.ErrNotMember)
	}
	if seq > c.Head {
		seq = c.Head // a cursor never passes the head
	}
	prev, moved, err := r.store.AdvanceCursor(ctx, conv, dev, kind, seq)
	if err != nil {
		return fmt.Errorf("cursor %s %s: %w", conv, dev, err)
	}
	var recs []core.BusRecord
	if moved {
		from := prev
		if seq-from > uint64(r.cfg.ReceiptScanLimit) {
			from = seq - uint64(r.cfg.ReceiptScanLimit)
		}
		msgs, err := r.store.Messages(ctx, conv, from, int(seq-from), unboundedBytes)
		if err != nil {
			return err
		}
		senders := core.SendersToNotify(dev.User, msgs)
		if len(senders) > 0 {
			rk := pb.ReceiptKind_RECEIPT_KIND_DELIVERED
			if kind == core.CursorRead {
				rk = pb.ReceiptKind_RECEIPT_KIND_READ
			}
			frame := &pb.ServerFrame{Body: &pb.ServerFrame_Receipt{Receipt: &pb.Receipt{
				ConvId: conv, From: dev.Addr(), Kind: rk, Seq: seq,
			}}}
			rr, err := r.toUsers(ctx, senders, frame)
			if err != nil {
				return err
			}
			r.stats.receipts.Add(uint64(len(rr)))
			recs = append(recs, rr...)
		}
	}
	if in.GetOrigin().GetReqId() != 0 {
		recs = append(recs, r.replyRecord(in.GetOrigin(), &pb.Response{
			ReqId: in.GetOrigin().GetReqId(), Body: &pb.Response_Empty{Empty: &pb.Empty{}},
		}))
	}
	return r.produce(ctx, recs...)
}

func (r *Region) seqTyping(ctx context.Context, in *pb.IngressRecord, t *pb.TypingRequest) error {
	dev := core.KeyOf(in.GetOrigin().GetDevice())
	conv := t.GetConvId()
	_, set, err := r.loadMembers(ctx, conv)
	if err != nil {
		return err
	}
	if _, ok := set[dev.User]; !ok {
		return fmt.Errorf("typing %s: %s: %w", conv, dev.User, core.ErrNotMember)
	}
	var others []string
	for _, u := range set.Users() {
		if u != dev.User {
			others = append(others, u)
		}
	}
	frame := &pb.ServerFrame{Body: &pb.ServerFrame_Typing{Typing: &pb.TypingEvent{
		ConvId: conv, From: dev.Addr(), Typing: t.GetTyping(),
	}}}
	recs, err := r.toUsers(ctx, others, frame)
	if err != nil {
		return err
	}
	r.stats.typing.Add(uint64(len(recs)))
	return r.produce(ctx, recs...)
}
