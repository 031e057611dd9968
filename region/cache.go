package region

import (
	"container/list"
	"context"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// memberCache keeps each conversation's member set together with the head
// seq it was valid at. Membership only changes through appends, so a cached
// set is valid exactly while the conversation's head equals the cached head
// (or the sequencer itself applied the change).
type memberCache struct {
	mu sync.Mutex
	m  map[string]memberEntry
}

type memberEntry struct {
	head    uint64
	members []core.Member // members and invitations
	set     core.MemberSet
}

func newMemberCache() *memberCache { return &memberCache{m: map[string]memberEntry{}} }

const memberCacheMax = 100_000

func (c *memberCache) get(conv string, head uint64) (memberEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[conv]
	if !ok || e.head != head {
		return memberEntry{}, false
	}
	return e, true
}

func (c *memberCache) put(conv string, head uint64, members []core.Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= memberCacheMax {
		clear(c.m) // crude but bounded; entries are cheap to reload
	}
	c.m[conv] = memberEntry{head: head, members: members, set: core.NewMemberSet(members)}
}

// advance moves conv's cached members from head from to head to, when an
// entry between them left the membership as it was (a user message). It
// does nothing if the cache does not hold conv at from: the next reader
// loads the members at the new head, and the entries after it advance
// that.
func (c *memberCache) advance(conv string, from, to uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[conv]; ok && e.head == from {
		e.head = to
		c.m[conv] = e
	}
}

// loadMembers returns the conversation and its member set (invitations
// excluded), from cache when the head has not moved.
func (r *Region) loadMembers(ctx context.Context, conv string) (core.Conversation, core.MemberSet, error) {
	c, e, err := r.loadConv(ctx, conv)
	return c, e.set, err
}

// loadConv returns the conversation and its members and invitations,
// from cache when the head has not moved.
func (r *Region) loadConv(ctx context.Context, conv string) (core.Conversation, memberEntry, error) {
	c, err := r.store.Conversation(ctx, conv)
	if err != nil {
		return core.Conversation{}, memberEntry{}, err
	}
	if e, ok := r.members.get(conv, c.Head); ok {
		return c, e, nil
	}
	ms, err := r.store.Members(ctx, conv)
	if err != nil {
		return core.Conversation{}, memberEntry{}, err
	}
	r.members.put(conv, c.Head, ms)
	e, _ := r.members.get(conv, c.Head)
	return c, e, nil
}

// deviceCache keeps users' device lists for a short time; they change only
// on registration, and a stale list only delays a push notification.
type deviceCache struct {
	mu  sync.Mutex
	now func() time.Time
	ttl time.Duration
	m   map[string]deviceEntry
}

type deviceEntry struct {
	devs []core.Device
	at   time.Time
}

func newDeviceCache(now func() time.Time, ttl time.Duration) *deviceCache {
	return &deviceCache{now: now, ttl: ttl, m: map[string]deviceEntry{}}
}

func (c *deviceCache) devices(ctx context.Context, st core.Store, user string) ([]core.Device, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[user]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < c.ttl {
		return e.devs, nil
	}
	devs, err := st.Devices(ctx, user)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.m) >= memberCacheMax {
		clear(c.m)
	}
	c.m[user] = deviceEntry{devs: devs, at: now}
	c.mu.Unlock()
	return devs, nil
}

func (c *deviceCache) forget(user string) {
	c.mu.Lock()
	delete(c.m, user)
	c.mu.Unlock()
}

// stateCache holds the sequencer's core.ConvState per conversation, bounded
// by estimated bytes with least-recently-used eviction. Each conversation
// belongs to one ingress partition, so only that partition's worker reads
// or changes its state; the mutex guards the index, not the states.
type stateCache struct {
	mu    sync.Mutex
	max   int
	bytes int
	ll    *list.List // front: most recently used; values *stateItem
	m     map[string]*list.Element
}

type stateItem struct {
	conv string
	st   *core.ConvState
	size int
}

func newStateCache(maxBytes int) *stateCache {
	return &stateCache{max: maxBytes, ll: list.New(), m: map[string]*list.Element{}}
}

func (c *stateCache) get(conv string) *core.ConvState {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[conv]
	if !ok {
		return nil
	}
	c.ll.MoveToFront(e)
	it := e.Value.(*stateItem)
	// Re-estimate: the state grows in place as entries are applied.
	n := it.st.SizeEstimate()
	c.bytes += n - it.size
	it.size = n
	c.evictLocked()
	return it.st
}

func (c *stateCache) put(conv string, st *core.ConvState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[conv]; ok {
		it := e.Value.(*stateItem)
		c.bytes -= it.size
		it.st, it.size = st, st.SizeEstimate()
		c.bytes += it.size
		c.ll.MoveToFront(e)
	} else {
		it := &stateItem{conv: conv, st: st, size: st.SizeEstimate()}
		c.m[conv] = c.ll.PushFront(it)
		c.bytes += it.size
	}
	c.evictLocked()
}

// clear forgets every cached state.
func (c *stateCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.m)
	c.bytes = 0
}

// drop removes conv's state and reports whether there was one. It never
// reads the state itself, so any goroutine may call it.
func (c *stateCache) drop(conv string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[conv]
	if ok {
		c.bytes -= e.Value.(*stateItem).size
		c.ll.Remove(e)
		delete(c.m, conv)
	}
	return ok
}

// evictLocked drops least recently used states over the bound, never the
// most recent one (the state in use).
func (c *stateCache) evictLocked() {
	for c.bytes > c.max && c.ll.Len() > 1 {
		e := c.ll.Back()
		it := e.Value.(*stateItem)
		c.bytes -= it.size
		c.ll.Remove(e)
		delete(c.m, it.conv)
	}
}

// invitedAt reports whether user holds a pending invitation in members,
// and the seq of the entry that invited them.
func invitedAt(members []core.Member, user string) (uint64, bool) {
	for _, m := range members {
		if m.User == user && m.Invited {
			return m.JoinedSeq, true
		}
	}
	return 0, false
}
