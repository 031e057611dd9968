package geo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
)

// RegionFetcher reads the mesh's regions, with their edges, over the
// network. *directory.AdminClient satisfies it (GET /directory/v1/regions
// on one voter).
type RegionFetcher interface {
	Regions(ctx context.Context, linearizable bool) ([]directory.Region, error)
}

// ErrNoCopy is returned (wrapped, with the last read's error) by
// CachedEdges.Edges before any read of the directory has succeeded.
var ErrNoCopy = errors.New("geo: no copy of the directory's edges yet")

// Defaults of a zero CacheConfig.
const (
	DefaultCacheRefresh = 5 * time.Second
	// firstReadRetry caps the wait between reads before the first success.
	firstReadRetry = time.Second
	// warnEvery: of consecutive failed reads, the first and then every
	// warnEvery-th is logged at warn (about once a minute at the default
	// refresh); the others at debug.
	warnEvery = 12
)

// CacheConfig tunes CachedEdges; its zero value works.
type CacheConfig struct {
	// Refresh is how often Run re-reads the directory (default
	// DefaultCacheRefresh). Until the first read succeeds Run retries
	// every min(Refresh, 1 s).
	Refresh time.Duration
	// Timeout bounds one read (default: Refresh).
	Timeout time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// CachedEdges is an EdgeSource for a process that is not a directory voter
// (a `chatmesh edge`): it keeps a copy of the directory's edges, read
// through a RegionFetcher, and answers every Locate from that copy — no
// network round trip per request. Run re-reads it every Refresh; a failed
// read keeps the last good copy, which is served for as long as the
// directory stays unreachable (the edges it lists were right when it was
// read; clients fail over down the list). Only before the first successful
// read does Edges fail (ErrNoCopy, with the cause), which the Locator turns
// into its ErrEdges (a 503).
//
// The copy is mapped like DirectoryEdges: every edge of every healthy
// region at its region's coordinates, with its own health flag. Reads use
// the voter's applied copy (not linearizable: they work without a raft
// leader; a change is seen within a refresh or so).
//
// Safe for concurrent use. It starts no goroutine itself: the owner runs
// Run and waits for it.
type CachedEdges struct {
	src     RegionFetcher
	refresh time.Duration
	timeout time.Duration
	log     *slog.Logger

	readMu sync.Mutex // one read at a time, so a later read never loses to an earlier one

	mu       sync.Mutex
	edges    []Edge
	have     bool
	at       time.Time // when the copy was read
	lastErr  error     // of the last read; nil after a success
	failures int       // consecutive failed reads
}

// NewCachedEdges returns a cache over src with no copy yet: call Refresh
// or run Run.
func NewCachedEdges(src RegionFetcher, cfg CacheConfig) *CachedEdges {
	c := &CachedEdges{src: src, refresh: cmp.Or(cfg.Refresh, DefaultCacheRefresh), log: cfg.Logger}
	c.timeout = cmp.Or(cfg.Timeout, c.refresh)
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Refresh reads the directory once. On success the copy is replaced; on
// failure the previous copy stays and the error is returned. Reads are
// serialised.
func (c *CachedEdges) Refresh(ctx context.Context) error {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	regions, err := c.src.Regions(rctx, false)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.lastErr = err
		c.failures++
		if c.failures == 1 || c.failures%warnEvery == 0 {
			if c.have {
				c.log.Warn("geo: reading the directory's edges failed; serving the last good copy",
					"err", err, "failures", c.failures, "copy_age", time.Since(c.at).Round(time.Second))
			} else {
				c.log.Warn("geo: reading the directory's edges failed; no copy yet (locate answers 503)", "err", err, "failures", c.failures)
			}
		} else {
			c.log.Debug("geo: reading the directory's edges failed", "err", err, "failures", c.failures)
		}
		return fmt.Errorf("geo: read the directory's edges: %w", err)
	}
	if c.failures > 0 && c.have {
		c.log.Info("geo: reading the directory's edges works again", "after_failures", c.failures)
	}
	c.edges, c.have, c.at, c.lastErr, c.failures = edgesOf(regions), true, time.Now(), nil, 0
	return nil
}

// Run reads the directory at once and then every Refresh (every
// min(Refresh, 1 s) until a read has succeeded), until ctx ends.
func (c *CachedEdges) Run(ctx context.Context) {
	for {
		_ = c.Refresh(ctx) // logged; the last good copy stays
		wait := c.refresh
		if _, ok := c.CopiedAt(); !ok {
			wait = min(wait, firstReadRetry)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Edges returns a copy of the last good read. Before any read succeeded
// it returns ErrNoCopy wrapped with the last read's error.
func (c *CachedEdges) Edges(context.Context) ([]Edge, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.have {
		if c.lastErr != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoCopy, c.lastErr)
		}
		return nil, ErrNoCopy
	}
	return slices.Clone(c.edges), nil
}

// CopiedAt reports when the copy served was read, and whether there is
// one.
func (c *CachedEdges) CopiedAt() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at, c.have
}
