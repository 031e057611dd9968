package client

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// edgeTarget is one place the client may connect to, with what it pins.
type edgeTarget struct {
	url      string
	region   string // from a locate answer; "" for Config.Edges
	key      []byte // Noise static key the edge must prove; nil: any
	certHash []byte // TLS leaf certificate pin; nil: system roots
}

// fallbackTTL is how long the connection loop keeps using Config.Edges
// after locating failed before it tries the locator again (unless every
// one of them failed first).
const fallbackTTL = time.Minute

// edgeList is where the connection loop (and a registration) connects
// next. It is used by one goroutine at a time.
//
// Without Config.LocateURL it rotates through Config.Edges: every session
// end moves to the next one.
//
// With Config.LocateURL it locates first and walks the located edges in
// the locator's order (nearest first), then Config.Edges if any. A failed
// attempt (dial, handshake, or a session that ended quickly) moves down
// the list; a session that stayed up (healthy) starts the next attempt
// from the top again. It locates again when every entry has failed in a
// row, or when the answer's TTL has expired at the time of an attempt. If
// locating fails it keeps an expired list that still has untried entries,
// else falls back to Config.Edges (for fallbackTTL), else reports the
// error (the loop backs off and tries again).
type edgeList struct {
	c       *Client
	now     func() time.Time
	static  []edgeTarget
	list    []edgeTarget // with a locator: the current list; nil until located
	expires time.Time
	next    int // static: rotation counter; located: failures in a row
}

func (c *Client) newEdgeList() *edgeList {
	l := &edgeList{c: c, now: c.now}
	for _, u := range c.cfg.Edges {
		l.static = append(l.static, edgeTarget{url: u, key: c.cfg.ServerKey, certHash: c.cfg.CertHash})
	}
	if c.cfg.LocateURL == "" {
		l.list = l.static
	}
	return l
}

// ensure makes the list usable, locating when needed.
func (l *edgeList) ensure(ctx context.Context) error {
	if l.c.cfg.LocateURL == "" {
		if len(l.list) == 0 {
			return ErrNoEdges
		}
		return nil
	}
	now := l.now()
	if l.list != nil && l.next < len(l.list) && now.Before(l.expires) {
		return nil
	}
	loc, err := l.c.locate(ctx)
	switch {
	case err == nil:
		l.list = append(l.c.locatedTargets(loc), l.static...)
		l.expires, l.next = now.Add(loc.TTL), 0
		first := l.list[0]
		l.c.log.Info("client: located edges", "edges", len(loc.Edges), "first", first.url, "region", first.region, "ttl", loc.TTL)
		return nil
	case l.list != nil && l.next < len(l.list):
		l.c.log.Warn("client: locating again failed; keeping the expired edge list", "err", err)
		return nil
	case len(l.static) > 0:
		l.c.log.Warn("client: locating failed; trying the configured edges", "err", err)
		l.list = slices.Clone(l.static)
		l.expires, l.next = now.Add(fallbackTTL), 0
		return nil
	}
	return err
}

// pick returns the target of the next attempt.
func (l *edgeList) pick(ctx context.Context) (edgeTarget, error) {
	if err := l.ensure(ctx); err != nil {
		return edgeTarget{}, err
	}
	return l.list[l.next%len(l.list)], nil
}

// done records how the attempt at the picked target ended: healthy means a
// session stayed up long enough to count as working.
func (l *edgeList) done(healthy bool) {
	if healthy && l.c.cfg.LocateURL != "" {
		l.next = 0
		return
	}
	l.next++
}

// all returns the whole list for one round of attempts (registration),
// locating when needed; the caller reports each attempt with done.
func (l *edgeList) all(ctx context.Context) ([]edgeTarget, error) {
	if err := l.ensure(ctx); err != nil {
		return nil, err
	}
	if l.c.cfg.LocateURL == "" {
		return l.list, nil
	}
	return l.list[l.next:], nil
}

// locate runs Locate against Config.LocateURL, bounded by DialTimeout.
func (c *Client) locate(ctx context.Context) (Located, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	return Locate(ctx, c.cfg.LocateURL, c.cfg.HTTPClient)
}

// locatedTargets turns a locate answer into targets: the WebSocket URL
// when the edge has one, else its WebTransport URL. The Noise key pinned is
// the answer's, unless Config.ServerKey is set (an explicit pin wins; an
// edge with another key then fails its handshake and the client moves on).
// The certificate pin is the answer's cert_hash, else Config.CertHash.
func (c *Client) locatedTargets(loc Located) []edgeTarget {
	out := make([]edgeTarget, 0, len(loc.Edges))
	for _, e := range loc.Edges {
		t := edgeTarget{url: e.WS, region: e.Region, key: e.NoiseKey, certHash: e.CertHash}
		if t.url == "" {
			t.url = e.WT
		}
		if len(c.cfg.ServerKey) > 0 {
			if !bytes.Equal(c.cfg.ServerKey, e.NoiseKey) {
				c.log.Warn("client: located edge has another Noise key than Config.ServerKey; pinning ServerKey", "edge", t.url)
			}
			t.key = c.cfg.ServerKey
		}
		if len(t.certHash) == 0 {
			t.certHash = c.cfg.CertHash
		}
		out = append(out, t)
	}
	return out
}

// maxRetryAfter caps the wait a locator may impose on the client.
const maxRetryAfter = 5 * time.Minute

// retryAfter is the wait a locator or the server asked for
// (LocateError.RetryAfter, or a wire error's retry_after_ms), at most
// maxRetryAfter; 0 if err carries none.
func retryAfter(err error) time.Duration {
	var le *LocateError
	if errors.As(err, &le) {
		return min(le.RetryAfter, maxRetryAfter)
	}
	var we *core.WireError
	if errors.As(err, &we) {
		return min(we.RetryAfter, maxRetryAfter)
	}
	return 0
}
