package driver

import (
	"reflect"
	"testing"
	"time"
)

func planConfig(seed uint64) Config {
	return Config{
		Regions: []Region{
			{Name: "a", Edges: []Edge{{URL: "ws://127.0.0.1:1/v1/ws"}}},
			{Name: "b", Edges: []Edge{{URL: "ws://127.0.0.1:2/v1/ws"}}},
			{Name: "c", Edges: []Edge{{URL: "ws://127.0.0.1:3/v1/ws"}}},
		},
		StateDir: "/nonexistent", Seed: seed, Users: 30, SecondDevices: 6, Directs: 12,
		Groups: 3, GroupSize: 8, Moves: 10, Duration: 20 * time.Second, DirectRate: 50, GroupRate: 5,
	}
}

func schedulePrefix(t *testing.T, cfg Config, n int) []SendEvent {
	t.Helper()
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	p := newPlan(&cfg)
	s := newSchedule(&p, &cfg)
	var out []SendEvent
	for range n {
		ev, ok := s.Next()
		if !ok {
			break
		}
		out = append(out, ev)
	}
	return out
}

// Same seed, same plan and schedule; another seed, another.
func TestPlanDeterministic(t *testing.T) {
	p1, err := NewPlan(planConfig(7))
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := NewPlan(planConfig(7))
	p3, _ := NewPlan(planConfig(8))
	if !reflect.DeepEqual(p1, p2) {
		t.Fatal("same seed, different plans")
	}
	if reflect.DeepEqual(p1.Users, p3.Users) && reflect.DeepEqual(p1.Directs, p3.Directs) {
		t.Fatal("seeds 7 and 8 gave the same plan")
	}
	s1, s2, s3 := schedulePrefix(t, planConfig(7), 500), schedulePrefix(t, planConfig(7), 500), schedulePrefix(t, planConfig(8), 500)
	if len(s1) != 500 || !reflect.DeepEqual(s1, s2) {
		t.Fatalf("same seed, different schedules (%d events)", len(s1))
	}
	if reflect.DeepEqual(s1, s3) {
		t.Fatal("seeds 7 and 8 gave the same schedule")
	}
	// NewSchedule gives the same schedule a run uses.
	pub, err := NewSchedule(planConfig(7))
	if err != nil {
		t.Fatal(err)
	}
	for i := range s1 {
		if ev, ok := pub.Next(); !ok || ev != s1[i] {
			t.Fatalf("NewSchedule event %d: %+v, want %+v", i, ev, s1[i])
		}
	}
	// A different rate changes the schedule but not the plan.
	c := planConfig(7)
	c.DirectRate = 10
	if p4, _ := NewPlan(c); !reflect.DeepEqual(p1, p4) {
		t.Fatal("the send rate changed the plan")
	}
}

// The plan has what the simulation needs: every region populated, 1:1
// pairs within and across regions, groups spanning every region, second
// devices elsewhere, moves in time order to another region.
func TestPlanShape(t *testing.T) {
	cfg := planConfig(42)
	p, err := NewPlan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	per := map[int]int{}
	seconds := 0
	for _, u := range p.Users {
		per[u.Region]++
		if u.Second >= 0 {
			seconds++
			if u.Second == u.Region {
				t.Fatalf("%s's second device is in its home region", u.Name)
			}
		}
	}
	if len(per) != 3 || per[0] != 10 || per[1] != 10 || per[2] != 10 || seconds != 6 {
		t.Fatalf("users per region %v, second devices %d", per, seconds)
	}
	same, cross := 0, 0
	ids := map[string]bool{}
	for _, d := range p.Directs {
		if ids[d.ID] {
			t.Fatalf("pair %s twice", d.ID)
		}
		ids[d.ID] = true
		if p.Users[d.Users[0]].Region == p.Users[d.Users[1]].Region {
			same++
		} else {
			cross++
		}
	}
	if len(p.Directs) != 12 || same != 6 || cross != 6 {
		t.Fatalf("%d pairs: %d within a region, %d across", len(p.Directs), same, cross)
	}
	for _, g := range p.Groups {
		rs := map[int]bool{}
		us := map[int]bool{}
		for _, u := range g.Users {
			rs[p.Users[u].Region] = true
			us[u] = true
		}
		if len(g.Users) != 8 || len(us) != 8 || len(rs) != 3 {
			t.Fatalf("group %s: %d members (%d distinct) in %d regions", g.ID, len(g.Users), len(us), len(rs))
		}
	}
	where := map[[2]int]int{}
	var prev time.Duration
	for _, m := range p.Moves {
		if m.At < prev || m.At < cfg.Duration/10 || m.At > cfg.Duration*9/10 {
			t.Fatalf("move at %v out of order or range", m.At)
		}
		prev = m.At
		cur, ok := where[[2]int{m.User, m.Slot}]
		if !ok {
			cur = p.Users[m.User].Region
			if m.Slot == 1 {
				cur = p.Users[m.User].Second
			}
		}
		if m.To == cur || (m.Slot == 1 && p.Users[m.User].Second < 0) {
			t.Fatalf("move %+v goes nowhere or moves a device that does not exist", m)
		}
		where[[2]int{m.User, m.Slot}] = m.To
	}
	if len(p.Moves) != 10 {
		t.Fatalf("%d moves", len(p.Moves))
	}
	// The schedule keeps the rates: 20 s at 50/s and 5/s.
	evs := schedulePrefix(t, cfg, 10000)
	groups := 0
	for _, ev := range evs {
		if ev.Group {
			groups++
		}
	}
	if len(evs) != 1100 || groups != 100 {
		t.Fatalf("%d sends, %d to groups; want 1100 and 100", len(evs), groups)
	}
}

func TestConfigRejects(t *testing.T) {
	for name, c := range map[string]Config{
		"no regions":  {StateDir: "x"},
		"no edges":    {StateDir: "x", Regions: []Region{{Name: "a"}}},
		"no statedir": {Regions: []Region{{Name: "a", Edges: []Edge{{URL: "ws://x"}}}}},
		"bad key":     {StateDir: "x", Regions: []Region{{Name: "a", Edges: []Edge{{URL: "ws://x", NoiseKey: "zz"}}}}},
		"bad prefix":  {StateDir: "x", Prefix: "Bad", Regions: []Region{{Name: "a", Edges: []Edge{{URL: "ws://x"}}}}},
		"one user":    {StateDir: "x", Users: 1, Regions: []Region{{Name: "a", Edges: []Edge{{URL: "ws://x"}}}}},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
