package client

import (
	"context"
	"errors"
	"slices"

	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Event is something the app should learn about. The concrete types are
// MessageEvent, SendAckedEvent, SendFailedEvent, ReceiptEvent,
// PresenceEvent, TypingEvent, ConnectedEvent and DisconnectedEvent.
type Event interface{ isEvent() }

// MessageEvent is one stored conversation entry, handed to the app exactly
// once and in seq order per conversation. It includes the device's own
// messages (they come back through sync) and membership entries (decode
// them with GroupChange). Entries
// that only distribute group keys (see MessageSealer) are not handed, so
// seqs of a group may have gaps.
type MessageEvent struct {
	Message *pb.Message
	// Body is the opened envelope of a USER message (nil for membership
	// entries or when OpenErr is set).
	Body    []byte
	OpenErr error
}

// Conv, Seq and From are shortcuts into Message.
func (e MessageEvent) Conv() string { return e.Message.GetConvId() }

// Seq returns the entry's seq.
func (e MessageEvent) Seq() uint64 { return e.Message.GetSeq() }

// From returns the sending device.
func (e MessageEvent) From() core.DeviceKey { return core.KeyOf(e.Message.GetSender()) }

// GroupChange is a group membership entry, decoded: who did what to whom.
// Roles and invitations are entries of the conversation, ordered with its
// messages, so an app that applies GroupChanges in MessageEvent order
// always has the group's state as of the message it shows.
type GroupChange struct {
	Conv  string
	Seq   uint64
	Op    pb.MembershipOp // CREATE, ADD, REMOVE, LEAVE, PROMOTE, DEMOTE, SET_TITLE, ACCEPT, DECLINE
	Actor string          // who made the change
	// Users: added (CREATE, ADD), removed or uninvited (REMOVE), promoted
	// (PROMOTE), demoted (DEMOTE); [Actor] for LEAVE, ACCEPT and DECLINE.
	Users []string
	// Invited: users invited instead of added (CREATE, ADD): they join
	// only when they ACCEPT.
	Invited []string
	// Promoted: users who became admins as a side effect: the creator on
	// CREATE, the successor when the last admin left or was removed.
	Promoted []string
	Title    string // CREATE and SET_TITLE: the (new) title
}

// GroupChange decodes a membership entry; ok is false for user messages.
func (e MessageEvent) GroupChange() (g GroupChange, ok bool) {
	m := e.Message
	mc := m.GetMembership()
	if m.GetKind() != pb.MessageKind_MESSAGE_KIND_MEMBERSHIP || mc == nil {
		return GroupChange{}, false
	}
	return GroupChange{
		Conv: m.GetConvId(), Seq: m.GetSeq(), Op: mc.GetOp(), Actor: mc.GetActor(),
		Users: mc.GetUsers(), Invited: mc.GetInvited(), Promoted: mc.GetPromoted(), Title: mc.GetTitle(),
	}, true
}

// InvitesUser reports whether the change invites user (who must ACCEPT or
// DECLINE; see Client.AcceptInvite).
func (g GroupChange) InvitesUser(user string) bool { return slices.Contains(g.Invited, user) }

// NewAdmins returns the users who are admins from this change on: the
// PROMOTE targets and the side-effect promotions.
func (g GroupChange) NewAdmins() []string {
	out := slices.Clone(g.Promoted)
	if g.Op == pb.MembershipOp_MEMBERSHIP_OP_PROMOTE {
		out = append(out, g.Users...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// SendAckedEvent is "sent ✓": the server sequenced the message.
type SendAckedEvent struct {
	Conv        string
	ClientMsgID string
	MsgID       string
	Seq         uint64
	SentAtMs    int64
}

// SendFailedEvent reports a message the server rejected for good
// (NOT_MEMBER, NOT_FOUND, INVALID_ARGUMENT, FORBIDDEN, GROUP_FULL, ...). It
// was removed from the outbox. Err is a *core.WireError (use core.Code).
type SendFailedEvent struct {
	Conv        string
	ClientMsgID string
	Err         error
}

// ReceiptEvent: From has stored (DELIVERED, ✓✓) or read (READ) Conv up to Seq.
type ReceiptEvent struct {
	Conv string
	From core.DeviceKey
	Kind pb.ReceiptKind
	Seq  uint64
}

// PresenceEvent reports a subscribed user's presence.
type PresenceEvent struct {
	User       string
	Online     bool
	LastSeenMs int64
}

// TypingEvent reports that From started or stopped typing in Conv.
type TypingEvent struct {
	Conv   string
	From   core.DeviceKey
	Typing bool
}

// ConnectedEvent: a session to Edge is up (handshake done).
type ConnectedEvent struct {
	Edge  string
	Hello *pb.ServerHello
}

// DisconnectedEvent: the session to Edge ended; the client reconnects
// unless Err is fatal (then Run returns it).
type DisconnectedEvent struct {
	Edge string
	Err  error
}

func (MessageEvent) isEvent()      {}
func (SendAckedEvent) isEvent()    {}
func (SendFailedEvent) isEvent()   {}
func (ReceiptEvent) isEvent()      {}
func (PresenceEvent) isEvent()     {}
func (TypingEvent) isEvent()       {}
func (ConnectedEvent) isEvent()    {}
func (DisconnectedEvent) isEvent() {}

// notify queues a non-message event. The queue is bounded
// (Config.NoticeQueue); when it is full the event is dropped and counted.
func (c *Client) notify(ev Event) {
	c.evMu.Lock()
	if len(c.notices) >= c.cfg.NoticeQueue {
		c.dropped++
		c.evMu.Unlock()
		return
	}
	c.notices = append(c.notices, ev)
	c.evMu.Unlock()
	c.kickDispatcher()
}

func (c *Client) kickDispatcher() {
	select {
	case c.dispatchWake <- struct{}{}:
	default:
	}
}

// DroppedNotices returns how many non-message events were dropped because
// the app did not drain Events fast enough.
func (c *Client) DroppedNotices() uint64 {
	c.evMu.Lock()
	defer c.evMu.Unlock()
	return c.dropped
}

// Backlog returns how many stored messages have not yet been received by
// the app from Events.
func (c *Client) Backlog() int {
	n := 0
	c.evMu.Lock()
	emitted := make(map[string]uint64, len(c.emitted))
	for k, v := range c.emitted {
		emitted[k] = v
	}
	c.evMu.Unlock()
	for _, s := range c.store.Conversations() {
		e, ok := emitted[s.Conv]
		if !ok {
			e = s.Seen
		}
		if s.Head > e {
			n += int(s.Head - e)
		}
	}
	return n
}

// Pending returns how many events wait for the app: stored messages not
// yet handed (Backlog), queued notices and events in the Events channel.
// Zero means Events has nothing to hand until something new arrives.
func (c *Client) Pending() int {
	c.evMu.Lock()
	n := len(c.notices)
	c.evMu.Unlock()
	return c.Backlog() + n + len(c.events)
}

// markDirty notes that conv has newly stored entries for the dispatcher.
func (c *Client) markDirty(conv string) {
	c.evMu.Lock()
	c.dirty[conv] = struct{}{}
	c.evMu.Unlock()
}

// dispatchBatch bounds the entries read from the store at once per conversation.
const dispatchBatch = 256

// dispatch is the single goroutine that feeds Events: queued notices first,
// then stored messages each conversation has beyond what the app has
// received. It blocks on the channel when the app is slow; messages wait in
// the store meanwhile, so none is lost. It looks only at conversations
// marked dirty by the receive path (all of them once at start).
func (c *Client) dispatch(ctx context.Context) {
	for _, s := range c.store.Conversations() {
		c.markDirty(s.Conv)
	}
	for {
		// A notice leaves the queue only once handed, so that Pending
		// counts it until then.
		handed := 0
		for {
			c.evMu.Lock()
			if len(c.notices) == 0 {
				c.notices = nil
				c.evMu.Unlock()
				break
			}
			ev := c.notices[0]
			c.evMu.Unlock()
			select {
			case c.events <- ev:
			case <-ctx.Done():
				return
			}
			c.evMu.Lock()
			c.notices[0] = nil
			c.notices = c.notices[1:]
			c.evMu.Unlock()
			handed++
		}
		c.evMu.Lock()
		dirty := c.dirty
		c.dirty = map[string]struct{}{}
		c.evMu.Unlock()
		again := false
		for conv := range dirty {
			more, ok := c.dispatchConv(ctx, conv)
			if !ok {
				return
			}
			if more {
				c.markDirty(conv)
				again = true
			}
		}
		if again || handed > 0 {
			continue
		}
		select {
		case <-c.dispatchWake:
		case <-ctx.Done():
			return
		}
	}
}

// dispatchConv hands up to dispatchBatch new entries of conv to the app.
// It reports whether more remain, and false for ok when ctx ended.
func (c *Client) dispatchConv(ctx context.Context, conv string) (more, ok bool) {
	c.evMu.Lock()
	from, seen := c.emitted[conv]
	c.evMu.Unlock()
	if !seen {
		from = c.store.Seen(conv)
	}
	head := c.store.Head(conv)
	if head <= from {
		return false, true
	}
	msgs, err := c.store.Messages(conv, from, dispatchBatch)
	if err != nil {
		c.log.Error("client: read store for events", "conv", conv, "err", err)
		return false, true
	}
	if len(msgs) == 0 { // only skipped seqs (before a join point) remain
		c.evMu.Lock()
		c.emitted[conv] = head
		c.evMu.Unlock()
		return false, true
	}
	for _, m := range msgs {
		ev := MessageEvent{Message: m}
		if m.GetKind() == pb.MessageKind_MESSAGE_KIND_USER {
			ev.Body, ev.OpenErr = c.sealer.Open(ctx, m)
		}
		// A key-distribution entry carries nothing for the app.
		if !errors.Is(ev.OpenErr, e2ee.ErrControlMessage) {
			select {
			case c.events <- ev:
			case <-ctx.Done():
				return false, false
			}
		}
		c.evMu.Lock()
		c.emitted[conv] = m.GetSeq()
		c.evMu.Unlock()
	}
	if !c.cfg.ManualCommit && len(msgs) > 0 {
		if err := c.store.SetSeen(conv, msgs[len(msgs)-1].GetSeq()); err != nil {
			c.log.Error("client: persist seen cursor", "conv", conv, "err", err)
		}
	}
	return msgs[len(msgs)-1].GetSeq() < head, true
}
