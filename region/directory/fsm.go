package directory

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/chatmesh/chatmesh/core"
)

// Errors returned by the directory. Conditional-write failures are typed so
// a caller can act on them without parsing strings.
var (
	// ErrExists: SetUserHome with ifAbsent found the user already homed.
	ErrExists = errors.New("directory: already exists")
	// ErrUnknownRegion: a write named a region that PutRegion never stored.
	ErrUnknownRegion = errors.New("directory: unknown region")
	// ErrBadCommand: a command that does not decode or fails validation.
	ErrBadCommand = errors.New("directory: bad command")
	// ErrUncertain: the write may or may not have been applied (leadership
	// lost or the leader went away after the command was handed over).
	// Conditional writes make a re-read and retry safe.
	ErrUncertain = errors.New("directory: outcome unknown")
	// ErrNoLeader: no leader could be reached before the context ended.
	ErrNoLeader = errors.New("directory: no leader")
	// ErrClosed: the Directory was closed.
	ErrClosed = errors.New("directory: closed")
	// ErrUnknownEdge: set_edge_health named an edge the region does not
	// hold.
	ErrUnknownEdge = errors.New("directory: unknown edge")
	// ErrNoHealthyRegion: fail_region found no other healthy region to
	// move the failed region's homes to; nothing was changed.
	ErrNoHealthyRegion = errors.New("directory: no healthy region left")
	// ErrHeldByOperator: a region asked to rejoin (restore_region by
	// itself) but an operator failed it: only an operator restores it.
	ErrHeldByOperator = errors.New("directory: region failed by an operator: only an operator restores it")
	// ErrRegionUnhealthy: a write would home a user or a conversation in a
	// region that is failed (unhealthy). Nothing is homed in a failed
	// region: its homes moved away, and a deposed region that has not
	// learnt it yet must not claim new ones (restore_region first).
	ErrRegionUnhealthy = errors.New("directory: region is failed (unhealthy)")
)

// EpochError is returned by SetConvHome when the stored owner epoch differs
// from the expected one. It matches core.ErrFenced with errors.Is.
type EpochError struct {
	Conv     string
	Stored   uint64
	Expected uint64
}

func (e *EpochError) Error() string {
	return fmt.Sprintf("directory: conversation %q: stored epoch %d, expected %d: %v", e.Conv, e.Stored, e.Expected, core.ErrFenced)
}

// Unwrap makes errors.Is(err, core.ErrFenced) true.
func (e *EpochError) Unwrap() error { return core.ErrFenced }

// Region is one region of the mesh as the directory knows it.
type Region struct {
	Name         string   `json:"name"`
	Lat          float64  `json:"lat"`
	Long         float64  `json:"long"`
	EdgeURLs     []string `json:"edge_urls,omitempty"`
	NoiseKeyHex  string   `json:"noise_key_hex,omitempty"`
	LinkEndpoint string   `json:"link_endpoint,omitempty"`
	Healthy      bool     `json:"healthy"`
	// FailedBy says who made an unhealthy region unhealthy: FailedByDetector
	// (the failure detector's fail_region) or FailedByOperator (a
	// fail_region or set_region_health from anyone else). Only a region the
	// detector failed rejoins by itself (restore_region with By =
	// ByRejoin); an operator's failure holds until an operator restores it.
	// "" while healthy.
	FailedBy string `json:"failed_by,omitempty"`
	// Edges are the region's edges, sorted by ID. In a put_region command
	// nil ("edges": null or absent) keeps the stored edges, so a region
	// can re-announce itself without knowing its edges; an empty list
	// removes them all. Stored regions hold nil rather than an empty list.
	Edges []Edge `json:"edges"`
}

func (r Region) clone() Region {
	r.EdgeURLs = append([]string(nil), r.EdgeURLs...)
	if len(r.Edges) == 0 {
		r.Edges = nil
	} else {
		r.Edges = append([]Edge(nil), r.Edges...)
	}
	return r
}

// Edge is one edge of a region: where clients connect and how they
// authenticate it. Edge IDs are unique across the whole directory.
type Edge struct {
	ID string `json:"id"`
	// WS and WT are the edge's WebSocket and WebTransport URLs; at least
	// one is set.
	WS string `json:"ws,omitempty"`
	WT string `json:"wt,omitempty"`
	// CertHash is the hex SHA-256 of the WebTransport certificate, for
	// clients that pin it (self-signed certificates); may be empty.
	CertHash string `json:"cert_hash,omitempty"`
	// NoiseKeyHex is the hex of the edge's Noise static public key.
	NoiseKeyHex string `json:"noise_key_hex,omitempty"`
	Healthy     bool   `json:"healthy"`
}

// Bounds on edges, checked by the FSM (a violation is ErrBadCommand).
const (
	MaxEdgesPerRegion = 256
	maxEdgeIDBytes    = 128
	maxEdgeFieldBytes = 2048 // each URL / hex field
)

// validate reports what is wrong with e, or "".
func (e Edge) validate() string {
	switch {
	case e.ID == "":
		return "edge without an id"
	case len(e.ID) > maxEdgeIDBytes:
		return fmt.Sprintf("edge id longer than %d bytes", maxEdgeIDBytes)
	case e.WS == "" && e.WT == "":
		return fmt.Sprintf("edge %q has neither a ws nor a wt url", e.ID)
	case len(e.WS) > maxEdgeFieldBytes || len(e.WT) > maxEdgeFieldBytes || len(e.CertHash) > maxEdgeFieldBytes || len(e.NoiseKeyHex) > maxEdgeFieldBytes:
		return fmt.Sprintf("edge %q: a field is longer than %d bytes", e.ID, maxEdgeFieldBytes)
	}
	if _, err := hex.DecodeString(e.CertHash); err != nil {
		return fmt.Sprintf("edge %q: cert_hash is not hex", e.ID)
	}
	if _, err := hex.DecodeString(e.NoiseKeyHex); err != nil {
		return fmt.Sprintf("edge %q: noise_key_hex is not hex", e.ID)
	}
	return ""
}

// ConvHome is where a conversation is sequenced and under which owner epoch.
type ConvHome struct {
	Region string `json:"region"`
	Epoch  uint64 `json:"epoch"`
	// Owner is the user whose home placed the conversation (a group's
	// creator, a 1:1's initiator), when known: move_user takes the
	// conversations it owns along.
	Owner string `json:"owner,omitempty"`
}

// Command encoding (see doc.go): one version byte, then a JSON object.
const cmdVersion byte = 1

// Op names a command.
type Op string

const (
	OpPutRegion       Op = "put_region"
	OpSetUserHome     Op = "set_user_home"
	OpSetConvHome     Op = "set_conv_home"
	OpPutEdge         Op = "put_edge"
	OpSetEdgeHealth   Op = "set_edge_health"
	OpSetRegionHealth Op = "set_region_health"
	// OpMoveUser sets a user's home and moves every conversation the user
	// owns (ConvHome.Owner) to it, each with its epoch + 1, in one step.
	OpMoveUser Op = "move_user"
	// OpFailRegion marks a region unhealthy and moves every user and
	// conversation homed there to the nearest healthy region (conversations
	// at epoch + 1), in one step; see failRegion.
	OpFailRegion Op = "fail_region"
	// OpRestoreRegion marks a failed region healthy again; homes stay
	// where they are (moving back is a planned move).
	OpRestoreRegion Op = "restore_region"
)

// Command is one replicated write.
type Command struct {
	Op          Op      `json:"op"`
	Region      *Region `json:"region,omitempty"`       // put_region
	User        string  `json:"user,omitempty"`         // set_user_home
	Conv        string  `json:"conv,omitempty"`         // set_conv_home
	Home        string  `json:"home,omitempty"`         // set_user_home, set_conv_home
	IfAbsent    bool    `json:"if_absent,omitempty"`    // set_user_home
	ExpectEpoch uint64  `json:"expect_epoch,omitempty"` // set_conv_home
	Name        string  `json:"name,omitempty"`         // region: put_edge, set_edge_health, set_region_health, fail_region, restore_region
	Edge        *Edge   `json:"edge,omitempty"`         // put_edge
	EdgeID      string  `json:"edge_id,omitempty"`      // set_edge_health
	Healthy     *bool   `json:"healthy,omitempty"`      // set_edge_health, set_region_health (required)
	Owner       string  `json:"owner,omitempty"`        // set_conv_home creating a conversation
	// By names who issues fail_region (ByDetector; else an operator) and
	// restore_region (ByRejoin: the region itself, refused unless the
	// detector failed it).
	By string `json:"by,omitempty"`
}

// Who failed or restores a region (Command.By, Region.FailedBy).
const (
	ByDetector       = "detector"
	ByRejoin         = "rejoin"
	FailedByDetector = "detector"
	FailedByOperator = "operator"
)

// maxCommandBytes bounds one encoded command (and a forwarded request body).
const maxCommandBytes = 64 << 10

// EncodeCommand returns the wire/log form of c.
func EncodeCommand(c Command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("directory: encode %s: %w", c.Op, err)
	}
	out := append([]byte{cmdVersion}, b...)
	if len(out) > maxCommandBytes {
		return nil, fmt.Errorf("directory: %s is %d bytes: %w", c.Op, len(out), core.ErrLimitExceeded)
	}
	return out, nil
}

// DecodeCommand parses the output of EncodeCommand.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if len(b) == 0 || b[0] != cmdVersion {
		return c, fmt.Errorf("%w: unknown version", ErrBadCommand)
	}
	dec := json.NewDecoder(bytes.NewReader(b[1:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return c, nil
}

// Result is what applying a command returns (also the forwarding reply).
type Result struct {
	Code  string `json:"code,omitempty"` // "" ok; see resultErr
	Msg   string `json:"msg,omitempty"`
	Home  string `json:"home,omitempty"`  // the stored home after the command
	Epoch uint64 `json:"epoch,omitempty"` // the stored epoch after the command
	Moved int    `json:"moved,omitempty"` // move_user, fail_region: conversations moved
	// MovedUsers: fail_region: users moved.
	MovedUsers int `json:"moved_users,omitempty"`
}

const (
	codeExists        = "exists"
	codeFenced        = "fenced"
	codeUnknownRegion = "unknown_region"
	codeBadCommand    = "bad_command"
	codeUnknownEdge   = "unknown_edge"
	codeNoHealthy     = "no_healthy_region"
	codeUnhealthy     = "region_unhealthy"
	codeHeld          = "held_by_operator"
)

// err turns a Result into the error the caller sees.
func (r Result) err(c Command) error {
	switch r.Code {
	case "":
		return nil
	case codeExists:
		return fmt.Errorf("directory: user %q homed in %q: %w", c.User, r.Home, ErrExists)
	case codeFenced:
		return &EpochError{Conv: c.Conv, Stored: r.Epoch, Expected: c.ExpectEpoch}
	case codeUnknownRegion:
		name := c.Home
		if c.Name != "" {
			name = c.Name
		}
		return fmt.Errorf("directory: region %q: %w", name, ErrUnknownRegion)
	case codeUnknownEdge:
		return fmt.Errorf("directory: region %q: edge %q: %w", c.Name, c.EdgeID, ErrUnknownEdge)
	case codeNoHealthy:
		return fmt.Errorf("directory: fail region %q: %w", c.Name, ErrNoHealthyRegion)
	case codeHeld:
		return fmt.Errorf("directory: rejoin %q: %w", c.Name, ErrHeldByOperator)
	case codeUnhealthy:
		return fmt.Errorf("directory: home %q for %s: %w", c.Home, c.User+c.Conv, ErrRegionUnhealthy)
	default:
		return fmt.Errorf("%w: %s", ErrBadCommand, r.Msg)
	}
}

// ChangeKind names what a Change is about.
type ChangeKind string

const (
	ChangeRegion ChangeKind = "region"
	ChangeUser   ChangeKind = "user"
	ChangeConv   ChangeKind = "conv"
	// ChangeResync: changes were dropped (slow watcher) or the state was
	// replaced by a snapshot; re-read what you cache.
	ChangeResync ChangeKind = "resync"
)

// Change is one applied change, delivered by Watch.
type Change struct {
	Index  uint64     // raft log index that produced it
	Kind   ChangeKind //
	Key    string     // region name, user id or conversation id
	Region Region     // ChangeRegion
	Home   string     // ChangeUser, ChangeConv
	Epoch  uint64     // ChangeConv
}

// State is a deep copy of the whole directory.
type State struct {
	Index   uint64              `json:"index"` // last applied command index
	Regions map[string]Region   `json:"regions"`
	Users   map[string]string   `json:"users"`
	Convs   map[string]ConvHome `json:"convs"`
}

func newState() State {
	return State{Regions: map[string]Region{}, Users: map[string]string{}, Convs: map[string]ConvHome{}}
}

func (s State) clone() State {
	c := State{Index: s.Index, Regions: make(map[string]Region, len(s.Regions)), Users: make(map[string]string, len(s.Users)), Convs: make(map[string]ConvHome, len(s.Convs))}
	for k, v := range s.Regions {
		c.Regions[k] = v.clone()
	}
	for k, v := range s.Users {
		c.Users[k] = v
	}
	for k, v := range s.Convs {
		c.Convs[k] = v
	}
	return c
}

// FSM is the replicated state machine (raft.FSM). Apply, Snapshot and
// Restore are called by raft from one goroutine; the read methods may be
// called concurrently from any goroutine.
type FSM struct {
	mu      sync.RWMutex
	st      State
	applied chan struct{} // closed and replaced on every apply/restore
	notify  func(Change)  // called under mu from Apply/Restore; must not block
}

// NewFSM returns an empty FSM. notify (may be nil) sees every applied change.
func NewFSM(notify func(Change)) *FSM {
	return &FSM{st: newState(), applied: make(chan struct{}), notify: notify}
}

var _ raft.FSM = (*FSM)(nil)

// Apply applies one committed log entry. It is deterministic: the result
// depends only on the state and the command.
func (f *FSM) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	res := f.applyLocked(l.Index, l.Data)
	if l.Index > f.st.Index {
		f.st.Index = l.Index
	}
	close(f.applied)
	f.applied = make(chan struct{})
	return res
}

func (f *FSM) applyLocked(idx uint64, data []byte) Result {
	c, err := DecodeCommand(data)
	if err != nil {
		return Result{Code: codeBadCommand, Msg: err.Error()}
	}
	switch c.Op {
	case OpPutRegion:
		return f.putRegion(idx, c)
	case OpPutEdge:
		return f.putEdge(idx, c)
	case OpSetEdgeHealth:
		return f.setEdgeHealth(idx, c)
	case OpSetRegionHealth:
		if c.Name == "" || c.Healthy == nil {
			return Result{Code: codeBadCommand, Msg: "set_region_health needs a name and healthy"}
		}
		r, ok := f.st.Regions[c.Name]
		if !ok {
			return Result{Code: codeUnknownRegion}
		}
		r.Healthy = *c.Healthy
		r.FailedBy = ""
		if !r.Healthy {
			r.FailedBy = FailedByOperator
		}
		f.st.Regions[r.Name] = r
		f.emitRegion(idx, r)
		return Result{Home: r.Name}
	case OpSetUserHome:
		if c.User == "" {
			return Result{Code: codeBadCommand, Msg: "set_user_home without a user"}
		}
		if cur, ok := f.st.Users[c.User]; ok && c.IfAbsent {
			return Result{Code: codeExists, Home: cur}
		}
		if code := f.homeable(c.Home); code != "" {
			return Result{Code: code}
		}
		f.st.Users[c.User] = c.Home
		f.emit(Change{Index: idx, Kind: ChangeUser, Key: c.User, Home: c.Home})
		return Result{Home: c.Home}
	case OpSetConvHome:
		if c.Conv == "" {
			return Result{Code: codeBadCommand, Msg: "set_conv_home without a conversation"}
		}
		cur := f.st.Convs[c.Conv] // zero epoch when absent
		if cur.Epoch != c.ExpectEpoch {
			return Result{Code: codeFenced, Home: cur.Region, Epoch: cur.Epoch}
		}
		if code := f.homeable(c.Home); code != "" {
			return Result{Code: code, Home: cur.Region, Epoch: cur.Epoch}
		}
		h := ConvHome{Region: c.Home, Epoch: c.ExpectEpoch + 1, Owner: cur.Owner}
		if c.ExpectEpoch == 0 {
			h.Owner = c.Owner
		}
		f.st.Convs[c.Conv] = h
		f.emit(Change{Index: idx, Kind: ChangeConv, Key: c.Conv, Home: h.Region, Epoch: h.Epoch})
		return Result{Home: h.Region, Epoch: h.Epoch}
	case OpMoveUser:
		if c.User == "" {
			return Result{Code: codeBadCommand, Msg: "move_user without a user"}
		}
		if code := f.homeable(c.Home); code != "" {
			return Result{Code: code}
		}
		f.st.Users[c.User] = c.Home
		f.emit(Change{Index: idx, Kind: ChangeUser, Key: c.User, Home: c.Home})
		// Every voter moves the same set; changes go out in id order.
		var owned []string
		for id, h := range f.st.Convs {
			if h.Owner == c.User && h.Region != c.Home {
				owned = append(owned, id)
			}
		}
		sort.Strings(owned)
		for _, id := range owned {
			h := f.st.Convs[id]
			h.Region, h.Epoch = c.Home, h.Epoch+1
			f.st.Convs[id] = h
			f.emit(Change{Index: idx, Kind: ChangeConv, Key: id, Home: h.Region, Epoch: h.Epoch})
		}
		return Result{Home: c.Home, Moved: len(owned)}
	case OpFailRegion:
		return f.failRegion(idx, c)
	case OpRestoreRegion:
		if c.Name == "" {
			return Result{Code: codeBadCommand, Msg: "restore_region without a name"}
		}
		r, ok := f.st.Regions[c.Name]
		if !ok {
			return Result{Code: codeUnknownRegion}
		}
		if !r.Healthy {
			if c.By == ByRejoin && r.FailedBy != FailedByDetector {
				return Result{Code: codeHeld, Home: r.Name}
			}
			r.Healthy, r.FailedBy = true, ""
			f.st.Regions[r.Name] = r
			f.emitRegion(idx, r)
		}
		return Result{Home: r.Name}
	default:
		return Result{Code: codeBadCommand, Msg: fmt.Sprintf("unknown op %q", c.Op)}
	}
}

// failRegion applies fail_region: the region c.Name becomes unhealthy,
// and every user and conversation homed there moves to the nearest other
// healthy region (conversations at epoch + 1, owners kept). Without a
// healthy region to move to it refuses (codeNoHealthy) and changes
// nothing. A region already unhealthy only has what is still homed there
// moved, so repeating the command is harmless. Changes are emitted in a
// fixed order: the region (when its health changed), then the moved users
// by id, then the moved conversations by id.
func (f *FSM) failRegion(idx uint64, c Command) Result {
	if c.Name == "" {
		return Result{Code: codeBadCommand, Msg: "fail_region without a name"}
	}
	failed, ok := f.st.Regions[c.Name]
	if !ok {
		return Result{Code: codeUnknownRegion}
	}
	to, ok := nearestHealthy(failed, f.st.Regions)
	if !ok {
		return Result{Code: codeNoHealthy}
	}
	by := FailedByOperator
	if c.By == ByDetector {
		by = FailedByDetector
	}
	if failed.Healthy || (failed.FailedBy != by && by == FailedByOperator) {
		// An operator's fail_region of a region the detector failed makes
		// it the operator's to restore; the detector never takes it back.
		failed.Healthy, failed.FailedBy = false, by
		f.st.Regions[failed.Name] = failed
		f.emitRegion(idx, failed)
	}
	var users, convs []string
	for u, h := range f.st.Users {
		if h == failed.Name {
			users = append(users, u)
		}
	}
	for id, h := range f.st.Convs {
		if h.Region == failed.Name {
			convs = append(convs, id)
		}
	}
	sort.Strings(users)
	sort.Strings(convs)
	for _, u := range users {
		f.st.Users[u] = to
		f.emit(Change{Index: idx, Kind: ChangeUser, Key: u, Home: to})
	}
	for _, id := range convs {
		h := f.st.Convs[id]
		h.Region, h.Epoch = to, h.Epoch+1
		f.st.Convs[id] = h
		f.emit(Change{Index: idx, Kind: ChangeConv, Key: id, Home: h.Region, Epoch: h.Epoch})
	}
	return Result{Home: to, Moved: len(convs), MovedUsers: len(users)}
}

// nearestHealthy returns the healthy region other than from that is
// nearest to it by great-circle distance, ties (equal distance in whole
// metres) broken by the smaller name.
//
// Every voter must choose the same region. The distance is rounded to
// whole metres before comparing, so the last-bit differences that
// floating point may show between builds for different CPUs (Go may
// fuse a multiply and an add on some) decide nothing unless a distance
// falls within an ulp of a half metre; regions are a handful of
// data-centre areas, hundreds of kilometres apart.
func nearestHealthy(from Region, regions map[string]Region) (string, bool) {
	best, bestM := "", int64(0)
	for name, r := range regions {
		if name == from.Name || !r.Healthy {
			continue
		}
		m := int64(math.Round(haversineKM(from.Lat, from.Long, r.Lat, r.Long) * 1000))
		if best == "" || m < bestM || (m == bestM && name < best) {
			best, bestM = name, m
		}
	}
	return best, best != ""
}

// earthRadiusKM is the mean Earth radius (IUGG), as region/geo uses.
const earthRadiusKM = 6371.0088

// haversineKM is the great-circle distance in kilometres between two
// points given in degrees.
func haversineKM(lat1, long1, lat2, long2 float64) float64 {
	const rad = math.Pi / 180
	dLat := (lat2 - lat1) * rad
	dLong := (long2 - long1) * rad
	sLat, sLong := math.Sin(dLat/2), math.Sin(dLong/2)
	a := sLat*sLat + math.Cos(lat1*rad)*math.Cos(lat2*rad)*sLong*sLong
	return 2 * earthRadiusKM * math.Asin(math.Sqrt(min(1, a)))
}

// homeable says whether users and conversations may be homed in region:
// "" when they may, else the refusal's code (unknown or failed region).
func (f *FSM) homeable(region string) string {
	r, ok := f.st.Regions[region]
	switch {
	case !ok:
		return codeUnknownRegion
	case !r.Healthy:
		return codeUnhealthy
	}
	return ""
}

func (f *FSM) putRegion(idx uint64, c Command) Result {
	if c.Region == nil || c.Region.Name == "" {
		return Result{Code: codeBadCommand, Msg: "put_region without a name"}
	}
	if len(c.Region.Name) > core.MaxRegionNameLen {
		return Result{Code: codeBadCommand, Msg: fmt.Sprintf("region name of %d bytes (at most %d)", len(c.Region.Name), core.MaxRegionNameLen)}
	}
	r := c.Region.clone()
	if old, ok := f.st.Regions[r.Name]; ok {
		// A region re-announcing itself keeps its health: a failed region
		// that restarts must not restore itself (restore_region does),
		// and health changes only through set_region_health, fail_region
		// and restore_region.
		r.Healthy, r.FailedBy = old.Healthy, old.FailedBy
	} else if !r.Healthy {
		r.FailedBy = FailedByOperator
	} else {
		r.FailedBy = ""
	}
	if c.Region.Edges == nil { // re-announcement: keep the stored edges
		r.Edges = f.st.Regions[r.Name].clone().Edges
		f.st.Regions[r.Name] = r
		f.emitRegion(idx, r)
		return Result{Home: r.Name}
	}
	if len(r.Edges) > MaxEdgesPerRegion {
		return Result{Code: codeBadCommand, Msg: fmt.Sprintf("region %q: more than %d edges", r.Name, MaxEdgesPerRegion)}
	}
	seen := make(map[string]bool, len(r.Edges))
	for _, e := range r.Edges {
		if msg := e.validate(); msg != "" {
			return Result{Code: codeBadCommand, Msg: msg}
		}
		if seen[e.ID] {
			return Result{Code: codeBadCommand, Msg: fmt.Sprintf("region %q: edge %q twice", r.Name, e.ID)}
		}
		seen[e.ID] = true
	}
	sort.Slice(r.Edges, func(i, j int) bool { return r.Edges[i].ID < r.Edges[j].ID })
	// Edge ids are global: an edge listed here leaves any other region.
	for _, e := range r.Edges {
		f.removeEdgeElsewhere(idx, e.ID, r.Name)
	}
	f.st.Regions[r.Name] = r.clone()
	f.emitRegion(idx, r)
	return Result{Home: r.Name}
}

func (f *FSM) putEdge(idx uint64, c Command) Result {
	if c.Name == "" || c.Edge == nil {
		return Result{Code: codeBadCommand, Msg: "put_edge needs a region name and an edge"}
	}
	if msg := c.Edge.validate(); msg != "" {
		return Result{Code: codeBadCommand, Msg: msg}
	}
	r, ok := f.st.Regions[c.Name]
	if !ok {
		return Result{Code: codeUnknownRegion}
	}
	e := *c.Edge
	i, found := edgeIndex(r.Edges, e.ID)
	if !found && len(r.Edges) >= MaxEdgesPerRegion {
		return Result{Code: codeBadCommand, Msg: fmt.Sprintf("region %q already has %d edges", r.Name, MaxEdgesPerRegion)}
	}
	f.removeEdgeElsewhere(idx, e.ID, r.Name)
	r = r.clone()
	if found {
		r.Edges[i] = e
	} else {
		r.Edges = slices.Insert(r.Edges, i, e)
	}
	f.st.Regions[r.Name] = r
	f.emitRegion(idx, r)
	return Result{Home: r.Name}
}

func (f *FSM) setEdgeHealth(idx uint64, c Command) Result {
	if c.Name == "" || c.EdgeID == "" || c.Healthy == nil {
		return Result{Code: codeBadCommand, Msg: "set_edge_health needs a region name, an edge id and healthy"}
	}
	r, ok := f.st.Regions[c.Name]
	if !ok {
		return Result{Code: codeUnknownRegion}
	}
	i, found := edgeIndex(r.Edges, c.EdgeID)
	if !found {
		return Result{Code: codeUnknownEdge}
	}
	r = r.clone()
	r.Edges[i].Healthy = *c.Healthy
	f.st.Regions[r.Name] = r
	f.emitRegion(idx, r)
	return Result{Home: r.Name}
}

// removeEdgeElsewhere removes edge id from every region but keep (at most
// one holds it), emitting a ChangeRegion for each region changed. Regions
// are visited in name order so the emitted changes are deterministic.
func (f *FSM) removeEdgeElsewhere(idx uint64, id, keep string) {
	names := make([]string, 0, len(f.st.Regions))
	for n := range f.st.Regions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if n == keep {
			continue
		}
		r := f.st.Regions[n]
		i, found := edgeIndex(r.Edges, id)
		if !found {
			continue
		}
		r = r.clone()
		r.Edges = slices.Delete(r.Edges, i, i+1)
		r = r.clone() // empty becomes nil
		f.st.Regions[n] = r
		f.emitRegion(idx, r)
	}
}

// edgeIndex finds id in edges (sorted by ID): its index, or where it would
// be inserted.
func edgeIndex(edges []Edge, id string) (int, bool) {
	return slices.BinarySearchFunc(edges, id, func(e Edge, id string) int { return strings.Compare(e.ID, id) })
}

func (f *FSM) emitRegion(idx uint64, r Region) {
	f.emit(Change{Index: idx, Kind: ChangeRegion, Key: r.Name, Region: r.clone()})
}

func (f *FSM) emit(c Change) {
	if f.notify != nil {
		f.notify(c)
	}
}

// Snapshot captures the whole state (a deep copy; Persist runs later,
// concurrently with Apply).
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{st: f.st.clone()}, nil
}

// Snapshot format: one version byte, then the JSON of State.
const snapVersion byte = 1

// Restore replaces the state with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("directory: read snapshot: %w", err)
	}
	if len(b) == 0 || b[0] != snapVersion {
		return fmt.Errorf("directory: snapshot: %w: unknown version", ErrBadCommand)
	}
	st := newState()
	if err := json.Unmarshal(b[1:], &st); err != nil {
		return fmt.Errorf("directory: decode snapshot: %w", err)
	}
	if st.Regions == nil {
		st.Regions = map[string]Region{}
	}
	if st.Users == nil {
		st.Users = map[string]string{}
	}
	if st.Convs == nil {
		st.Convs = map[string]ConvHome{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
	close(f.applied)
	f.applied = make(chan struct{})
	f.emit(Change{Index: st.Index, Kind: ChangeResync})
	return nil
}

type fsmSnapshot struct{ st State }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := json.Marshal(s.st)
	if err == nil {
		_, err = sink.Write(append([]byte{snapVersion}, b...))
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("directory: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// Region returns a stored region.
func (f *FSM) Region(name string) (Region, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	r, ok := f.st.Regions[name]
	return r.clone(), ok
}

// Regions returns every region, sorted by name.
func (f *FSM) Regions() []Region {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Region, 0, len(f.st.Regions))
	for _, r := range f.st.Regions {
		out = append(out, r.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// UserHome returns a user's home region.
func (f *FSM) UserHome(user string) (string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h, ok := f.st.Users[user]
	return h, ok
}

// Conv returns a conversation's home and owner epoch.
func (f *FSM) Conv(conv string) (ConvHome, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h, ok := f.st.Convs[conv]
	return h, ok
}

// State returns a deep copy of the whole state.
func (f *FSM) State() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.clone()
}

// Summary returns the applied index, every region (sorted by name) and the
// number of homed users and conversations, read at one point.
func (f *FSM) Summary() (uint64, Counts) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c := Counts{Regions: make([]Region, 0, len(f.st.Regions)), Users: len(f.st.Users), Convs: len(f.st.Convs)}
	for _, r := range f.st.Regions {
		c.Regions = append(c.Regions, r.clone())
	}
	sort.Slice(c.Regions, func(i, j int) bool { return c.Regions[i].Name < c.Regions[j].Name })
	return f.st.Index, c
}

// ConvsAfter returns the first limit (at least 1) conversations whose id
// sorts after after, in id order, with the cursor of the next page. It
// scans every conversation under the read lock (O(n log limit) time,
// O(limit) memory): an operator's tool, not a hot path.
func (f *FSM) ConvsAfter(after string, limit int) ConvPage {
	limit = max(limit, 1)
	keep := limit + 1 // one more tells whether there is a next page
	f.mu.RLock()
	defer f.mu.RUnlock()
	buf := make([]string, 0, 2*keep)
	var cut string // the largest id kept once buf was first trimmed
	trimmed := false
	for k := range f.st.Convs {
		if k <= after || (trimmed && k >= cut) {
			continue
		}
		buf = append(buf, k)
		if len(buf) == cap(buf) {
			slices.Sort(buf)
			buf = buf[:keep]
			cut, trimmed = buf[keep-1], true
		}
	}
	slices.Sort(buf)
	p := ConvPage{AppliedIndex: f.st.Index, Convs: make([]ConvEntry, 0, min(len(buf), limit))}
	if len(buf) > limit {
		buf = buf[:limit]
		p.Next = buf[limit-1]
	}
	for _, k := range buf {
		h := f.st.Convs[k]
		p.Convs = append(p.Convs, ConvEntry{Conv: k, Region: h.Region, Epoch: h.Epoch})
	}
	return p
}

// Index returns the index of the last applied command and a channel closed
// at the next apply or restore.
func (f *FSM) Index() (uint64, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.Index, f.applied
}
