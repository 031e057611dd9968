package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
)

// Config describes a run. Zero values get small defaults.
type Config struct {
	Edges     []string // edge URLs
	CertHash  []byte   // WebTransport certificate pin
	StateDir  string   // client state dirs go under it (default: a temp dir, removed after)
	Prefix    string   // user name prefix, default "lg" + random
	Users     int      // default 20
	Groups    int      // groups to create (default 1)
	GroupSize int      // members per group, capped at Users (default 10)
	// DirectRate and GroupRate are total messages per second for 1:1 and
	// group traffic (default 50 and 5). Senders are picked at random.
	DirectRate, GroupRate float64
	Duration              time.Duration // sending time, default 10 s
	Drain                 time.Duration // max wait for acks and deliveries after sending, default 60 s
	BodySize              int           // bytes per body, min 24, default 64
	Logger                *slog.Logger
	// RegistrationToken is sent with every registration (the edge's
	// per-IP registration limit would refuse most of Users from one
	// address otherwise; see edge.AdmissionConfig).
	RegistrationToken string
	// OnSending, if set, is called once sending has started (tests use it
	// to inject faults in the middle of the stream).
	OnSending func()
	// Progress, if set, is called every ProgressEvery (default 5 s) from
	// a goroutine of its own while the traffic is sent and drained, with
	// the counts so far.
	Progress      func(Progress)
	ProgressEvery time.Duration
}

// Progress is what a run did so far (Config.Progress).
type Progress struct {
	Elapsed            time.Duration // since sending started
	Draining           bool          // sending is over; waiting for acks and deliveries
	Sent, Failed       int64         // sends the clients accepted / refused
	Acked              int64         // of the sent messages
	Deliveries         int64
	ExpectedDeliveries int64 // for the messages sent so far
}

// Result is what a run measured. Latencies are in milliseconds.
type Result struct {
	Clients            int         `json:"clients"`
	Groups             int         `json:"groups"`
	GroupSize          int         `json:"group_size"`
	DurationS          float64     `json:"duration_s"`
	Sent               int64       `json:"sent"`
	Acked              int64       `json:"acked"`
	Failed             int64       `json:"failed"`
	AckedPerS          float64     `json:"acked_per_s"`
	Deliveries         int64       `json:"deliveries"`
	ExpectedDeliveries int64       `json:"expected_deliveries"`
	DeliveriesPerS     float64     `json:"deliveries_per_s"`
	Duplicates         int64       `json:"duplicates"`
	OrderViolations    int64       `json:"order_violations"`
	Missing            int64       `json:"missing"`
	AckLatency         Percentiles `json:"ack_latency_ms"`
	DeliveryLatency    Percentiles `json:"delivery_latency_ms"`
}

// Percentiles summarizes a latency distribution.
type Percentiles struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

func percentiles(samples []time.Duration) Percentiles {
	if len(samples) == 0 {
		return Percentiles{}
	}
	slices.Sort(samples)
	at := func(q float64) float64 {
		i := int(q * float64(len(samples)-1))
		return float64(samples[i].Microseconds()) / 1000
	}
	return Percentiles{N: len(samples), P50: at(0.50), P99: at(0.99), P999: at(0.999), Max: at(1)}
}

// ErrIncomplete means the run ended with messages unacknowledged or
// deliveries missing after the drain time.
var ErrIncomplete = errors.New("loadgen: incomplete")

type member struct {
	name string
	c    *client.Client
}

type conv struct {
	id      string
	members []int // indexes into users
}

// tracker checks exactly-once and same-order delivery.
type tracker struct {
	mu sync.Mutex
	// acked[conv][clientMsgID] = seq
	acked map[string]map[string]uint64
	// seen[user][conv] = seqs received in order
	seen map[int]map[string][]uint64
	// bodies: conv -> seq -> sender counter key, to compare across devices
	bySeq map[string]map[uint64]string

	deliveries, dups, order atomic.Int64
	ackLat, delLat          []time.Duration
}

// Run executes the configured traffic and returns what it measured. It
// returns ErrIncomplete (with the Result filled) when acks or deliveries
// are missing after the drain time, and a different error when the
// checks find duplicates or disagreeing orders.
func Run(ctx context.Context, cfg Config) (Result, error) {
	fill(&cfg)
	var res Result
	if cfg.StateDir == "" {
		dir, err := os.MkdirTemp("", "chatmesh-loadgen-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
		cfg.StateDir = dir
	}
	users := make([]member, cfg.Users)
	tr := &tracker{acked: map[string]map[string]uint64{}, seen: map[int]map[string][]uint64{}, bySeq: map[string]map[uint64]string{}}
	defer func() {
		for _, u := range users {
			if u.c != nil {
				u.c.Close()
			}
		}
	}()
	// Register and connect every user.
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Users)
	sem := make(chan struct{}, 32)
	for i := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			name := fmt.Sprintf("%s%04d", cfg.Prefix, i)
			c, err := client.Open(ctx, client.Config{
				StateDir: filepath.Join(cfg.StateDir, name), Edges: cfg.Edges, CertHash: cfg.CertHash,
				Logger: cfg.Logger, EventBuffer: 4096, RegistrationToken: cfg.RegistrationToken,
			})
			if err != nil {
				errs <- err
				return
			}
			users[i] = member{name: name, c: c}
			if _, ok := c.Device(); !ok {
				if _, err := c.Register(ctx, name); err != nil {
					errs <- fmt.Errorf("register %s: %w", name, err)
					return
				}
			}
			if err := c.Start(); err != nil {
				errs <- err
				return
			}
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := c.WaitConnected(cctx); err != nil {
				errs <- fmt.Errorf("connect %s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return res, err
	}
	res.Clients = cfg.Users

	// Conversations: 1:1 pairs (i, i+1) and groups.
	var directs, groups []conv
	for i := 0; i+1 < cfg.Users; i += 2 {
		directs = append(directs, conv{id: core.DirectConvID(users[i].name, users[i+1].name), members: []int{i, i + 1}})
	}
	size := min(cfg.GroupSize, cfg.Users)
	for g := 0; g < cfg.Groups; g++ {
		var ms []int
		var names []string
		for k := 0; k < size; k++ {
			idx := (g*size + k) % cfg.Users
			ms = append(ms, idx)
			if k > 0 {
				names = append(names, users[idx].name)
			}
		}
		gctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		info, err := users[ms[0]].c.CreateGroup(gctx, fmt.Sprintf("load %d", g), names)
		cancel()
		if err != nil {
			return res, fmt.Errorf("create group %d: %w", g, err)
		}
		groups = append(groups, conv{id: info.GetConvId(), members: ms})
	}
	res.Groups, res.GroupSize = len(groups), size

	// Receivers.
	rctx, stopRecv := context.WithCancel(ctx)
	var rwg sync.WaitGroup
	sendTimes := sync.Map{} // clientMsgID -> time.Time
	for i := range users {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			tr.receive(rctx, i, users[i].c, &sendTimes)
		}()
	}
	defer func() { stopRecv(); rwg.Wait() }()

	// Senders: one pacing loop per traffic kind.
	start := time.Now()
	var sent, failed atomic.Int64
	expected := atomic.Int64{}
	sendOne := func(cv conv, rng *rand.Rand, counter *atomic.Uint64) {
		from := cv.members[rng.IntN(len(cv.members))]
		n := counter.Add(1)
		body := make([]byte, cfg.BodySize)
		binary.BigEndian.PutUint64(body[0:8], uint64(time.Now().UnixNano()))
		binary.BigEndian.PutUint64(body[8:16], n)
		binary.BigEndian.PutUint64(body[16:24], uint64(from))
		id, err := users[from].c.Send(ctx, cv.id, body)
		if err != nil {
			failed.Add(1)
			return
		}
		sendTimes.Store(id, time.Now())
		sent.Add(1)
		expected.Add(int64(len(cv.members)))
	}
	pace := func(rate float64, convs []conv, seed uint64) {
		if rate <= 0 || len(convs) == 0 {
			return
		}
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		var counter atomic.Uint64
		interval := time.Duration(float64(time.Second) / rate)
		deadline := start.Add(cfg.Duration)
		next := start
		for {
			now := time.Now()
			if now.After(deadline) || ctx.Err() != nil {
				return
			}
			for !next.After(now) {
				sendOne(convs[rng.IntN(len(convs))], rng, &counter)
				next = next.Add(interval)
			}
			time.Sleep(min(next.Sub(now), 50*time.Millisecond))
		}
	}
	var draining atomic.Bool
	if cfg.Progress != nil {
		every := cfg.ProgressEvery
		if every <= 0 {
			every = 5 * time.Second
		}
		pctx, stopProgress := context.WithCancel(ctx)
		defer stopProgress()
		go func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-pctx.Done():
					return
				case <-t.C:
				}
				tr.mu.Lock()
				acked := int64(len(tr.ackLat)) // acks of this run's sends
				tr.mu.Unlock()
				cfg.Progress(Progress{Elapsed: time.Since(start), Draining: draining.Load(), Sent: sent.Load(), Failed: failed.Load(),
					Acked: acked, Deliveries: tr.deliveries.Load(), ExpectedDeliveries: expected.Load()})
			}
		}()
	}
	var swg sync.WaitGroup
	swg.Add(2)
	go func() { defer swg.Done(); pace(cfg.DirectRate, directs, 1) }()
	go func() { defer swg.Done(); pace(cfg.GroupRate, groups, 2) }()
	if cfg.OnSending != nil {
		cfg.OnSending()
	}
	swg.Wait()
	sendEnd := time.Since(start)
	draining.Store(true)

	// Drain: wait for every outbox to empty and every delivery to arrive.
	dctx, cancel := context.WithTimeout(ctx, cfg.Drain)
	defer cancel()
	for _, u := range users {
		if err := u.c.WaitIdle(dctx); err != nil {
			break
		}
	}
	for dctx.Err() == nil && tr.deliveries.Load() < expected.Load() {
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	stopRecv()
	rwg.Wait()

	tr.mu.Lock()
	defer tr.mu.Unlock()
	res.DurationS = sendEnd.Seconds()
	res.Sent = sent.Load()
	res.Failed = failed.Load()
	// Only the messages this run sent count: with end-to-end encryption a
	// client also sends key-distribution entries of its own, which are
	// acked but never shown to the app.
	for conv, m := range tr.acked {
		for id := range m {
			if _, ours := sendTimes.Load(id); !ours {
				delete(m, id)
			}
		}
		if len(m) == 0 {
			delete(tr.acked, conv)
		}
		res.Acked += int64(len(m))
	}
	res.Deliveries = tr.deliveries.Load()
	res.ExpectedDeliveries = expected.Load()
	res.Duplicates = tr.dups.Load()
	res.OrderViolations = tr.order.Load()
	res.AckedPerS = float64(res.Acked) / elapsed.Seconds()
	res.DeliveriesPerS = float64(res.Deliveries) / elapsed.Seconds()
	res.AckLatency = percentiles(tr.ackLat)
	res.DeliveryLatency = percentiles(tr.delLat)
	res.Missing = tr.missing(append(directs, groups...))
	switch {
	case res.Duplicates > 0 || res.OrderViolations > 0:
		return res, fmt.Errorf("loadgen: %d duplicates, %d order violations", res.Duplicates, res.OrderViolations)
	case res.Acked < res.Sent || res.Missing > 0:
		return res, fmt.Errorf("%w: %d of %d acked, %d deliveries missing", ErrIncomplete, res.Acked, res.Sent, res.Missing)
	}
	return res, nil
}

func fill(cfg *Config) {
	if cfg.Prefix == "" {
		cfg.Prefix = fmt.Sprintf("lg%x", rand.Uint32()&0xffff)
	}
	if cfg.Users <= 1 {
		cfg.Users = 20
	}
	if cfg.Groups < 0 {
		cfg.Groups = 0
	}
	if cfg.GroupSize <= 1 {
		cfg.GroupSize = 10
	}
	if cfg.DirectRate == 0 && cfg.GroupRate == 0 {
		cfg.DirectRate, cfg.GroupRate = 50, 5
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 60 * time.Second
	}
	if cfg.BodySize < 24 {
		cfg.BodySize = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
}

// receive consumes one client's events until ctx ends.
func (tr *tracker) receive(ctx context.Context, idx int, c *client.Client, sendTimes *sync.Map) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-c.Events():
			switch e := ev.(type) {
			case client.MessageEvent:
				tr.onMessage(idx, e)
			case client.SendAckedEvent:
				tr.mu.Lock()
				m := tr.acked[e.Conv]
				if m == nil {
					m = map[string]uint64{}
					tr.acked[e.Conv] = m
				}
				if _, dup := m[e.ClientMsgID]; !dup {
					m[e.ClientMsgID] = e.Seq
					if t, ok := sendTimes.Load(e.ClientMsgID); ok {
						tr.ackLat = append(tr.ackLat, time.Since(t.(time.Time)))
					}
				}
				tr.mu.Unlock()
			}
		}
	}
}

func (tr *tracker) onMessage(idx int, e client.MessageEvent) {
	if len(e.Body) < 24 {
		return // membership entries and foreign traffic
	}
	now := time.Now()
	sentAt := time.Unix(0, int64(binary.BigEndian.Uint64(e.Body[0:8])))
	key := fmt.Sprintf("%d/%d", binary.BigEndian.Uint64(e.Body[16:24]), binary.BigEndian.Uint64(e.Body[8:16]))
	conv, seq := e.Conv(), e.Seq()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	perUser := tr.seen[idx]
	if perUser == nil {
		perUser = map[string][]uint64{}
		tr.seen[idx] = perUser
	}
	seqs := perUser[conv]
	if n := len(seqs); n > 0 && seqs[n-1] >= seq {
		if slices.Contains(seqs, seq) {
			tr.dups.Add(1)
		} else {
			tr.order.Add(1)
		}
		return
	}
	perUser[conv] = append(seqs, seq)
	bs := tr.bySeq[conv]
	if bs == nil {
		bs = map[uint64]string{}
		tr.bySeq[conv] = bs
	}
	if prev, ok := bs[seq]; ok && prev != key {
		tr.order.Add(1) // two devices disagree about what seq holds
	}
	bs[seq] = key
	tr.deliveries.Add(1)
	tr.delLat = append(tr.delLat, now.Sub(sentAt))
}

// missing counts (member, acked message) pairs never delivered.
func (tr *tracker) missing(convs []conv) int64 {
	var n int64
	for _, cv := range convs {
		for _, seq := range tr.acked[cv.id] {
			for _, m := range cv.members {
				if !slices.Contains(tr.seen[m][cv.id], seq) {
					n++
				}
			}
		}
	}
	return n
}
