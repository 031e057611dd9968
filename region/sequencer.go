package region

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// MaxBatch is the most ingress records the sequencer handles per batch.
const MaxBatch = 256

// batch is the work of one handleBatch call: the outputs of its records
// (produced together once every entry is stored), the cursor moves
// (persisted after the outputs are out, so a failed produce recomputes
// and re-sends their receipts instead of losing them), and the
// conversations it touched (their cached state is dropped if the batch
// fails, so a retry starts from the store).
type batch struct {
	// st is what the steps read and append through: the store's write
	// batch (group commit, core.WriteBatch) or, without one, the store.
	st core.Store
	// wb is the write batch, nil without group commit.
	wb core.WriteBatch
	// memberPuts update the readers' member cache once the batch's
	// entries are committed (a reader must never find members for a head
	// that may yet be rolled back).
	memberPuts []memberPut
	// fan are the outputs addressed to users rather than to a session:
	// their routes are read after the commit (fanout.go), so that a
	// device whose route appears after the read finds the entry in its
	// first sync. Each goes into out at its position.
	fan []fanIntent
	// receipts are the batch's cursor moves' receipts, coalesced into
	// frames at the end of the batch (flushReceipts).
	receipts  []pendingReceipt
	out       []core.BusRecord
	cursors   []core.CursorMove
	touched   map[string]bool // conversations whose cached state this batch changed
	stepTouch map[string]bool // the same, for the current step only
	validated map[string]bool
	// place is where the current step's conversation lives (placement.go).
	place stepPlace
	// dirDown latches the first directory failure of the batch: later
	// records that need the directory are answered at once instead of
	// each waiting for its own timeout.
	dirDown error
	// decoded holds the records prefetch already decoded (nil where it
	// did not), by position in the batch; step takes its record from here
	// instead of decoding it again. cur is the current record's entry.
	decoded []*pb.IngressRecord
	cur     *pb.IngressRecord
	// final is every output in order, user-addressed ones resolved to
	// their sessions after the commit: what finishBatch produces.
	final []core.BusRecord
	// committed is when the batch's entries were committed (the fan-out
	// histogram measures from here to the outputs acknowledged).
	committed time.Time
}

// stepPlace is the current step's conversation and its placement: known
// means the directory homes it here at epoch.
type stepPlace struct {
	conv  string
	known bool
	epoch uint64
}

// memberPut is a deferred members.put.
type memberPut struct {
	conv    string
	head    uint64
	members []core.Member // nil: the members at head are those at from
	from    uint64
}

func newBatch(st core.Store) *batch {
	return &batch{st: st, touched: map[string]bool{}, stepTouch: map[string]bool{}, validated: map[string]bool{}}
}

func (b *batch) touch(conv string) {
	b.touched[conv] = true
	b.stepTouch[conv] = true
}

// handleBatch handles consecutive records of one partition. Each record
// is one step: decode, the conversation's state (cached by the partition
// worker, checked against the store's head once per batch), the pure
// decision (core), the store write, the state moved forward, the outputs
// collected. Then all outputs go to Kafka in one produce, then the cursor
// moves are persisted. Any transient failure returns an error and the bus
// retries the whole batch: stored entries dedupe and re-emit their
// outputs; cursor moves were not persisted and are recomputed. A record
// that keeps failing while the store is healthy goes to the dead-letter
// topic after Config.MaxAttempts (see deadletter.go), and the partition
// moves on.
func (r *Region) handleBatch(ctx context.Context, recs []core.BusRecord) error {
	b, err := r.prepareBatch(ctx, recs)
	if err != nil {
		return err
	}
	return r.finishBatch(ctx, b)
}

// prepareBatch runs the records' steps and commits what they stored,
// leaving the batch's outputs (in b.final) and cursor moves for
// finishBatch.
func (r *Region) prepareBatch(ctx context.Context, recs []core.BusRecord) (*batch, error) {
	r.hists.batchRecords.Observe(float64(len(recs)))
	if bs, ok := r.store.(core.Batcher); ok && !r.cfg.NoGroupCommit {
		b, err := r.runBatch(ctx, recs, bs)
		if !errors.Is(err, errBatchBroken) {
			return b, err
		}
		// The store's batch could not begin, prefetch or commit, or a
		// write left it unable to commit (nothing of it is stored or
		// sent): redo the records one synced write at a time, so a
		// failing one is retried and counted on its own.
		r.stats.batchFallbacks.Add(1)
		r.log.Warn("sequencer: write batch broken; redoing the batch without group commit", "records", len(recs), "err", err)
	}
	return r.runBatch(ctx, recs, nil)
}

// handleBatchPipelined is handleBatch for core.PipelinedConsumer: it
// returns once the batch's entries are committed, and produces its
// outputs and persists its cursor moves (finishBatch) in the background,
// after the partition's previous batch finished, so the next batch's
// steps and commit overlap this one's produce. The outputs of a
// partition's batches go out in batch order: a batch whose predecessor
// (of the same consumer generation) failed fails too, and the bus hands
// both over again. Meanwhile the cached conversation states already hold
// the batch's cursor moves; a failed finish drops the states it touched,
// so the redo recomputes those moves (and re-sends their receipts) from
// the store.
func (r *Region) handleBatchPipelined(ctx context.Context, recs []core.BusRecord) (*core.Pending, error) {
	if t := r.pipe.tail(recs[0].Partition); t.p != nil && t.ctx != ctx {
		// The partition's last batch belongs to an ended consumer
		// generation whose end has not finished (the bus stopped waiting
		// for it): if it fails, it drops cached states holding its cursor
		// moves, and this batch's steps must not read them before that.
		select {
		case <-t.p.Done():
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b, err := r.prepareBatch(ctx, recs)
	if err != nil {
		return nil, err
	}
	p := core.NewPending()
	first := recs[0].Offset
	prev := r.pipe.swap(recs[0].Partition, pipeTail{ctx: ctx, p: p, last: recs[len(recs)-1].Offset})
	go func() {
		if prev.p != nil {
			<-prev.p.Done()
			// Only a batch that continues after a failed one fails with
			// it. One that starts at or before the failed one's end is the
			// bus's redo of it; one from an ended generation is redone by
			// the partition's next owner from its committed offset. For
			// those the predecessor's end is waited for only for the
			// order of the outputs.
			if err := prev.p.Err(); err != nil && prev.ctx == ctx && first > prev.last {
				r.dropTouched(b)
				p.Finish(fmt.Errorf("sequencer: the partition's previous batch failed: %w", err))
				return
			}
		}
		p.Finish(r.finishBatch(ctx, b))
	}()
	return p, nil
}

// pipeTails holds, per ingress partition, the Pending of the newest
// pipelined batch: the next batch's outputs wait for it.
type pipeTails struct {
	mu sync.Mutex
	m  map[int]pipeTail
}

// pipeTail is a partition's newest pipelined batch and the context (the
// consumer generation) it was handled in.
type pipeTail struct {
	ctx  context.Context
	p    *core.Pending
	last int64 // offset of the batch's last record
}

// tail returns the partition's newest batch.
func (pt *pipeTails) tail(partition int) pipeTail {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.m[partition]
}

// swap makes t the partition's newest batch and returns the one before.
func (pt *pipeTails) swap(partition int, t pipeTail) pipeTail {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.m == nil {
		pt.m = map[int]pipeTail{}
	}
	prev := pt.m[partition]
	pt.m[partition] = t
	return prev
}

// dropTouched drops the cached state of every conversation b changed, so
// the next step reloads it from the store.
func (r *Region) dropTouched(b *batch) {
	for conv := range b.touched {
		r.states.drop(conv)
	}
}

// errBatchBroken reports that the store's write batch can no longer
// commit; handleBatch redoes the records without one.
var errBatchBroken = errors.New("region: write batch broken")

// runBatch is handleBatch with a write batch from bs, or without one (bs
// nil: every entry is its own synced write).
func (r *Region) runBatch(ctx context.Context, recs []core.BusRecord, bs core.Batcher) (_ *batch, err error) {
	b := newBatch(r.store)
	if bs != nil {
		wb, err := bs.Begin(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: begin: %w", errBatchBroken, err)
		}
		defer wb.Discard()
		b.st, b.wb = wb, wb
		if err := r.prefetch(ctx, b, wb, recs); err != nil {
			return nil, fmt.Errorf("%w: prefetch: %w", errBatchBroken, err)
		}
	}
	defer func() {
		if err != nil {
			r.dropTouched(b)
		}
	}()
	for i, rec := range recs {
		b.cur = nil
		if i < len(b.decoded) {
			b.cur = b.decoded[i]
		}
		if l := r.cfg.Lease; l != nil {
			// Without the directory's lease another region may be taking
			// over our conversations: stop before the step. The batch is
			// retried (never dead-lettered) once the lease is back; what
			// it already stored dedupes.
			if err := l.Await(ctx, time.Second); err != nil {
				return nil, fmt.Errorf("sequencer: %w", err)
			}
		}
		outs, moves, puts, fans, rcpts := len(b.out), len(b.cursors), len(b.memberPuts), len(b.fan), len(b.receipts)
		clear(b.stepTouch)
		if err := r.stepGuarded(ctx, b, rec); err != nil {
			if b.wb != nil {
				// A step that fails in a write batch fails the batch
				// (nothing stored, nothing sent, nothing dead-lettered
				// yet): handleBatch redoes the records one at a time,
				// where the failure is counted against its record and a
				// record that keeps failing is dead-lettered, once.
				return nil, fmt.Errorf("%w: step: %w", errBatchBroken, err)
			}
			// Whatever the failed step did to the cached state or the
			// batch's outputs is undone: its conversations reload (with
			// the batch's earlier, not yet persisted, cursor moves).
			b.out, b.cursors, b.memberPuts, b.fan, b.receipts = b.out[:outs], b.cursors[:moves], b.memberPuts[:puts], b.fan[:fans], b.receipts[:rcpts]
			for conv := range b.stepTouch {
				r.states.drop(conv)
				delete(b.validated, conv)
			}
			if dl := r.failed(ctx, b.st, rec, err); dl != nil {
				return nil, dl
			}
			continue // dead-lettered: the record is done
		}
		r.succeeded(rec)
	}
	if b.wb != nil {
		if l := r.cfg.Lease; l != nil && b.wb.Appended() > 0 {
			// The entries become visible at the commit: not after the
			// lease lapsed during the batch.
			if err := l.Await(ctx, time.Second); err != nil {
				return nil, fmt.Errorf("sequencer: %w", err)
			}
		}
		n := b.wb.Appended()
		start := time.Now()
		if err := b.wb.Commit(ctx); err != nil {
			// Nothing of the batch is stored or sent. Whatever failed
			// (a conflict with another writer, a statement only this
			// batch makes), the records are redone one at a time, where
			// a record that keeps failing is counted and dead-lettered.
			return nil, fmt.Errorf("%w: commit %d entries: %w", errBatchBroken, n, err)
		}
		if n > 0 {
			r.stats.appended.Add(uint64(n))
			r.stats.commits.Add(1)
			r.stats.committedEntries.Add(uint64(n))
			took := time.Since(start)
			r.stats.commitNanos.Add(uint64(took))
			r.hists.commitSeconds.Observe(took.Seconds())
			r.hists.commitEntries.Observe(float64(n))
		}
	}
	r.hists.observeSequenced(recs)
	b.committed = time.Now()
	for _, p := range b.memberPuts {
		if p.members == nil {
			r.members.advance(p.conv, p.from, p.head)
		} else {
			r.members.put(p.conv, p.head, p.members)
		}
	}
	r.flushReceipts(b)
	out, err := r.resolveFan(ctx, b)
	if err != nil {
		return nil, err
	}
	b.final = bundleEdgeRecords(out)
	return b, nil
}

// finishBatch produces a prepared batch's outputs in one produce, then
// persists its cursor moves. On failure it drops the cached state of the
// conversations the batch touched: the retry recomputes the moves.
func (r *Region) finishBatch(ctx context.Context, b *batch) (err error) {
	defer func() {
		if err != nil {
			r.dropTouched(b)
		}
	}()
	if err := r.produceNow(ctx, b.final...); err != nil {
		return err
	}
	r.emitted.addFans(b.fan)
	r.hists.fanoutDuration.Observe(time.Since(b.committed).Seconds())
	if cb, ok := r.store.(core.CursorBatcher); ok {
		if err := cb.AdvanceCursors(ctx, b.cursors); err != nil {
			return fmt.Errorf("cursors: %w", err)
		}
		return nil
	}
	for _, mv := range b.cursors {
		if _, _, err := r.store.AdvanceCursor(ctx, mv.Conv, mv.Dev, mv.Kind, mv.Seq); err != nil {
			return fmt.Errorf("cursor %s %s: %w", mv.Conv, mv.Dev, err)
		}
	}
	return nil
}

// prefetch tells the write batch which conversations and idempotency
// keys the batch's records name, so a store with remote reads reads them
// at once. A record that does not decode is left to its step.
func (r *Region) prefetch(ctx context.Context, b *batch, wb core.WriteBatch, recs []core.BusRecord) error {
	if len(recs) < 2 {
		return nil
	}
	convs := make([]string, 0, len(recs))
	keys := make([]core.IdemKey, 0, len(recs))
	b.decoded = make([]*pb.IngressRecord, len(recs))
	for i, rec := range recs {
		in := new(pb.IngressRecord)
		if proto.Unmarshal(rec.Value, in) != nil {
			continue // its step counts and drops it
		}
		b.decoded[i] = in
		conv := core.IngressConv(in)
		switch op := in.Op.(type) {
		case *pb.IngressRecord_Send:
			if core.ValidateSend(op.Send) != nil {
				continue // refused by its step, never stored
			}
		case *pb.IngressRecord_CreateGroup, *pb.IngressRecord_ModifyMembers:
		default:
			continue // cursors and typing write no entry: nothing to lock
		}
		if p := r.cfg.Placement; p != nil {
			if home, _, ok := p.Conv(conv); ok && home != r.cfg.Name {
				continue // forwarded, not stored here
			}
		}
		convs = append(convs, conv)
		if s := in.GetSend(); s != nil {
			keys = append(keys, core.IdemKey{Conv: conv, Sender: core.KeyOf(in.GetOrigin().GetDevice()), ClientMsgID: s.GetClientMsgId()})
		}
	}
	return wb.Prefetch(ctx, convs, keys)
}

// handleIngress handles one record as a batch of one.
func (r *Region) handleIngress(ctx context.Context, rec core.BusRecord) error {
	return r.handleBatch(ctx, []core.BusRecord{rec})
}

// stepGuarded runs step and turns a panic into an error of the record, so
// a record that crashes the sequencer is dead-lettered instead of killing
// the process over and over.
func (r *Region) stepGuarded(ctx context.Context, b *batch, rec core.BusRecord) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.stats.panics.Add(1)
			err = &recordError{reason: "panic", err: fmt.Errorf("region: sequencer panic: %v", p)}
		}
	}()
	return r.step(ctx, b, rec)
}

// step handles one ingress record. It returns an error only for failures
// worth retrying; a request that is invalid is answered with an error to
// its origin and consumed.
func (r *Region) step(ctx context.Context, b *batch, rec core.BusRecord) error {
	in := b.cur
	b.cur = nil
	if in == nil {
		in = new(pb.IngressRecord)
		if err := proto.Unmarshal(rec.Value, in); err != nil {
			r.stats.malformed.Add(1)
			r.log.Warn("dropping malformed ingress record", "partition", rec.Partition, "offset", rec.Offset, "err", err)
			return nil
		}
	}
	if in.GetHops() == 0 && in.GetOrigin() != nil {
		// Straight from one of our edges (whatever region name it was
		// configured with): replies come back here.
		in.Origin.Region = r.cfg.Name
	}
	forwarded, err := r.placeStep(ctx, b, in)
	if err == nil && forwarded {
		return nil
	}
	if err == nil {
		err = r.dispatch(ctx, b, in)
	}
	if errors.Is(err, core.ErrFenced) && r.cfg.Placement != nil && !isWireError(err) {
		// The store holds a newer owner epoch than our copy of the
		// directory: we were deposed. Re-read the directory and follow it.
		r.stats.fenced.Add(1)
		err = r.refenced(ctx, b, in)
		if err == nil {
			return nil
		}
	}
	if err == nil || !isRequestError(err) {
		return err
	}
	r.stats.rejected.Add(1)
	if in.GetOrigin().GetEdgeId() != "" {
		we := core.ToWire(err)
		if errors.Is(err, errNotHome) {
			we.RetryAfterMs = 1000
		}
		b.out = append(b.out, r.replyRecord(in.GetOrigin(), &pb.Response{Error: we}))
	}
	return nil
}

func isWireError(err error) bool {
	var we *core.WireError
	return errors.As(err, &we)
}

// dispatch runs the step of one decoded ingress record.
func (r *Region) dispatch(ctx context.Context, b *batch, in *pb.IngressRecord) error {
	var err error
	switch op := in.Op.(type) {
	case *pb.IngressRecord_Send:
		err = r.seqSend(ctx, b, in, op.Send)
	case *pb.IngressRecord_Ack:
		err = r.seqCursor(ctx, b, in, op.Ack.GetConvId(), op.Ack.GetSeq(), core.CursorDelivered)
	case *pb.IngressRecord_Read:
		err = r.seqCursor(ctx, b, in, op.Read.GetConvId(), op.Read.GetSeq(), core.CursorRead)
	case *pb.IngressRecord_CreateGroup:
		err = r.seqCreateGroup(ctx, b, in, op.CreateGroup)
	case *pb.IngressRecord_ModifyMembers:
		err = r.seqModify(ctx, b, in, op.ModifyMembers)
	case *pb.IngressRecord_Typing:
		err = r.seqTyping(ctx, b, in, op.Typing)
	default:
		err = fmt.Errorf("region: ingress record without op: %w", core.ErrInvalidArgument)
	}
	return err
}

// isRequestError tells errors that are the request's fault (answered to the
// client) from transient ones (retried).
func isRequestError(err error) bool {
	var we *core.WireError
	return errors.As(err, &we) || errors.Is(err, errNotHome) ||
		errors.Is(err, core.ErrNotFound) || errors.Is(err, core.ErrNotMember) ||
		errors.Is(err, core.ErrGroupFull) || errors.Is(err, core.ErrInvalidArgument) ||
		errors.Is(err, core.ErrForbidden) || errors.Is(err, core.ErrAlreadyExists) ||
		errors.Is(err, core.ErrFenced) || errors.Is(err, core.ErrLimitExceeded) ||
		errors.Is(err, core.ErrOutOfOrder)
}

// state returns the conversation's state: from the partition worker's
// cache, checked against the store's head once per batch (another process
// may have owned the partition meanwhile), else loaded. nil, nil: the
// conversation does not exist.
func (r *Region) state(ctx context.Context, b *batch, conv string) (*core.ConvState, error) {
	st := r.states.get(conv)
	if st != nil && b.validated[conv] {
		return st, nil
	}
	c, err := b.st.Conversation(ctx, conv)
	if errors.Is(err, core.ErrNotFound) {
		r.states.drop(conv)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("conversation %s: %w", conv, err)
	}
	b.validated[conv] = true
	if st != nil && st.Conv.Head == c.Head && st.Conv.Epoch == c.Epoch {
		return st, nil
	}
	r.stats.stateLoads.Add(1)
	ms, err := b.st.Members(ctx, conv)
	if err != nil {
		return nil, fmt.Errorf("members of %s: %w", conv, err)
	}
	cs, err := b.st.ConvCursors(ctx, conv)
	if err != nil {
		return nil, fmt.Errorf("cursors of %s: %w", conv, err)
	}
	st = core.NewConvState(c, ms, cs)
	for _, mv := range b.cursors {
		if mv.Conv == conv { // moved by this batch, not persisted yet
			st.MoveCursor(mv)
		}
	}
	r.states.put(conv, st)
	return st, nil
}

// appendEntry stores one entry and moves the state past it. On a
// duplicate the state is left alone: the entry is already in it (the
// state was loaded after it, or applied when it was first stored).
func (r *Region) appendEntry(ctx context.Context, b *batch, st *core.ConvState, req core.AppendRequest) (*pb.Message, *core.ConvState, error) {
	conv := req.Message.GetConvId()
	if r.cfg.Placement != nil && !b.place.known {
		// Only a home the directory named writes (placeStep claims
		// creating records first). A conversation that became creatable
		// after placeStep looked (its peer registered meanwhile) is
		// answered UNAVAILABLE; the resend is placed and claimed.
		return nil, nil, fmt.Errorf("append to %s: not placed in the directory: %w: %w", conv, errNotHome, core.ErrUnavailable)
	}
	b.touch(conv)
	// The writer signs its entries with its region: with the epoch, the
	// simulator's checker proves one writer per (conversation, epoch).
	req.Message.Region = r.cfg.Name
	res, err := b.st.Append(ctx, req)
	if err != nil {
		return nil, nil, fmt.Errorf("append to %s: %w", conv, err)
	}
	if res.Duplicate {
		r.stats.duplicates.Add(1)
		if res.Message.GetKind() != req.Message.GetKind() {
			// The key names an entry of another kind (a send reusing a
			// group change's key, or "create"): never ack one as the other.
			return nil, nil, fmt.Errorf("append to %s: client_msg_id %q already names another kind of entry: %w", conv, req.Message.GetClientMsgId(), core.ErrAlreadyExists)
		}
		if st == nil { // a replay of the entry that created the conversation
			st, err = r.state(ctx, b, conv)
			if err != nil || st == nil {
				return nil, nil, fmt.Errorf("append to %s: state after replay: %w", conv, errors.Join(err, core.ErrUnavailable))
			}
		}
		return res.Message, st, nil
	}
	if b.wb == nil {
		r.stats.appended.Add(1)
	} // with a write batch: counted once it is committed
	if st == nil {
		st = core.NewConvState(*req.Create, nil, nil)
		st.Conv.Head = 0
		r.states.put(conv, st)
		b.validated[conv] = true
	}
	if res.Message.GetSeq() != st.Conv.Head+1 {
		// Someone else appended meanwhile (an overlapping owner during a
		// rebalance): the cached state is not this entry's predecessor.
		r.states.drop(conv)
		delete(b.validated, conv)
		if st, err = r.state(ctx, b, conv); err != nil || st == nil {
			return nil, nil, fmt.Errorf("append to %s: state after a concurrent append: %w", conv, errors.Join(err, core.ErrUnavailable))
		}
		b.memberPuts = append(b.memberPuts, memberPut{conv: conv, head: st.Conv.Head, members: st.MemberList()})
		return res.Message, st, nil
	}
	prev := st.Conv.Head
	// Keep the readers' member cache in step: the new head is valid now.
	// Most entries leave the members as they were (a user message): the
	// cached list moves to the new head; a change caches the new list.
	if st.Apply(req, res.Message) {
		b.memberPuts = append(b.memberPuts, memberPut{conv: conv, head: st.Conv.Head, members: st.MemberList()})
	} else {
		b.memberPuts = append(b.memberPuts, memberPut{conv: conv, head: st.Conv.Head, from: prev})
	}
	return res.Message, st, nil
}

// replay answers a request whose idempotency key is already stored, as
// the first answer was: dedupe comes before every check that may have
// changed since (a sender removed meanwhile still gets the original ack).
func (r *Region) replay(ctx context.Context, b *batch, conv string, sender core.DeviceKey, key string, kind pb.MessageKind) (*pb.Message, error) {
	if key == "" {
		return nil, nil
	}
	m, err := b.st.Lookup(ctx, conv, sender, key)
	if errors.Is(err, core.ErrNotFound) {
		return nil, nil
	}
	if err == nil && m.GetKind() != kind {
		return nil, fmt.Errorf("%s: client_msg_id %q already names another kind of entry: %w", conv, key, core.ErrAlreadyExists)
	}
	if err != nil {
		return nil, fmt.Errorf("lookup %s: %w", conv, err)
	}
	r.stats.duplicates.Add(1)
	return m, nil
}

func (r *Region) seqSend(ctx context.Context, b *batch, in *pb.IngressRecord, s *pb.SendRequest) error {
	if err := core.ValidateSend(s); err != nil {
		return err
	}
	sender := core.KeyOf(in.GetOrigin().GetDevice())
	conv := s.GetConvId()
	st, err := r.state(ctx, b, conv)
	if err != nil {
		return err
	}
	req := core.AppendRequest{Epoch: b.place.epoch}
	now := r.cfg.Now()
	req.Message = &pb.Message{
		ConvId: conv, MsgId: r.newMsgID(now), Sender: sender.Addr(),
		ClientMsgId: s.GetClientMsgId(), SentAtMs: now.UnixMilli(),
		Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: s.GetEnvelope(),
	}
	var refuse error
	switch {
	case st != nil && !st.IsMember(sender.User):
		refuse = core.OutsiderError("send")
		if _, invited := st.Members[sender.User]; invited {
			refuse = fmt.Errorf("send to %s: %s is invited; accept first: %w", conv, sender.User, core.ErrNotMember)
		}
	case st == nil:
		a, bb, direct := core.ParseDirect(conv)
		if !direct || (sender.User != a && sender.User != bb) {
			refuse = core.OutsiderError("send")
			break
		}
		other := a
		if other == sender.User {
			other = bb
		}
		if _, err := b.st.User(ctx, other); errors.Is(err, core.ErrNotFound) {
			refuse = fmt.Errorf("send to %s: user %s: %w", conv, other, core.ErrNotFound)
			break
		} else if err != nil {
			return fmt.Errorf("send to %s: %w", conv, err)
		}
		req.Create = &core.Conversation{
			ID: conv, Kind: pb.ConversationKind_CONVERSATION_KIND_DIRECT,
			HomeRegion: r.cfg.Name, Epoch: b.place.epoch, CreatedAtMs: now.UnixMilli(),
		}
		req.AddMembers = []string{a, bb}
	}
	if refuse == nil {
		refuse, err = r.checkAfter(ctx, b, st, sender, s)
		if err != nil {
			return err
		}
	}
	if refuse != nil {
		// A resend of an entry stored before the refusal applied (the
		// sender was removed since) gets its original ack.
		m, err := r.replay(ctx, b, conv, sender, s.GetClientMsgId(), pb.MessageKind_MESSAGE_KIND_USER)
		if err != nil {
			return err // transient (retried) or a key clash, never the refusal
		}
		if m == nil {
			if errors.Is(refuse, core.ErrOutOfOrder) {
				r.stats.outOfOrder.Add(1)
			}
			return refuse
		}
		return r.sendOutputs(ctx, b, in, m, st, true)
	}
	m, st, err := r.appendEntry(ctx, b, st, req)
	if err != nil {
		return err
	}
	return r.sendOutputs(ctx, b, in, m, st, m.GetMsgId() != req.Message.GetMsgId())
}

// checkAfter enforces per-sender order (PROTOCOL.md §7.1.2): a send that
// names a predecessor (after_client_msg_id) is sequenced only once that
// predecessor is stored, so a device may keep many sends in flight and a
// transient refusal of one never lets a later one overtake it. It returns
// the refusal (OUT_OF_ORDER), or nil when the send may go on. A resend of
// an entry already stored gets its original ack whatever its predecessor
// (the caller replays it on a refusal). A conversation that does not
// exist yet (st nil) holds no predecessor: a send naming one is refused.
func (r *Region) checkAfter(ctx context.Context, b *batch, st *core.ConvState, sender core.DeviceKey, s *pb.SendRequest) (refuse, err error) {
	after := s.GetAfterClientMsgId()
	if after == "" || after == s.GetClientMsgId() || (st != nil && st.SentLast(sender, after)) {
		return nil, nil
	}
	err = core.ErrNotFound
	if st != nil {
		_, err = b.st.Lookup(ctx, s.GetConvId(), sender, after)
	}
	switch {
	case err == nil:
		return nil, nil
	case errors.Is(err, core.ErrNotFound):
		return fmt.Errorf("send to %s: predecessor %q is not stored yet; send again after it: %w", s.GetConvId(), after, core.ErrOutOfOrder), nil
	default:
		return nil, fmt.Errorf("send to %s: lookup predecessor: %w", s.GetConvId(), err)
	}
}

// sendOutputs emits a user entry's deliveries (to the members, offline
// devices notified) and the sender's ack. A duplicate (the key was stored
// already) is acked; it is delivered again only if its deliveries were
// never produced (a batch retried after the store; emitted.go).
func (r *Region) sendOutputs(ctx context.Context, b *batch, in *pb.IngressRecord, m *pb.Message, st *core.ConvState, dup bool) error {
	var users []string
	if st != nil {
		// Members who joined after this entry (a resend re-emits an old
		// one) do not get it: they read from their join point. The list
		// is the state's, shared: the fan-out only reads it.
		users = st.MembersAt(m.GetSeq())
	}
	if !dup || !(r.emitted.has(m.GetConvId(), m.GetSeq()) || b.fanned(m.GetConvId(), m.GetSeq())) {
		b.fanDelivery(m, users)
	}
	ack := &pb.Response{Body: &pb.Response_Send{Send: &pb.SendAck{
		ConvId: m.GetConvId(), ClientMsgId: m.GetClientMsgId(), Seq: m.GetSeq(), MsgId: m.GetMsgId(), SentAtMs: m.GetSentAtMs(),
	}}}
	b.out = append(b.out, r.replyRecord(in.GetOrigin(), ack))
	return nil
}

// createKey is the idempotency key of a group's CREATE entry: the group id
// is the creation's key (GroupID binds it to the creator).
const createKey = "create"

// userFacts looks up what the group rules need to know about users.
func (r *Region) userFacts(ctx context.Context, b *batch, actor string, users []string) (map[string]core.UserFacts, error) {
	facts := make(map[string]core.UserFacts, len(users))
	for _, u := range users {
		if _, done := facts[u]; done || u == actor || !core.ValidUserID(u) {
			continue
		}
		p, err := b.st.Privacy(ctx, u)
		if errors.Is(err, core.ErrNotFound) {
			facts[u] = core.UserFacts{}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("user %s: %w", u, err)
		}
		f := core.UserFacts{Exists: true, Policy: p.AddPolicy}
		if p.AddPolicy == pb.AddPolicy_ADD_POLICY_CONTACTS {
			_, err := b.st.Conversation(ctx, core.DirectConvID(actor, u))
			switch {
			case err == nil:
				f.Contact = true
			case !errors.Is(err, core.ErrNotFound):
				return nil, fmt.Errorf("contact %s: %w", u, err)
			}
		}
		facts[u] = f
	}
	return facts, nil
}

func (r *Region) seqCreateGroup(ctx context.Context, b *batch, in *pb.IngressRecord, cg *pb.CreateGroupRequest) error {
	actor := core.KeyOf(in.GetOrigin().GetDevice())
	conv := cg.GetConvId()
	if !core.GroupCreatedBy(conv, actor.User) {
		// Checked before anything is looked up: the answer is the same
		// whether or not someone else's group has this id.
		_, err := core.PlanCreateGroup(actor.User, cg, nil)
		return err
	}
	st, err := r.state(ctx, b, conv)
	if err != nil {
		return err
	}
	if st != nil {
		// Only the creator can name this id: a replay (or a second create
		// by another of the creator's devices) is answered with the group.
		if m, err := r.replay(ctx, b, conv, actor, createKey, pb.MessageKind_MESSAGE_KIND_MEMBERSHIP); err != nil || m != nil {
			if err != nil {
				return err
			}
			return r.membershipOutputs(ctx, b, in, m, st, nil)
		}
		b.out = append(b.out, r.replyRecord(in.GetOrigin(), &pb.Response{Body: &pb.Response_Conversation{Conversation: st.Info()}}))
		return nil
	}
	if len(cg.GetMembers()) > core.MaxGroupMembers {
		_, err := core.PlanCreateGroup(actor.User, cg, nil)
		return err
	}
	facts, err := r.userFacts(ctx, b, actor.User, cg.GetMembers())
	if err != nil {
		return err
	}
	plan, err := core.PlanCreateGroup(actor.User, cg, facts)
	if err != nil {
		return err
	}
	now := r.cfg.Now()
	c := core.Conversation{
		ID: conv, Kind: pb.ConversationKind_CONVERSATION_KIND_GROUP, Title: cg.GetTitle(),
		HomeRegion: r.cfg.Name, Epoch: b.place.epoch, CreatedAtMs: now.UnixMilli(),
	}
	req := core.AppendRequest{
		Epoch: b.place.epoch,
		Message: &pb.Message{
			ConvId: conv, MsgId: r.newMsgID(now), Sender: actor.Addr(), ClientMsgId: createKey,
			SentAtMs: now.UnixMilli(), Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP, Membership: plan.Change,
		},
		Create: &c,
	}
	plan.Apply(&req)
	m, st, err := r.appendEntry(ctx, b, nil, req)
	if err != nil {
		return err
	}
	return r.membershipOutputs(ctx, b, in, m, st, nil)
}

func (r *Region) seqModify(ctx context.Context, b *batch, in *pb.IngressRecord, mm *pb.ModifyMembersRequest) error {
	actor := core.KeyOf(in.GetOrigin().GetDevice())
	conv := mm.GetConvId()
	key := mm.GetClientMsgId()
	if !core.ValidClientMsgID(key) {
		return fmt.Errorf("modify %s: client_msg_id must be 1..%d bytes without control characters: %w", conv, core.MaxClientMsgIDLen, core.ErrInvalidArgument)
	}
	if !core.IsGroupID(conv) {
		return fmt.Errorf("modify %s: not a group: %w", conv, core.ErrInvalidArgument)
	}
	// Dedupe first: the replay of a change answers as the change did,
	// even if the actor's rights have changed since.
	if m, err := r.replay(ctx, b, conv, actor, key, pb.MessageKind_MESSAGE_KIND_MEMBERSHIP); err != nil || m != nil {
		if err != nil {
			return err
		}
		st, err := r.state(ctx, b, conv)
		if err != nil || st == nil {
			return errors.Join(err, core.ErrUnavailable)
		}
		return r.membershipOutputs(ctx, b, in, m, st, m.GetMembership().GetUsers())
	}
	st, err := r.state(ctx, b, conv)
	if err != nil {
		return err
	}
	if st == nil {
		return core.OutsiderError("modify_members")
	}
	var facts map[string]core.UserFacts
	if mm.GetOp() == pb.MembershipOp_MEMBERSHIP_OP_ADD && st.IsMember(actor.User) {
		if len(mm.GetUsers()) > core.MaxGroupMembers {
			return fmt.Errorf("modify %s: %d users > %d: %w", conv, len(mm.GetUsers()), core.MaxGroupMembers, core.ErrGroupFull)
		}
		if facts, err = r.userFacts(ctx, b, actor.User, mm.GetUsers()); err != nil {
			return err
		}
	}
	plan, err := core.PlanGroupChange(st, actor.User, mm, facts)
	if err != nil {
		return err
	}
	if plan.NoOp {
		b.out = append(b.out, r.replyRecord(in.GetOrigin(), &pb.Response{Body: &pb.Response_Conversation{Conversation: st.Info()}}))
		return nil
	}
	now := r.cfg.Now()
	req := core.AppendRequest{
		Epoch: b.place.epoch,
		Message: &pb.Message{
			ConvId: conv, MsgId: r.newMsgID(now), Sender: actor.Addr(), ClientMsgId: key,
			SentAtMs: now.UnixMilli(), Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP, Membership: plan.Change,
		},
	}
	plan.Apply(&req)
	m, st, err := r.appendEntry(ctx, b, st, req)
	if err != nil {
		return err
	}
	var gone []string
	if op := mm.GetOp(); op == pb.MembershipOp_MEMBERSHIP_OP_REMOVE || op == pb.MembershipOp_MEMBERSHIP_OP_LEAVE || op == pb.MembershipOp_MEMBERSHIP_OP_DECLINE {
		gone = plan.Remove
	}
	return r.membershipOutputs(ctx, b, in, m, st, gone)
}

// membershipOutputs emits a membership entry to the members after the
// change, the users it removed, and the users it invited (so they learn
// of the invitation), and the conversation's info to the actor.
func (r *Region) membershipOutputs(ctx context.Context, b *batch, in *pb.IngressRecord, m *pb.Message, st *core.ConvState, removed []string) error {
	users := st.MemberSet().Users()
	for _, u := range slices.Concat(removed, m.GetMembership().GetInvited()) {
		if !slices.Contains(users, u) {
			users = append(users, u)
		}
	}
	b.fanDelivery(m, users)
	b.out = append(b.out, r.replyRecord(in.GetOrigin(), &pb.Response{Body: &pb.Response_Conversation{Conversation: st.Info()}}))
	return nil
}

func (r *Region) seqCursor(ctx context.Context, b *batch, in *pb.IngressRecord, conv string, seq uint64, kind core.CursorKind) error {
	dev := core.KeyOf(in.GetOrigin().GetDevice())
	st, err := r.state(ctx, b, conv)
	if err != nil {
		return err
	}
	if st == nil {
		if kind == core.CursorRead {
			return core.OutsiderError("read")
		}
		return core.OutsiderError("ack")
	}
	mv, moved, err := st.PlanCursor(dev, kind, seq)
	if err != nil {
		return err
	}
	if moved {
		senders, complete := st.ReceiptSenders(mv)
		if !complete {
			if senders, err = r.scanSenders(ctx, b, mv); err != nil {
				return err
			}
		}
		if len(senders) > 0 {
			rk := pb.ReceiptKind_RECEIPT_KIND_DELIVERED
			if kind == core.CursorRead {
				rk = pb.ReceiptKind_RECEIPT_KIND_READ
			}
			b.receipts = append(b.receipts, pendingReceipt{users: senders, r: &pb.Receipt{
				ConvId: conv, From: dev.Addr(), Kind: rk, Seq: mv.Seq,
			}})
		}
		st.MoveCursor(mv)
		b.touch(conv)
		b.cursors = append(b.cursors, mv)
	}
	if in.GetOrigin().GetReqId() != 0 {
		b.out = append(b.out, r.replyRecord(in.GetOrigin(), &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}}))
	}
	return nil
}

// scanSenders finds the senders of user entries in (mv.From, mv.Seq] in
// the store when the state's window does not cover them: at most
// ReceiptScanLimit entries and receiptScanBytes bytes, newest first (a
// device back from a long absence acks a long range; its oldest senders
// are the least likely to be waiting for a receipt).
func (r *Region) scanSenders(ctx context.Context, b *batch, mv core.CursorMove) ([]string, error) {
	from := mv.From
	if mv.Seq-from > uint64(r.cfg.ReceiptScanLimit) {
		from = mv.Seq - uint64(r.cfg.ReceiptScanLimit)
	}
	r.stats.receiptScans.Add(1)
	msgs, err := b.st.MessagesBefore(ctx, mv.Conv, mv.Seq+1, from, int(mv.Seq-from), receiptScanBytes)
	if err != nil {
		return nil, fmt.Errorf("receipt scan %s: %w", mv.Conv, err)
	}
	return core.SendersToNotify(mv.Dev.User, msgs), nil
}

// receiptScanBytes bounds one receipt scan's read.
const receiptScanBytes = 1 << 20

func (r *Region) seqTyping(ctx context.Context, b *batch, in *pb.IngressRecord, t *pb.TypingRequest) error {
	dev := core.KeyOf(in.GetOrigin().GetDevice())
	conv := t.GetConvId()
	st, err := r.state(ctx, b, conv)
	if err != nil {
		return err
	}
	if st == nil || !st.IsMember(dev.User) {
		return core.OutsiderError("typing")
	}
	var others []string
	for _, u := range st.MemberSet().Users() {
		if u != dev.User {
			others = append(others, u)
		}
	}
	frame := &pb.ServerFrame{Body: &pb.ServerFrame_Typing{Typing: &pb.TypingEvent{
		ConvId: conv, From: dev.Addr(), Typing: t.GetTyping(),
	}}}
	b.fanFrame(others, frame, &r.stats.typing)
	return nil
}
