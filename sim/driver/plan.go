package driver

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// Plan is everything a run does that the seed decides, computed before
// anything connects: who lives where, who talks to whom, who moves when.
// The send schedule (which device sends to which conversation, in which
// order) is drawn from the seed too, as the run goes (see Schedule).
type Plan struct {
	Users   []PlanUser `json:"users"`
	Directs []PlanConv `json:"directs"`
	Groups  []PlanConv `json:"groups"`
	Moves   []PlanMove `json:"moves"`
}

// PlanUser is one user: its home region (where its first device
// registers and connects first) and, if it has one, the region of its
// second device (-1: none).
type PlanUser struct {
	Name   string `json:"name"`
	Region int    `json:"region"`
	Second int    `json:"second"`
}

// PlanConv is a conversation and its users (indexes into Plan.Users). For
// a group, Users[0] is its creator.
type PlanConv struct {
	ID    string `json:"id"`
	Users []int  `json:"users"`
}

// PlanMove closes device Slot (0: first device, 1: second) of User At
// after sending started and reopens it with region To's edges first.
type PlanMove struct {
	At   time.Duration `json:"at"`
	User int           `json:"user"`
	Slot int           `json:"slot"`
	To   int           `json:"to"`
}

// Streams of the seeded generator: the plan and the schedule draw from
// separate streams, so changing a rate does not change the plan.
const (
	streamPlan     = 0x706c616e
	streamSchedule = 0x73636864
)

// NewPlan computes the plan of cfg. It is a pure function of cfg (after
// its defaults): the same Config gives the same Plan.
func NewPlan(cfg Config) (Plan, error) {
	if err := cfg.defaults(); err != nil {
		return Plan{}, err
	}
	return newPlan(&cfg), nil
}

func newPlan(cfg *Config) Plan {
	rng := rand.New(rand.NewPCG(cfg.Seed, streamPlan))
	nr := len(cfg.Regions)
	var p Plan

	// Users, spread evenly over the regions in a seeded order.
	regs := make([]int, cfg.Users)
	for i := range regs {
		regs[i] = i % nr
	}
	rng.Shuffle(len(regs), func(i, j int) { regs[i], regs[j] = regs[j], regs[i] })
	byRegion := make([][]int, nr)
	for i, r := range regs {
		p.Users = append(p.Users, PlanUser{Name: fmt.Sprintf("%s%04d", cfg.Prefix, i), Region: r, Second: -1})
		byRegion[r] = append(byRegion[r], i)
	}
	for _, u := range rng.Perm(cfg.Users)[:cfg.SecondDevices] {
		p.Users[u].Second = otherRegion(rng, p.Users[u].Region, nr)
	}

	// 1:1 pairs, alternately within a region and across regions.
	var local, populated []int // regions with at least 2 users, with at least 1
	for r, us := range byRegion {
		if len(us) >= 2 {
			local = append(local, r)
		}
		if len(us) >= 1 {
			populated = append(populated, r)
		}
	}
	seen := map[string]bool{}
	for k, attempts := 0, 0; len(p.Directs) < cfg.Directs && attempts < 16*cfg.Directs+16; attempts++ {
		same := k%2 == 0
		if len(populated) < 2 {
			same = true
		}
		if len(local) == 0 {
			same = false
		}
		var a, b int
		if same {
			us := byRegion[local[rng.IntN(len(local))]]
			i := rng.IntN(len(us))
			j := (i + 1 + rng.IntN(len(us)-1)) % len(us)
			a, b = us[i], us[j]
		} else {
			a = rng.IntN(cfg.Users)
			var others []int
			for r, us := range byRegion {
				if r != regs[a] {
					others = append(others, us...)
				}
			}
			b = others[rng.IntN(len(others))]
		}
		id := core.DirectConvID(p.Users[a].Name, p.Users[b].Name)
		if seen[id] {
			continue
		}
		seen[id] = true
		p.Directs = append(p.Directs, PlanConv{ID: id, Users: []int{a, b}})
		k++
	}

	// Groups: one member from every populated region first (when the
	// group is large enough), then the rest at random; the creator is a
	// random member.
	nonce := groupNonceBase(cfg.Prefix)
	for g := range cfg.Groups {
		in := map[int]bool{}
		var ms []int
		if cfg.GroupSize >= len(populated) {
			for _, r := range populated {
				u := byRegion[r][rng.IntN(len(byRegion[r]))]
				in[u] = true
				ms = append(ms, u)
			}
		}
		for _, u := range rng.Perm(cfg.Users) {
			if len(ms) >= cfg.GroupSize {
				break
			}
			if !in[u] {
				in[u] = true
				ms = append(ms, u)
			}
		}
		rng.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
		id := core.GroupID(p.Users[ms[0]].Name, fmt.Sprintf("%sg%d", nonce, g))
		p.Groups = append(p.Groups, PlanConv{ID: id, Users: ms})
	}

	// Moves at seeded times in the middle 80 % of the sending time, in
	// time order, each to a region other than where the device is then.
	times := make([]time.Duration, cfg.Moves)
	for i := range times {
		times[i] = time.Duration(float64(cfg.Duration) * (0.1 + 0.8*rng.Float64()))
	}
	slices.Sort(times)
	where := map[[2]int]int{}
	for _, at := range times {
		u := rng.IntN(cfg.Users)
		slot := 0
		if p.Users[u].Second >= 0 {
			slot = rng.IntN(2)
		}
		cur, ok := where[[2]int{u, slot}]
		if !ok {
			cur = p.Users[u].Region
			if slot == 1 {
				cur = p.Users[u].Second
			}
		}
		to := otherRegion(rng, cur, nr)
		where[[2]int{u, slot}] = to
		p.Moves = append(p.Moves, PlanMove{At: at, User: u, Slot: slot, To: to})
	}
	return p
}

// otherRegion draws a region other than r (r itself when there is only one).
func otherRegion(rng *rand.Rand, r, n int) int {
	if n < 2 {
		return r
	}
	return (r + 1 + rng.IntN(n-1)) % n
}

// groupNonceBase makes group nonces ([0-9a-z]) unique per prefix.
func groupNonceBase(prefix string) string {
	h := fnv.New64a()
	h.Write([]byte(prefix))
	return fmt.Sprintf("sim%x", h.Sum64())
}

// SendEvent is one scheduled send: at offset At from the start of
// sending, device Slot of User sends to conversation Conv (an index into
// Plan.Groups when Group, else into Plan.Directs). N numbers the sends of
// a run from 1.
type SendEvent struct {
	At    time.Duration
	N     uint64
	Group bool
	Conv  int
	User  int
	Slot  int
}

// Schedule draws the send schedule of a plan from the seed: 1:1 sends
// every 1/DirectRate and group sends every 1/GroupRate, merged in time
// order, each to a seeded conversation from a seeded member device. It
// is used by one goroutine.
type Schedule struct {
	p            *Plan
	rng          *rand.Rand
	end          time.Duration
	dStep, gStep time.Duration
	nextD, nextG time.Duration
	n            uint64
}

const never = time.Duration(math.MaxInt64)

// NewSchedule returns the send schedule of cfg (what a run of cfg sends,
// in order), without running anything.
func NewSchedule(cfg Config) (*Schedule, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	p := newPlan(&cfg)
	return newSchedule(&p, &cfg), nil
}

// newSchedule starts the schedule of p under cfg (after its defaults).
func newSchedule(p *Plan, cfg *Config) *Schedule {
	s := &Schedule{p: p, rng: rand.New(rand.NewPCG(cfg.Seed, streamSchedule)), end: cfg.Duration, nextD: never, nextG: never}
	if cfg.DirectRate > 0 && len(p.Directs) > 0 {
		s.dStep = max(time.Duration(float64(time.Second)/cfg.DirectRate), time.Microsecond)
		s.nextD = 0
	}
	if cfg.GroupRate > 0 && len(p.Groups) > 0 {
		s.gStep = max(time.Duration(float64(time.Second)/cfg.GroupRate), time.Microsecond)
		s.nextG = 0
	}
	return s
}

// Next returns the next send, or false when the schedule is over
// (past Duration).
func (s *Schedule) Next() (SendEvent, bool) {
	var ev SendEvent
	var convs []PlanConv
	if s.nextD <= s.nextG {
		ev.At, convs = s.nextD, s.p.Directs
		s.nextD += s.dStep
	} else {
		ev.At, ev.Group, convs = s.nextG, true, s.p.Groups
		s.nextG += s.gStep
	}
	if ev.At == never || ev.At >= s.end {
		return SendEvent{}, false
	}
	s.n++
	ev.N = s.n
	ev.Conv = s.rng.IntN(len(convs))
	us := convs[ev.Conv].Users
	ev.User = us[s.rng.IntN(len(us))]
	if s.p.Users[ev.User].Second >= 0 {
		ev.Slot = s.rng.IntN(2)
	}
	return ev, true
}
