package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
)

// t0 is the send time of the retention tests' first entries: after every
// device of mkDevice was created.
var t0 = time.UnixMilli(1700000100000)

func retainer(t *testing.T, s core.Store) core.Retainer {
	t.Helper()
	r, ok := s.(core.Retainer)
	if !ok {
		t.Fatalf("%T does not implement core.Retainer", s)
	}
	return r
}

// sendAt appends a user message of from (user, device) at time at.
func sendAt(t *testing.T, s core.Store, conv, user string, dev uint32, cmid string, at time.Time) *pb.Message {
	t.Helper()
	m := userMsg(conv, user, dev, cmid)
	m.SentAtMs = at.UnixMilli()
	return mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: m}).Message
}

func mark(t *testing.T, r core.Retainer, conv string) core.RetentionMark {
	t.Helper()
	m, err := r.RetentionMark(t.Context(), conv)
	if err != nil {
		t.Fatalf("RetentionMark(%s): %v", conv, err)
	}
	return m
}

func lookupFound(t *testing.T, s core.Store, conv, user string, dev uint32, cmid string) bool {
	t.Helper()
	_, err := s.Lookup(t.Context(), conv, core.DeviceKey{User: user, Device: dev}, cmid)
	if err != nil && !errorsIsNotFound(err) {
		t.Fatalf("Lookup(%s, %s): %v", conv, cmid, err)
	}
	return err == nil
}

func errorsIsNotFound(err error) bool { return errors.Is(err, core.ErrNotFound) }

// testRetentionPrimitives checks core.Retainer: Trim deletes a prefix of
// entries with their keys, ForgetKeys deletes keys and keeps entries, a
// resend of a forgotten key is a new entry, bounds and no-ops.
func testRetentionPrimitives(t *testing.T, s core.Store) {
	ctx := t.Context()
	r := retainer(t, s)
	const conv = "g:ret"
	appendN(t, s, conv, 10) // m1..m10 at seqs 1..10 from a.1
	equal(t, "fresh mark", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 10})

	if err := r.Trim(ctx, conv, 4); err != nil {
		t.Fatalf("Trim(4): %v", err)
	}
	equal(t, "mark after trim", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 10, Trimmed: 4, KeysThrough: 4})
	equal(t, "entries after trim", seqs(messages(t, s, conv, 0, 0)), seqRange(5, 10))
	before, err := s.MessagesBefore(ctx, conv, 11, 0, 0, 0)
	if err != nil {
		t.Fatalf("MessagesBefore: %v", err)
	}
	equal(t, "history after trim", seqs(before), seqRange(5, 10))
	if lookupFound(t, s, conv, "a", 1, "m3") {
		t.Fatal("key of a trimmed entry still found")
	}
	if !lookupFound(t, s, conv, "a", 1, "m5") {
		t.Fatal("key of a kept entry lost")
	}
	// A resend of a trimmed entry's key is a new entry (PROTOCOL.md §7.1).
	res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "m3")})
	if res.Duplicate || res.Message.Seq != 11 {
		t.Fatalf("resend after trim: dup=%v seq=%d, want a new entry 11", res.Duplicate, res.Message.Seq)
	}

	if err := r.ForgetKeys(ctx, conv, 7); err != nil {
		t.Fatalf("ForgetKeys(7): %v", err)
	}
	equal(t, "mark after forget", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 11, Trimmed: 4, KeysThrough: 7})
	equal(t, "entries after forget", seqs(messages(t, s, conv, 0, 0)), seqRange(5, 11))
	if lookupFound(t, s, conv, "a", 1, "m6") {
		t.Fatal("forgotten key still found")
	}
	if !lookupFound(t, s, conv, "a", 1, "m8") {
		t.Fatal("key above KeysThrough lost")
	}
	if res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "m8")}); !res.Duplicate || res.Message.Seq != 8 {
		t.Fatalf("resend of m8: dup=%v seq=%d, want duplicate of 8", res.Duplicate, res.Message.Seq)
	}
	if res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "m6")}); res.Duplicate || res.Message.Seq != 12 {
		t.Fatalf("resend of forgotten m6: dup=%v seq=%d, want new entry 12", res.Duplicate, res.Message.Seq)
	}

	// No-ops and bounds.
	if err := r.Trim(ctx, conv, 2); err != nil {
		t.Fatalf("Trim below the mark: %v", err)
	}
	if err := r.ForgetKeys(ctx, conv, 3); err != nil {
		t.Fatalf("ForgetKeys below the mark: %v", err)
	}
	equal(t, "mark after no-ops", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 12, Trimmed: 4, KeysThrough: 7})
	wantErr(t, "Trim beyond head", r.Trim(ctx, conv, 13), core.ErrInvalidArgument)
	wantErr(t, "ForgetKeys beyond head", r.ForgetKeys(ctx, conv, 13), core.ErrInvalidArgument)
	wantErr(t, "Trim of a missing conversation", r.Trim(ctx, "g:absent", 1), core.ErrNotFound)
	_, err = r.RetentionMark(ctx, "g:absent")
	wantErr(t, "RetentionMark of a missing conversation", err, core.ErrNotFound)

	// Trimming past KeysThrough moves it along; trimming everything
	// leaves the head.
	if err := r.Trim(ctx, conv, 12); err != nil {
		t.Fatalf("Trim(12): %v", err)
	}
	equal(t, "mark after full trim", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 12, Trimmed: 12, KeysThrough: 12})
	equal(t, "entries after full trim", len(messages(t, s, conv, 0, 0)), 0)
	equal(t, "head after full trim", conversation(t, s, conv).Head, uint64(12))
	if res := mustAppend(t, s, core.AppendRequest{Epoch: 1, Message: userMsg(conv, "a", 1, "next")}); res.Message.Seq != 13 {
		t.Fatalf("append after full trim: seq %d, want 13", res.Message.Seq)
	}

	// Listing: every conversation once, in pages.
	appendN(t, s, "g:ret2", 1)
	appendN(t, s, "g:ret3", 1)
	var got []string
	after := ""
	for range 10 {
		ms, err := r.RetentionMarks(ctx, after, 2)
		if err != nil {
			t.Fatalf("RetentionMarks(%q): %v", after, err)
		}
		for _, m := range ms {
			got = append(got, m.Conv)
			after = m.Conv
		}
		if len(ms) < 2 {
			break
		}
	}
	equal(t, "listed conversations", got, []string{"g:ret", "g:ret2", "g:ret3"})
}

// retentionFixture: group g:pol with a (devices 1, 2), b (devices 1, 2),
// c (device 1; invited only) and a device a.3 linked after the entries.
func retentionFixture(t *testing.T, s core.Store, conv string) {
	t.Helper()
	register(t, s, "a", 0, true)
	register(t, s, "a", 1, false)
	register(t, s, "b", 0, true)
	register(t, s, "b", 1, false)
	register(t, s, "c", 0, true)
	m := userMsg(conv, "a", 1, "create")
	m.SentAtMs = t0.UnixMilli()
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(conv), Message: m, AddMembers: []string{"a", "b"}, Invite: []string{"c"}})
}

func advance(t *testing.T, s core.Store, conv, user string, dev uint32, seq uint64) {
	t.Helper()
	if _, _, err := s.AdvanceCursor(t.Context(), conv, core.DeviceKey{User: user, Device: dev}, core.CursorDelivered, seq); err != nil {
		t.Fatalf("AdvanceCursor(%s.%d, %d): %v", user, dev, seq, err)
	}
}

func pass(t *testing.T, w *region.Retention, at time.Time) {
	t.Helper()
	for range 100 {
		wrapped, err := w.Pass(t.Context(), at)
		if err != nil {
			t.Fatalf("retention pass: %v", err)
		}
		if wrapped {
			return
		}
	}
	t.Fatal("retention pass never reached the end of the conversations")
}

func newRetention(t *testing.T, s core.Store, cfg region.RetentionConfig) *region.Retention {
	t.Helper()
	w, err := region.NewRetention(s, cfg, nil)
	if err != nil {
		t.Fatalf("NewRetention: %v", err)
	}
	return w
}

// testRetentionUnackedKept: nothing a device that needs it has not acked
// is deleted before MaxAge; the sender's own device, a device linked
// later and an invited user do not hold deletion back; keys go after the
// resend window, entries not before it; at MaxAge everything goes and the
// expiry is counted.
func testRetentionUnackedKept(t *testing.T, s core.Store) {
	r := retainer(t, s)
	const conv = "g:pol"
	retentionFixture(t, s, conv)
	for i := 2; i <= 5; i++ { // seqs 2..5 from a.1, an hour apart
		sendAt(t, s, conv, "a", 1, fmt.Sprintf("m%d", i), t0.Add(time.Duration(i)*time.Hour))
	}
	late := mkDevice("a", 2) // a.3, linked after the entries: not a holder
	late.CreatedAtMs = t0.Add(6 * time.Hour).UnixMilli()
	if _, err := s.RegisterDevice(t.Context(), core.User{ID: "a"}, late, false); err != nil {
		t.Fatalf("RegisterDevice(a.3): %v", err)
	}
	cfg := region.RetentionConfig{MaxAge: 10 * 24 * time.Hour, ResendWindow: 24 * time.Hour}
	w := newRetention(t, s, cfg)

	// Everyone but b.2 acks everything; a.1 sent it all and never acks.
	advance(t, s, conv, "a", 2, 5)
	advance(t, s, conv, "b", 1, 5)
	pass(t, w, t0.Add(6*time.Hour)) // within the resend window
	equal(t, "mark within the window", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 5})
	if !lookupFound(t, s, conv, "a", 1, "m5") {
		t.Fatal("key deleted within the resend window")
	}

	pass(t, w, t0.Add(3*24*time.Hour)) // past the window: keys go, b.2 holds the entries
	equal(t, "mark with b.2 behind", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 5, KeysThrough: 5})
	equal(t, "entries with b.2 behind", seqs(messages(t, s, conv, 0, 0)), seqRange(1, 5))
	if lookupFound(t, s, conv, "a", 1, "m3") {
		t.Fatal("key kept after the resend window")
	}

	advance(t, s, conv, "b", 2, 3)
	pass(t, w, t0.Add(3*24*time.Hour))
	equal(t, "entries after b.2 acked 3", seqs(messages(t, s, conv, 0, 0)), seqRange(4, 5))
	if st := w.Stats(); st.Trimmed != 3 || st.Expired != 0 {
		t.Fatalf("stats after acks: %+v", st)
	}

	pass(t, w, t0.Add(10*24*time.Hour+4*time.Hour)) // seq 4 (sent at +4 h) reaches MaxAge, seq 5 not yet
	equal(t, "entries at seq 4's max age", seqs(messages(t, s, conv, 0, 0)), seqRange(5, 5))
	pass(t, w, t0.Add(11*24*time.Hour))
	equal(t, "entries after max age", len(messages(t, s, conv, 0, 0)), 0)
	equal(t, "mark after max age", mark(t, r, conv), core.RetentionMark{Conv: conv, Head: 5, Trimmed: 5, KeysThrough: 5})
	if st := w.Stats(); st.Trimmed != 5 || st.Expired != 2 {
		t.Fatalf("stats after max age: %+v, want 5 trimmed of which 2 expired unacked", st)
	}
}

// testRetentionHistory: history mode keeps acked entries for History.
func testRetentionHistory(t *testing.T, s core.Store) {
	const conv = "g:hist"
	retentionFixture(t, s, conv)
	sendAt(t, s, conv, "b", 1, "x", t0)
	for _, d := range []uint32{1, 2} {
		advance(t, s, conv, "a", d, 2)
		advance(t, s, conv, "b", d, 2)
	}
	w := newRetention(t, s, region.RetentionConfig{History: 7 * 24 * time.Hour, ResendWindow: time.Hour})
	pass(t, w, t0.Add(2*24*time.Hour))
	equal(t, "entries within history", seqs(messages(t, s, conv, 0, 0)), seqRange(1, 2))
	pass(t, w, t0.Add(8*24*time.Hour))
	equal(t, "entries after history", len(messages(t, s, conv, 0, 0)), 0)

	if _, err := region.NewRetention(s, region.RetentionConfig{History: 40 * 24 * time.Hour}, nil); err == nil {
		t.Fatal("history longer than the default max age accepted")
	}
}

// testRetentionBounded: a steady stream with acks and a retention pass per
// round keeps the stored entries and keys bounded by the traffic of the
// resend window (all acked) or of MaxAge (a device that never acks), and
// every entry above the trim mark is still stored.
func testRetentionBounded(t *testing.T, s core.Store) {
	ctx := t.Context()
	r := retainer(t, s)
	const acked, lagging = "g:steady", "g:lagging"
	retentionFixture(t, s, acked)
	m := userMsg(lagging, "a", 1, "create")
	m.SentAtMs = t0.UnixMilli()
	mustAppend(t, s, core.AppendRequest{Epoch: 1, Create: group(lagging), Message: m, AddMembers: []string{"a", "b"}})
	const (
		rounds   = 40
		perRound = 10
		window   = 3 * time.Hour
		maxAge   = 8 * time.Hour
	)
	w := newRetention(t, s, region.RetentionConfig{ResendWindow: window, MaxAge: maxAge, BatchEntries: 7})
	maxStored := map[string]uint64{}
	for round := 1; round <= rounds; round++ {
		at := t0.Add(time.Duration(round) * time.Hour)
		for i := range perRound {
			for _, conv := range []string{acked, lagging} {
				sendAt(t, s, conv, "a", 1, fmt.Sprintf("r%d-%d", round, i), at)
			}
		}
		head := conversation(t, s, acked).Head
		for _, d := range []uint32{1, 2} {
			advance(t, s, acked, "a", d, head)
			advance(t, s, acked, "b", d, head)
			advance(t, s, lagging, "a", d, head) // b never acks in lagging
		}
		pass(t, w, at)
		for _, conv := range []string{acked, lagging} {
			mk := mark(t, r, conv)
			var n uint64
			after := uint64(0)
			for {
				ms, err := s.Messages(ctx, conv, after, 0, 0)
				if err != nil {
					t.Fatalf("Messages: %v", err)
				}
				if len(ms) == 0 {
					break
				}
				if after == 0 && ms[0].GetSeq() != mk.Trimmed+1 {
					t.Fatalf("%s round %d: first stored entry %d, trim mark %d", conv, round, ms[0].GetSeq(), mk.Trimmed)
				}
				n += uint64(len(ms))
				after = ms[len(ms)-1].GetSeq()
			}
			if n != mk.Head-mk.Trimmed {
				t.Fatalf("%s round %d: %d entries stored, marks say %d", conv, round, n, mk.Head-mk.Trimmed)
			}
			maxStored[conv] = max(maxStored[conv], n)
			keys := 0
			for rr := max(1, round-rounds); rr <= round; rr++ {
				for i := range perRound {
					if lookupFound(t, s, conv, "a", 1, fmt.Sprintf("r%d-%d", rr, i)) {
						keys++
					}
				}
			}
			// Keys of the last window+1 rounds at most.
			if limit := (int(window/time.Hour) + 1) * perRound; keys > limit {
				t.Fatalf("%s round %d: %d idempotency keys kept, bound %d", conv, round, keys, limit)
			}
		}
	}
	// Acked: entries of the last window+1 rounds (plus one for the
	// creation entry's round). Lagging: of the last maxAge+1 rounds.
	if b := uint64((window/time.Hour + 1) * perRound); maxStored[acked] > b {
		t.Fatalf("acked conversation kept up to %d entries, bound %d", maxStored[acked], b)
	}
	if b := uint64((maxAge/time.Hour + 1) * perRound); maxStored[lagging] > b {
		t.Fatalf("lagging conversation kept up to %d entries, bound %d", maxStored[lagging], b)
	}
	if maxStored[lagging] <= maxStored[acked] {
		t.Fatalf("lagging conversation (%d) kept no more than the acked one (%d): acks are not honoured", maxStored[lagging], maxStored[acked])
	}
	t.Logf("after %d rounds of %d entries: at most %d entries stored (all acked), %d (one device never acks); %+v",
		rounds, perRound, maxStored[acked], maxStored[lagging], w.Stats())
}
