package sim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chatmesh/chatmesh/sim/check"
)

// Fault kinds, as recorded in check.Fault.Kind.
const (
	FaultKillRegion         = "kill-region"         // SIGKILL a region's region and edge processes
	FaultKillLeader         = "kill-leader"         // SIGKILL the directory leader's region process
	FaultKillBroker         = "kill-broker"         // SIGKILL a region's broker process
	FaultPartitionDirectory = "partition-directory" // cut a region's voter from every other voter, both ways
	FaultPartitionStore     = "partition-store"     // cut a region from PostgreSQL
	FaultPartitionLinks     = "partition-links"     // cut a region's links, both ways
	FaultOneWayPartition    = "one-way-partition"   // drop a → b bytes on links and directory paths; b → a flows
	FaultLinkLatency        = "link-latency"        // add one-way latency a → b on the link paths
)

// FaultKinds lists every fault class the harness injects.
var FaultKinds = []string{FaultKillRegion, FaultKillLeader, FaultKillBroker, FaultPartitionDirectory,
	FaultPartitionStore, FaultPartitionLinks, FaultOneWayPartition, FaultLinkLatency}

// FaultID names one recorded fault: its index in Faults().
type FaultID int

// activeFault is a network fault in force; the proxies' states are
// derived from the set of them (apply), so overlapping faults compose and
// healing one leaves the others.
type activeFault struct {
	kind    string
	a, b    string        // target region; b: the peer of a one-way partition or latency
	latency time.Duration // link-latency
}

// Faults returns every fault injected so far, in order; End is zero for
// one still in force.
func (m *Mesh) Faults() []check.Fault {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]check.Fault(nil), m.faults...)
}

// record appends a fault that starts now; the caller holds m.mu.
func (m *Mesh) record(kind, target, detail string) FaultID {
	m.faults = append(m.faults, check.Fault{Kind: kind, Target: target, Start: m.cfg.Now(), Detail: detail})
	m.log.Info("fault", "kind", kind, "target", target, "detail", detail)
	return FaultID(len(m.faults) - 1)
}

// end closes the open faults of kinds on target; the caller holds m.mu.
func (m *Mesh) end(target string, kinds ...string) {
	now := m.cfg.Now()
	for i := range m.faults {
		f := &m.faults[i]
		if f.Target == target && f.End.IsZero() && containsString(kinds, f.Kind) {
			f.End = now
			m.log.Info("fault ended", "kind", f.Kind, "target", target)
		}
	}
}

func containsString(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func (m *Mesh) region(name string) (*meshRegion, error) {
	r, ok := m.byName[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownRegion, name)
	}
	return r, nil
}

// KillRegion SIGKILLs region r's region and edge processes (its broker
// keeps running) and records a kill-region fault, which RestartRegion ends.
func (m *Mesh) KillRegion(r string) error {
	reg, err := m.region(r)
	if err != nil {
		return err
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return ErrStopped
	}
	edge, region := reg.edge, reg.region
	m.record(FaultKillRegion, r, "")
	m.mu.Unlock()
	for _, p := range []*childProc{edge, region} {
		if p != nil {
			p.kill()
		}
	}
	return nil
}

// KillLeader finds the directory leader (GET /directory/v1/status on the
// voters), SIGKILLs that region's region process (its edge keeps running)
// and records a kill-leader fault on it; RestartRegion ends it. It returns
// the region killed.
func (m *Mesh) KillLeader(ctx context.Context) (string, error) {
	leader, err := m.Leader(ctx)
	if err != nil {
		return "", err
	}
	reg := m.byName[leader]
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return "", ErrStopped
	}
	p := reg.region
	m.record(FaultKillLeader, leader, "")
	m.mu.Unlock()
	if p != nil {
		p.kill()
	}
	return leader, nil
}

// RestartRegion starts whichever of region r's region and edge processes
// are not running, on the same data and addresses, waits until they are
// ready, and ends r's kill-region and kill-leader faults.
func (m *Mesh) RestartRegion(ctx context.Context, r string) error {
	reg, err := m.region(r)
	if err != nil {
		return err
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return ErrStopped
	}
	regionDown := reg.region == nil || reg.region.exited()
	edgeDown := reg.edge == nil || reg.edge.exited()
	m.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()
	if regionDown {
		if err := m.spawnRegion(reg); err != nil {
			return err
		}
		if err := m.waitRegion(sctx, reg); err != nil {
			return err
		}
	}
	if edgeDown {
		if err := m.startEdge(sctx, reg); err != nil {
			return err
		}
	}
	m.mu.Lock()
	m.end(r, FaultKillRegion, FaultKillLeader)
	m.mu.Unlock()
	return nil
}

// KillBroker SIGKILLs region r's broker process and records a
// kill-broker fault, which RestartBroker ends. Not supported with real
// clusters (MeshConfig.Kafka).
func (m *Mesh) KillBroker(r string) error {
	reg, err := m.region(r)
	if err != nil {
		return err
	}
	if !reg.embedded {
		return fmt.Errorf("%w: %s runs on a real Kafka cluster", ErrNotSupported, r)
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return ErrStopped
	}
	p := reg.broker
	m.record(FaultKillBroker, r, "")
	m.mu.Unlock()
	if p != nil {
		p.kill()
	}
	return nil
}

// RestartBroker starts region r's broker again on the same data and
// address (if it is not running), waits for it, and ends r's kill-broker
// fault.
func (m *Mesh) RestartBroker(ctx context.Context, r string) error {
	reg, err := m.region(r)
	if err != nil {
		return err
	}
	if !reg.embedded {
		return fmt.Errorf("%w: %s runs on a real Kafka cluster", ErrNotSupported, r)
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return ErrStopped
	}
	down := reg.broker == nil || reg.broker.exited()
	m.mu.Unlock()
	if down {
		sctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
		defer cancel()
		// The port may linger for a moment after the kill.
		var err error
		for attempt := 0; attempt < 20; attempt++ {
			if err = m.startBroker(sctx, reg); err == nil || !errors.Is(err, ErrExited) || sctx.Err() != nil {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			return err
		}
	}
	m.mu.Lock()
	m.end(r, FaultKillBroker)
	m.mu.Unlock()
	return nil
}

// PartitionDirectory cuts region r's voter from every other voter, both
// ways (raft and forwarding HTTP), until HealFault or Heal.
func (m *Mesh) PartitionDirectory(r string) (FaultID, error) {
	return m.network(activeFault{kind: FaultPartitionDirectory, a: r}, r, "")
}

// PartitionStore cuts region r from PostgreSQL (open connections are
// reset, new ones refused) until HealFault or Heal.
func (m *Mesh) PartitionStore(r string) (FaultID, error) {
	return m.network(activeFault{kind: FaultPartitionStore, a: r}, r, "")
}

// PartitionLinks cuts region r's links both ways: r's link workers cannot
// reach the other regions' brokers, nor theirs r's, until HealFault or
// Heal.
func (m *Mesh) PartitionLinks(r string) (FaultID, error) {
	return m.network(activeFault{kind: FaultPartitionLinks, a: r}, r, "")
}

// OneWayPartition drops every byte a sends to b on the link and directory
// paths (a's requests to b, and a's replies on b's connections), while b's
// bytes to a flow, until HealFault or Heal.
func (m *Mesh) OneWayPartition(a, b string) (FaultID, error) {
	if a == b {
		return 0, fmt.Errorf("sim: one-way partition of %s from itself", a)
	}
	if _, err := m.region(b); err != nil {
		return 0, err
	}
	return m.network(activeFault{kind: FaultOneWayPartition, a: a, b: b}, a, "to "+b)
}

// LinkLatency adds d of one-way latency to every byte a sends to b on the
// link paths (a's link to b's brokers up, b's link to a's brokers down),
// on top of MeshConfig.Latency, until HealFault or Heal.
func (m *Mesh) LinkLatency(a, b string, d time.Duration) (FaultID, error) {
	if a == b || d <= 0 {
		return 0, fmt.Errorf("sim: link latency %s→%s %v: want two regions and a positive latency", a, b, d)
	}
	if _, err := m.region(b); err != nil {
		return 0, err
	}
	return m.network(activeFault{kind: FaultLinkLatency, a: a, b: b, latency: d}, a, fmt.Sprintf("to %s +%v", b, d))
}

func (m *Mesh) network(f activeFault, target, detail string) (FaultID, error) {
	if _, err := m.region(target); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return 0, ErrStopped
	}
	id := m.record(f.kind, target, detail)
	m.active[id] = f
	m.applyLocked()
	return id, nil
}

// HealFault ends one network fault (a partition or a latency spike); the
// others stay. Ending one already ended does nothing.
func (m *Mesh) HealFault(id FaultID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.active[id]; !ok {
		return
	}
	delete(m.active, id)
	m.faults[id].End = m.cfg.Now()
	m.log.Info("fault ended", "kind", m.faults[id].Kind, "target", m.faults[id].Target)
	m.applyLocked()
}

// Heal ends every network fault: every proxy forwards again with the base
// latency. Killed processes stay down (RestartRegion, RestartBroker).
func (m *Mesh) Heal() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Now()
	for id := range m.active {
		m.faults[id].End = now
	}
	clear(m.active)
	m.applyLocked()
}

// applyLocked sets every proxy to the state the active faults imply. The
// caller holds m.mu.
func (m *Mesh) applyLocked() {
	for _, p := range m.paths {
		cut, dropUp, dropDown := false, false, false
		up, down := m.cfg.Latency, m.cfg.Latency
		for _, f := range m.active {
			switch f.kind {
			case FaultPartitionDirectory:
				cut = cut || (p.kind != pathLink && (p.from == f.a || p.to == f.a))
			case FaultPartitionLinks:
				cut = cut || (p.kind == pathLink && (p.from == f.a || p.to == f.a))
			case FaultOneWayPartition:
				dropUp = dropUp || (p.from == f.a && p.to == f.b)
				dropDown = dropDown || (p.from == f.b && p.to == f.a)
			case FaultLinkLatency:
				if p.kind == pathLink && p.from == f.a && p.to == f.b {
					up += f.latency
				}
				if p.kind == pathLink && p.from == f.b && p.to == f.a {
					down += f.latency
				}
			}
		}
		if p.px.Partitioned() != cut {
			p.px.Partition(cut)
		}
		if u, d := p.px.Dropping(); u != dropUp || d != dropDown {
			p.px.Drop(dropUp, dropDown)
		}
		p.px.SetLatency(up, down)
	}
	for name, px := range m.store {
		cut := false
		for _, f := range m.active {
			cut = cut || (f.kind == FaultPartitionStore && f.a == name)
		}
		if px.Partitioned() != cut {
			px.Partition(cut)
		}
	}
}
