package region

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Links (issue 7): a region never produces to another region's cluster
// from the sequencer. It produces pb.LinkRecords to a local outbound topic
// per remote region ("<ns>.link.<remote>"), and a Link worker per remote
// region consumes that topic and produces the records to the remote
// cluster (acks=all), committing only after the remote produce
// succeeded. A link retry may deliver a record twice: a forwarded ingress
// record is then deduplicated by the home's idempotency keys, and a
// delivery by the client (it drops seqs it already holds).

// DefaultLinkPrefix prefixes the outbound link topics ("link.<remote>").
const DefaultLinkPrefix = "link."

// LinkPartitions is the partition count of an outbound link topic.
// Records keep their key (conversation or edge), so per-key order holds.
const LinkPartitions = 8

// MaxHops bounds how often one ingress record is forwarded between regions
// (directory copies that disagree for a moment); past it the origin gets
// UNAVAILABLE and resends.
const MaxHops = 4

// linkTopic is the local outbound topic towards region to.
func (r *Region) linkTopic(to string) string { return r.cfg.LinkPrefix + to }

// local reports whether region names this region (or is unset: routes and
// origins written before the mesh, or by a single-region deployment).
func (r *Region) local(region string) bool {
	return region == "" || region == r.cfg.Name || r.cfg.Placement == nil
}

// edgeOut addresses an encoded EdgeRecord to an edge of region: its topic
// here, or the link to its region.
func (r *Region) edgeOut(region, edge string, value []byte) core.BusRecord {
	if r.local(region) {
		return core.BusRecord{Topic: EdgeTopic(edge), Key: []byte(edge), Value: value}
	}
	return r.linkOut(region, &pb.LinkRecord{Dest: pb.LinkRecord_DEST_EDGE, EdgeId: edge, Key: []byte(edge), Value: value})
}

// linkOut wraps a record for the link to region to.
func (r *Region) linkOut(to string, lr *pb.LinkRecord) core.BusRecord {
	lr.ProducedAtMs = r.nowMs()
	b, err := proto.Marshal(lr)
	if err != nil { // cannot happen for a well-formed message
		r.log.Error("encode link record", "err", err)
	}
	return core.BusRecord{Topic: r.linkTopic(to), Key: lr.GetKey(), Value: b}
}

// forward sends an ingress record to the conversation's home region.
func (r *Region) forward(b *batch, in *pb.IngressRecord, conv, home string) error {
	if in.GetHops() >= MaxHops {
		r.stats.hopsExceeded.Add(1)
		return fmt.Errorf("conversation %s: forwarded %d times between regions without reaching its home; retry: %w: %w", conv, in.GetHops(), errNotHome, core.ErrUnavailable)
	}
	if l := r.cfg.Lease; l != nil && l.Silent(home) {
		// The home is likely lost and about to be failed over: a record
		// forwarded there would wait in its ingress until the client's
		// ack timeout. Refuse it; the resend reaches the new home.
		r.stats.forwardRefused.Add(1)
		return fmt.Errorf("conversation %s: its home %s is not heartbeating to the directory; retry: %w: %w", conv, home, errNotHome, core.ErrUnavailable)
	}
	fwd := proto.Clone(in).(*pb.IngressRecord)
	fwd.Hops++
	if fwd.GetOrigin() != nil && fwd.GetOrigin().GetRegion() == "" {
		fwd.Origin.Region = r.cfg.Name
	}
	v, err := proto.Marshal(fwd)
	if err != nil {
		return fmt.Errorf("region: encode forwarded record: %w", err)
	}
	r.stats.forwarded.Add(1)
	b.out = append(b.out, r.linkOut(home, &pb.LinkRecord{Dest: pb.LinkRecord_DEST_INGRESS, Key: []byte(conv), Value: v}))
	return nil
}

// ensureLinks creates the outbound link topics the records name, once per
// topic per process.
func (r *Region) ensureLinks(ctx context.Context, recs []core.BusRecord) error {
	for _, rec := range recs {
		if len(rec.Topic) <= len(r.cfg.LinkPrefix) || rec.Topic[:len(r.cfg.LinkPrefix)] != r.cfg.LinkPrefix {
			continue
		}
		if _, ok := r.linkTopics.Load(rec.Topic); ok {
			continue
		}
		if err := r.bus.EnsureTopic(ctx, rec.Topic, LinkPartitions); err != nil {
			return fmt.Errorf("region: ensure link topic %s: %w", rec.Topic, err)
		}
		r.linkTopics.Store(rec.Topic, true)
	}
	return nil
}

// LinkConfig configures the link worker from one region to another.
type LinkConfig struct {
	From, To string
	// Local is the source region's bus: Topic is consumed there by Group.
	Local        core.Bus
	Topic, Group string
	// Remote is a client of the destination region's cluster (TLS/SASL
	// configured by the caller in production; see deploy/README.md).
	Remote core.Bus
	// RemoteNames are the destination region's ingress and presence topics.
	RemoteNames Names
	Logger      *slog.Logger
	Now         func() time.Time
}

// LinkStats counts what a link did.
type LinkStats struct {
	Forwarded uint64 // records produced to the remote cluster
	Batches   uint64 // remote produces
	Dropped   uint64 // EDGE records for a remote edge topic that no longer exists
	Malformed uint64 // records that did not decode (dropped)
	Restarts  uint64 // times the consumer stopped and was restarted
	// LagMs is the age, when forwarded, of the newest record of the last
	// batch (source produce → remote produce).
	LagMs int64
}

// Link forwards one outbound link topic to a remote region.
type Link struct {
	cfg       LinkConfig
	log       *slog.Logger
	consuming atomic.Bool
	lastErr   atomic.Pointer[error]

	forwarded, batches, dropped, malformed, restarts atomic.Uint64
	lag                                              atomic.Int64
}

// NewLink builds a link worker; Run runs it.
func NewLink(cfg LinkConfig) (*Link, error) {
	if cfg.Local == nil || cfg.Remote == nil || cfg.Topic == "" || cfg.Group == "" || cfg.To == "" {
		return nil, errors.New("region: link needs Local, Remote, Topic, Group and To")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Link{cfg: cfg, log: cfg.Logger.With("component", "link", "from", cfg.From, "to", cfg.To)}, nil
}

// Stats returns a snapshot of the counters.
func (l *Link) Stats() LinkStats {
	return LinkStats{Forwarded: l.forwarded.Load(), Batches: l.batches.Load(), Dropped: l.dropped.Load(),
		Malformed: l.malformed.Load(), Restarts: l.restarts.Load(), LagMs: l.lag.Load()}
}

// Health is nil while the link consumes, else why not.
func (l *Link) Health() error {
	if l.consuming.Load() {
		return nil
	}
	if p := l.lastErr.Load(); p != nil {
		return fmt.Errorf("link %s→%s not consuming: %w", l.cfg.From, l.cfg.To, *p)
	}
	return fmt.Errorf("link %s→%s not consuming", l.cfg.From, l.cfg.To)
}

// Run consumes until ctx ends. A consumer that stops for any other reason
// is restarted after a backoff, counted and logged at error: a link never
// dies silently.
func (l *Link) Run(ctx context.Context) {
	for attempt := 0; ; attempt++ {
		var ready atomic.Bool
		err := l.cfg.Local.EnsureTopic(ctx, l.cfg.Topic, LinkPartitions)
		if err == nil {
			spec := core.ConsumeSpec{Topic: l.cfg.Topic, Group: l.cfg.Group, OnReady: func() {
				l.consuming.Store(true)
				ready.Store(true)
			}}
			if bc, ok := l.cfg.Local.(core.BatchConsumer); ok {
				err = bc.ConsumeBatch(ctx, spec, MaxBatch, l.handle)
			} else {
				err = l.cfg.Local.Consume(ctx, spec, func(ctx context.Context, rec core.BusRecord) error {
					return l.handle(ctx, []core.BusRecord{rec})
				})
			}
		}
		l.consuming.Store(false)
		if ctx.Err() != nil {
			return
		}
		if ready.Load() {
			attempt = 0 // a run that got going restarts from the shortest backoff
		}
		if err == nil {
			err = errors.New("consumer returned without error")
		}
		l.lastErr.Store(&err)
		l.restarts.Add(1)
		wait := min(time.Duration(1<<min(attempt, 5))*100*time.Millisecond, 5*time.Second)
		l.log.Error("link consumer stopped; restarting", "err", err, "restarts", l.restarts.Load(), "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// handle forwards one consumed batch; an error makes the bus redeliver it.
func (l *Link) handle(ctx context.Context, recs []core.BusRecord) error {
	out := make([]core.BusRecord, 0, len(recs))
	edgeRec := make([]bool, 0, len(recs))
	var newest int64
	for _, rec := range recs {
		var lr pb.LinkRecord
		if err := proto.Unmarshal(rec.Value, &lr); err != nil {
			l.malformed.Add(1)
			l.log.Warn("dropping malformed link record", "partition", rec.Partition, "offset", rec.Offset, "err", err)
			continue
		}
		var topic string
		switch lr.GetDest() {
		case pb.LinkRecord_DEST_INGRESS:
			topic = l.cfg.RemoteNames.Ingress
		case pb.LinkRecord_DEST_PRESENCE:
			topic = l.cfg.RemoteNames.Presence
		case pb.LinkRecord_DEST_EDGE:
			if lr.GetEdgeId() == "" {
				l.malformed.Add(1)
				continue
			}
			topic = EdgeTopic(lr.GetEdgeId())
		default:
			l.malformed.Add(1)
			l.log.Warn("dropping link record without a destination", "partition", rec.Partition, "offset", rec.Offset)
			continue
		}
		newest = max(newest, lr.GetProducedAtMs())
		out = append(out, core.BusRecord{Topic: topic, Key: lr.GetKey(), Value: lr.GetValue()})
		edgeRec = append(edgeRec, lr.GetDest() == pb.LinkRecord_DEST_EDGE)
	}
	if err := l.produce(ctx, out, edgeRec); err != nil {
		return err
	}
	l.batches.Add(1)
	if newest > 0 {
		l.lag.Store(l.cfg.Now().UnixMilli() - newest)
	}
	return nil
}

// produce sends records to the remote cluster. A record for a remote edge
// whose topic is gone is dropped and counted (its devices resync when they
// reconnect); any other failure is returned and retried.
func (l *Link) produce(ctx context.Context, recs []core.BusRecord, edgeRec []bool) error {
	if len(recs) == 0 {
		return nil
	}
	err := l.cfg.Remote.Produce(ctx, recs...)
	if err == nil {
		l.forwarded.Add(uint64(len(recs)))
		return nil
	}
	if !errors.Is(err, core.ErrUnknownTopic) {
		return fmt.Errorf("link %s→%s: produce %d records: %w", l.cfg.From, l.cfg.To, len(recs), err)
	}
	for i, rec := range recs {
		err := l.cfg.Remote.Produce(ctx, rec)
		switch {
		case err == nil:
			l.forwarded.Add(1)
		case errors.Is(err, core.ErrUnknownTopic) && edgeRec[i]:
			l.dropped.Add(1)
			l.log.Warn("dropping a delivery for a missing remote edge topic", "topic", rec.Topic)
		default:
			return fmt.Errorf("link %s→%s: produce to %s: %w", l.cfg.From, l.cfg.To, rec.Topic, err)
		}
	}
	return nil
}

// linkSet tracks the link topics a region has created.
type linkSet = sync.Map
