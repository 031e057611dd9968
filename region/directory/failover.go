package directory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Defaults of the failure detector (Config.FailAfter, Config.Lease).
const (
	// DefaultFailAfter is how long a healthy region may stay silent before
	// the leader fails it.
	DefaultFailAfter = 5 * time.Second
	// DefaultLease is how long a region may go on sequencing without a
	// successful heartbeat reply (see doc.go, "Heartbeats and failover").
	// It must stay below FailAfter.
	DefaultLease = 2 * time.Second
)

// Failover is what one fail_region did.
type Failover struct {
	To    string // the region the homes moved to
	Users int    // users moved
	Convs int    // conversations moved, each at its epoch + 1
}

// FailRegion marks region unhealthy and moves every user and conversation
// homed there to the nearest healthy region (conversations at epoch + 1)
// in one replicated step (OpFailRegion). Without another healthy region
// it returns ErrNoHealthyRegion and changes nothing. Repeating it only
// moves what was homed there since.
func (d *Directory) FailRegion(ctx context.Context, region string) (Failover, error) {
	r, err := d.write(ctx, Command{Op: OpFailRegion, Name: region})
	return Failover{To: r.Home, Users: r.MovedUsers, Convs: r.Moved}, err
}

// RestoreRegion marks a failed region healthy again (OpRestoreRegion).
// Homes stay where failover put them; moving them back is a planned move.
func (d *Directory) RestoreRegion(ctx context.Context, region string) error {
	_, err := d.write(ctx, Command{Op: OpRestoreRegion, Name: region})
	return err
}

// Rejoin is a region restoring itself after the failure detector failed
// it (restore_region By ByRejoin): ErrHeldByOperator when an operator
// failed it (only an operator restores it then).
func (d *Directory) Rejoin(ctx context.Context, region string) error {
	_, err := d.write(ctx, Command{Op: OpRestoreRegion, Name: region, By: ByRejoin})
	return err
}

// HeartbeatReply is the leader's answer to a region's heartbeat.
type HeartbeatReply struct {
	Region string `json:"region"`
	// Healthy is the region's health in the leader's applied copy. false
	// means the region was failed (its homes moved away): it must stop
	// sequencing and re-read its homes; heartbeating again does not make
	// it healthy (restore_region does).
	Healthy bool `json:"healthy"`
	// AppliedIndex is the leader's applied index when it answered; a
	// region whose own voter has applied that far sees at least what the
	// leader saw.
	AppliedIndex uint64 `json:"applied_index"`
	Leader       string `json:"leader"` // the voter that answered
	Term         uint64 `json:"term"`   // its raft term
	// LeaseMS is Config.Lease in milliseconds: how long after sending
	// this heartbeat the region may go on sequencing without another
	// successful reply.
	LeaseMS int64 `json:"lease_ms"`
	// FailAfterMS is Config.FailAfter in milliseconds. A region extends
	// its lease from a reply only when it sent the heartbeat within
	// FailAfter - 2 x Lease of receiving the reply whose token it echoed
	// (the lease contract in doc.go).
	FailAfterMS int64 `json:"fail_after_ms"`
	// Token is this reply's token, to echo in the next heartbeat once the
	// reply has been acted on.
	Token HeartbeatToken `json:"token"`
	// Silent names the healthy regions the leader has not heard from for
	// more than half a lease (two missed heartbeats), once it has led for
	// that long: likely lost, not failed yet. Other regions stop
	// forwarding to them (the sender retries; after the failover the
	// retry reaches the new home) instead of leaving records in a lost
	// region's ingress until the client's ack timeout.
	Silent []string `json:"silent,omitempty"`
}

// HeartbeatToken identifies one heartbeat reply: the leader's term and
// its clock when it answered. A region echoes the token of the last reply
// it received and acted on (its copy caught up, its lease extended), and
// the leader counts the region as heard from at that token's time — not
// when a request merely arrived: a region whose replies are lost (a
// one-way partition) is failed like a silent one, since it cannot hold
// its lease either.
type HeartbeatToken struct {
	Term uint64 `json:"term"`
	At   int64  `json:"at_unix_nano"`
}

// heartbeatRequest is the body of POST /directory/v1/heartbeat.
type heartbeatRequest struct {
	Region string         `json:"region"`
	Echo   HeartbeatToken `json:"echo"`
}

// heartbeatResult is the reply between voters: the reply or a refusal.
type heartbeatResult struct {
	HeartbeatReply
	Code string `json:"code,omitempty"` // codeUnknownRegion
}

const (
	pathHeartbeat = "/directory/v1/heartbeat"
	// maxHeartbeatBody bounds a heartbeat request.
	maxHeartbeatBody = 4 << 10
)

// Heartbeat tells the leader that region is alive and returns the
// leader's view of it. It goes to the leader wherever it is (forwarded
// like a write) and is retried while no leader answers, until ctx ends;
// it is never written to the raft log: the leader keeps the time it last
// heard from each region in memory. The leader answers only after
// confirming with a quorum that it still leads, so a reply proves that no
// other leader could have failed the region before the request was sent
// (the lease contract in doc.go). A region the directory does not hold
// gives ErrUnknownRegion.
//
// echo is the token of the last reply the region acted on (zero for none):
// the leader counts the region as alive at that reply, never at a request
// alone (see HeartbeatToken).
func (d *Directory) Heartbeat(ctx context.Context, region string, echo HeartbeatToken) (HeartbeatReply, error) {
	if region == "" {
		return HeartbeatReply{}, fmt.Errorf("%w: heartbeat without a region", ErrBadCommand)
	}
	var res heartbeatResult
	err := d.retry(ctx, func(ctx context.Context) error {
		var err error
		if d.IsLeader() {
			res, err = d.heartbeatLocal(ctx, region, echo)
		} else {
			b, _ := json.Marshal(heartbeatRequest{Region: region, Echo: echo})
			res = heartbeatResult{}
			err = d.forward(ctx, pathHeartbeat, b, &res)
		}
		if errors.Is(err, ErrUncertain) {
			return errRetry // a heartbeat changes nothing durable: repeat it
		}
		return err
	})
	if err != nil {
		return HeartbeatReply{}, fmt.Errorf("directory: heartbeat %q: %w", region, err)
	}
	if res.Code == codeUnknownRegion {
		return HeartbeatReply{}, fmt.Errorf("directory: heartbeat: region %q: %w", region, ErrUnknownRegion)
	}
	return res.HeartbeatReply, nil
}

// heartbeatLocal answers a heartbeat on this voter, which believes it
// leads: it confirms leadership with a quorum, lets the FSM apply the log
// it had then, records the echoed reply as the region's last sign of life
// and reads the region.
func (d *Directory) heartbeatLocal(ctx context.Context, region string, echo HeartbeatToken) (heartbeatResult, error) {
	if err := d.waitFuture(ctx, d.raft.VerifyLeader()); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
			return heartbeatResult{}, errRetry
		case errors.Is(err, raft.ErrRaftShutdown):
			return heartbeatResult{}, ErrClosed
		default:
			return heartbeatResult{}, fmt.Errorf("%w: %w", ErrUncertain, err)
		}
	}
	term := d.raft.CurrentTerm()
	// Everything committed is in the leader's log: once it has been handed
	// to the FSM, the region's health below reflects every failover that
	// completed before the beat. (raft moves AppliedIndex when it hands
	// entries to the FSM, a moment before the FSM applies them; the
	// detector's own failovers are ordered with this answer by detMu, and
	// an operator's fail_region racing it that closely is covered by the
	// store's epoch fence. The FSM's own index cannot be awaited: raft's
	// no-op and configuration entries never reach it.)
	last := d.raft.LastIndex()
	for d.raft.AppliedIndex() < last {
		select {
		case <-ctx.Done():
			return heartbeatResult{}, fmt.Errorf("%w: wait for the leader to apply: %w", ErrUncertain, ctx.Err())
		case <-d.closed:
			return heartbeatResult{}, ErrClosed
		case <-time.After(time.Millisecond):
		}
	}
	// One failure-detector step at a time: a region is either judged
	// before this reply (and the reply says so) or heard from after it.
	d.detMu.Lock()
	defer d.detMu.Unlock()
	r, ok := d.fsm.Region(region)
	if !ok {
		return heartbeatResult{Code: codeUnknownRegion}, nil
	}
	now := d.cfg.Now()
	if d.cfg.DetectFailures {
		d.det.lead(term, now)
	}
	if echo.Term == term && echo.At > 0 {
		d.det.beat(region, time.Unix(0, min(echo.At, now.UnixNano())))
	}
	return heartbeatResult{HeartbeatReply: HeartbeatReply{
		Region: region, Healthy: r.Healthy, AppliedIndex: d.AppliedIndex(), Leader: d.cfg.ID, Term: term,
		LeaseMS: d.cfg.Lease.Milliseconds(), FailAfterMS: d.cfg.FailAfter.Milliseconds(), Token: HeartbeatToken{Term: term, At: now.UnixNano()},
		Silent: d.det.silent(now, d.silentAfter(), d.fsm.Regions()),
	}}, nil
}

// silentAfter is how long the leader must not have heard from a region
// before it names it silent: three heartbeat intervals (a quarter lease
// each), so one late beat does not stop forwarding to it.
func (d *Directory) silentAfter() time.Duration { return 3 * d.cfg.Lease / 4 }

// handleHeartbeat serves POST /directory/v1/heartbeat: {"region": name}.
// From a voter (forwarded): answered if this voter leads, else 421. From
// anyone else (a region's process, AdminClient.Heartbeat): answered
// through the leader wherever it is.
func (d *Directory) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxHeartbeatBody))
	var req heartbeatRequest
	if err == nil {
		err = json.Unmarshal(b, &req)
	}
	if err != nil || req.Region == "" {
		writeAdminError(w, http.StatusBadRequest, codeBadRequest, "want {\"region\": name}")
		return
	}
	if r.Header.Get(hdrForwarded) != "" {
		if !d.IsLeader() {
			http.Error(w, "not leader", http.StatusMisdirectedRequest)
			return
		}
		res, err := d.heartbeatLocal(r.Context(), req.Region, req.Echo)
		d.reply(w, res, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.adminTimeout())
	defer cancel()
	rep, err := d.Heartbeat(ctx, req.Region, req.Echo)
	switch {
	case errors.Is(err, ErrUnknownRegion):
		writeAdminError(w, http.StatusNotFound, codeUnknownRegion, err.Error())
	case err != nil:
		writeErr(w, err)
	default:
		writeJSON(w, rep)
	}
}

// Heartbeat sends one heartbeat for region through the voter (see
// Directory.Heartbeat): for a region process that is not itself a voter.
func (c *AdminClient) Heartbeat(ctx context.Context, region string, echo HeartbeatToken) (HeartbeatReply, error) {
	b, err := json.Marshal(heartbeatRequest{Region: region, Echo: echo})
	if err != nil {
		return HeartbeatReply{}, fmt.Errorf("directory: heartbeat: %w", err)
	}
	var rep HeartbeatReply
	err = c.do(ctx, http.MethodPost, pathHeartbeat, nil, b, &rep)
	return rep, err
}

// FailRegion fails a region through the voter (Directory.FailRegion).
func (c *AdminClient) FailRegion(ctx context.Context, region string) (Failover, error) {
	r, err := c.Apply(ctx, Command{Op: OpFailRegion, Name: region})
	return Failover{To: r.Home, Users: r.MovedUsers, Convs: r.Moved}, err
}

// RestoreRegion marks a failed region healthy again through the voter.
func (c *AdminClient) RestoreRegion(ctx context.Context, region string) error {
	_, err := c.Apply(ctx, Command{Op: OpRestoreRegion, Name: region})
	return err
}

// detector is the leader's failure detector state: when it last heard
// from each region, and since when it has led. It holds no I/O and no
// clock of its own (times are passed in), so tests drive it with any
// times. Safe for concurrent use.
type detector struct {
	failAfter time.Duration

	mu       sync.Mutex
	term     uint64    // the term this voter leads in; 0 when it does not
	since    time.Time // when it was first seen leading in term
	lastSeen map[string]time.Time
	// healthySince is when due first saw each region healthy (since it
	// was last seen unhealthy): a region just put, or restored, also gets
	// FailAfter before it is judged.
	healthySince map[string]time.Time
}

func newDetector(failAfter time.Duration) *detector {
	return &detector{failAfter: failAfter, lastSeen: map[string]time.Time{}, healthySince: map[string]time.Time{}}
}

// beat records a heartbeat of region at now.
func (dt *detector) beat(region string, now time.Time) {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	if now.After(dt.lastSeen[region]) {
		dt.lastSeen[region] = now
	}
}

// lead notes that this voter leads in term at now. A new term starts the
// grace period: a new leader has no history, so nobody is judged before
// FailAfter has passed since it took over.
func (dt *detector) lead(term uint64, now time.Time) {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	if term != dt.term {
		dt.term, dt.since = term, now
	}
}

// follow notes that this voter does not lead.
func (dt *detector) follow() {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	dt.term = 0
}

// due returns the healthy regions (in the order given) not heard from for
// failAfter at now, counting at the earliest from the start of the
// leadership and from when due first saw the region healthy; nil when
// this voter does not lead.
func (dt *detector) due(now time.Time, regions []Region) []string {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	if dt.term == 0 {
		return nil
	}
	var out []string
	for _, r := range regions {
		if !r.Healthy {
			delete(dt.healthySince, r.Name)
			continue
		}
		hs, ok := dt.healthySince[r.Name]
		if !ok {
			hs = now
			dt.healthySince[r.Name] = now
		}
		last := dt.lastSeen[r.Name]
		for _, t := range []time.Time{dt.since, hs} {
			if last.Before(t) {
				last = t
			}
		}
		if now.Sub(last) >= dt.failAfter {
			out = append(out, r.Name)
		}
	}
	return out
}

// silent returns the healthy regions not heard from for more than after
// at now, when this voter has led for at least after (nil otherwise: a
// new leader knows nobody's silence yet).
func (dt *detector) silent(now time.Time, after time.Duration, regions []Region) []string {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	if dt.term == 0 || now.Sub(dt.since) < after {
		return nil
	}
	var out []string
	for _, r := range regions {
		if r.Healthy && now.Sub(dt.lastSeen[r.Name]) > after {
			out = append(out, r.Name)
		}
	}
	return out
}

// ages returns how long ago each region last heartbeat, in milliseconds
// (-1 when not heard from since this voter leads); nil when it does not
// lead (the detector runs only with DetectFailures).
func (dt *detector) ages(now time.Time, regions []Region) map[string]int64 {
	dt.mu.Lock()
	defer dt.mu.Unlock()
	if dt.term == 0 {
		return nil
	}
	out := make(map[string]int64, len(regions))
	for _, r := range regions {
		last, ok := dt.lastSeen[r.Name]
		if !ok || last.Before(dt.since) {
			out[r.Name] = -1
			continue
		}
		out[r.Name] = now.Sub(last).Milliseconds()
	}
	return out
}

// tried notes an attempt to fail region at now: the next one, if the
// region is still healthy (the attempt was refused or its outcome lost),
// comes no sooner than failAfter later.
func (dt *detector) tried(region string, now time.Time) { dt.beat(region, now) }

// detect runs the failure detector until the Directory closes: every
// Config.DetectInterval it judges the regions if this voter leads.
func (d *Directory) detect() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.DetectInterval)
	defer t.Stop()
	for {
		select {
		case <-d.closed:
			return
		case <-t.C:
		}
		d.detectOnce()
	}
}

// detectOnce fails, through raft, every healthy region silent for
// FailAfter, if this voter leads.
func (d *Directory) detectOnce() {
	if !d.IsLeader() {
		d.det.follow()
		return
	}
	d.detMu.Lock()
	defer d.detMu.Unlock()
	now := d.cfg.Now()
	d.det.lead(d.raft.CurrentTerm(), now)
	for _, name := range d.det.due(now, d.fsm.Regions()) {
		d.det.tried(name, now)
		b, err := EncodeCommand(Command{Op: OpFailRegion, Name: name, By: ByDetector})
		if err != nil {
			d.log.Error("failure detector: encode", "region", name, "err", err)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ApplyTimeout)
		res, err := d.applyLocal(ctx, b)
		cancel()
		switch {
		case err != nil:
			d.log.Warn("failure detector: fail region", "region", name, "err", err)
		case res.Code != "":
			d.log.Warn("failure detector: fail region refused", "region", name, "err", res.err(Command{Op: OpFailRegion, Name: name}))
		default:
			d.log.Warn("region failed: no heartbeat", "region", name, "silent_for", d.cfg.FailAfter,
				"moved_to", res.Home, "users", res.MovedUsers, "convs", res.Moved)
		}
	}
}
