package region

import (
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
	head uint64
	set  core.MemberSet
}

func newMemberCache() *memberCache { return &memberCache{m: map[string]memberEntry{}} }

const memberCacheMax = 100_000

func (c *memberCache) get(conv string, head uint64) (core.MemberSet, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[conv]
	if !ok || e.head != head {
		return nil, false
	}
	return e.set, true
}

func (c *memberCache) put(conv string, head uint64, set core.MemberSet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= memberCacheMax {
		clear(c.m) // crude but bounded; entries are cheap to reload
	}
	c.m[conv] = memberEntry{head: head, set: set}
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
