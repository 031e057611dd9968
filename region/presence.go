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
// Cost is bounded. Each snapshot reads the requester's conversation list
// (one read, so 1:1 peers and the list of groups are always current); the
// member sets of at most MaxPresenceGroups of their groups come from a
// region-wide cache that keeps each group's set for groupCacheTTL (a miss
// costs one conversation read, plus a member read when the member cache
// has not got the head; a cached set that lacks the requester is reloaded).
// Other members joining or leaving an existing group thus reach presence
// permissions within groupCacheTTL; a session keeps the subscriptions it
// was granted until it subscribes again. Snapshots read privacy settings
// through a cache too (privacyCacheTTL): a change applies at once to live
// events and to this process's snapshots, and within privacyCacheTTL to
// snapshots served by other processes of the region.
const (
	// MaxPresenceGroups bounds the groups whose members count as a
	// requester's peers (the first ones by id; 1:1 peers are not bounded).
	MaxPresenceGroups = 1000
	groupCacheTTL     = 5 * time.Second
	privacyCacheTTL   = 5 * time.Second
	presenceCacheMax  = 10_000
)

// peers is what one user may see presence of.
type peers struct {
	direct map[string]struct{} // 1:1 peers
	groups []core.MemberSet    // member sets of groups the user is a member of
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

// presenceCache holds groups' member sets and users' privacy settings,
// each for a short TTL, bounded in entries (cleared when full, like the
// other caches: entries are cheap to reload).
type presenceCache struct {
	now     func() time.Time
	mu      sync.Mutex
	groups  map[string]groupEntry
	privacy map[string]privacyEntry
}

type groupEntry struct {
	set core.MemberSet // nil: the group does not exist
	at  time.Time
}

type privacyEntry struct {
	p  core.Privacy
	at time.Time
}

func newPresenceCache(now func() time.Time) *presenceCache {
	return &presenceCache{now: now, groups: map[string]groupEntry{}, privacy: map[string]privacyEntry{}}
}

// groupMembers returns a group's member set, at most groupCacheTTL old
// and holding user (whose conversation list names the group: a cached set
// without them predates their joining, and is reloaded); nil when the
// group does not exist.
func (a *API) groupMembers(ctx context.Context, conv, user string) (core.MemberSet, error) {
	pc := a.r.presence
	now := pc.now()
	pc.mu.Lock()
	e, ok := pc.groups[conv]
	pc.mu.Unlock()
	if _, holds := e.set[user]; ok && holds && now.Sub(e.at) < groupCacheTTL {
		return e.set, nil
	}
	_, set, err := a.r.loadMembers(ctx, conv)
	if err != nil && !errors.Is(err, core.ErrNotFound) {
		return nil, err
	}
	pc.mu.Lock()
	if len(pc.groups) >= presenceCacheMax {
		clear(pc.groups)
	}
	pc.groups[conv] = groupEntry{set: set, at: now}
	pc.mu.Unlock()
	return set, nil
}

// peersOf returns the peers of user.
func (a *API) peersOf(ctx context.Context, user string) (*peers, error) {
	convs, err := a.r.store.UserConversations(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("peers of %s: %w", user, err)
	}
	p := &peers{direct: map[string]struct{}{}}
	loaded := 0 // groups looked at, invitations included: the work is bounded
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
		if !core.IsGroupID(conv) || loaded >= MaxPresenceGroups {
			continue
		}
		loaded++
		set, err := a.groupMembers(ctx, conv, user)
		if err != nil {
			return nil, fmt.Errorf("peers of %s: %s: %w", user, conv, err)
		}
		if _, member := set[user]; member { // an invitation is not membership
			p.groups = append(p.groups, set)
		}
	}
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
	if len(pc.privacy) >= presenceCacheMax {
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
