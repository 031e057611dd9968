package directory

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// Errors of the HTTP surface.
var (
	// ErrNotFound: the user or conversation is not in the directory.
	ErrNotFound = errors.New("directory: not found")
	// ErrUnauthorized: the request lacked the voters' token (or a voter
	// forwarding to the leader was refused: the voters' tokens differ).
	ErrUnauthorized = errors.New("directory: unauthorized")
	// ErrOpenEndpoint is returned by CheckListen (and Open) for an HTTP
	// address that is not loopback when no token is configured.
	ErrOpenEndpoint = errors.New("directory: the HTTP endpoint needs a token off loopback")
)

// CheckListen refuses to serve the directory's HTTP endpoints on addr
// without authentication: an empty token is allowed only when addr's host
// is a loopback address or "localhost". Open calls it for its own
// Peer.HTTPAddr; a command that takes the address from a flag can call it
// first to fail before anything starts.
func CheckListen(addr, token string) error {
	if token != "" || core.LoopbackOnly(addr) {
		return nil
	}
	return fmt.Errorf("%w: %q is reachable from other hosts; give every voter the same Config.Token (operators pass it with --token), or listen on 127.0.0.1", ErrOpenEndpoint, addr)
}

// authorize checks "Authorization: Bearer <token>" (constant time) on
// every request when the voter has a token.
func (d *Directory) authorize(next http.Handler) http.Handler {
	if d.cfg.Token == "" {
		return next
	}
	want := []byte("Bearer " + d.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			writeAdminError(w, http.StatusUnauthorized, codeUnauthorized, "unauthorized: missing or wrong bearer token (--token / CHATMESH_DIRECTORY_TOKEN)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Admin and read endpoints (GET; see doc.go).
const (
	pathStatus = "/directory/v1/status"
	pathConv   = "/directory/v1/conv"
	pathUser   = "/directory/v1/user"
	pathConvs  = "/directory/v1/convs"
	// pathRegions lists every region with its edges: bounded, because
	// regions are few and each holds at most MaxEdgesPerRegion edges (see
	// doc.go).
	pathRegions = "/directory/v1/regions"

	// MaxConvsPage bounds one page of GET /directory/v1/convs.
	MaxConvsPage = 1000
	// defaultConvsPage is the page size when limit is absent.
	defaultConvsPage = 100
	// maxAdminReply bounds what AdminClient reads of one reply.
	maxAdminReply = 16 << 20
)

// Error codes of the admin replies ({"code": …, "error": …}), besides the
// Result codes.
const (
	codeNotFound     = "not_found"
	codeUnauthorized = "unauthorized"
	codeBadRequest   = "bad_request"
	codeNoLeader     = "no_leader"
	codeUncertain    = "uncertain"
	codeClosed       = "closed"
)

// Status is the reply of GET /directory/v1/status: what one voter knows.
type Status struct {
	ID           string `json:"id"`
	Leader       string `json:"leader"` // "" when no leader is known
	IsLeader     bool   `json:"is_leader"`
	AppliedIndex uint64 `json:"applied_index"`
	Voters       []Peer `json:"voters"`
	State        Counts `json:"state"`
	// HeartbeatAgeMS is, on the leader with failure detection on, how
	// long ago each region last heartbeat, in milliseconds (-1: not since
	// this voter leads); empty elsewhere (ask the leader).
	HeartbeatAgeMS map[string]int64 `json:"heartbeat_age_ms,omitempty"`
}

// Counts summarises the applied state: every region (with its edges) and
// how many users and conversations are homed; the users and conversations
// themselves are read one by one or paged (ConvPage).
type Counts struct {
	Regions []Region `json:"regions"`
	Users   int      `json:"users"`
	Convs   int      `json:"convs"`
}

// ConvEntry is one conversation and its home.
type ConvEntry struct {
	Conv   string `json:"conv"`
	Region string `json:"region"`
	Epoch  uint64 `json:"epoch"`
}

// ConvPage is one page of GET /directory/v1/convs, in conversation id
// order.
type ConvPage struct {
	Convs []ConvEntry `json:"convs"`
	// Next is the after= of the following page; "" on the last page.
	Next         string `json:"next,omitempty"`
	AppliedIndex uint64 `json:"applied_index"`
}

type convReply struct {
	ConvEntry
	AppliedIndex uint64 `json:"applied_index"`
}

// regionsReply is the body of GET /directory/v1/regions.
type regionsReply struct {
	Regions      []Region `json:"regions"`
	AppliedIndex uint64   `json:"applied_index"`
}

type userReply struct {
	User         string `json:"user"`
	Home         string `json:"home"`
	AppliedIndex uint64 `json:"applied_index"`
}

type adminError struct {
	Code  string `json:"code"`
	Error string `json:"error"`
}

func writeAdminError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(adminError{Code: code, Error: msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeErr maps an error of Sync or a write to an admin reply.
func writeErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrUncertain):
		writeAdminError(w, http.StatusServiceUnavailable, codeUncertain, err.Error())
	case errors.Is(err, ErrClosed):
		writeAdminError(w, http.StatusServiceUnavailable, codeClosed, err.Error())
	case errors.Is(err, ErrUnauthorized):
		writeAdminError(w, http.StatusBadGateway, codeUnauthorized, err.Error())
	case errors.Is(err, ErrBadCommand):
		writeAdminError(w, http.StatusBadRequest, codeBadCommand, err.Error())
	default: // ErrNoLeader, a context that ended
		writeAdminError(w, http.StatusGatewayTimeout, codeNoLeader, err.Error())
	}
}

// adminTimeout bounds the raft work one admin request may wait for.
func (d *Directory) adminTimeout() time.Duration { return 3 * d.cfg.ApplyTimeout }

func (d *Directory) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+pathStatus, d.handleStatus)
	mux.HandleFunc("GET "+pathConv, d.handleConv)
	mux.HandleFunc("GET "+pathUser, d.handleUser)
	mux.HandleFunc("GET "+pathConvs, d.handleConvs)
	mux.HandleFunc("GET "+pathRegions, d.handleRegions)
}

// handleAdminApply applies an operator's command through the leader.
func (d *Directory) handleAdminApply(w http.ResponseWriter, r *http.Request, b []byte) {
	ctx, cancel := context.WithTimeout(r.Context(), d.adminTimeout())
	defer cancel()
	res, err := d.applyAnywhere(ctx, b)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, res)
}

// syncIfAsked runs Sync when the query has linearizable=1 (or true). It
// reports whether the handler may go on.
func (d *Directory) syncIfAsked(w http.ResponseWriter, r *http.Request) bool {
	lin, err := strconv.ParseBool(cmp.Or(r.URL.Query().Get("linearizable"), "0"))
	if err != nil {
		writeAdminError(w, http.StatusBadRequest, codeBadRequest, "linearizable: want 0 or 1")
		return false
	}
	if !lin {
		return true
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.adminTimeout())
	defer cancel()
	if err := d.Sync(ctx); err != nil {
		writeErr(w, err)
		return false
	}
	return true
}

func (d *Directory) handleStatus(w http.ResponseWriter, r *http.Request) {
	if !d.syncIfAsked(w, r) {
		return
	}
	st := Status{ID: d.cfg.ID, Leader: d.Leader(), IsLeader: d.IsLeader(), Voters: slices.Clone(d.cfg.Peers)}
	st.AppliedIndex, st.State = d.fsm.Summary()
	if d.IsLeader() {
		st.HeartbeatAgeMS = d.det.ages(d.cfg.Now(), st.State.Regions)
	}
	writeJSON(w, st)
}

func (d *Directory) handleRegions(w http.ResponseWriter, r *http.Request) {
	if !d.syncIfAsked(w, r) {
		return
	}
	// Index first: the regions read after it are at least that fresh.
	idx := d.AppliedIndex()
	writeJSON(w, regionsReply{Regions: d.Regions(), AppliedIndex: idx})
}

func (d *Directory) handleConv(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if id == "" {
		writeAdminError(w, http.StatusBadRequest, codeBadRequest, "id is required")
		return
	}
	if !d.syncIfAsked(w, r) {
		return
	}
	h, ok := d.Conv(id)
	if !ok {
		writeAdminError(w, http.StatusNotFound, codeNotFound, fmt.Sprintf("conversation %q is not in the directory", id))
		return
	}
	writeJSON(w, convReply{ConvEntry: ConvEntry{Conv: id, Region: h.Region, Epoch: h.Epoch}, AppliedIndex: d.AppliedIndex()})
}

func (d *Directory) handleUser(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if id == "" {
		writeAdminError(w, http.StatusBadRequest, codeBadRequest, "id is required")
		return
	}
	if !d.syncIfAsked(w, r) {
		return
	}
	h, ok := d.UserHome(id)
	if !ok {
		writeAdminError(w, http.StatusNotFound, codeNotFound, fmt.Sprintf("user %q is not in the directory", id))
		return
	}
	writeJSON(w, userReply{User: id, Home: h, AppliedIndex: d.AppliedIndex()})
}

func (d *Directory) handleConvs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := defaultConvsPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxConvsPage {
			writeAdminError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("limit: want 1..%d", MaxConvsPage))
			return
		}
		limit = n
	}
	if !d.syncIfAsked(w, r) {
		return
	}
	writeJSON(w, d.fsm.ConvsAfter(q.Get("after"), limit))
}

// --- client ---

// AdminClient talks to one voter's HTTP endpoint (any voter: writes are
// applied through the leader wherever it is). The zero HTTP uses
// http.DefaultClient. Methods are safe for concurrent use.
type AdminClient struct {
	// URL is the voter's base URL, e.g. "http://127.0.0.1:7601".
	URL string
	// Token is the voters' Config.Token ("" when they have none).
	Token string
	HTTP  *http.Client
}

func (c *AdminClient) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// do sends one request and decodes a 200 reply into out; any other status
// becomes a typed error.
func (c *AdminClient) do(ctx context.Context, method, path string, q url.Values, body []byte, out any) error {
	u := strings.TrimRight(c.URL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("directory: %s %s: %w", method, path, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("directory: %s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminReply+1))
	if err != nil {
		return fmt.Errorf("directory: %s %s: read reply: %w", method, path, err)
	}
	if len(b) > maxAdminReply {
		return fmt.Errorf("directory: %s %s: reply over %d bytes", method, path, maxAdminReply)
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("directory: %s %s: decode reply: %w", method, path, err)
		}
		return nil
	}
	var ae adminError
	if json.Unmarshal(b, &ae) != nil || ae.Code == "" {
		ae = adminError{Error: strings.TrimSpace(string(b))}
	}
	if ae.Error == "" {
		ae.Error = resp.Status
	}
	var kind error
	switch ae.Code {
	case codeNotFound:
		kind = ErrNotFound
	case codeUnknownRegion:
		kind = ErrUnknownRegion
	case codeUnauthorized:
		kind = ErrUnauthorized
	case codeBadCommand, codeBadRequest:
		kind = ErrBadCommand
	case codeNoLeader:
		kind = ErrNoLeader
	case codeUncertain:
		kind = ErrUncertain
	case codeClosed:
		kind = ErrClosed
	default:
		if resp.StatusCode == http.StatusBadRequest { // DecodeCommand refused it
			kind = ErrBadCommand
		} else {
			kind = errors.New(resp.Status)
		}
	}
	return &remoteError{kind: kind, msg: fmt.Sprintf("directory: %s %s: %s", method, path, ae.Error)}
}

// remoteError is a voter's refusal: its message, matching kind under
// errors.Is.
type remoteError struct {
	kind error
	msg  string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// Status returns what the voter knows: leader, applied index, regions
// with their edges, and how many users and conversations are homed. With
// linearizable the voter runs Sync first (so it reflects every write that
// completed before the call; fails without a leader); otherwise it answers
// from its applied copy, which works without a leader but may be stale.
func (c *AdminClient) Status(ctx context.Context, linearizable bool) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, pathStatus, linQuery(url.Values{}, linearizable), nil, &st)
	return st, err
}

func linQuery(q url.Values, linearizable bool) url.Values {
	if linearizable {
		q.Set("linearizable", "1")
	}
	return q
}

// Conv returns a conversation's home and epoch (ErrNotFound when absent).
// With linearizable the voter runs Sync first; otherwise it answers from
// its applied copy, which may be stale.
func (c *AdminClient) Conv(ctx context.Context, conv string, linearizable bool) (ConvHome, error) {
	var r convReply
	err := c.do(ctx, http.MethodGet, pathConv, linQuery(url.Values{"id": {conv}}, linearizable), nil, &r)
	return ConvHome{Region: r.Region, Epoch: r.Epoch}, err
}

// UserHome returns a user's home region (ErrNotFound when absent), like
// Conv.
func (c *AdminClient) UserHome(ctx context.Context, user string, linearizable bool) (string, error) {
	var r userReply
	err := c.do(ctx, http.MethodGet, pathUser, linQuery(url.Values{"id": {user}}, linearizable), nil, &r)
	return r.Home, err
}

// Convs returns up to limit (1..MaxConvsPage) conversations whose id sorts
// after after, in id order, from the voter's applied copy.
func (c *AdminClient) Convs(ctx context.Context, after string, limit int) (ConvPage, error) {
	var p ConvPage
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if after != "" {
		q.Set("after", after)
	}
	err := c.do(ctx, http.MethodGet, pathConvs, q, nil, &p)
	return p, err
}

// Regions returns every region with its edges, by name (edges by ID),
// from the voter's applied copy; with linearizable the voter runs Sync
// first. The reply is bounded: regions are few and each holds at most
// MaxEdgesPerRegion edges. This is what an edge's locator reads
// (geo.CachedEdges).
func (c *AdminClient) Regions(ctx context.Context, linearizable bool) ([]Region, error) {
	var r regionsReply
	if err := c.do(ctx, http.MethodGet, pathRegions, linQuery(url.Values{}, linearizable), nil, &r); err != nil {
		return nil, err
	}
	return r.Regions, nil
}

// Apply applies one command through the leader and returns its Result and
// the error it stands for (an *EpochError, ErrExists, ErrUnknownRegion,
// ErrUnknownEdge, ErrBadCommand, or ErrUncertain/ErrNoLeader when the
// voter could not get an answer from a leader).
func (c *AdminClient) Apply(ctx context.Context, cmd Command) (Result, error) {
	b, err := EncodeCommand(cmd)
	if err != nil {
		return Result{}, err
	}
	var res Result
	if err := c.do(ctx, http.MethodPost, pathApply, nil, b, &res); err != nil {
		return Result{}, fmt.Errorf("directory: %s: %w", cmd.Op, err)
	}
	return res, res.err(cmd)
}

// moveAttempts bounds MoveConversation's and MoveUser's re-read-and-retry
// rounds.
const moveAttempts = 5

// MoveConversation moves a conversation's home to region to: it reads the
// current home and epoch linearizably, then sets the home with a
// compare-and-set on that epoch (the epoch becomes epoch+1, fencing the old
// home). A concurrent change of the epoch, or an outcome the voter could
// not learn, makes it re-read and try again, a few times. Moving to the
// current home changes nothing and returns it. A conversation that is not
// in the directory gives ErrNotFound (its home is set when it is created).
func (c *AdminClient) MoveConversation(ctx context.Context, conv, to string) (ConvHome, error) {
	var last error
	for range moveAttempts {
		cur, err := c.Conv(ctx, conv, true)
		if err != nil {
			return ConvHome{}, err
		}
		if cur.Region == to {
			return cur, nil
		}
		res, err := c.Apply(ctx, Command{Op: OpSetConvHome, Conv: conv, Home: to, ExpectEpoch: cur.Epoch})
		var ee *EpochError
		switch {
		case err == nil:
			return ConvHome{Region: res.Home, Epoch: res.Epoch}, nil
		case errors.As(err, &ee), errors.Is(err, ErrUncertain):
			last = err
		default:
			return ConvHome{}, err
		}
	}
	return ConvHome{}, fmt.Errorf("directory: move conversation %q: gave up after %d attempts: %w", conv, moveAttempts, last)
}

// MoveUser homes a user in region to and moves every conversation the
// user owns (a group they created, a 1:1 they started: ConvHome.Owner)
// there, each at its epoch + 1, in one replicated step (OpMoveUser). It
// returns the previous home and how many conversations moved. A user not
// in the directory gives ErrNotFound (users are homed when they
// register). Unconditional, so repeating it is safe (and moves owned
// conversations that were moved away one by one since).
func (c *AdminClient) MoveUser(ctx context.Context, user, to string) (string, int, error) {
	from, err := c.UserHome(ctx, user, true)
	if err != nil {
		return "", 0, err
	}
	var last error
	for range moveAttempts {
		res, err := c.Apply(ctx, Command{Op: OpMoveUser, User: user, Home: to})
		if !errors.Is(err, ErrUncertain) {
			return from, res.Moved, err
		}
		last = err
	}
	return from, 0, fmt.Errorf("directory: move user %q: gave up after %d attempts: %w", user, moveAttempts, last)
}

// PutEdge creates or replaces (by ID) an edge of region; see
// Directory.PutEdge.
func (c *AdminClient) PutEdge(ctx context.Context, region string, e Edge) error {
	_, err := c.Apply(ctx, Command{Op: OpPutEdge, Name: region, Edge: &e})
	return err
}

// SetEdgeHealth marks an edge of region healthy or not (ErrUnknownEdge
// when the region does not hold it).
func (c *AdminClient) SetEdgeHealth(ctx context.Context, region, id string, healthy bool) error {
	_, err := c.Apply(ctx, Command{Op: OpSetEdgeHealth, Name: region, EdgeID: id, Healthy: &healthy})
	return err
}

// SetRegionHealth marks a region healthy or not.
func (c *AdminClient) SetRegionHealth(ctx context.Context, region string, healthy bool) error {
	_, err := c.Apply(ctx, Command{Op: OpSetRegionHealth, Name: region, Healthy: &healthy})
	return err
}
