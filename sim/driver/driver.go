package driver

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/sim/check"
)

// Stats is what a run counted. Deliveries count every MessageEvent
// recorded (membership entries included, on every device).
type Stats struct {
	Users   int `json:"users"`
	Devices int `json:"devices"`
	Directs int `json:"directs"`
	Groups  int `json:"groups"`
	// Moves is the number of device moves done; OutboxAtMoves the
	// messages waiting in the moved devices' outboxes when they closed
	// (carried over to the reopened client).
	Moves         int   `json:"moves"`
	OutboxAtMoves int64 `json:"outbox_at_moves"`

	Sent      int64 `json:"sent"`      // accepted by an outbox
	Acked     int64 `json:"acked"`     // distinct messages acknowledged
	Failed    int64 `json:"failed"`    // rejected for good (SendFailedEvent)
	Delivered int64 `json:"delivered"` // message events recorded
	// AcksInferred counts acks the driver could not see because a move
	// closed the client between the ack and its event; the message had
	// left the outbox, and the ack is recorded with the seq of its first
	// delivery (see the package doc).
	AcksInferred int64 `json:"acks_inferred"`
	// Unacked is the sent messages neither acked nor failed at the end.
	Unacked int64 `json:"unacked"`
	// MissingDeliveries is (acked message, member device) pairs without a
	// delivery at the end.
	MissingDeliveries int64 `json:"missing_deliveries"`
	// Drained: every sent message was acked and delivered to every
	// member device (or failed) before Drain ran out.
	Drained bool `json:"drained"`
	// Connects and Disconnects count client sessions that started
	// (ConnectedEvent) and ended (DisconnectedEvent).
	Connects    int64 `json:"connects"`
	Disconnects int64 `json:"disconnects"`

	SetupTime time.Duration `json:"setup_ns"`
	SendTime  time.Duration `json:"send_ns"`
	DrainTime time.Duration `json:"drain_ns"`
	// PerSecond is the timeline: index i counts what happened in second
	// i after sending started.
	PerSecond []Second `json:"per_second"`
	// Errors by kind: "send" (Send returned an error), "queue-full",
	// "device-closed", "send-failed:<CODE>", "open" (a body the sealer
	// could not open), "commit", "move", "client-fatal" (a client's
	// connection loop stopped for good), "dropped-notices".
	Errors map[string]int64 `json:"errors"`
}

// Driver runs one simulation's traffic. New, Start (setup; traffic then
// runs in the background), Wait (the end of traffic, drain and close);
// Stop ends it early. Snapshot, History, AddFault, EndFault and AddDirOp
// are safe for concurrent use at any time.
type Driver struct {
	cfg  Config
	plan Plan
	rec  *recorder
	devs [][]*device // [user][slot]

	ctx    context.Context
	cancel context.CancelFunc

	startOnce sync.Once
	done      chan struct{}
	stats     Stats
	err       error

	started     atomic.Bool
	moves       atomic.Int64
	carried     atomic.Int64
	connects    atomic.Int64
	disconnects atomic.Int64
}

// device is one client of the run. mu is held across a Send and across a
// move, so a send never meets a closed client.
type device struct {
	d    *Driver
	user int
	slot int
	dir  string
	name string // "user/N", set at registration

	mu         sync.Mutex
	c          *client.Client
	region     int
	recvCancel context.CancelFunc
	recvDone   chan struct{}
	// lastSeq is the highest seq recorded per conversation. Only the
	// receiver touches it while it runs; a move reads it after stopping
	// the receiver.
	lastSeq map[string]uint64
	// connected is the region named in the ServerHello of the device's
	// latest session ("" before the first).
	connected atomic.Value

	queue chan SendEvent
}

// New checks cfg and computes its plan. Nothing connects before Start.
func New(cfg Config) (*Driver, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	p := newPlan(&cfg)
	maxSec := int((cfg.Duration+cfg.Drain)/time.Second) + 60
	d := &Driver{cfg: cfg, plan: p, rec: newRecorder(maxSec, cfg.Checker), done: make(chan struct{})}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	for u, pu := range p.Users {
		slots := []*device{d.newDevice(u, 0, pu.Region)}
		if pu.Second >= 0 {
			slots = append(slots, d.newDevice(u, 1, pu.Second))
		}
		d.devs = append(d.devs, slots)
	}
	return d, nil
}

func (d *Driver) newDevice(user, slot, region int) *device {
	name := d.plan.Users[user].Name
	return &device{
		d: d, user: user, slot: slot, region: region,
		dir:     filepath.Join(d.cfg.StateDir, fmt.Sprintf("%s-%d", name, slot)),
		lastSeq: map[string]uint64{},
		queue:   make(chan SendEvent, d.cfg.SendQueue),
	}
}

// Plan returns the run's plan.
func (d *Driver) Plan() Plan { return d.plan }

// Run is New, Start and Wait: it drives cfg's traffic and returns what it
// recorded. ctx ending stops the run early (as Stop).
func Run(ctx context.Context, cfg Config) (*check.History, Stats, error) {
	d, err := New(cfg)
	if err != nil {
		return nil, Stats{}, err
	}
	if err := d.Start(ctx); err != nil {
		return d.History(), Stats{}, err
	}
	st, err := d.Wait()
	return d.History(), st, err
}

// Start sets the run up — registers every user through its home region,
// links the second devices, connects every device, creates the groups,
// fills History.Members — and then starts the traffic in the background
// and returns. ctx bounds the setup and, after it, the whole run (its end
// stops the run as Stop does). On a setup error every client is closed
// and Wait returns the same error.
func (d *Driver) Start(ctx context.Context) error {
	err := errors.New("driver: Start called twice")
	d.startOnce.Do(func() {
		d.started.Store(true)
		stop := context.AfterFunc(ctx, d.cancel)
		t0 := time.Now()
		err = d.setup(d.ctx)
		d.stats.SetupTime = time.Since(t0)
		if err != nil {
			d.closeAll()
			stop()
			d.cancel()
			d.err = err
			close(d.done)
			return
		}
		go func() {
			defer close(d.done)
			defer stop()
			defer d.cancel()
			d.run()
		}()
	})
	return err
}

// Stop ends the run early: setup fails, or sending stops, the drain is
// cut short and the clients are closed. Wait returns when that is done.
// Idempotent; safe from any goroutine.
func (d *Driver) Stop() { d.cancel() }

// Wait waits for the run to end (Duration of sending, then the drain,
// then every client closed) and returns its counts. It returns an error
// only when setup failed; lost, unacked or duplicated messages are for
// the checker to judge over History.
func (d *Driver) Wait() (Stats, error) {
	if !d.started.Load() {
		return Stats{}, ErrNotStarted
	}
	<-d.done
	return d.stats, d.err
}

// Counts are a run's counters so far (progress lines).
type Counts struct {
	Sent, Acked, Failed, Delivered int64
	Faults                         int // faults recorded (started)
}

// Counts returns the counters so far; cheap (no copy of the history).
func (d *Driver) Counts() Counts {
	r := d.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	return Counts{Sent: r.sent, Acked: r.acked, Failed: r.failed, Delivered: r.deliv, Faults: len(r.h.Faults)}
}

// Snapshot returns a copy of the history recorded so far (for continuous
// checks while the run goes on). It shares the recorded entries with the
// driver; they are never modified after being appended.
func (d *Driver) Snapshot() *check.History { return d.rec.snapshot() }

// History is Snapshot; after Wait it is the whole run.
func (d *Driver) History() *check.History { return d.rec.snapshot() }

// AddFault records a fault the harness injected and returns its index
// for EndFault.
func (d *Driver) AddFault(f check.Fault) int { return d.rec.addFault(f) }

// EndFault records when fault i (from AddFault) ended.
func (d *Driver) EndFault(i int, at time.Time) { d.rec.endFault(i, at) }

// AddDirOp records a directory operation the harness made.
func (d *Driver) AddDirOp(op check.DirOp) { d.rec.addDirOp(op) }

// ErrNotStarted is returned by Wait before Start.
var ErrNotStarted = errors.New("driver: not started")

// Connected returns, for every registered device, the region of its
// latest session (from the edge's ServerHello; "" if it never
// connected): where a moved or failed-over device is now.
func (d *Driver) Connected() map[string]string {
	out := map[string]string{}
	for _, dev := range d.allDevices() {
		dev.mu.Lock()
		name := dev.name
		dev.mu.Unlock()
		if name == "" {
			continue
		}
		r, _ := dev.connected.Load().(string)
		out[name] = r
	}
	return out
}

// ---------------------------------------------------------------- setup

// setupParallel bounds concurrent registrations and connects.
const setupParallel = 16

// forEach runs f over items with at most setupParallel at once and
// returns the first error.
func forEach[T any](items []T, f func(T) error) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, setupParallel)
	var mu sync.Mutex
	var first error
	for _, it := range items {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := f(it); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

func (d *Driver) allDevices() []*device {
	var out []*device
	for _, ds := range d.devs {
		out = append(out, ds...)
	}
	return out
}

func (d *Driver) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.SetupTimeout)
	defer cancel()
	log := d.cfg.Logger
	// First devices register through their home region's edges first.
	if err := forEach(d.devs, func(ds []*device) error {
		dev := ds[0]
		if err := dev.open(ctx); err != nil {
			return err
		}
		name := d.plan.Users[dev.user].Name
		key, err := dev.c.Register(ctx, name)
		if err != nil {
			return fmt.Errorf("driver: register %s: %w", name, err)
		}
		dev.mu.Lock()
		dev.name = deviceName(key)
		dev.mu.Unlock()
		return nil
	}); err != nil {
		return err
	}
	// Second devices are linked by the first (the QR-code flow) and
	// register through their own region's edges first.
	var seconds []*device
	for _, ds := range d.devs {
		if len(ds) > 1 {
			seconds = append(seconds, ds[1])
		}
	}
	if err := forEach(seconds, func(dev *device) error {
		if err := dev.open(ctx); err != nil {
			return err
		}
		tok, err := d.devs[dev.user][0].c.Link(dev.c.LinkRequest())
		if err != nil {
			return fmt.Errorf("driver: link a device of %s: %w", d.plan.Users[dev.user].Name, err)
		}
		key, err := dev.c.RegisterLinked(ctx, tok)
		if err != nil {
			return fmt.Errorf("driver: register a linked device of %s: %w", d.plan.Users[dev.user].Name, err)
		}
		dev.mu.Lock()
		dev.name = deviceName(key)
		dev.mu.Unlock()
		return nil
	}); err != nil {
		return err
	}
	all := d.allDevices()
	if err := forEach(all, func(dev *device) error {
		dev.mu.Lock()
		dev.startReceiver()
		err := dev.c.Start()
		dev.mu.Unlock()
		if err != nil {
			return fmt.Errorf("driver: start %s: %w", dev.name, err)
		}
		if err := dev.c.WaitConnected(ctx); err != nil {
			return fmt.Errorf("driver: connect %s: %w", dev.name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	log.Info("driver: devices connected", "users", len(d.devs), "devices", len(all))
	// Members, then the groups (a group's CREATE entry reaches its
	// members at once).
	for _, pc := range d.plan.Directs {
		d.rec.setMembers(pc.ID, d.memberDevices(pc.Users))
	}
	for _, pc := range d.plan.Groups {
		d.rec.setMembers(pc.ID, d.memberDevices(pc.Users))
	}
	if err := forEach(d.plan.Groups, func(pc PlanConv) error {
		var names []string
		for _, u := range pc.Users[1:] {
			names = append(names, d.plan.Users[u].Name)
		}
		creator := d.devs[pc.Users[0]][0]
		if _, err := creator.c.CreateGroupWithID(ctx, pc.ID, "sim", names); err != nil {
			return fmt.Errorf("driver: create group %s: %w", pc.ID, err)
		}
		return nil
	}); err != nil {
		return err
	}
	log.Info("driver: groups created", "groups", len(d.plan.Groups))
	return nil
}

func (d *Driver) memberDevices(users []int) []string {
	var out []string
	for _, u := range users {
		for _, dev := range d.devs[u] {
			out = append(out, dev.name)
		}
	}
	return out
}

// deviceName is how the history names a device: "user/N".
func deviceName(k core.DeviceKey) string { return fmt.Sprintf("%s/%d", k.User, k.Device) }

// ---------------------------------------------------------------- clients

// edges lists region r's edges first, then the following regions' in
// Regions order.
func (d *Driver) edges(r int) []Edge {
	var out []Edge
	n := len(d.cfg.Regions)
	for k := range n {
		out = append(out, d.cfg.Regions[(r+k)%n].Edges...)
	}
	return out
}

// clientConfig is the configuration of a device whose list starts with
// region r.
func (d *Driver) clientConfig(dev *device, r int) client.Config {
	cc := client.Config{
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second,
		AckTimeout: 5 * time.Second, DialTimeout: 3 * time.Second, KeepAlive: 5 * time.Second,
		EventBuffer: 1024, NoticeQueue: 1 << 16,
		RegistrationToken: d.cfg.RegistrationToken,
		Logger:            d.cfg.Logger.With("device", dev.dir),
	}
	if d.cfg.Client != nil {
		d.cfg.Client(&cc)
	}
	es := d.edges(r)
	cc.StateDir, cc.Edges, cc.ServerKey, cc.CertHash = dev.dir, nil, nil, nil
	for _, e := range es {
		cc.Edges = append(cc.Edges, e.URL)
	}
	// One pin for the whole list: only when every edge agrees.
	if k, ok := common(es, func(e Edge) string { return e.NoiseKey }); ok {
		cc.ServerKey, _ = hex.DecodeString(k)
	}
	if h, ok := common(es, func(e Edge) string { return e.CertHash }); ok {
		cc.CertHash, _ = hex.DecodeString(h)
	}
	cc.Sealer = client.InsecurePlaintextSealer{}
	cc.ManualCommit = true
	return cc
}

func common(es []Edge, f func(Edge) string) (string, bool) {
	v := f(es[0])
	for _, e := range es[1:] {
		if f(e) != v {
			return "", false
		}
	}
	return v, v != ""
}

// open opens dev's client with its current region first.
func (dev *device) open(ctx context.Context) error {
	c, err := client.Open(ctx, dev.d.clientConfig(dev, dev.region))
	if err != nil {
		return fmt.Errorf("driver: open %s: %w", dev.dir, err)
	}
	dev.c = c
	return nil
}

// startReceiver starts recording dev.c's events; dev.mu is held.
func (dev *device) startReceiver() {
	ctx, cancel := context.WithCancel(dev.d.ctx)
	done := make(chan struct{})
	dev.recvCancel, dev.recvDone = cancel, done
	c := dev.c
	go func() {
		defer close(done)
		dev.receive(ctx, c)
	}()
}

// stopReceiver stops the receiver and waits for it; dev.mu is held.
func (dev *device) stopReceiver() {
	if dev.recvCancel != nil {
		dev.recvCancel()
		<-dev.recvDone
		dev.recvCancel, dev.recvDone = nil, nil
	}
}

// receive records c's events until ctx ends.
func (dev *device) receive(ctx context.Context, c *client.Client) {
	rec := dev.d.rec
	for {
		var ev client.Event
		select {
		case <-ctx.Done():
			return
		case ev = <-c.Events():
		}
		now := time.Now()
		switch e := ev.(type) {
		case client.MessageEvent:
			m := e.Message
			rec.recordDelivered(check.Delivered{
				At: now, Device: dev.name, Conv: m.GetConvId(), Seq: m.GetSeq(), MsgID: m.GetClientMsgId(),
				From: deviceName(core.KeyOf(m.GetSender())), Epoch: m.GetEpoch(), Region: m.GetRegion(),
			})
			dev.lastSeq[m.GetConvId()] = max(dev.lastSeq[m.GetConvId()], m.GetSeq())
			if e.OpenErr != nil {
				rec.addErr("open", 1)
			}
		case client.SendAckedEvent:
			rec.recordAcked(check.Acked{At: now, Device: dev.name, Conv: e.Conv, MsgID: e.ClientMsgID, Seq: e.Seq})
		case client.SendFailedEvent:
			rec.recordFailed(dev.name, e.Conv, e.ClientMsgID, "send-failed:"+core.Code(e.Err).String())
		case client.ConnectedEvent:
			dev.d.connects.Add(1)
			dev.connected.Store(e.Hello.GetRegion())
		case client.DisconnectedEvent:
			dev.d.disconnects.Add(1)
		}
	}
}

// ---------------------------------------------------------------- traffic

func (d *Driver) run() {
	start := time.Now()
	d.rec.startTraffic(start)
	var wg sync.WaitGroup
	for _, dev := range d.allDevices() {
		wg.Go(dev.sendLoop)
	}
	wg.Go(func() { d.moveLoop(start) })
	d.scheduleLoop(start)
	wg.Wait()
	d.stats.SendTime = time.Since(start)

	// Drain: wait until everything sent is acked and delivered, bounded.
	t0 := time.Now()
	deadline := time.NewTimer(d.cfg.Drain)
	tick := time.NewTicker(100 * time.Millisecond)
drain:
	for d.rec.pending() > 0 {
		select {
		case <-deadline.C:
			break drain
		case <-d.ctx.Done():
			break drain
		case <-tick.C:
		}
	}
	d.stats.Drained = d.rec.pending() == 0
	deadline.Stop()
	tick.Stop()
	d.stats.DrainTime = time.Since(t0)
	d.closeAll()
	d.rec.stats(&d.stats)
	d.stats.Users, d.stats.Devices = len(d.devs), len(d.allDevices())
	d.stats.Directs, d.stats.Groups = len(d.plan.Directs), len(d.plan.Groups)
	d.stats.Moves, d.stats.OutboxAtMoves = int(d.moves.Load()), d.carried.Load()
	d.stats.Connects, d.stats.Disconnects = d.connects.Load(), d.disconnects.Load()
	d.cfg.Logger.Info("driver: done", "sent", d.stats.Sent, "acked", d.stats.Acked, "unacked", d.stats.Unacked,
		"missing", d.stats.MissingDeliveries, "drained", d.stats.Drained)
}

// scheduleLoop hands the schedule's sends to the devices' queues at their
// times, then closes the queues.
func (d *Driver) scheduleLoop(start time.Time) {
	defer func() {
		for _, dev := range d.allDevices() {
			close(dev.queue)
		}
	}()
	s := newSchedule(&d.plan, &d.cfg)
	for {
		ev, ok := s.Next()
		if !ok {
			// The sending phase lasts Duration, also past the last send.
			_ = sleepUntil(d.ctx, start.Add(d.cfg.Duration))
			return
		}
		if sleepUntil(d.ctx, start.Add(ev.At)) != nil {
			return
		}
		dev := d.devs[ev.User][ev.Slot]
		select {
		case dev.queue <- ev:
		default:
			d.rec.addErr("queue-full", 1)
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sendLoop sends dev's scheduled messages in order until its queue closes.
func (dev *device) sendLoop() {
	for ev := range dev.queue {
		if dev.d.ctx.Err() != nil {
			continue // stopped: empty the queue without sending
		}
		dev.send(ev)
	}
}

// sendTimeout bounds one Send (an outbox write; the plaintext sealer
// needs no network).
const sendTimeout = 10 * time.Second

func (dev *device) send(ev SendEvent) {
	d := dev.d
	conv := d.plan.Directs
	if ev.Group {
		conv = d.plan.Groups
	}
	id := conv[ev.Conv].ID
	body := make([]byte, d.cfg.BodySize)
	copy(body, fmt.Sprintf("sim %d ", ev.N))
	for i := range body {
		if body[i] == 0 {
			body[i] = '.'
		}
	}
	dev.mu.Lock()
	c := dev.c
	if c == nil {
		dev.mu.Unlock()
		d.rec.addErr("device-closed", 1)
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, sendTimeout)
	at := time.Now()
	msgID, err := c.Send(ctx, id, body)
	cancel()
	if err == nil {
		// Under dev.mu, so a move's bookkeeping (unfinished) sees it.
		d.rec.recordSent(check.Sent{At: at, Device: dev.name, Conv: id, MsgID: msgID})
	}
	dev.mu.Unlock()
	if err != nil {
		d.rec.addErr("send", 1)
		d.cfg.Logger.Warn("driver: send", "device", dev.name, "conv", id, "err", err)
	}
}

// moveLoop runs the plan's moves at their times.
func (d *Driver) moveLoop(start time.Time) {
	for _, mv := range d.plan.Moves {
		if sleepUntil(d.ctx, start.Add(mv.At)) != nil {
			return
		}
		d.devs[mv.User][mv.Slot].move(mv.To)
	}
}

// move closes dev's client and reopens it with region to's edges first.
// Events the receiver had not recorded yet are not committed, so the
// reopened client hands them again; acks lost with the closed client are
// inferred (see msgState.inferAck).
func (dev *device) move(to int) {
	d := dev.d
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.c == nil || d.ctx.Err() != nil {
		return
	}
	dev.stopReceiver()
	dev.commit()
	unfinished := d.rec.unfinished(dev.name)
	d.carried.Add(int64(dev.c.Outbox().Len()))
	d.closeClient(dev)
	from := dev.region
	dev.region = to
	if err := dev.open(d.ctx); err != nil {
		d.rec.addErr("move", 1)
		d.cfg.Logger.Error("driver: reopen after a move", "device", dev.name, "err", err)
		dev.region = from
		if err := dev.open(d.ctx); err != nil {
			dev.c = nil
			return
		}
	}
	d.inferFinished(dev, unfinished)
	dev.startReceiver()
	if err := dev.c.Start(); err != nil {
		d.rec.addErr("move", 1)
		d.cfg.Logger.Error("driver: restart after a move", "device", dev.name, "err", err)
	}
	d.moves.Add(1)
	d.cfg.Logger.Info("driver: moved", "device", dev.name, "from", d.cfg.Regions[from].Name, "to", d.cfg.Regions[dev.region].Name)
}

// commit persists the app cursor of every conversation up to what was
// recorded; the receiver is stopped and dev.mu held.
func (dev *device) commit() {
	for conv, seq := range dev.lastSeq {
		if err := dev.c.Commit(conv, seq); err != nil {
			dev.d.rec.addErr("commit", 1)
		}
	}
}

// inferFinished: of the messages dev had sent without a recorded ack,
// those no longer in its outbox were finished by the client.
func (d *Driver) inferFinished(dev *device, unfinished map[string]bool) {
	for _, e := range dev.c.Outbox().Pending() {
		delete(unfinished, e.ClientMsgID)
	}
	ids := make([]string, 0, len(unfinished))
	for id := range unfinished {
		ids = append(ids, id)
	}
	d.rec.inferAcks(ids, time.Now())
}

// closeClient closes dev.c and counts what it reports; dev.mu is held.
func (d *Driver) closeClient(dev *device) {
	if err := dev.c.Err(); err != nil && !errors.Is(err, client.ErrClosed) {
		d.rec.addErr("client-fatal", 1)
		d.cfg.Logger.Warn("driver: client stopped", "device", dev.name, "err", err)
	}
	d.rec.addErr("dropped-notices", int64(dev.c.DroppedNotices()))
	if err := dev.c.Close(); err != nil {
		d.cfg.Logger.Warn("driver: close client", "device", dev.name, "err", err)
	}
	dev.c = nil
}

// closeAll stops every receiver and closes every client.
func (d *Driver) closeAll() {
	_ = forEach(d.allDevices(), func(dev *device) error {
		dev.mu.Lock()
		defer dev.mu.Unlock()
		dev.stopReceiver()
		if dev.c == nil {
			return nil
		}
		if dev.name != "" {
			d.inferFinished(dev, d.rec.unfinished(dev.name))
		}
		d.closeClient(dev)
		return nil
	})
}
