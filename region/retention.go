package region

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Retention defaults (RetentionConfig).
const (
	DefaultRetentionMaxAge       = 30 * 24 * time.Hour
	DefaultResendWindow          = 24 * time.Hour
	DefaultRetentionInterval     = time.Minute
	DefaultRetentionBatchEntries = 256
	DefaultRetentionBatchBytes   = 1 << 20
	DefaultRetentionPassConvs    = 1000
)

// RetentionConfig is a deployment's message retention policy. The zero
// value is the default policy: an entry is deleted once every member
// device that needs it has acknowledged it (its delivered cursor reached
// the entry) and it is older than the resend window, and at the latest
// after MaxAge, acknowledged or not; idempotency keys are deleted after
// the resend window.
type RetentionConfig struct {
	// Disabled keeps every entry and idempotency key forever.
	Disabled bool
	// MaxAge deletes entries older than this even when some member device
	// never acknowledged them (a device that comes back later is told the
	// seqs expired, see PROTOCOL.md §7.4). Default 30 days.
	MaxAge time.Duration
	// History, when > 0, is history mode: every entry is kept at least
	// this long whatever the acks, for history fetches (and for devices
	// linked later). At most MaxAge. Default 0: delete once acked.
	History time.Duration
	// ResendWindow is how long an idempotency key (conversation, sender
	// device, client_msg_id) is kept: a resend within it is answered with
	// the original seq; a resend after it is a new entry. No entry is
	// deleted before it either, so a duplicate is always answered with
	// the stored entry. Default 24 hours; at most MaxAge.
	ResendWindow time.Duration
	// Interval is the pause between passes. Default 1 minute.
	Interval time.Duration
	// BatchEntries and BatchBytes bound one deletion (one store write,
	// holding the conversation's append lock on Pebble): at most this
	// many entries and about this many bytes of them. Defaults 256 and
	// 1 MiB.
	BatchEntries int
	BatchBytes   int
	// PassConversations bounds the conversations one pass visits; the
	// next pass goes on from there. Default 1000.
	PassConversations int
}

func (c *RetentionConfig) fill() {
	if c.MaxAge <= 0 {
		c.MaxAge = DefaultRetentionMaxAge
	}
	if c.ResendWindow <= 0 {
		c.ResendWindow = DefaultResendWindow
	}
	if c.Interval <= 0 {
		c.Interval = DefaultRetentionInterval
	}
	if c.BatchEntries <= 0 {
		c.BatchEntries = DefaultRetentionBatchEntries
	}
	c.BatchEntries = min(c.BatchEntries, core.MaxPageSize)
	if c.BatchBytes <= 0 {
		c.BatchBytes = DefaultRetentionBatchBytes
	}
	// A batch always holds at least one entry (Messages returns one when
	// maxBytes >= MaxMessageBytes).
	c.BatchBytes = max(c.BatchBytes, core.MaxMessageBytes)
	if c.PassConversations <= 0 {
		c.PassConversations = DefaultRetentionPassConvs
	}
}

// Validate reports a policy that contradicts itself.
func (c RetentionConfig) Validate() error {
	c.fill()
	if c.History > c.MaxAge {
		return fmt.Errorf("region: retention: history %v longer than max age %v: %w", c.History, c.MaxAge, core.ErrInvalidArgument)
	}
	if c.ResendWindow > c.MaxAge {
		return fmt.Errorf("region: retention: resend window %v longer than max age %v: %w", c.ResendWindow, c.MaxAge, core.ErrInvalidArgument)
	}
	return nil
}

// RetentionStats counts what retention did.
type RetentionStats struct {
	Passes        int64 // passes run
	Conversations int64 // conversations visited
	Trimmed       int64 // entries deleted
	Expired       int64 // of them, deleted at MaxAge while some device had not acked
	KeysForgotten int64 // idempotency keys deleted (of entries kept)
	Errors        int64 // failed conversations (retried next pass)
}

// Retention deletes old entries and idempotency keys from a store that
// implements core.Retainer, by the policy of a RetentionConfig. Pass does
// one bounded step; Run repeats it every Interval. It reads through the
// store only (members, devices, cursors, entries), never the sequencer's
// state, and each deletion is one bounded write: the sequencer's hot path
// waits at most for one such write of the conversation it appends to.
//
// Safety: an entry is deleted only when (a) it is older than MaxAge, or
// (b) it is older than the resend window (and History) and every device
// that needs it has acknowledged it. A device needs an entry when its
// user is a member (not invited) who joined at or before the entry, the
// device existed when the entry was sequenced (a device linked later
// syncs from the join point but does not hold deletion back), and it did
// not send the entry itself. Entries are deleted in seq order, so the
// retained entries of a conversation are always one contiguous range up
// to the head.
type Retention struct {
	store  core.Store
	ret    core.Retainer
	cfg    RetentionConfig
	log    *slog.Logger
	cursor string // last conversation visited by the previous pass

	passes, convs, trimmed, expired, forgotten, errs atomic.Int64
}

// NewRetention returns a retention worker for store, which must implement
// core.Retainer (both stores do).
func NewRetention(store core.Store, cfg RetentionConfig, log *slog.Logger) (*Retention, error) {
	ret, ok := store.(core.Retainer)
	if !ok {
		return nil, fmt.Errorf("region: retention: store %T cannot delete entries: %w", store, core.ErrInvalidArgument)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.fill()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Retention{store: store, ret: ret, cfg: cfg, log: log}, nil
}

// Stats returns the totals so far.
func (w *Retention) Stats() RetentionStats {
	return RetentionStats{Passes: w.passes.Load(), Conversations: w.convs.Load(), Trimmed: w.trimmed.Load(),
		Expired: w.expired.Load(), KeysForgotten: w.forgotten.Load(), Errors: w.errs.Load()}
}

// Run runs a pass every Interval until ctx ends.
func (w *Retention) Run(ctx context.Context, now func() time.Time) {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := w.Pass(ctx, now()); err != nil && ctx.Err() == nil {
			w.log.Warn("retention pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Pass visits up to PassConversations conversations after the previous
// pass's last one, and reports whether it reached the end of the list (the
// next pass starts from the first conversation again). A conversation
// that fails is logged, counted and retried next time; only a failure to
// list conversations fails the pass.
func (w *Retention) Pass(ctx context.Context, now time.Time) (wrapped bool, err error) {
	w.passes.Add(1)
	left := w.cfg.PassConversations
	devs := map[string][]core.Device{} // per pass: users recur across conversations
	for left > 0 {
		want := min(left, core.DefaultPageSize)
		marks, err := w.ret.RetentionMarks(ctx, w.cursor, want)
		if err != nil {
			return false, fmt.Errorf("region: retention: list conversations: %w", err)
		}
		for _, m := range marks {
			w.cursor = m.Conv
			left--
			w.convs.Add(1)
			if err := w.conversation(ctx, m, now, devs); err != nil {
				if ctx.Err() != nil {
					return false, ctx.Err()
				}
				w.errs.Add(1)
				w.log.Warn("retention: conversation failed", "conv", m.Conv, "err", err)
			}
		}
		if len(marks) < want {
			w.cursor = ""
			return true, nil
		}
	}
	return false, nil
}

// maxBatchesPerConv bounds the deletions of one conversation in one pass,
// so that one long backlog does not hold up the rest.
const maxBatchesPerConv = 16

// conversation applies the policy to one conversation.
func (w *Retention) conversation(ctx context.Context, m core.RetentionMark, now time.Time, devs map[string][]core.Device) error {
	if m.Trimmed >= m.Head && m.KeysThrough >= m.Head {
		return nil
	}
	nowMs := now.UnixMilli()
	var need *needers
	trimmed := m.Trimmed
	for range maxBatchesPerConv {
		if trimmed >= m.Head {
			break
		}
		page, err := w.store.Messages(ctx, m.Conv, trimmed, w.cfg.BatchEntries, w.cfg.BatchBytes)
		if err != nil {
			return err
		}
		if len(page) == 0 || page[0].GetSeq() != trimmed+1 {
			return fmt.Errorf("conversation %s: entry %d missing above the trim mark: %w", m.Conv, trimmed+1, core.ErrUnavailable)
		}
		through, expired := trimmed, int64(0)
		for _, e := range page {
			age := time.Duration(nowMs-e.GetSentAtMs()) * time.Millisecond
			old := age >= w.cfg.MaxAge
			settled := age >= w.cfg.ResendWindow && age >= w.cfg.History
			acked := false
			if old || settled {
				if need == nil {
					if need, err = w.needers(ctx, m.Conv, devs); err != nil {
						return err
					}
				}
				acked = need.allAcked(e)
			}
			ok := old || settled && acked
			if ok && !acked {
				expired++
			}
			if !ok {
				break
			}
			through = e.GetSeq()
		}
		if through == trimmed {
			break
		}
		if err := w.ret.Trim(ctx, m.Conv, through); err != nil {
			return err
		}
		w.trimmed.Add(int64(through - trimmed))
		w.expired.Add(expired)
		trimmed = through
		if through < page[len(page)-1].GetSeq() {
			break // stopped at an entry that must stay
		}
	}
	keys := max(m.KeysThrough, trimmed)
	for range maxBatchesPerConv {
		if keys >= m.Head {
			break
		}
		page, err := w.store.Messages(ctx, m.Conv, keys, w.cfg.BatchEntries, w.cfg.BatchBytes)
		if err != nil {
			return err
		}
		through := keys
		for _, e := range page {
			if time.Duration(nowMs-e.GetSentAtMs())*time.Millisecond < w.cfg.ResendWindow {
				break
			}
			through = e.GetSeq()
		}
		if through == keys {
			break
		}
		if err := w.ret.ForgetKeys(ctx, m.Conv, through); err != nil {
			return err
		}
		w.forgotten.Add(int64(through - keys))
		keys = through
		if through < page[len(page)-1].GetSeq() {
			break
		}
	}
	return nil
}

// needers is what allAcked needs to know about a conversation.
type needers struct {
	members []core.Member
	devs    map[string][]core.Device
	cursors map[core.DeviceKey]uint64 // delivered
}

func (w *Retention) needers(ctx context.Context, conv string, cache map[string][]core.Device) (*needers, error) {
	ms, err := w.store.Members(ctx, conv)
	if err != nil {
		return nil, err
	}
	cs, err := w.store.ConvCursors(ctx, conv)
	if err != nil {
		return nil, err
	}
	n := &needers{members: ms, devs: map[string][]core.Device{}, cursors: make(map[core.DeviceKey]uint64, len(cs))}
	for _, c := range cs {
		n.cursors[c.Device] = c.Delivered
	}
	for _, m := range ms {
		if m.Invited {
			continue
		}
		ds, ok := cache[m.User]
		if !ok {
			ds, err = w.store.Devices(ctx, m.User)
			if err != nil && !errors.Is(err, core.ErrNotFound) {
				return nil, err
			}
			cache[m.User] = ds
		}
		n.devs[m.User] = ds
	}
	return n, nil
}

// allAcked reports whether every device that needs e has acknowledged it
// (see Retention).
func (n *needers) allAcked(e *pb.Message) bool {
	sender := core.KeyOf(e.GetSender())
	for _, m := range n.members {
		if m.Invited || m.JoinedSeq > e.GetSeq() {
			continue
		}
		for _, d := range n.devs[m.User] {
			if d.Key == sender || d.CreatedAtMs > e.GetSentAtMs() {
				continue
			}
			if n.cursors[d.Key] < e.GetSeq() {
				return false
			}
		}
	}
	return true
}
