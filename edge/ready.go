package edge

import (
	"context"
	"time"

	"github.com/chatmesh/chatmesh/core/pb"
)

// NotServingDetail is the detail of the refusal and of the Disconnect an
// edge sends while its region cannot sequence (Config.Ready): the code is
// UNAVAILABLE, and the client should connect to another edge.
const NotServingDetail = "region not sequencing; connect to another edge"

// watchReady polls Config.Ready until the edge shuts down: every
// ReadyInterval one call, bounded by ReadyTimeout. When the region has
// been not ready for NotReadyGrace in a row (every poll since failing),
// the edge stops serving (stopServing); the first poll that succeeds
// serves again. It runs on a goroutine tracked by e.wg.
func (e *Edge) watchReady() {
	t := time.NewTicker(e.cfg.ReadyInterval)
	defer t.Stop()
	var since time.Time // start of the failing poll that began the current not-ready stretch
	for {
		start := e.cfg.Now()
		ctx, cancel := context.WithTimeout(e.ctx, e.cfg.ReadyTimeout)
		err := e.cfg.Ready(ctx)
		cancel()
		if e.ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			if !since.IsZero() {
				e.log.Debug("region ready", "not_ready_for", e.cfg.Now().Sub(since))
			}
			since = time.Time{}
			e.startServing()
		default:
			if since.IsZero() {
				since = start
				e.log.Debug("region not ready; within the grace period", "err", err, "grace", e.cfg.NotReadyGrace)
			}
			if e.cfg.Now().Sub(since) >= e.cfg.NotReadyGrace {
				e.stopServing(err, since)
			}
		}
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stopServing makes the edge refuse new connections and ends every
// session with Disconnect{UNAVAILABLE, NotServingDetail, reconnect=true},
// once per not-ready stretch (logged once, not per session).
func (e *Edge) stopServing(reason error, since time.Time) {
	e.mu.Lock()
	if e.notServing || e.closing {
		e.mu.Unlock()
		return
	}
	e.notServing = true
	e.notServingSince = since
	var all []*session
	for s := range e.live {
		all = append(all, s)
	}
	e.mu.Unlock()
	e.n.notReadyStops.Add(1)
	e.log.Warn("region cannot sequence: edge stops serving (refusing new sessions, closing the open ones so clients move to another edge)",
		"reason", reason, "not_ready_for", e.cfg.Now().Sub(since), "sessions", len(all))
	for _, s := range all {
		if s.live() {
			e.n.notReadyClosed.Add(1)
		}
		s.terminate(pb.ErrorCode_ERROR_CODE_UNAVAILABLE, NotServingDetail, true)
	}
}

// startServing lets the edge accept sessions again after stopServing.
func (e *Edge) startServing() {
	e.mu.Lock()
	if !e.notServing {
		e.mu.Unlock()
		return
	}
	e.notServing = false
	since := e.notServingSince
	e.mu.Unlock()
	e.log.Info("region ready again: edge serves", "not_ready_for", e.cfg.Now().Sub(since))
}

// serving reports whether the edge accepts sessions now.
func (e *Edge) serving() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.notServing
}
