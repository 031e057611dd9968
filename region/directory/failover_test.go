package directory

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// beater heartbeats one region every 50 ms through its voter (or, while
// that voter is down, the next live one), as a region process would.
type beater struct {
	c      *cluster
	region string
	via    int

	mu          sync.Mutex // held during a beat, so pause waits for it
	paused      bool
	lastAttempt time.Time      // when the last beat (answered or not) was sent
	lastEcho    HeartbeatToken // the token the last answered beat echoed
	last        HeartbeatReply
	replies     int
}

func startBeater(ctx context.Context, c *cluster, region string, via int) *beater {
	b := &beater{c: c, region: region, via: via}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			b.beat(ctx)
		}
	}()
	c.t.Cleanup(wg.Wait)
	return b
}

func (b *beater) beat(ctx context.Context) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.paused {
		return
	}
	var d *Directory
	for k := range len(b.c.nodes) {
		if d = b.c.node((b.via + k) % len(b.c.nodes)); d != nil {
			break
		}
	}
	if d == nil {
		return
	}
	b.lastAttempt = time.Now()
	hctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rep, err := d.Heartbeat(hctx, b.region, b.last.Token)
	if err == nil {
		b.lastEcho = b.last.Token
		b.last, b.replies = rep, b.replies+1
	}
}

// pause stops the beats and returns when the last one was sent and when
// the leader answered the reply that beat echoed (the last time the leader
// counts the region as heard from).
func (b *beater) pause() (time.Time, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.paused = true
	return b.lastAttempt, time.Unix(0, b.lastEcho.At)
}

func (b *beater) resume() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.paused = false
}

func (b *beater) lastReply() HeartbeatReply {
	r, _ := b.reply()
	return r
}

func (b *beater) reply() (HeartbeatReply, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last, b.replies
}

const testFailAfter = 2 * time.Second

func failoverCluster(t *testing.T) *cluster {
	return newClusterWith(t, 3, "", func(cfg *Config) {
		cfg.DetectFailures = true
		cfg.FailAfter = testFailAfter
		cfg.DetectInterval = 20 * time.Millisecond
	})
}

// failoverRegions puts fra, ams and iad and homes a user and a
// conversation in each (two in fra); it returns when every voter has them.
func failoverRegions(ctx context.Context, t *testing.T, c *cluster) {
	t.Helper()
	d := c.node(c.leader())
	for _, r := range []Region{
		{Name: "fra", Lat: 50.1, Long: 8.7, Healthy: true},
		{Name: "ams", Lat: 52.4, Long: 4.9, Healthy: true},
		{Name: "iad", Lat: 38.9, Long: -77.0, Healthy: true},
	} {
		if err := d.PutRegion(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for u, r := range map[string]string{"alice": "fra", "bob": "ams", "carol": "iad"} {
		if _, err := d.SetUserHome(ctx, u, r, true); err != nil {
			t.Fatal(err)
		}
	}
	for conv, r := range map[string]string{"g:fra1": "fra", "g:fra2": "fra", "g:ams": "ams", "g:iad": "iad"} {
		if _, err := d.ClaimConvHome(ctx, conv, r, 0, "alice"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.SetConvHome(ctx, "g:fra2", "fra", 1); err != nil { // epoch 2
		t.Fatal(err)
	}
	for i := range c.nodes {
		if err := c.node(i).Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Three regions heartbeat; fra stops. The leader fails it, no sooner
// than FailAfter after its last beat, and moves its user and
// conversations to the nearest healthy region (ams, not iad), each
// conversation at epoch + 1; a watcher on a follower sees it. When fra
// heartbeats again it is told it is unhealthy and stays failed (the
// documented choice) until restore_region; its homes stay in ams.
func TestFailoverSilentRegionIsFailed(t *testing.T) {
	c := failoverCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	failoverRegions(ctx, t, c)
	l := c.leader()
	beaters := map[string]*beater{}
	for i, r := range []string{"fra", "ams", "iad"} {
		beaters[r] = startBeater(ctx, c, r, i)
	}
	for r, b := range beaters {
		eventually(t, r+" heartbeats answered", func() bool {
			rep, n := b.reply()
			return n > 0 && rep.Healthy && rep.Region == r
		})
	}
	f := c.node((l + 1) % 3)
	watch := f.Watch(ctx)

	if rep, _ := beaters["ams"].reply(); len(rep.Silent) != 0 {
		t.Fatalf("silent regions while all heartbeat: %v", rep.Silent)
	}
	lastBeat, lastHeard := beaters["fra"].pause()
	// Before it is failed, the others hear that fra went silent (they
	// stop forwarding to it).
	eventually(t, "fra reported silent", func() bool {
		rep, _ := beaters["ams"].reply()
		return slices.Contains(rep.Silent, "fra") && !slices.Contains(rep.Silent, "iad")
	})
	var failedAt time.Time
	eventually(t, "fra failed", func() bool {
		r, _ := f.Region("fra")
		if !r.Healthy {
			failedAt = time.Now()
		}
		return !r.Healthy
	})
	// Failed no sooner than FailAfter after the last reply fra echoed,
	// and after any lease fra could hold: one renewed from its last beat
	// runs until that beat's send plus the lease.
	if gap := failedAt.Sub(lastHeard); gap < testFailAfter {
		t.Fatalf("fra failed %v after the last reply it echoed, before FailAfter (%v)", gap, testFailAfter)
	}
	if lease := time.Duration(beaters["ams"].lastReply().LeaseMS) * time.Millisecond; failedAt.Before(lastBeat.Add(lease)) || lease == 0 {
		t.Fatalf("fra failed at %v, within the lease (%v) of its last beat at %v", failedAt, lease, lastBeat)
	}
	eventually(t, "homes moved on the follower", func() bool {
		h, _ := f.Conv("g:fra1")
		return h.Region == "ams"
	})
	want := map[string]ConvHome{
		"g:fra1": {Region: "ams", Epoch: 2, Owner: "alice"},
		"g:fra2": {Region: "ams", Epoch: 3, Owner: "alice"},
		"g:ams":  {Region: "ams", Epoch: 1, Owner: "alice"},
		"g:iad":  {Region: "iad", Epoch: 1, Owner: "alice"},
	}
	for conv, w := range want {
		if h, _ := f.Conv(conv); h != w {
			t.Fatalf("%s = %+v, want %+v", conv, h, w)
		}
	}
	if h, _ := f.UserHome("alice"); h != "ams" {
		t.Fatalf("alice homed in %q, want ams", h)
	}
	for _, r := range []string{"ams", "iad"} {
		if reg, _ := f.Region(r); !reg.Healthy {
			t.Fatalf("%s was failed while heartbeating", r)
		}
	}
	// The watcher saw one step: fra unhealthy, alice, then the two
	// conversations in id order, all at one index.
	var got []Change
	for len(got) < 4 {
		select {
		case ch := <-watch:
			got = append(got, ch)
		case <-ctx.Done():
			t.Fatalf("watch: got %+v", got)
		}
	}
	if got[0].Kind != ChangeRegion || got[0].Key != "fra" || got[0].Region.Healthy ||
		got[1].Kind != ChangeUser || got[1].Key != "alice" || got[1].Home != "ams" ||
		got[2].Key != "g:fra1" || got[2].Epoch != 2 || got[2].Home != "ams" ||
		got[3].Key != "g:fra2" || got[3].Epoch != 3 || got[3].Home != "ams" {
		t.Fatalf("watch = %+v", got)
	}
	for _, ch := range got[1:] {
		if ch.Index != got[0].Index {
			t.Fatalf("the failover took several log entries: %+v", got)
		}
	}

	// fra comes back: its heartbeats are answered with healthy=false and
	// it is not restored by them.
	_, before := beaters["fra"].reply()
	beaters["fra"].resume()
	eventually(t, "fra's heartbeats answered again", func() bool {
		_, n := beaters["fra"].reply()
		return n > before+3
	})
	if rep, _ := beaters["fra"].reply(); rep.Healthy {
		t.Fatalf("a failed region was told it is healthy: %+v", rep)
	}
	if reg, _ := f.Region("fra"); reg.Healthy {
		t.Fatal("heartbeats restored a failed region")
	}
	if err := f.RestoreRegion(ctx, "fra"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "fra told it is healthy", func() bool {
		rep, _ := beaters["fra"].reply()
		return rep.Healthy
	})
	if h, _ := f.Conv("g:fra1"); h.Region != "ams" {
		t.Fatalf("restore moved a conversation back: %+v", h)
	}
	// Heartbeating, it stays healthy past FailAfter.
	time.Sleep(testFailAfter + 500*time.Millisecond)
	if reg, _ := f.Region("fra"); !reg.Healthy {
		t.Fatal("a restored, heartbeating region was failed")
	}
}

// Killing the leader does not make the new leader, which has no
// heartbeat history, fail the regions at once: it waits FailAfter from
// its takeover, by which time their heartbeats reach it. (Without the
// grace the new leader's first judgement, 20 ms in, fails every region it
// has not heard from yet.)
func TestFailoverNewLeaderGrace(t *testing.T) {
	c := failoverCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	failoverRegions(ctx, t, c)
	l := c.leader()
	beaters := map[string]*beater{}
	for i, r := range []string{"fra", "ams", "iad"} {
		beaters[r] = startBeater(ctx, c, r, i)
	}
	for r, b := range beaters {
		eventually(t, r+" heartbeats answered", func() bool {
			_, n := b.reply()
			return n > 0
		})
	}
	s := c.node((l + 1) % 3)
	watch := s.Watch(ctx)
	c.kill(l)
	nl := c.leader()
	if nl == l {
		t.Fatal("dead voter still leader")
	}
	// Well past the grace, with every region heartbeating through the
	// survivors: nobody was failed.
	time.Sleep(testFailAfter + time.Second)
	for _, r := range []string{"fra", "ams", "iad"} {
		if reg, _ := s.Region(r); !reg.Healthy {
			t.Fatalf("%s failed after the leader was killed", r)
		}
	}
	for len(watch) > 0 {
		if ch := <-watch; ch.Kind != ChangeResync {
			t.Fatalf("a change after the leader was killed: %+v", ch)
		}
	}
	// The new leader does judge: a region that stops is failed.
	beaters["iad"].pause()
	eventually(t, "iad failed by the new leader", func() bool {
		reg, _ := s.Region("iad")
		return !reg.Healthy
	})
	if h, _ := s.UserHome("carol"); h != "ams" { // ams is nearer to iad than fra
		t.Fatalf("carol homed in %q, want ams", h)
	}
}

// A heartbeat for a region the directory does not hold is refused with
// ErrUnknownRegion, through a follower and through the HTTP endpoint.
func TestHeartbeatUnknownRegion(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := c.leader()
	f := c.node((l + 1) % 3)
	if _, err := f.Heartbeat(ctx, "mars", HeartbeatToken{}); !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("heartbeat of an unknown region: %v", err)
	}
	ac := &AdminClient{URL: "http://" + c.peers[(l+1)%3].HTTPAddr}
	if _, err := ac.Heartbeat(ctx, "mars", HeartbeatToken{}); !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("admin heartbeat of an unknown region: %v", err)
	}
	if err := f.PutRegion(ctx, Region{Name: "fra", Healthy: true}); err != nil {
		t.Fatal(err)
	}
	rep, err := ac.Heartbeat(ctx, "fra", HeartbeatToken{})
	if err != nil || !rep.Healthy || rep.Leader != c.peers[l].ID || rep.LeaseMS != DefaultLease.Milliseconds() {
		t.Fatalf("admin heartbeat = %+v, %v", rep, err)
	}
	// Failing the only region is refused.
	if _, err := f.FailRegion(ctx, "fra"); !errors.Is(err, ErrNoHealthyRegion) {
		t.Fatalf("failing the only region: %v", err)
	}
}

// A region whose heartbeats reach the leader but whose replies are lost
// (a one-way partition) cannot hold its lease, so it must be failed like
// a silent one: the leader counts a region as heard from only at a reply
// the region echoes back.
func TestFailoverRepliesLost(t *testing.T) {
	c := failoverCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	failoverRegions(ctx, t, c)
	for i, r := range []string{"ams", "iad"} {
		startBeater(ctx, c, r, i+1)
	}
	// fra's requests arrive; it never sees a reply, so it never echoes one.
	lost := make(chan struct{})
	go func() {
		defer close(lost)
		for ctx.Err() == nil {
			if d := c.node(c.leader()); d != nil {
				hctx, hcancel := context.WithTimeout(ctx, time.Second)
				d.Heartbeat(hctx, "fra", HeartbeatToken{})
				hcancel()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	start := time.Now()
	f := c.node((c.leader() + 1) % 3)
	eventually(t, "fra failed although its requests arrive", func() bool {
		r, _ := f.Region("fra")
		return !r.Healthy
	})
	if h, _ := f.Conv("g:fra1"); h.Region != "ams" || h.Epoch != 2 {
		t.Fatalf("g:fra1 = %+v, want ams at epoch 2", h)
	}
	t.Logf("fra failed %v after its replies started to be lost", time.Since(start).Round(time.Millisecond))
	cancel()
	<-lost
}
