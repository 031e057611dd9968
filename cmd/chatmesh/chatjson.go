package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// The JSON Lines output of `chat receive --json`, `chat history --json`
// and `chat send --json`: one object per line, each with a "type". CLI.md
// documents every type and field; a field documented for a type is always
// present unless marked optional there. Nothing here ever carries key
// material; bodies are this user's own plaintext, opened on this device.

// Event types.
const (
	evMessage    = "message"
	evMembership = "membership"
	evRole       = "role"
	evReceipt    = "receipt"
	evPresence   = "presence"
	evTyping     = "typing"
	evIdentity   = "identity"
	evConnection = "connection"
	evError      = "error"
	evDropped    = "dropped"
	evQueued     = "queued"
)

// entryBase is what every conversation entry line (types message,
// membership and role) has.
type entryBase struct {
	Type        string `json:"type"`
	Conv        string `json:"conv"`
	Seq         uint64 `json:"seq"`
	MsgID       string `json:"msg_id"`
	ClientMsgID string `json:"client_msg_id"`
	From        string `json:"from"`
	FromUser    string `json:"from_user"`
	FromDevice  uint32 `json:"from_device"`
	SentAtMs    int64  `json:"sent_at_ms"`
	// Outgoing: sent by this user (this device or another of its devices).
	Outgoing bool `json:"outgoing"`
}

// messageJSON is type "message".
type messageJSON struct {
	entryBase
	Body          string `json:"body"`                      // the plaintext when it is valid UTF-8, else ""
	BodyBase64    string `json:"body_base64,omitempty"`     // optional: the plaintext when it is not valid UTF-8
	OpenError     string `json:"open_error,omitempty"`      // optional: why the body could not be opened
	OpenErrorCode string `json:"open_error_code,omitempty"` // optional, with open_error
}

// changeJSON is type "membership" or "role" (a group membership entry).
type changeJSON struct {
	entryBase
	Op       string   `json:"op"`
	Actor    string   `json:"actor"`
	Users    []string `json:"users"`
	Invited  []string `json:"invited"`
	Promoted []string `json:"promoted"`
	Title    string   `json:"title"`
	Text     string   `json:"text"`
}

// receiptJSON is type "receipt": status sent (the server sequenced this
// device's message), delivered or read (a device stored or read the
// conversation up to seq).
type receiptJSON struct {
	Type        string `json:"type"`
	Status      string `json:"status"`
	Conv        string `json:"conv"`
	Seq         uint64 `json:"seq"`
	MsgID       string `json:"msg_id,omitempty"`        // sent only
	ClientMsgID string `json:"client_msg_id,omitempty"` // sent only
	SentAtMs    int64  `json:"sent_at_ms,omitempty"`    // sent only
	Line        int    `json:"line,omitempty"`          // send --stdin only: the input line
	From        string `json:"from"`
	FromUser    string `json:"from_user"`
	FromDevice  uint32 `json:"from_device"`
	// Self: from a device of this user (for sent: this device).
	Self bool `json:"self"`
}

type presenceJSON struct {
	Type       string `json:"type"`
	User       string `json:"user"`
	Online     bool   `json:"online"`
	LastSeenMs int64  `json:"last_seen_ms"`
	// Snapshot: the state at subscription time, not a change.
	Snapshot bool `json:"snapshot"`
}

type typingJSON struct {
	Type       string `json:"type"`
	Conv       string `json:"conv"`
	From       string `json:"from"`
	FromUser   string `json:"from_user"`
	FromDevice uint32 `json:"from_device"`
	Typing     bool   `json:"typing"`
	Self       bool   `json:"self"`
}

type identityJSON struct {
	Type  string `json:"type"`
	User  string `json:"user"`
	State string `json:"state"` // "changed": sending to user is blocked until `chat trust USER`
}

type connectionJSON struct {
	Type   string `json:"type"`
	State  string `json:"state"` // connected, disconnected
	Edge   string `json:"edge"`
	EdgeID string `json:"edge_id,omitempty"` // connected only
	Region string `json:"region,omitempty"`  // connected only
	Code   string `json:"code,omitempty"`    // disconnected only
	Detail string `json:"detail,omitempty"`  // disconnected only
}

// errorJSON is type "error": a failed operation (op), or the end of the
// stream (fatal, with the exit status the process ends with).
type errorJSON struct {
	Type        string `json:"type"`
	Code        string `json:"code"`
	Detail      string `json:"detail"`
	Op          string `json:"op"`
	Fatal       bool   `json:"fatal"`
	Exit        int    `json:"exit,omitempty"`          // fatal only
	Conv        string `json:"conv,omitempty"`          // send errors
	ClientMsgID string `json:"client_msg_id,omitempty"` // send errors once queued
	Line        int    `json:"line,omitempty"`          // send --stdin errors
}

type droppedJSON struct {
	Type  string `json:"type"`
	Count uint64 `json:"count"` // dropped since the previous "dropped" line
	Total uint64 `json:"total"`
}

type queuedJSON struct {
	Type        string `json:"type"`
	Conv        string `json:"conv"`
	ClientMsgID string `json:"client_msg_id"`
	Line        int    `json:"line,omitempty"`
}

// emitter writes events, as JSON lines or as text, for the device me.
type emitter struct {
	w    io.Writer
	json bool
	me   core.DeviceKey
}

func (e *emitter) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("chat: encode event: %w", err)
	}
	b = append(b, '\n')
	_, err = e.w.Write(b)
	return err
}

// text writes one text line.
func (e *emitter) text(format string, a ...any) error {
	_, err := fmt.Fprintf(e.w, format+"\n", a...)
	return err
}

func devFields(k core.DeviceKey) (s, user string, dev uint32) {
	if k.User == "" {
		return "", "", 0
	}
	return k.String(), k.User, k.Device
}

// entry converts a stored conversation entry with its opened body into
// a messageJSON or a changeJSON.
func (e *emitter) entry(m *pb.Message, body []byte, openErr error) any {
	base := entryBase{Conv: m.GetConvId(), Seq: m.GetSeq(), MsgID: m.GetMsgId(), ClientMsgID: m.GetClientMsgId(), SentAtMs: m.GetSentAtMs()}
	if m.GetSender() != nil {
		base.From, base.FromUser, base.FromDevice = devFields(core.KeyOf(m.GetSender()))
	}
	base.Outgoing = base.FromUser != "" && base.FromUser == e.me.User
	if mc := m.GetMembership(); m.GetKind() == pb.MessageKind_MESSAGE_KIND_MEMBERSHIP && mc != nil {
		base.Type = evMembership
		switch mc.GetOp() {
		case pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, pb.MembershipOp_MEMBERSHIP_OP_DEMOTE:
			base.Type = evRole
		}
		return changeJSON{entryBase: base,
			Op:    strings.ToLower(strings.TrimPrefix(mc.GetOp().String(), "MEMBERSHIP_OP_")),
			Actor: mc.GetActor(), Title: mc.GetTitle(), Text: describeMembership(mc),
			Users: nonNil(mc.GetUsers()), Invited: nonNil(mc.GetInvited()), Promoted: nonNil(mc.GetPromoted()),
		}
	}
	base.Type = evMessage
	j := messageJSON{entryBase: base}
	switch {
	case openErr != nil:
		j.OpenError, j.OpenErrorCode = openErr.Error(), openErrCode(openErr)
	case utf8.Valid(body):
		j.Body = string(body)
	default:
		j.BodyBase64 = base64.StdEncoding.EncodeToString(body)
	}
	return j
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// openErrCode names why a body could not be opened.
func openErrCode(err error) string {
	for _, c := range []struct {
		err  error
		code string
	}{
		{e2ee.ErrNotForDevice, "NOT_FOR_DEVICE"},
		{e2ee.ErrNoLocalCopy, "NO_LOCAL_COPY"},
		{e2ee.ErrIdentityChanged, "IDENTITY_CHANGED"},
		{e2ee.ErrUntrustedSender, "UNTRUSTED_SENDER"},
		{e2ee.ErrNoSession, "NO_SESSION"},
		{e2ee.ErrNoSenderKey, "NO_SENDER_KEY"},
		{e2ee.ErrMalformed, "MALFORMED"},
	} {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "UNDECRYPTABLE"
}

// message writes a conversation entry.
func (e *emitter) message(m *pb.Message, body []byte, openErr error) error {
	v := e.entry(m, body, openErr)
	if e.json {
		return e.write(v)
	}
	at := time.UnixMilli(m.GetSentAtMs()).Format("15:04:05")
	switch j := v.(type) {
	case changeJSON:
		return e.text("[%s #%d %s] * %s", j.Conv, j.Seq, at, j.Text)
	case messageJSON:
		switch {
		case openErr != nil:
			return e.text("[%s #%d %s] %s: [cannot decrypt: %v]", j.Conv, j.Seq, at, j.From, openErr)
		case j.BodyBase64 != "":
			return e.text("[%s #%d %s] %s: [binary, %d bytes]", j.Conv, j.Seq, at, j.From, len(body))
		}
		return e.text("[%s #%d %s] %s: %s", j.Conv, j.Seq, at, j.From, j.Body)
	}
	return nil
}

// sent writes the "sent" receipt of this device's message (line: the
// input line of send --stdin, else 0).
func (e *emitter) sent(res client.SendResult, line int) error {
	if e.json {
		j := receiptJSON{Type: evReceipt, Status: "sent", Conv: res.Conv, Seq: res.Seq, MsgID: res.MsgID,
			ClientMsgID: res.ClientMsgID, SentAtMs: res.SentAtMs, Line: line, Self: true}
		j.From, j.FromUser, j.FromDevice = devFields(e.me)
		return e.write(j)
	}
	return e.text("sent %s seq %d", res.Conv, res.Seq)
}

// sendError writes the failure of a send (line as for sent; id empty when
// the message never reached the outbox).
func (e *emitter) sendError(conv, id string, line int, err error) error {
	if e.json {
		return e.write(errorJSON{Type: evError, Code: errCode(err), Detail: err.Error(), Op: "send", Conv: conv, ClientMsgID: id, Line: line})
	}
	if line > 0 {
		return e.text("! line %d not sent [%s]: %v", line, conv, err)
	}
	return e.text("! not sent [%s]: %v", conv, err)
}

// queued writes that a message is in the outbox (send --no-wait).
func (e *emitter) queued(conv, id string, line int) error {
	if e.json {
		return e.write(queuedJSON{Type: evQueued, Conv: conv, ClientMsgID: id, Line: line})
	}
	return e.text("queued %s %s", conv, id)
}

// fatal writes the error that ends the stream.
func (e *emitter) fatal(op string, err error) error {
	if e.json {
		return e.write(errorJSON{Type: evError, Code: errCode(err), Detail: err.Error(), Op: op, Fatal: true, Exit: chatExitCode(err)})
	}
	return nil // the error itself goes to stderr
}

// presence writes a user's presence.
func (e *emitter) presence(p client.PresenceEvent, snapshot bool) error {
	if e.json {
		return e.write(presenceJSON{Type: evPresence, User: p.User, Online: p.Online, LastSeenMs: p.LastSeenMs, Snapshot: snapshot})
	}
	if p.Online {
		return e.text("• %s is online", p.User)
	}
	last := ""
	if p.LastSeenMs > 0 {
		last = ", last seen " + time.UnixMilli(p.LastSeenMs).Format(time.RFC3339)
	}
	return e.text("• %s is offline%s", p.User, last)
}

// identity writes that user's identity changed.
func (e *emitter) identity(user string) error {
	if e.json {
		return e.write(identityJSON{Type: evIdentity, User: user, State: "changed"})
	}
	return e.text("⚠ the identity of %s has changed; sending to %s is blocked until `chat trust %s` (compare `chat safety %s` first)", user, user, user, user)
}

// dropped writes that n non-message events were lost (total so far).
func (e *emitter) dropped(n, total uint64) error {
	if e.json {
		return e.write(droppedJSON{Type: evDropped, Count: n, Total: total})
	}
	return e.text("! %d events (receipts, presence, typing) dropped", n)
}

// event writes any client event. Message events are written by message
// (the caller commits them); the rest here.
func (e *emitter) event(ev client.Event) error {
	switch x := ev.(type) {
	case client.MessageEvent:
		return e.message(x.Message, x.Body, x.OpenErr)
	case client.SendAckedEvent:
		return e.sent(client.SendResult{Conv: x.Conv, ClientMsgID: x.ClientMsgID, MsgID: x.MsgID, Seq: x.Seq, SentAtMs: x.SentAtMs}, 0)
	case client.SendFailedEvent:
		return e.sendError(x.Conv, x.ClientMsgID, 0, x.Err)
	case client.ReceiptEvent:
		status := "delivered"
		if x.Kind == pb.ReceiptKind_RECEIPT_KIND_READ {
			status = "read"
		}
		if e.json {
			j := receiptJSON{Type: evReceipt, Status: status, Conv: x.Conv, Seq: x.Seq, Self: x.From.User == e.me.User}
			j.From, j.FromUser, j.FromDevice = devFields(x.From)
			return e.write(j)
		}
		return e.text("  ✓✓ %s by %s [%s up to #%d]", status, x.From, x.Conv, x.Seq)
	case client.PresenceEvent:
		return e.presence(x, false)
	case client.TypingEvent:
		if e.json {
			j := typingJSON{Type: evTyping, Conv: x.Conv, Typing: x.Typing, Self: x.From.User == e.me.User}
			j.From, j.FromUser, j.FromDevice = devFields(x.From)
			return e.write(j)
		}
		if !x.Typing {
			return e.text("  %s stopped typing in %s", x.From, x.Conv)
		}
		return e.text("  %s is typing in %s…", x.From, x.Conv)
	case client.IdentityChangedEvent:
		return e.identity(x.User)
	case client.ConnectedEvent:
		if e.json {
			return e.write(connectionJSON{Type: evConnection, State: "connected", Edge: x.Edge, EdgeID: x.Hello.GetEdgeId(), Region: x.Hello.GetRegion()})
		}
		return nil // text: with -v on stderr
	case client.DisconnectedEvent:
		if e.json {
			j := connectionJSON{Type: evConnection, State: "disconnected", Edge: x.Edge}
			if x.Err != nil {
				j.Code, j.Detail = errCode(x.Err), x.Err.Error()
			}
			return e.write(j)
		}
		return nil
	}
	// Unreachable while every client event type has a case above (a test
	// checks that); a new type must get a schema in CLI.md.
	if e.json {
		return e.write(errorJSON{Type: evError, Code: "CLIENT", Detail: fmt.Sprintf("unknown event %T", ev), Op: "receive"})
	}
	return e.text("! unknown event %T", ev)
}
