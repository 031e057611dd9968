package sim

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/sim/check"
)

// Voter is one directory voter the prober talks to.
type Voter struct {
	Name   string
	Client *directory.AdminClient
}

// prober records a directory history for the linearizability check: a
// linearizable read of a conversation's home from a random voter every
// ReadEvery, and every MoveEvery a planned move (a compare-and-set on the
// epoch just read) of a conversation to another healthy region, from
// whichever voter answers. The failure detector's own moves happen
// between them; check.DirModel allows for those.
type prober struct {
	voters    []Voter
	convs     []string // the conversations, fixed once the traffic started
	rng       *rand.Rand
	record    func(check.DirOp)
	readEvery time.Duration
	moveEvery time.Duration
	timeout   time.Duration
	moves     int
}

func (p *prober) run(ctx context.Context) {
	if len(p.voters) == 0 {
		return
	}
	read := time.NewTicker(p.readEvery)
	defer read.Stop()
	var move <-chan time.Time
	if p.moveEvery > 0 {
		t := time.NewTicker(p.moveEvery)
		defer t.Stop()
		move = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-read.C:
			p.readOne(ctx)
		case <-move:
			p.moveOne(ctx)
		}
	}
}

func (p *prober) pick() (Voter, string, bool) {
	if len(p.convs) == 0 {
		return Voter{}, "", false
	}
	return p.voters[p.rng.IntN(len(p.voters))], p.convs[p.rng.IntN(len(p.convs))], true
}

// readOne records one linearizable read; a failed read says nothing and
// is not recorded.
func (p *prober) readOne(ctx context.Context) (check.DirOp, bool) {
	v, conv, ok := p.pick()
	if !ok {
		return check.DirOp{}, false
	}
	rctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	op := check.DirOp{Kind: check.DirRead, Voter: v.Name, Conv: conv, Call: time.Now()}
	h, err := v.Client.Conv(rctx, conv, true)
	op.Return = time.Now()
	if err != nil {
		return op, false
	}
	op.Home, op.Epoch = h.Region, h.Epoch
	p.record(op)
	return op, true
}

// moveOne reads a conversation, then moves it to another healthy region
// with a compare-and-set on the epoch read.
func (p *prober) moveOne(ctx context.Context) {
	cur, ok := p.readOne(ctx)
	if !ok || cur.Epoch == 0 {
		return
	}
	v := p.voters[p.rng.IntN(len(p.voters))]
	rctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	regions, err := v.Client.Regions(rctx, false)
	if err != nil {
		return
	}
	var to []string
	for _, r := range regions {
		if r.Healthy && r.Name != cur.Home {
			to = append(to, r.Name)
		}
	}
	if len(to) == 0 {
		return
	}
	op := check.DirOp{Kind: check.DirMove, Voter: v.Name, Conv: cur.Conv, Expect: cur.Epoch, To: to[p.rng.IntN(len(to))], Call: time.Now()}
	res, err := v.Client.Apply(rctx, directory.Command{Op: directory.OpSetConvHome, Conv: op.Conv, Home: op.To, ExpectEpoch: op.Expect})
	op.Return = time.Now()
	var fenced *directory.EpochError
	switch {
	case err == nil:
		op.OK, op.Home, op.Epoch = true, res.Home, res.Epoch
		p.moves++
	case errors.As(err, &fenced):
		op.Home, op.Epoch = res.Home, fenced.Stored
	case errors.Is(err, directory.ErrRegionUnhealthy), errors.Is(err, directory.ErrUnknownRegion):
		// Refused for the target's health: tells nothing about the epoch.
	default:
		op.Unknown = true // a timeout, no leader, a lost reply: may yet apply
	}
	p.record(op)
}
