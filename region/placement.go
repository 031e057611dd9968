package region

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region/directory"
)

// Placement says where users and conversations are homed (issue 7, the
// mesh). The sequencer reads it for every record from memory (the
// directory's applied copy), and writes to it only when a conversation is
// created or a stale copy has to be resolved, so the directory is never on
// the per-message path. A nil Config.Placement is the single-region
// deployment: every conversation is homed here at Config.Epoch.
type Placement interface {
	// Conv returns a conversation's home region and owner epoch from the
	// local copy; ok is false when the directory has no entry (yet).
	Conv(conv string) (home string, epoch uint64, ok bool)
	// SyncConv is Conv after a linearizable read barrier: it reflects
	// every directory write that completed before the call.
	SyncConv(ctx context.Context, conv string) (home string, epoch uint64, ok bool, err error)
	// ClaimConv homes an absent conversation at home with epoch 1 (a
	// compare-and-set from "absent"), recording owner (the user whose home
	// placed it; "" when unknown). When the conversation already has a
	// home, that home and epoch are returned without error.
	ClaimConv(ctx context.Context, conv, home, owner string) (string, uint64, error)
	// UserHome returns a user's home region from the local copy.
	UserHome(user string) (string, bool)
	// ClaimUser homes a user at region unless they already have a home;
	// it returns the user's home.
	ClaimUser(ctx context.Context, user, region string) (string, error)
	// Regions names every region of the mesh (the link targets).
	Regions() []string
}

// DirectoryPlacement is the Placement of a region that runs a directory
// voter (region/directory).
type DirectoryPlacement struct{ D *directory.Directory }

var _ Placement = DirectoryPlacement{}

// Conv implements Placement.
func (p DirectoryPlacement) Conv(conv string) (string, uint64, bool) {
	h, ok := p.D.Conv(conv)
	return h.Region, h.Epoch, ok
}

// SyncConv implements Placement.
func (p DirectoryPlacement) SyncConv(ctx context.Context, conv string) (string, uint64, bool, error) {
	h, ok, err := p.D.ConvLinearizable(ctx, conv)
	return h.Region, h.Epoch, ok, err
}

// ClaimConv implements Placement.
func (p DirectoryPlacement) ClaimConv(ctx context.Context, conv, home, owner string) (string, uint64, error) {
	for attempt := 0; ; attempt++ {
		epoch, err := p.D.ClaimConvHome(ctx, conv, home, 0, owner)
		if err == nil {
			// Our copy applies the claim before the next record of the
			// conversation is placed (else it would look absent again).
			if err := p.D.Sync(ctx); err != nil {
				return "", 0, fmt.Errorf("claim %s for %s: %w", conv, home, err)
			}
			return home, epoch, nil
		}
		var fenced *directory.EpochError
		if !errors.As(err, &fenced) && !errors.Is(err, directory.ErrUncertain) {
			return "", 0, fmt.Errorf("claim %s for %s: %w", conv, home, err)
		}
		// Someone homed it first (or our write's outcome is unknown): the
		// stored home wins.
		h, ok, err := p.D.ConvLinearizable(ctx, conv)
		if err != nil {
			return "", 0, fmt.Errorf("claim %s for %s: %w", conv, home, err)
		}
		if ok {
			return h.Region, h.Epoch, nil
		}
		if attempt >= 3 {
			return "", 0, fmt.Errorf("claim %s for %s: still absent after %d attempts: %w", conv, home, attempt+1, directory.ErrUncertain)
		}
	}
}

// UserHome implements Placement.
func (p DirectoryPlacement) UserHome(user string) (string, bool) { return p.D.UserHome(user) }

// ClaimUser implements Placement.
func (p DirectoryPlacement) ClaimUser(ctx context.Context, user, region string) (string, error) {
	home, err := p.D.SetUserHome(ctx, user, region, true)
	if errors.Is(err, directory.ErrExists) {
		if h, ok := p.D.UserHome(user); ok {
			return h, nil
		}
		if h, ok, err := p.D.UserHomeLinearizable(ctx, user); err == nil && ok {
			return h, nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("claim user %s for %s: %w", user, region, err)
	}
	return home, nil
}

// Regions implements Placement.
func (p DirectoryPlacement) Regions() []string {
	rs := p.D.Regions()
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

// errNotHome: no region could take the record (the directory is
// unreachable, or copies disagree for longer than MaxHops forwards). The
// origin gets UNAVAILABLE with retry_after_ms and resends; nothing was
// stored.
var errNotHome = errors.New("region: no home region could take the record")

// claimTimeout bounds one directory write made by the sequencer.
const claimTimeout = 5 * time.Second

// placeStep decides where the step's conversation is sequenced, before
// anything else looks at it:
//
//   - homed here: the step runs at the directory's epoch;
//   - homed elsewhere: the record is forwarded to its home (forwarded);
//   - not in the directory yet: a creating record (the first send of a
//     1:1 by one of its two users, to an existing peer; create_group by
//     the group's creator) goes to the initiator's home region, which
//     claims it; a conversation that exists in the store but not in the
//     directory (stored before the mesh, or created a moment ago by a
//     region whose directory write we have not applied yet) is claimed by
//     this region, and the claim answers with the real home if another
//     region has it; anything else runs here, unplaced: the step refuses
//     it as for a conversation that does not exist, and never appends
//     (appendEntry refuses an unplaced write with UNAVAILABLE).
//
// A record another region forwarded to us is checked against a
// linearizable read first: the forwarder saw a directory at least as new.
func (r *Region) placeStep(ctx context.Context, b *batch, in *pb.IngressRecord) (forwarded bool, err error) {
	conv := core.IngressConv(in)
	b.place = stepPlace{conv: conv}
	p := r.cfg.Placement
	if p == nil || conv == "" {
		b.place.known, b.place.epoch = true, r.cfg.Epoch
		return false, nil
	}
	self := r.cfg.Name
	home, epoch, ok := p.Conv(conv)
	if (!ok || home != self) && in.GetHops() > 0 && b.dirDown == nil {
		sctx, cancel := context.WithTimeout(ctx, claimTimeout)
		h, e, o, err := p.SyncConv(sctx, conv)
		cancel()
		if err == nil {
			home, epoch, ok = h, e, o
		} else {
			b.dirDown = err
		}
	}
	if ok {
		if home == self {
			b.place.known, b.place.epoch = true, epoch
			return false, nil
		}
		return true, r.forward(b, in, conv, home)
	}
	want, owner, claim, err := r.wantHome(ctx, b, in, conv)
	if err != nil || !claim {
		return false, err
	}
	if want != self && in.GetHops() == 0 {
		return true, r.forward(b, in, conv, want)
	}
	if b.dirDown != nil {
		return false, fmt.Errorf("conversation %s: %w: %w (directory: %v)", conv, errNotHome, core.ErrUnavailable, b.dirDown)
	}
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	home, epoch, err = p.ClaimConv(cctx, conv, self, owner)
	cancel()
	if err != nil {
		b.dirDown = err
		r.log.Warn("directory: claiming a conversation failed", "conv", conv, "err", err)
		return false, fmt.Errorf("conversation %s: %w: %w (%v)", conv, errNotHome, core.ErrUnavailable, err)
	}
	if home != self {
		return true, r.forward(b, in, conv, home)
	}
	r.stats.claims.Add(1)
	b.place.known, b.place.epoch = true, epoch
	return false, nil
}

// wantHome says whether a conversation absent from the directory is to be
// claimed now, for which region, and who owns it (the creator or 1:1
// initiator; "" for a conversation found in the store) (see placeStep).
func (r *Region) wantHome(ctx context.Context, b *batch, in *pb.IngressRecord, conv string) (string, string, bool, error) {
	sender := in.GetOrigin().GetDevice().GetUserId()
	initiator := func() string {
		if h, ok := r.cfg.Placement.UserHome(sender); ok && h != "" {
			return h
		}
		return r.cfg.Name
	}
	switch op := in.Op.(type) {
	case *pb.IngressRecord_CreateGroup:
		if core.GroupCreatedBy(conv, sender) {
			return initiator(), sender, true, nil
		}
		return "", "", false, nil
	case *pb.IngressRecord_Send:
		if a, c, direct := core.ParseDirect(op.Send.GetConvId()); direct && (sender == a || sender == c) {
			peer := a
			if peer == sender {
				peer = c
			}
			_, err := b.st.User(ctx, peer)
			if err == nil {
				return initiator(), sender, true, nil
			}
			if !errors.Is(err, core.ErrNotFound) {
				return "", "", false, fmt.Errorf("send to %s: %w", conv, err)
			}
		}
	}
	_, err := b.st.Conversation(ctx, conv)
	if errors.Is(err, core.ErrNotFound) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("conversation %s: %w", conv, err)
	}
	// Claimed for ourselves: the claim returns the real home if another
	// region homed it meanwhile.
	return r.cfg.Name, "", true, nil
}

// refenced handles a step the store fenced: our copy of the directory is
// behind. It re-reads the directory and forwards the record to the
// current home, or retries it here at the newer epoch.
func (r *Region) refenced(ctx context.Context, b *batch, in *pb.IngressRecord) error {
	conv := b.place.conv
	if b.dirDown != nil {
		return fmt.Errorf("conversation %s fenced, directory unreachable: %w: %w (%v)", conv, errNotHome, core.ErrUnavailable, b.dirDown)
	}
	sctx, cancel := context.WithTimeout(ctx, claimTimeout)
	home, epoch, ok, err := r.cfg.Placement.SyncConv(sctx, conv)
	cancel()
	if err != nil {
		b.dirDown = err
	}
	switch {
	case err != nil:
		return fmt.Errorf("conversation %s fenced, directory unreachable: %w: %w (%v)", conv, errNotHome, core.ErrUnavailable, err)
	case ok && home != r.cfg.Name:
		r.log.Info("deposed: forwarding to the conversation's new home", "conv", conv, "home", home, "epoch", epoch)
		return r.forward(b, in, conv, home)
	case ok && epoch > b.place.epoch:
		// Still ours, at a newer epoch than the step used: run it again.
		return fmt.Errorf("conversation %s: owner epoch now %d (step used %d): retry: %w", conv, epoch, b.place.epoch, core.ErrUnavailable)
	default:
		r.log.Error("store fenced a conversation the directory homes here at the same epoch", "conv", conv, "epoch", epoch, "known", ok)
		return fmt.Errorf("conversation %s: store and directory disagree on the owner epoch: %w: %w", conv, errNotHome, core.ErrUnavailable)
	}
}

// HomeChange is a conversation whose home or owner epoch changed, or
// (Resync) word that changes were missed: forget what depends on them.
type HomeChange struct {
	Conv, Home string
	Epoch      uint64
	Resync     bool
}

// HomeWatcher is a Placement that streams home changes as its copy
// applies them (DirectoryPlacement does). The region watches them to
// stop caching conversations that moved away and to log moves.
type HomeWatcher interface {
	WatchHomes(ctx context.Context) <-chan HomeChange
}

// WatchHomes implements HomeWatcher over directory.Watch.
func (p DirectoryPlacement) WatchHomes(ctx context.Context) <-chan HomeChange {
	src := p.D.Watch(ctx)
	out := make(chan HomeChange, 64)
	go func() {
		defer close(out)
		for c := range src {
			var hc HomeChange
			switch c.Kind {
			case directory.ChangeConv:
				hc = HomeChange{Conv: c.Key, Home: c.Home, Epoch: c.Epoch}
			case directory.ChangeResync:
				hc = HomeChange{Resync: true}
			default:
				continue
			}
			select {
			case out <- hc:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// watchHomes follows the placement's changes until ctx ends: a
// conversation that moved away leaves the state cache (its new home
// writes now), and every move of a conversation into or out of this
// region is counted and logged for operators.
func (r *Region) watchHomes(ctx context.Context, w HomeWatcher) {
	for c := range w.WatchHomes(ctx) {
		switch {
		case c.Resync:
			// Moves were missed: every cached state reloads from the store.
			r.states.clear()
		case c.Home != r.cfg.Name:
			// drop, not get: the state belongs to the partition worker
			// (get re-estimates its size, reading it from this goroutine).
			if r.states.drop(c.Conv) {
				r.stats.movedAway.Add(1)
				r.log.Info("conversation moved away; forwarding its records from now on", "conv", c.Conv, "home", c.Home, "epoch", c.Epoch)
			}
		case c.Epoch > 1:
			// A state cached from an earlier ownership may lack cursor
			// moves the other home made: reload it.
			r.states.drop(c.Conv)
			r.stats.movedIn.Add(1)
			r.log.Info("conversation moved here", "conv", c.Conv, "epoch", c.Epoch)
		}
	}
}
