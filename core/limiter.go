package core

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// KeyedLimiter is a set of token buckets, one per key (a client IP, a pair
// of devices, ...), with bounded memory: it holds at most MaxKeys buckets
// and evicts the least recently charged one to make room. An evicted key
// starts again with a full bucket, so eviction only ever forgives; to get
// a key of its own evicted an abuser must charge MaxKeys other keys after
// it, each of which costs it a request against the other limits in front
// of this one.
//
// Time is a parameter (core reads no clock). Safe for concurrent use.
type KeyedLimiter struct {
	rate, burst float64
	maxKeys     int

	mu  sync.Mutex
	lru *list.List // of *keyedBucket, most recently charged first
	m   map[string]*list.Element
}

type keyedBucket struct {
	key    string
	tokens float64
	last   time.Time
}

// NewKeyedLimiter makes a limiter that refills rate tokens per second up to
// burst for each key, holding at most maxKeys keys (minimum 1).
func NewKeyedLimiter(rate float64, burst int, maxKeys int) *KeyedLimiter {
	return &KeyedLimiter{rate: rate, burst: float64(max(burst, 1)), maxKeys: max(maxKeys, 1),
		lru: list.New(), m: map[string]*list.Element{}}
}

// Allow charges cost tokens to key at now. It reports whether they were
// available (and taken) and, if not, how long until they will be. A cost
// above the burst is charged as the burst (a request is never refused for
// ever).
func (l *KeyedLimiter) Allow(key string, now time.Time, cost float64) (bool, time.Duration) {
	cost = min(max(cost, 0), l.burst)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt*l.rate)
		b.last = now
	}
	if b.tokens >= cost {
		b.tokens -= cost
		return true, 0
	}
	if l.rate <= 0 {
		return false, time.Duration(math.MaxInt64)
	}
	return false, time.Duration((cost - b.tokens) / l.rate * float64(time.Second))
}

// Refund returns cost tokens to key (a request charged here was refused by
// a later limit). Unknown keys are ignored.
func (l *KeyedLimiter) Refund(key string, cost float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.m[key]; ok {
		b := e.Value.(*keyedBucket)
		b.tokens = min(l.burst, b.tokens+cost)
	}
}

// Len is the number of keys held.
func (l *KeyedLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// bucket returns key's bucket, moved to the front, creating it (full) and
// evicting the least recently charged bucket if the limiter is full.
func (l *KeyedLimiter) bucket(key string, now time.Time) *keyedBucket {
	if e, ok := l.m[key]; ok {
		l.lru.MoveToFront(e)
		return e.Value.(*keyedBucket)
	}
	if len(l.m) >= l.maxKeys {
		old := l.lru.Back()
		l.lru.Remove(old)
		delete(l.m, old.Value.(*keyedBucket).key)
	}
	b := &keyedBucket{key: key, tokens: l.burst, last: now}
	l.m[key] = l.lru.PushFront(b)
	return b
}
