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
	key string
	Tokens
}

// Tokens is the state of one token bucket; its owner keeps the rate and
// burst (and any lock). The edge's per-session buckets and KeyedLimiter
// share this one arithmetic.
type Tokens struct {
	N    float64   // tokens available at Last
	Last time.Time // when N was computed
}

// Take charges cost tokens at now, refilling rate per second up to burst
// first. It reports whether they were available (and taken) and, if not,
// how long until they will be (for ever, as MaxInt64, when rate <= 0).
func (t *Tokens) Take(now time.Time, cost, rate, burst float64) (bool, time.Duration) {
	if dt := now.Sub(t.Last).Seconds(); dt > 0 {
		t.N = min(burst, t.N+dt*rate)
		t.Last = now
	}
	if t.N >= cost {
		t.N -= cost
		return true, 0
	}
	if rate <= 0 {
		return false, time.Duration(math.MaxInt64)
	}
	return false, time.Duration((cost - t.N) / rate * float64(time.Second))
}

// Refund gives back cost tokens (a later limit refused the request).
func (t *Tokens) Refund(cost, burst float64) { t.N = min(burst, t.N+cost) }

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
	return l.bucket(key, now).Take(now, cost, l.rate, l.burst)
}

// Refund returns cost tokens to key (a request charged here was refused by
// a later limit). Unknown keys are ignored.
func (l *KeyedLimiter) Refund(key string, cost float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.m[key]; ok {
		e.Value.(*keyedBucket).Refund(cost, l.burst)
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
	b := &keyedBucket{key: key, Tokens: Tokens{N: l.burst, Last: now}}
	l.m[key] = l.lru.PushFront(b)
	return b
}
