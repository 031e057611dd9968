package driver

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/sim/check"
)

// ErrConfig is returned by New and Run for a configuration that cannot be
// driven (no regions, a region without edges, a malformed key).
var ErrConfig = errors.New("driver: bad config")

// Edge is one edge of a region as a client reaches it.
type Edge struct {
	// URL is the edge's WebSocket URL (ws://host:port/v1/ws) or its
	// WebTransport URL (https://...).
	URL string
	// NoiseKey is the edge's Noise static public key, hex. Optional. The
	// client can pin only one key for its whole edge list
	// (client.Config.ServerKey), so it is pinned only when every edge of
	// a device's list has the same key; otherwise no key is pinned (the
	// simulator runs on loopback).
	NoiseKey string
	// CertHash is the hex SHA-256 of the edge's WebTransport certificate,
	// pinned under the same rule as NoiseKey. Empty for WebSocket.
	CertHash string
}

// Region is one region of the mesh and its edges, in the order its
// clients try them.
type Region struct {
	Name  string
	Edges []Edge
}

// Config describes a run. Only Regions and StateDir are required; every
// other zero value picks the documented default.
type Config struct {
	// Regions of the mesh. A user is homed in one of them (it registers
	// through that region's edges first), and every device lists its
	// region's edges first and then the following regions' edges in
	// Regions order (wrapping), so a device whose region is lost fails
	// over to the next region.
	Regions []Region
	// StateDir holds one client state dir per device
	// (StateDir/<user>-<slot>); it must be empty or hold nothing of the
	// names this run uses.
	StateDir string
	// Seed drives every random choice: user → region, second devices,
	// 1:1 pairs, group members, moves and the send schedule. Same seed
	// (and the same Config otherwise), same plan and same schedule.
	Seed uint64
	// Prefix starts every user id (default "s" + the seed in hex + "-").
	// Two runs against the same mesh with the same seed need different
	// prefixes: user ids and group ids are derived from it.
	Prefix string
	// Users is the number of users (default 12, at least 2).
	Users int
	// SecondDevices users get a second device, linked to the first and
	// placed in another region (default Users/4; at most Users).
	SecondDevices int
	// Directs is the number of 1:1 conversations (default Users/2): half
	// of them between users of one region, half across regions, as far
	// as the assignment allows.
	Directs int
	// Groups is the number of groups (default 1; -1 for none) of
	// GroupSize members each (default 10; at most Users and
	// core.MaxGroupMembers), drawn so that a group spans every region
	// when it has at least as many members as there are regions.
	Groups    int
	GroupSize int
	// DirectRate and GroupRate are messages per second over all 1:1
	// conversations and over all groups (defaults 20 and 2; -1 for none).
	DirectRate, GroupRate float64
	// Duration is the sending time (default 10 s).
	Duration time.Duration
	// Drain bounds the wait after Duration for every sent message to be
	// acknowledged and every member device to have it (default 60 s).
	Drain time.Duration
	// Moves is the number of device moves during Duration (default 0): at
	// a seeded time a seeded device closes and reopens with another
	// region's edges first (same state dir, so its outbox survives).
	Moves int
	// BodySize is the size of each message body in bytes (default 48;
	// at most core.MaxEnvelopeBytes/2).
	BodySize int
	// SetupTimeout bounds registration, linking, connecting and group
	// creation (default 2 min).
	SetupTimeout time.Duration
	// SendQueue bounds each device's queue of scheduled sends; a send
	// scheduled for a device whose queue is full is dropped and counted
	// (Stats.Errors["queue-full"]). Default 1024.
	SendQueue int
	// RegistrationToken is passed to every registration (edges refuse
	// many registrations from one address without one).
	RegistrationToken string
	// Client adjusts every client's configuration after the driver's
	// defaults (MinBackoff 50 ms, MaxBackoff 2 s, AckTimeout 5 s,
	// DialTimeout 3 s, KeepAlive 5 s, large event and notice queues).
	// StateDir, Edges, Sealer and ManualCommit are the driver's and are
	// set again after it.
	Client func(*client.Config)
	// Checker, if set, is fed every event as the driver records it
	// (members, sends, acks, deliveries, the harness's directory
	// operations), so the harness can call its Snapshot while the run
	// goes on and Final after it.
	Checker *check.Checker
	// Logger receives the driver's own logs (default: discard). Clients
	// log to it too at Warn and above.
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if len(c.Regions) == 0 {
		return fmt.Errorf("%w: no regions", ErrConfig)
	}
	for _, r := range c.Regions {
		if r.Name == "" || len(r.Edges) == 0 {
			return fmt.Errorf("%w: region %q has no name or no edges", ErrConfig, r.Name)
		}
		for _, e := range r.Edges {
			if e.URL == "" {
				return fmt.Errorf("%w: region %q: edge without URL", ErrConfig, r.Name)
			}
			if _, err := hex.DecodeString(e.NoiseKey); err != nil {
				return fmt.Errorf("%w: region %q: noise key of %s: %w", ErrConfig, r.Name, e.URL, err)
			}
			if _, err := hex.DecodeString(e.CertHash); err != nil {
				return fmt.Errorf("%w: region %q: cert hash of %s: %w", ErrConfig, r.Name, e.URL, err)
			}
		}
	}
	if c.StateDir == "" {
		return fmt.Errorf("%w: StateDir is required", ErrConfig)
	}
	if c.Prefix == "" {
		c.Prefix = fmt.Sprintf("s%x-", c.Seed)
	}
	if !core.ValidUserID(c.Prefix + "0") {
		return fmt.Errorf("%w: prefix %q does not make valid user ids", ErrConfig, c.Prefix)
	}
	if c.Users == 0 {
		c.Users = 12
	}
	if c.Users < 2 {
		return fmt.Errorf("%w: %d users, need at least 2", ErrConfig, c.Users)
	}
	if c.SecondDevices == 0 {
		c.SecondDevices = c.Users / 4
	}
	c.SecondDevices = min(max(c.SecondDevices, 0), c.Users)
	if c.Directs == 0 {
		c.Directs = c.Users / 2
	}
	c.Directs = max(c.Directs, 0)
	if c.Groups == 0 {
		c.Groups = 1
	}
	c.Groups = max(c.Groups, 0)
	if c.GroupSize == 0 {
		c.GroupSize = 10
	}
	c.GroupSize = min(max(c.GroupSize, 2), c.Users, core.MaxGroupMembers)
	if c.DirectRate == 0 {
		c.DirectRate = 20
	}
	if c.GroupRate == 0 {
		c.GroupRate = 2
	}
	c.DirectRate, c.GroupRate = max(c.DirectRate, 0), max(c.GroupRate, 0)
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = time.Minute
	}
	c.Moves = max(c.Moves, 0)
	if c.BodySize <= 0 {
		c.BodySize = 48
	}
	c.BodySize = min(max(c.BodySize, 16), core.MaxEnvelopeBytes/2)
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = 2 * time.Minute
	}
	if c.SendQueue <= 0 {
		c.SendQueue = 1024
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
