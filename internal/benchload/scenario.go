package benchload

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a scenario. Zero values get the defaults named.
type Config struct {
	Target Target
	// Prefix starts every user name (default "b" + random hex), so that
	// runs against one server do not collide.
	Prefix string
	// Pairs is the number of 1:1 pairs of the pairs scenario (default 100).
	Pairs int
	// Members of the group scenario's group (default 500) and how many of
	// them send (default 20).
	Members, Senders int
	// Conns is the number of devices of the idle and reconnect scenarios
	// (default 1000).
	Conns int
	// Rate is the total messages per second, open loop (default 1000
	// for pairs, 100 for group).
	Rate float64
	// Duration is the sending time of a round (default 10 s); Drain the
	// most a round then waits for acks and deliveries (default 10 s).
	Duration, Drain time.Duration
	// BodySize is the bytes of each body (default 64, at least 32).
	BodySize int
	// Workers is the number of pacing goroutines (default 4).
	Workers int
	// DialConcurrency bounds the connections being set up at once
	// (default 64; the reconnect storm uses 4 × this).
	DialConcurrency int
	// MaxP99 is the sweep's bound on the ack p99 (default 1 s).
	MaxP99 time.Duration
	// Settle is how long idle waits after connecting before sampling the
	// server's memory (default 2 s).
	Settle time.Duration
	// ServerPID, if set, is sampled for CPU and RSS (/proc).
	ServerPID int
	// Progress receives a line per step, and every ProgressEvery (default
	// 5 s) while a round runs a line with its counts so far (nil: nothing).
	Progress      io.Writer
	ProgressEvery time.Duration
}

func (c *Config) fill() error {
	if c.Target == nil {
		return errors.New("benchload: no target")
	}
	if c.Prefix == "" {
		c.Prefix = fmt.Sprintf("b%06x", rand.Uint32()&0xffffff)
	}
	if c.Pairs <= 0 {
		c.Pairs = 100
	}
	if c.Members <= 1 {
		c.Members = 500
	}
	if c.Senders <= 0 {
		c.Senders = 20
	}
	c.Senders = min(c.Senders, c.Members)
	if c.Conns <= 0 {
		c.Conns = 1000
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 10 * time.Second
	}
	if c.BodySize < minBodySize {
		c.BodySize = 64
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.DialConcurrency <= 0 {
		c.DialConcurrency = 64
	}
	if c.MaxP99 <= 0 {
		c.MaxP99 = time.Second
	}
	if c.Settle <= 0 {
		c.Settle = 2 * time.Second
	}
	return nil
}

func (c *Config) logf(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "bench: "+format+"\n", args...)
	}
}

func (c *Config) sample() ProcSample {
	if c.ServerPID == 0 {
		return ProcSample{At: time.Now()}
	}
	s, err := ReadProc(c.ServerPID)
	if err != nil {
		c.logf("server sample: %v", err)
	}
	return s
}

// Traffic is what one round of messages measured.
type Traffic struct {
	SendS              float64     `json:"send_s"`
	Sent               int64       `json:"sent"`
	Acked              int64       `json:"acked"`
	Failed             int64       `json:"failed"`
	Rejected           int64       `json:"rejected"`
	Unanswered         int64       `json:"unanswered"`
	AckedPerS          float64     `json:"acked_per_s"`
	Deliveries         int64       `json:"deliveries"`
	ExpectedDeliveries int64       `json:"expected_deliveries"`
	SelfDeliveries     int64       `json:"self_deliveries"`
	DeliveredPerS      float64     `json:"delivered_per_s"`
	AckLatency         Percentiles `json:"ack_latency_ms"`
	DeliveryLatency    Percentiles `json:"delivery_latency_ms"`
	SendLag            Percentiles `json:"send_lag_ms"`
	Checks             Checks      `json:"checks"`
}

// Round is one rate of a sweep (or the only one of a fixed-rate run).
type Round struct {
	Rate    float64 `json:"rate"`
	Pass    bool    `json:"pass"`
	Why     string  `json:"why,omitempty"`
	Traffic Traffic `json:"traffic"`
	Server  *Server `json:"server,omitempty"`
}

// Report is a scenario's result.
type Report struct {
	Scenario string  `json:"scenario"`
	Target   string  `json:"target"`
	Devices  int     `json:"devices"`
	Members  int     `json:"members,omitempty"`
	Senders  int     `json:"senders,omitempty"`
	Acks     *bool   `json:"delivery_acks,omitempty"`
	Rounds   []Round `json:"rounds,omitempty"`
	// MaxPassingRate is the highest passing rate of a sweep.
	MaxPassingRate float64 `json:"max_passing_rate,omitempty"`
	// Connections: how long setting up Devices connections took, the
	// rate, and the failures (idle, reconnect).
	ConnectS    float64 `json:"connect_s,omitempty"`
	ConnectPerS float64 `json:"connect_per_s,omitempty"`
	Failures    int64   `json:"failures"`
	// CatchUpS (reconnect): from the drop until every device had
	// reconnected and synced; Synced messages came back.
	CatchUpS float64 `json:"catch_up_s,omitempty"`
	Synced   int64   `json:"synced,omitempty"`
	Retries  int64   `json:"retries,omitempty"`
	Receipts int64   `json:"receipts,omitempty"`
	// ReceiptFrames: the frames that carried Receipts (the region
	// coalesces the receipts of a batch).
	ReceiptFrames int64   `json:"receipt_frames,omitempty"`
	Server        *Server `json:"server,omitempty"`
}

// fleet is a set of connected devices whose pushes go to the current
// round's checker.
type fleet struct {
	cfg   *Config
	users []string
	conns []Conn
	chk   atomic.Pointer[checker]
}

func newFleet(cfg *Config, kind string, n int) *fleet {
	f := &fleet{cfg: cfg, users: make([]string, n), conns: make([]Conn, n)}
	for i := range f.users {
		f.users[i] = fmt.Sprintf("%s%s%05d", cfg.Prefix, kind, i)
	}
	return f
}

func (f *fleet) onPush(i int) PushFunc {
	return func(p Push) {
		if c := f.chk.Load(); c != nil {
			c.onPush(i, p)
		}
	}
}

// dialAll connects every device with at most conc setups at once and
// returns how long that took and how many failed (their conns stay nil).
func (f *fleet) dialAll(ctx context.Context, conc int) (time.Duration, int64, error) {
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range f.users {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := f.cfg.Target.Dial(ctx, f.users[i], f.onPush(i))
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			f.conns[i] = c
		})
	}
	wg.Wait()
	took := time.Since(start)
	var err error
	if e, ok := firstErr.Load().(error); ok {
		err = e
	}
	return took, failed.Load(), err
}

func (f *fleet) close() {
	for i, c := range f.conns {
		if c != nil {
			_ = c.Close()
			<-c.Done()
			f.conns[i] = nil
		}
	}
}

// slot is one (sender, destination) the pacer sends to.
type slot struct {
	sender int
	dest   string
	conv   uint32
}

// filler is the random tail every body copies (the server sees opaque,
// incompressible bytes; the bench does not spend CPU making new ones).
var filler = func() []byte {
	b := make([]byte, 64<<10)
	_, _ = crand.Read(b)
	return b
}()

// drive sends open loop at rate for dur, spreading the slots
// over cfg.Workers pacing goroutines; each message carries its scheduled
// time. It returns how long sending took.
func (f *fleet) drive(ctx context.Context, chk *checker, slots []slot, rate float64, dur time.Duration) time.Duration {
	cfg := f.cfg
	w := min(cfg.Workers, len(slots))
	start := time.Now()
	deadline := start.Add(dur)
	interval := time.Duration(float64(time.Second) * float64(w) / rate)
	var wg sync.WaitGroup
	for k := range w {
		var mine []slot
		for i := k; i < len(slots); i += w {
			mine = append(mine, slots[i])
		}
		wg.Go(func() {
			next := start.Add(interval * time.Duration(k) / time.Duration(w))
			for n := 0; ; {
				now := time.Now()
				if !next.Before(deadline) || ctx.Err() != nil {
					return
				}
				if next.After(now) {
					time.Sleep(min(next.Sub(now), 100*time.Millisecond))
					continue
				}
				sl := mine[n%len(mine)]
				n++
				at := next
				next = next.Add(interval)
				c := f.conns[sl.sender]
				if c == nil {
					continue
				}
				counter := chk.next(sl.sender, sl.conv)
				body := make([]byte, cfg.BodySize)
				copy(body[headerLen:], filler[(n*61)%(len(filler)-cfg.BodySize):])
				putHeader(body, at, uint32(sl.sender), sl.conv, counter, chk.round)
				chk.lag(sl.sender, now.Sub(at))
				err := c.Publish(ctx, sl.dest, body, func(_ uint64, err error) {
					chk.acked(sl.sender, sl.conv, counter, at, err)
				})
				if err != nil {
					chk.unsent(sl.sender)
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// round runs one round of traffic at rate and waits (at most cfg.Drain)
// for every answer and every expected delivery.
func (f *fleet) round(ctx context.Context, n uint32, members [][]int, slots []slot, rate float64, dur time.Duration) (Traffic, *Server) {
	cfg := f.cfg
	chk := newChecker(n, len(f.users), members)
	f.chk.Store(chk)
	before := cfg.sample()
	stop := f.reportProgress(ctx, chk, rate)
	defer stop()
	sendTime := f.drive(ctx, chk, slots, rate, dur)
	dctx, cancel := context.WithTimeout(ctx, cfg.Drain)
	defer cancel()
	for dctx.Err() == nil {
		exp, got, pending := chk.progress()
		if pending <= 0 && got >= exp {
			break
		}
		select {
		case <-dctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	after := cfg.sample()
	t := chk.result(sendTime)
	srv := serverDelta(cfg.ServerPID, before, after)
	if srv != nil {
		if t.Acked > 0 {
			srv.CPUPer1kMsgs = srv.CPUSeconds * 1000 / float64(t.Acked)
		}
		if t.Deliveries > 0 {
			srv.CPUPer1kDeliveries = srv.CPUSeconds * 1000 / float64(t.Deliveries)
		}
	}
	return t, srv
}

// reportProgress writes a line every cfg.ProgressEvery until the
// returned stop is called: elapsed, sent, acked, failed, refused,
// deliveries of the round so far.
func (f *fleet) reportProgress(ctx context.Context, chk *checker, rate float64) (stop func()) {
	cfg := f.cfg
	if cfg.Progress == nil {
		return func() {}
	}
	every := cfg.ProgressEvery
	if every <= 0 {
		every = 5 * time.Second
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
			c := chk.counts()
			cfg.logf("%s: %.0f msg/s round, %.0fs: sent %d, acked %d, failed %d, refused %d, pending %d, deliveries %d",
				cfg.Target.Name(), rate, time.Since(chk.start).Seconds(), c.sent, c.acked, c.failed, c.rejected, c.pending, c.delivered)
		}
	}()
	return func() { cancel(); <-done }
}

// verdict says whether a round passed the sweep's bar.
func verdict(cfg *Config, rate float64, t Traffic) (bool, string) {
	switch {
	case t.Checks.Missing > 0:
		return false, fmt.Sprintf("%d missing", t.Checks.Missing)
	case !t.Checks.OK():
		return false, "duplicates or reorders"
	case t.Rejected > 0:
		return false, fmt.Sprintf("%d rejected (server admission control)", t.Rejected)
	case t.Failed > 0 || t.Unanswered > 0:
		return false, fmt.Sprintf("%d failed, %d unanswered", t.Failed, t.Unanswered)
	case t.AckLatency.P99 > float64(cfg.MaxP99.Milliseconds()):
		return false, fmt.Sprintf("ack p99 %.0f ms > %v", t.AckLatency.P99, cfg.MaxP99)
	case t.DeliveryLatency.P99 > float64(cfg.MaxP99.Milliseconds()):
		return false, fmt.Sprintf("delivery p99 %.0f ms > %v", t.DeliveryLatency.P99, cfg.MaxP99)
	case t.SendS > 0 && float64(t.Sent)/t.SendS < 0.9*rate:
		return false, fmt.Sprintf("load generator sent only %.0f/s", float64(t.Sent)/t.SendS)
	case t.SendLag.P99 > float64(cfg.MaxP99.Milliseconds()):
		return false, fmt.Sprintf("load generator lagged (p99 %.0f ms behind schedule)", t.SendLag.P99)
	}
	return true, ""
}

// pairsFleet connects cfg.Pairs pairs; device 2p talks to 2p+1 in
// conversation p, each sending half of the traffic.
func pairsFleet(ctx context.Context, cfg *Config) (*fleet, [][]int, []slot, error) {
	f := newFleet(cfg, "p", 2*cfg.Pairs)
	cfg.logf("%s: connecting %d devices", cfg.Target.Name(), len(f.users))
	took, failed, err := f.dialAll(ctx, cfg.DialConcurrency)
	if failed > 0 {
		f.close()
		return nil, nil, nil, fmt.Errorf("benchload: %d of %d devices failed to connect: %w", failed, len(f.users), err)
	}
	cfg.logf("%s: %d devices connected in %v", cfg.Target.Name(), len(f.users), took.Round(time.Millisecond))
	members := make([][]int, cfg.Pairs)
	var slots []slot
	for p := range cfg.Pairs {
		a, b := 2*p, 2*p+1
		members[p] = []int{a, b}
		slots = append(slots,
			slot{sender: a, dest: cfg.Target.Direct(f.users[a], f.users[b]), conv: uint32(p)},
			slot{sender: b, dest: cfg.Target.Direct(f.users[b], f.users[a]), conv: uint32(p)})
	}
	return f, members, slots, nil
}

// Pairs runs 1:1 traffic at cfg.Rate (default 1000/s) in one round.
func Pairs(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.fill(); err != nil {
		return Report{}, err
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 1000
	}
	return sweep(ctx, &cfg, []float64{cfg.Rate}, false)
}

// Sweep runs 1:1 rounds at start, start+step, ... up to max on the same
// connections, stopping at the first round that fails (ack p99 above
// cfg.MaxP99, anything missing, rejected or failed, or the load generator
// falling behind); MaxPassingRate is the last rate that passed.
func Sweep(ctx context.Context, cfg Config, start, step, max float64) (Report, error) {
	if err := cfg.fill(); err != nil {
		return Report{}, err
	}
	rates, err := sweepRates(start, step, max)
	if err != nil {
		return Report{}, err
	}
	return sweep(ctx, &cfg, rates, true)
}

func sweep(ctx context.Context, cfg *Config, rates []float64, stopOnFail bool) (Report, error) {
	rep := Report{Scenario: "pairs", Target: cfg.Target.Name(), Devices: 2 * cfg.Pairs}
	f, members, slots, err := pairsFleet(ctx, cfg)
	if err != nil {
		return rep, err
	}
	defer f.close()
	// Warm-up, not reported: one message per (sender, conversation), so
	// that creating the conversations is not measured as throughput.
	if t, _ := f.round(ctx, 1<<31, members, slots, float64(len(slots)), time.Second); t.Acked < t.Sent {
		cfg.logf("%s: warm-up: %d of %d acknowledged", cfg.Target.Name(), t.Acked, t.Sent)
	}
	for i, rate := range rates {
		if ctx.Err() != nil {
			break
		}
		t, srv := f.round(ctx, uint32(i+1), members, slots, rate, cfg.Duration)
		pass, why := verdict(cfg, rate, t)
		rep.Rounds = append(rep.Rounds, Round{Rate: rate, Pass: pass, Why: why, Traffic: t, Server: srv})
		cfg.logf("%s: pairs %.0f msg/s: acked %.0f/s, ack p50/p99 %.1f/%.1f ms, delivery p99 %.1f ms, missing %d: %s",
			cfg.Target.Name(), rate, t.AckedPerS, t.AckLatency.P50, t.AckLatency.P99, t.DeliveryLatency.P99, t.Checks.Missing, passWord(pass, why))
		if pass {
			rep.MaxPassingRate = rate
		} else if stopOnFail {
			break
		}
	}
	if c, ok := cfg.Target.(*Chatmesh); ok {
		rep.Receipts, rep.ReceiptFrames = c.Receipts.Load(), c.ReceiptFrames.Load()
	}
	return rep, ctx.Err()
}

func passWord(pass bool, why string) string {
	if pass {
		return "pass"
	}
	return "FAIL (" + why + ")"
}

// Group runs one group of cfg.Members, cfg.Senders of them sending
// cfg.Rate group messages per second (default 100) in total.
func Group(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.fill(); err != nil {
		return Report{}, err
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 100
	}
	return group(ctx, &cfg, []float64{cfg.Rate}, false)
}

// GroupSweep runs the group at start, start+step, ... up to max group
// messages per second on the same connections, stopping at the first
// round that fails (as Sweep: ack or delivery p99 above cfg.MaxP99,
// anything missing, rejected or failed).
func GroupSweep(ctx context.Context, cfg Config, start, step, max float64) (Report, error) {
	if err := cfg.fill(); err != nil {
		return Report{}, err
	}
	rates, err := sweepRates(start, step, max)
	if err != nil {
		return Report{}, err
	}
	return group(ctx, &cfg, rates, true)
}

func sweepRates(start, step, max float64) ([]float64, error) {
	if start <= 0 || step <= 0 || max < start {
		return nil, fmt.Errorf("benchload: sweep %v,%v,%v: want 0 < start <= max and step > 0", start, step, max)
	}
	var rates []float64
	for r := start; r <= max && len(rates) < 100; r += step {
		rates = append(rates, r)
	}
	return rates, nil
}

func group(ctx context.Context, cfg *Config, rates []float64, stopOnFail bool) (Report, error) {
	rep := Report{Scenario: "group", Target: cfg.Target.Name(), Devices: cfg.Members, Members: cfg.Members, Senders: cfg.Senders}
	if c, ok := cfg.Target.(*Chatmesh); ok {
		acks := c.Acks
		rep.Acks = &acks
	}
	f := newFleet(cfg, "g", cfg.Members)
	cfg.logf("%s: connecting %d group members", cfg.Target.Name(), cfg.Members)
	if _, failed, err := f.dialAll(ctx, cfg.DialConcurrency); failed > 0 {
		f.close()
		return rep, fmt.Errorf("benchload: %d of %d members failed to connect: %w", failed, cfg.Members, err)
	}
	defer f.close()
	gctx, cancel := context.WithTimeout(ctx, time.Minute)
	dest, err := cfg.Target.Group(gctx, cfg.Prefix+"grp", f.users, f.conns)
	cancel()
	if err != nil {
		return rep, err
	}
	all := make([]int, cfg.Members)
	for i := range all {
		all[i] = i
	}
	var slots []slot
	for s := range cfg.Senders {
		slots = append(slots, slot{sender: s, dest: dest, conv: 0})
	}
	for i, rate := range rates {
		if ctx.Err() != nil {
			break
		}
		t, srv := f.round(ctx, uint32(i+1), [][]int{all}, slots, rate, cfg.Duration)
		pass, why := verdict(cfg, rate, t)
		rep.Rounds = append(rep.Rounds, Round{Rate: rate, Pass: pass, Why: why, Traffic: t, Server: srv})
		cfg.logf("%s: group %d members, %.0f msg/s: %.0f deliveries/s, delivery p50/p99 %.1f/%.1f ms, missing %d: %s",
			cfg.Target.Name(), cfg.Members, rate, t.DeliveredPerS, t.DeliveryLatency.P50, t.DeliveryLatency.P99, t.Checks.Missing, passWord(pass, why))
		if pass {
			rep.MaxPassingRate = rate
		} else if stopOnFail {
			break
		}
	}
	if c, ok := cfg.Target.(*Chatmesh); ok {
		rep.Receipts, rep.ReceiptFrames = c.Receipts.Load(), c.ReceiptFrames.Load()
		if rep.Receipts > 0 {
			cfg.logf("%s: group: %d receipts in %d frames", cfg.Target.Name(), rep.Receipts, rep.ReceiptFrames)
		}
	}
	return rep, ctx.Err()
}

// Idle connects cfg.Conns devices (registering them, where the server
// needs that) to a server that should be fresh, holds them idle for
// cfg.Settle and samples the server: Server.RSSPerConnKiB is its RSS
// growth from before the first connection divided by the connections.
// Then it closes them all and connects them again, timed: ConnectPerS is
// the set-up rate of known devices (handshake and authentication, no
// registration).
func Idle(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.fill(); err != nil {
		return Report{}, err
	}
	rep := Report{Scenario: "idle", Target: cfg.Target.Name(), Devices: cfg.Conns}
	f := newFleet(&cfg, "i", cfg.Conns)
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.Settle):
			return nil
		}
	}
	before := cfg.sample()
	cfg.logf("%s: connecting %d devices", cfg.Target.Name(), cfg.Conns)
	if _, failed, err := f.dialAll(ctx, cfg.DialConcurrency); failed > 0 {
		f.close()
		return rep, fmt.Errorf("benchload: %d of %d devices failed to connect: %w", failed, cfg.Conns, err)
	}
	if err := wait(); err != nil {
		f.close()
		return rep, err
	}
	after := cfg.sample()
	if s := serverDelta(cfg.ServerPID, before, after); s != nil {
		s.RSSPerConnKiB = float64(after.RSSKiB-before.RSSKiB) / float64(cfg.Conns)
		rep.Server = s
	}
	f.close()
	if err := wait(); err != nil {
		return rep, err
	}
	took, failed, err := f.dialAll(ctx, cfg.DialConcurrency)
	defer f.close()
	rep.ConnectS, rep.Failures = took.Seconds(), failed
	rep.ConnectPerS = float64(int64(cfg.Conns)-failed) / took.Seconds()
	if err != nil {
		cfg.logf("%s: %d connections failed, first: %v", cfg.Target.Name(), failed, err)
	}
	cfg.logf("%s: %d idle connections: server RSS +%.1f KiB each; reconnected in %.2f s (%.0f/s), %d failed",
		cfg.Target.Name(), cfg.Conns, rep.Server.rssPerConn(), rep.ConnectS, rep.ConnectPerS, failed)
	return rep, ctx.Err()
}

// Reconnect connects cfg.Conns devices in pairs, has each send one
// message to its peer, then drops every connection at once and
// reconnects them all (4 × cfg.DialConcurrency at a time): handshake,
// authentication and a sync from seq 0 of the device's conversation.
// CatchUpS is from the drop until the last device had synced; a device
// that fails is retried (at most 3 attempts) and counted in Failures
// when it never catches up. The target's connections must be Syncers.
func Reconnect(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.fill(); err != nil {
		return Report{}, err
	}
	cfg.Pairs = max(cfg.Conns/2, 1)
	rep := Report{Scenario: "reconnect", Target: cfg.Target.Name(), Devices: 2 * cfg.Pairs}
	f, members, slots, err := pairsFleet(ctx, &cfg)
	if err != nil {
		return rep, err
	}
	defer f.close()
	if _, ok := f.conns[0].(Syncer); !ok {
		return rep, fmt.Errorf("benchload: reconnect: %s connections cannot sync", cfg.Target.Name())
	}
	// One message each way per pair, at most 2,000 a second (a burst of
	// 10,000 at once overran the server's admission limits).
	rate := min(float64(len(slots)), 2000)
	t, _ := f.round(ctx, 1, members, slots, rate, time.Duration(float64(len(slots))/rate*float64(time.Second)))
	if t.Acked < t.Sent || t.Checks.Missing > 0 {
		return rep, fmt.Errorf("benchload: reconnect: warm-up incomplete: %d of %d acked, %d missing", t.Acked, t.Sent, t.Checks.Missing)
	}
	f.close()
	f.chk.Store(nil)
	before := cfg.sample()
	start := time.Now()
	var synced, retries, failures atomic.Int64
	sem := make(chan struct{}, 4*cfg.DialConcurrency)
	var wg sync.WaitGroup
	for i := range f.users {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			conv := cfg.Target.Direct(f.users[i], f.users[i^1])
			for attempt := 1; ; attempt++ {
				n, c, err := dialSync(ctx, cfg.Target, f.users[i], conv)
				if err == nil && n >= 2 {
					f.conns[i] = c
					synced.Add(int64(n))
					return
				}
				if c != nil {
					_ = c.Close()
				}
				if attempt >= 3 || ctx.Err() != nil {
					failures.Add(1)
					return
				}
				retries.Add(1)
				time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	rep.CatchUpS = time.Since(start).Seconds()
	rep.Synced, rep.Retries, rep.Failures = synced.Load(), retries.Load(), failures.Load()
	rep.Server = serverDelta(cfg.ServerPID, before, cfg.sample())
	cfg.logf("%s: %d devices reconnected and synced in %.2f s, %d retries, %d failures",
		cfg.Target.Name(), len(f.users), rep.CatchUpS, rep.Retries, rep.Failures)
	return rep, ctx.Err()
}

func dialSync(ctx context.Context, t Target, user, conv string) (int, Conn, error) {
	c, err := t.Dial(ctx, user, nil)
	if err != nil {
		return 0, nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := c.(Syncer).Sync(sctx, map[string]uint64{conv: 0})
	return n, c, err
}

func isRejected(err error) bool { return errors.Is(err, ErrRejected) }
