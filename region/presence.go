package region

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Presence visibility (PROTOCOL.md §7.6): a user's presence — online state
// and last seen, in snapshots and in live events — is shown only to the
// user themselves and to their conversation peers: users who are members
// (not invitees) of at least one conversation with them, 1:1 or group. A
// user who hides last seen (Privacy.HideLastSeen) is shown with
// last_seen_ms = 0 to everyone else, in snapshots and in live events.
//
// The region decides: a presence snapshot holds events only for permitted
// users, and the edge keeps a session subscribed only to the users its
// snapshot returned. Live events are published once (to every edge), with
// last_seen_ms already cleared for users who hide it.
//
// Cost is bounded: a requester's peers are computed from their own
// conversation list — 1:1 peers from the conversation ids alone, group
// peers from the member sets of at most MaxPresenceGroups of their groups
// (one conversation read each, member sets from the member cache) — and
// cached per requester for peerCacheTTL, so re-subscribing costs nothing
// until then. Membership changes reach presence permissions within that
// TTL; a session keeps the subscriptions it was granted until it
// subscribes again.
const (
	// MaxPresenceGroups bounds the groups whose members count as a
	// requester's peers (the first ones by id; 1:1 peers are not bounded).
	MaxPresenceGroups = 1000
	peerCacheTTL      = 5 * time.Second
	privacyCacheTTL   = 5 * time.Second
	peerCacheMax      = 10_000
)

// peers is what one user may see presence of.
type peers struct {
	direct map[string]struct{} // 1:1 peers
	groups []core.MemberSet    // member sets of groups the user is a member of
	at     time.Time
}

func (p *peers) has(self, u string) bool {
	if u == self {
		return true
	}
	if _, ok := p.direct[u]; ok {
		return true
	}
	for _, g := range p.groups {
		if _, ok := g[u]; ok {
			return true
		}
	}
	return false
}

// presenceCache holds peers per requester and privacy settings per user,
// each for a short TTL, bounded in entries (cleared when full, like the
// other caches: entries are cheap to recompute).
type presenceCache struct {
	now     func() time.Time
	mu      sync.Mutex
	peers   map[string]*peers
	privacy map[string]privacyEntry
}

type privacyEntry struct {
	p  core.Privacy
	at time.Time
}

func newPresenceCache(now func() time.Time) *presenceCache {
	return &presenceCache{now: now, peers: map[string]*peers{}, privacy: map[string]privacyEntry{}}
}

// peersOf returns the peers of user, computed at most once per TTL.
func (a *API) peersOf(ctx context.Context, user string) (*peers, error) {
	pc := a.r.presence
	now := pc.now()
	pc.mu.Lock()
	p := pc.peers[user]
	pc.mu.Unlock()
	if p != nil && now.Sub(p.at) < peerCacheTTL {
		return p, nil
	}
	convs, err := a.r.store.UserConversations(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("peers of %s: %w", user, err)
	}
	p = &peers{direct: map[string]struct{}{}, at: now}
	for _, conv := range convs {
		if x, y, ok := core.ParseDirect(conv); ok {
			switch user {
			case x:
				p.direct[y] = struct{}{}
			case y:
				p.direct[x] = struct{}{}
			}
			continue
		}
		if !core.IsGroupID(conv) || len(p.groups) >= MaxPresenceGroups {
			continue
		}
		_, set, err := a.r.loadMembers(ctx, conv)
		if errors.Is(err, core.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("peers of %s: %s: %w", user, conv, err)
		}
		if _, member := set[user]; member { // an invitation is not membership
			p.groups = append(p.groups, set)
		}
	}
	pc.mu.Lock()
	if len(pc.peers) >= peerCacheMax {
		clear(pc.peers)
	}
	pc.peers[user] = p
	pc.mu.Unlock()
	return p, nil
}

// cachedPrivacy returns a user's settings, at most privacyCacheTTL old
// (exact on the region that changed them: setPrivacy forgets the entry).
func (a *API) cachedPrivacy(ctx context.Context, user string) (core.Privacy, error) {
	pc := a.r.presence
	now := pc.now()
	pc.mu.Lock()
	e, ok := pc.privacy[user]
	pc.mu.Unlock()
	if ok && now.Sub(e.at) < privacyCacheTTL {
		return e.p, nil
	}
	p, err := a.r.store.Privacy(ctx, user)
	if err != nil {
		return core.Privacy{}, err
	}
	pc.mu.Lock()
	if len(pc.privacy) >= peerCacheMax {
		clear(pc.privacy)
	}
	pc.privacy[user] = privacyEntry{p: p, at: now}
	pc.mu.Unlock()
	return p, nil
}

// presenceSnapshot answers presence_subscribe: events for the requested
// users the requester may see (see the top of this file), in request
// order, without duplicates. The edge subscribes the session to exactly
// the users returned.
func (a *API) presenceSnapshot(ctx context.Context, dev core.DeviceKey, users []string) (*pb.Response, error) {
	if len(users) > core.MaxPresenceUsers {
		return nil, fmt.Errorf("presence: more than %d users: %w", core.MaxPresenceUsers, core.ErrInvalidArgument)
	}
	p, err := a.peersOf(ctx, dev.User)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	dup := make(map[string]bool, len(users))
	var permitted []string
	for _, u := range users {
		if !dup[u] && p.has(dev.User, u) {
			permitted = append(permitted, u)
		}
		dup[u] = true
	}
	out := &pb.PresenceSnapshot{}
	if len(permitted) == 0 {
		return &pb.Response{Body: &pb.Response_Presence{Presence: out}}, nil
	}
	routes, err := a.r.store.Routes(ctx, permitted)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	seen, err := a.r.store.LastSeen(ctx, permitted)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	online := map[string]bool{}
	for _, rt := range routes {
		online[rt.Device.User] = true
	}
	for _, u := range permitted {
		ls := seen[u]
		if ls != 0 && u != dev.User {
			priv, err := a.cachedPrivacy(ctx, u)
			if err != nil && !errors.Is(err, core.ErrNotFound) {
				return nil, fmt.Errorf("presence: %w", err)
			}
			if priv.HideLastSeen {
				ls = 0
			}
		}
		out.Users = append(out.Users, &pb.PresenceEvent{UserId: u, Online: online[u], LastSeenMs: ls})
	}
	return &pb.Response{Body: &pb.Response_Presence{Presence: out}}, nil
}

// hideLastSeen clears a live event's last seen when its user hides it. It
// reads the store (not the cache), so a change applies to the next event
// at once; if the settings cannot be read it hides (fails closed).
func (a *API) hideLastSeen(ctx context.Context, ev *pb.PresenceEvent) {
	if ev.GetLastSeenMs() == 0 {
		return
	}
	p, err := a.r.store.Privacy(ctx, ev.GetUserId())
	if err != nil {
		a.r.log.Warn("presence: privacy settings unreadable; hiding last seen", "err", err)
		ev.LastSeenMs = 0
		return
	}
	if p.HideLastSeen {
		ev.LastSeenMs = 0
	}
}

// setPrivacy stores the caller's privacy settings, then publishes their
// current presence so that subscribed peers replace (or clear) the last
// seen they hold.
func (a *API) setPrivacy(ctx context.Context, dev core.DeviceKey, req *pb.SetPrivacyRequest) (*pb.Response, error) {
	switch req.GetAddPolicy() {
	case pb.AddPolicy_ADD_POLICY_UNSPECIFIED, pb.AddPolicy_ADD_POLICY_EVERYONE, pb.AddPolicy_ADD_POLICY_CONTACTS:
	default:
		return nil, fmt.Errorf("set privacy: add policy %d: %w", req.GetAddPolicy(), core.ErrInvalidArgument)
	}
	p := core.Privacy{HideLastSeen: req.GetHideLastSeen(), AddPolicy: req.GetAddPolicy()}
	if err := a.r.store.SetPrivacy(ctx, dev.User, p); err != nil {
		return nil, fmt.Errorf("set privacy %s: %w", dev.User, err)
	}
	pc := a.r.presence
	pc.mu.Lock()
	delete(pc.privacy, dev.User)
	pc.mu.Unlock()

	users := []string{dev.User}
	routes, err := a.r.store.Routes(ctx, users)
	if err != nil {
		return nil, fmt.Errorf("set privacy %s: %w", dev.User, err)
	}
	seen, err := a.r.store.LastSeen(ctx, users)
	if err != nil {
		return nil, fmt.Errorf("set privacy %s: %w", dev.User, err)
	}
	ev := &pb.PresenceEvent{UserId: dev.User, Online: len(routes) > 0, LastSeenMs: seen[dev.User]}
	if err := a.publishPresence(ctx, ev); err != nil {
		return nil, err
	}
	return &pb.Response{Body: &pb.Response_Empty{Empty: &pb.Empty{}}}, nil
}
