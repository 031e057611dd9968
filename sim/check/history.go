package check

import "time"

// History is everything a simulation observed, in the order observed.
// The traffic driver appends client events as they happen; the harness
// appends faults and directory operations; the checker (Check) reads it
// after the run (and, for the continuous checks, while it runs, on a
// copy). Devices and users are named by strings the driver chooses
// ("user/device"); conversations by their protocol ids.
type History struct {
	// Members is every conversation's member devices: each must receive
	// every acknowledged message of the conversation exactly once.
	Members map[string][]string `json:"members"`
	// Spans narrows membership for devices that joined or left a
	// conversation during the run (optional): such a device must receive
	// exactly the messages whose seq lies in its span. A (conv, device)
	// named here need not be in Members; one that is, is narrowed.
	Spans []MemberSpan `json:"spans,omitempty"`
	// Sent is every send the driver attempted (a client outbox accepted it).
	Sent []Sent `json:"-"`
	// Acked is every acknowledgement a sender received (sent ✓), including
	// repeats (an outbox resend acked again with the same seq).
	Acked []Acked `json:"-"`
	// Delivered is every message a device received (and, for the sender's
	// own devices, the message carried back by sync).
	Delivered []Delivered `json:"-"`
	// Dir is the directory operations the harness made and saw: reads of
	// a conversation's home and epoch from any voter, and its CAS moves.
	Dir []DirOp `json:"-"`
	// Faults is the fault schedule as it ran.
	Faults []Fault `json:"faults"`
}

// MemberSpan says that Device is a member of Conv for the seqs
// From..To (inclusive; To 0 = to the end of the run): it must receive
// every message of the conversation in that range and is not expected to
// receive any other (a device added to a group reads from its join point
// on, see client's join points).
type MemberSpan struct {
	Conv   string `json:"conv"`
	Device string `json:"device"`
	From   uint64 `json:"from"`
	To     uint64 `json:"to,omitempty"`
}

// Sent is one message handed to a client's durable outbox.
type Sent struct {
	At     time.Time `json:"at"`
	Device string    `json:"device"`
	Conv   string    `json:"conv"`
	MsgID  string    `json:"msg_id"` // the client_msg_id (idempotency key)
}

// Acked is the server's acknowledgement of a sent message.
type Acked struct {
	At     time.Time `json:"at"`
	Device string    `json:"device"`
	Conv   string    `json:"conv"`
	MsgID  string    `json:"msg_id"`
	Seq    uint64    `json:"seq"`
}

// Delivered is one message as a device received it. Epoch and Region are
// the owner epoch and the region of the sequencer that wrote it
// (pb.Message.epoch, pb.Message.region).
type Delivered struct {
	At     time.Time `json:"at"`
	Device string    `json:"device"`
	Conv   string    `json:"conv"`
	Seq    uint64    `json:"seq"`
	MsgID  string    `json:"msg_id"` // the sender's client_msg_id
	From   string    `json:"from"`   // sender device
	Epoch  uint64    `json:"epoch"`
	Region string    `json:"region"`
}

// DirOpKind is what a directory operation did.
type DirOpKind string

const (
	// DirRead reads a conversation's home and epoch (linearizable=1) from
	// one voter.
	DirRead DirOpKind = "read"
	// DirMove is a compare-and-set of a conversation's home on an
	// expected epoch (a planned move).
	DirMove DirOpKind = "move"
)

// DirOp is one directory operation with its invocation and response
// times (porcupine's history format). Voter names who answered.
type DirOp struct {
	Kind   DirOpKind `json:"kind"`
	Voter  string    `json:"voter"`
	Conv   string    `json:"conv"`
	Call   time.Time `json:"call"`
	Return time.Time `json:"return"`
	// For a move: the expected epoch and the new home.
	Expect uint64 `json:"expect,omitempty"`
	To     string `json:"to,omitempty"`
	// What came back: the home and epoch read or stored; OK when a move
	// applied; Unknown when a move's outcome is not known (timeout,
	// ErrUncertain). A failed read is not recorded.
	Home    string `json:"home"`
	Epoch   uint64 `json:"epoch"`
	OK      bool   `json:"ok"`
	Unknown bool   `json:"unknown"`
}

// Fault is one injected fault: Kind (e.g. "kill-region", "kill-leader",
// "partition-directory", "partition-store", "partition-links",
// "one-way-partition", "link-latency", "kill-broker"), the region or
// path it hit, and when it started and ended (End is zero while it lasts).
type Fault struct {
	Kind   string    `json:"kind"`
	Target string    `json:"target"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Detail string    `json:"detail,omitempty"`
}
