package region

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// BackendPath is where a region serves the edge RPC.
const BackendPath = "/internal/v1/backend"

// InfoPath is where a region says who it is (GET, JSON RegionInfo), so an
// edge in another process can check that it was started for this region.
const InfoPath = "/internal/v1/info"

// ReadyPath is where a region says whether it can sequence (GET): 200
// with {"ready": true} while Region.Health is nil, else 503 with
// {"ready": false, "reason": "..."} — a sequencer that is not consuming,
// or a mesh region without its directory lease. A deposed region that
// holds its lease (it forwards to the current homes) is ready. Edges poll
// it (edge.Config.Ready) and stop serving while it is not.
const ReadyPath = "/internal/v1/ready"

// Readiness is the body of GET ReadyPath.
type Readiness struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

// RegionInfo is the body of GET InfoPath.
type RegionInfo struct {
	// Region is the region's name (Config.Name): the name its edges must
	// carry in Origin.region, or deliveries and acks for their sessions
	// are routed to another region.
	Region string `json:"region"`
}

const maxRPCBody = 1 << 20

// ErrOpenInternalAPI is returned by CheckInternalListen for an address
// that is not loopback when no token is configured.
var ErrOpenInternalAPI = errors.New("region: the internal API needs a token off loopback")

// CheckInternalListen refuses to serve the internal API (Handler) on addr
// without authentication: an empty token is allowed only when addr's host
// is a loopback address or "localhost". An empty host, an unspecified
// address (0.0.0.0, ::) or any other name or address needs a token. Call it
// with the configured address before listening and with the listener's
// actual address after.
func CheckInternalListen(addr, token string) error {
	if token != "" || core.LoopbackOnly(addr) {
		return nil
	}
	return fmt.Errorf("%w: %q is reachable from other hosts; set a shared secret with --token or CHATMESH_REGION_TOKEN (the edges send the same), or listen on 127.0.0.1", ErrOpenInternalAPI, addr)
}

// Handler serves the API to edges in other processes: POST BackendPath with
// a pb.BackendCall, answered by a pb.BackendReply. If token is not empty,
// callers must send "Authorization: Bearer <token>"; an empty token serves
// everyone and is only for loopback (CheckInternalListen). Serve it on an
// internal network only.
func (a *API) Handler(token string) http.Handler {
	mux := http.NewServeMux()
	authorized := func(w http.ResponseWriter, req *http.Request) bool {
		if token != "" && subtle.ConstantTimeCompare([]byte(req.Header.Get("Authorization")), []byte("Bearer "+token)) != 1 {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return false
		}
		return true
	}
	mux.HandleFunc("GET "+InfoPath, func(w http.ResponseWriter, req *http.Request) {
		if !authorized(w, req) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(RegionInfo{Region: a.r.cfg.Name})
	})
	mux.HandleFunc("GET "+ReadyPath, func(w http.ResponseWriter, req *http.Request) {
		if !authorized(w, req) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := a.Ready(req.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(Readiness{Reason: err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(Readiness{Ready: true})
	})
	mux.HandleFunc("POST "+BackendPath, func(w http.ResponseWriter, req *http.Request) {
		if !authorized(w, req) {
			return
		}
		body, err := io.ReadAll(io.LimitReader(req.Body, maxRPCBody+1))
		if err != nil || len(body) > maxRPCBody {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		var call pb.BackendCall
		if err := proto.Unmarshal(body, &call); err != nil {
			http.Error(w, "malformed call", http.StatusBadRequest)
			return
		}
		reply := a.serve(req.Context(), &call)
		out, err := proto.Marshal(reply)
		if err != nil {
			http.Error(w, "encode", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
	return mux
}

func (a *API) serve(ctx context.Context, call *pb.BackendCall) *pb.BackendReply {
	var err error
	reply := &pb.BackendReply{}
	switch c := call.GetCall().(type) {
	case *pb.BackendCall_Authenticate:
		var k core.DeviceKey
		k, err = a.Authenticate(ctx, c.Authenticate)
		if err == nil {
			reply.Device = k.Addr()
		}
	case *pb.BackendCall_Register:
		reply.Register, err = a.Register(ctx, c.Register.GetNoiseStatic(), c.Register.GetRequest())
	case *pb.BackendCall_SessionOpened:
		err = a.SessionOpened(ctx, routeOf(c.SessionOpened))
	case *pb.BackendCall_SessionClosed:
		err = a.SessionClosed(ctx, core.KeyOf(c.SessionClosed.GetDevice()), c.SessionClosed.GetSessionId())
	case *pb.BackendCall_EdgeStarted:
		err = a.EdgeStarted(ctx, c.EdgeStarted)
	case *pb.BackendCall_Query:
		reply.Response, err = a.Query(ctx, core.KeyOf(c.Query.GetDevice()), c.Query.GetFrame())
	default:
		err = fmt.Errorf("backend: empty call: %w", core.ErrInvalidArgument)
	}
	if err != nil {
		a.r.log.Debug("backend call failed", "err", err)
		reply.Error = core.ToWire(err)
		if core.Code(err) == pb.ErrorCode_ERROR_CODE_INTERNAL {
			// Transient store trouble: let the edge tell its client to retry.
			reply.Error = &pb.Error{Code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, Detail: "region unavailable"}
		}
	}
	return reply
}

func routeOf(r *pb.BackendRoute) core.Route {
	return core.Route{Device: core.KeyOf(r.GetDevice()), Edge: r.GetEdgeId(), Session: r.GetSessionId(), SinceMs: r.GetSinceMs()}
}

// RemoteAPI calls a region's API over HTTP; it has the same methods as API,
// so an edge in another process uses it as its backend.
type RemoteAPI struct {
	URL    string // base URL of the region's internal listener, e.g. http://10.0.0.5:7490
	Token  string
	Client *http.Client // nil: a client with a 10 s timeout
}

func (r *RemoteAPI) call(ctx context.Context, call *pb.BackendCall) (*pb.BackendReply, error) {
	body, err := proto.Marshal(call)
	if err != nil {
		return nil, fmt.Errorf("remote api: encode: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL+BackendPath, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("remote api: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
	c := r.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("remote api: %w: %w", core.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("remote api: read: %w: %w", core.ErrUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("remote api: status %d: %w", resp.StatusCode, core.ErrUnavailable)
	}
	var reply pb.BackendReply
	if err := proto.Unmarshal(out, &reply); err != nil {
		return nil, fmt.Errorf("remote api: decode: %w", err)
	}
	if err := core.FromWire(reply.GetError()); err != nil {
		return &reply, err
	}
	return &reply, nil
}

// Ready reports whether the region can sequence: Region.Health (a
// sequencer consuming its ingress and, in a mesh, holding its directory
// lease). It is what edge.Config.Ready wants of an in-process region.
func (a *API) Ready(context.Context) error { return a.r.Health() }

// ErrNoReadiness: the region does not serve ReadyPath (an older release).
var ErrNoReadiness = errors.New("region: the region API has no readiness endpoint")

// Ready asks the region whether it can sequence (GET ReadyPath): nil when
// it can; an error wrapping core.ErrUnavailable with the region's reason
// when it cannot or cannot be reached; core.ErrForbidden when the token is
// refused; ErrNoReadiness from a region that predates the endpoint. It is
// what edge.Config.Ready wants of a region in another process.
func (r *RemoteAPI) Ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+ReadyPath, nil)
	if err != nil {
		return fmt.Errorf("remote api: %w", err)
	}
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
	c := r.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("remote api: ready: %w: %w", core.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	var body Readiness
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<12)).Decode(&body)
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusServiceUnavailable:
		return fmt.Errorf("remote api: region not ready: %s: %w", body.Reason, core.ErrUnavailable)
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return ErrNoReadiness
	case http.StatusUnauthorized:
		return fmt.Errorf("remote api: ready: the region refused the token: %w", core.ErrForbidden)
	default:
		return fmt.Errorf("remote api: ready: status %d: %w", resp.StatusCode, core.ErrUnavailable)
	}
}

// ErrNoInfo: the region does not serve InfoPath (an older release).
var ErrNoInfo = errors.New("region: the region API has no info endpoint")

// Info asks the region who it is (GET InfoPath). A region that predates
// the endpoint gives ErrNoInfo; an unreachable one core.ErrUnavailable.
func (r *RemoteAPI) Info(ctx context.Context) (RegionInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+InfoPath, nil)
	if err != nil {
		return RegionInfo{}, fmt.Errorf("remote api: %w", err)
	}
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
	c := r.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return RegionInfo{}, fmt.Errorf("remote api: info: %w: %w", core.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return RegionInfo{}, ErrNoInfo
	case http.StatusUnauthorized:
		return RegionInfo{}, fmt.Errorf("remote api: info: the region refused the token: %w", core.ErrForbidden)
	default:
		return RegionInfo{}, fmt.Errorf("remote api: info: status %d: %w", resp.StatusCode, core.ErrUnavailable)
	}
	var info RegionInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&info); err != nil {
		return RegionInfo{}, fmt.Errorf("remote api: info: decode: %w", err)
	}
	return info, nil
}

// Authenticate implements the edge backend.
func (r *RemoteAPI) Authenticate(ctx context.Context, static []byte) (core.DeviceKey, error) {
	reply, err := r.call(ctx, &pb.BackendCall{Call: &pb.BackendCall_Authenticate{Authenticate: static}})
	if err != nil {
		return core.DeviceKey{}, err
	}
	return core.KeyOf(reply.GetDevice()), nil
}

// Register implements the edge backend.
func (r *RemoteAPI) Register(ctx context.Context, static []byte, req *pb.RegisterRequest) (*pb.RegisterResponse, error) {
	reply, err := r.call(ctx, &pb.BackendCall{Call: &pb.BackendCall_Register{Register: &pb.BackendRegister{NoiseStatic: static, Request: req}}})
	if err != nil {
		return nil, err
	}
	if reply.GetRegister() == nil {
		return nil, errors.New("remote api: empty register reply")
	}
	return reply.GetRegister(), nil
}

// SessionOpened implements the edge backend.
func (r *RemoteAPI) SessionOpened(ctx context.Context, rt core.Route) error {
	_, err := r.call(ctx, &pb.BackendCall{Call: &pb.BackendCall_SessionOpened{SessionOpened: &pb.BackendRoute{
		Device: rt.Device.Addr(), EdgeId: rt.Edge, SessionId: rt.Session, SinceMs: rt.SinceMs,
	}}})
	return err
}

// SessionClosed implements the edge backend.
func (r *RemoteAPI) SessionClosed(ctx context.Context, dev core.DeviceKey, session uint64) error {
	_, err := r.call(ctx, &pb.BackendCall{Call: &pb.BackendCall_SessionClosed{SessionClosed: &pb.BackendRoute{
		Device: dev.Addr(), SessionId: session,
	}}})
	return err
}

// EdgeStarted implements the edge backend.
func (r *RemoteAPI) EdgeStarted(ctx context.Context, edgeID string) error {
	_, err := r.call(ctx, &pb.BackendCall{Call: &pb.BackendCall_EdgeStarted{EdgeStarted: edgeID}})
	return err
}

// Query implements the edge backend.
func (r *RemoteAPI) Query(ctx context.Context, dev core.DeviceKey, f *pb.ClientFrame) (*pb.Response, error) {
	reply, err := r.call(ctx, &pb.BackendCall{Call: &pb.BackendCall_Query{Query: &pb.BackendQuery{Device: dev.Addr(), Frame: f}}})
	if err != nil {
		return nil, err
	}
	return reply.GetResponse(), nil
}
