package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Paths the admin server answers.
const (
	MetricsPath = "/metrics"
	HealthPath  = "/healthz"
	ReadyPath   = "/readyz"
	PprofPath   = "/debug/pprof/"
)

// DefaultCheckTimeout bounds each readiness check.
const DefaultCheckTimeout = 2 * time.Second

// Check is one readiness condition of a process: Fn returns nil while
// the condition holds, else why not (the reason is shown on /readyz).
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Config configures an admin server. Addr is required.
type Config struct {
	// Addr is the listen address (host:port; port 0 picks a free one).
	// It must not be a public client port: the server answers /metrics
	// and pprof to whoever reaches it.
	Addr string
	// Token, if set, must be presented as "Authorization: Bearer <token>"
	// on /metrics and /debug/pprof/ (/healthz and /readyz stay open for
	// probes). Required when Addr is not a loopback address.
	Token string
	// Gatherer is what /metrics serves (NewRegistry).
	Gatherer prometheus.Gatherer
	// Checks decide /readyz: 200 when every one returns nil, else 503.
	Checks []Check
	// CheckTimeout bounds each check (default DefaultCheckTimeout).
	CheckTimeout time.Duration
	Logger       *slog.Logger
}

// ErrOpenAdmin: a non-loopback admin address without a token.
var ErrOpenAdmin = errors.New("admin: a non-loopback admin address needs a token (--admin-token or CHATMESH_ADMIN_TOKEN)")

// CheckListen refuses an admin address off loopback without a token: the
// server exposes pprof (heap contents, goroutine stacks) and metrics.
func CheckListen(addr, token string) error {
	if token != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin: address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: %s", ErrOpenAdmin, addr)
	}
	return nil
}

// NewRegistry returns a registry for one process: the Go runtime and
// process collectors and chatmesh_build_info{version, go_version}. The
// components register their own collectors in it (edge, region, bus,
// link); nothing is registered in Prometheus's global registry.
func NewRegistry(version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	goVersion := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "chatmesh_build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version, "go_version": goVersion}})
	info.Set(1)
	reg.MustRegister(info)
	return reg
}

// Readiness is the JSON body of /readyz.
type Readiness struct {
	Ready  bool          `json:"ready"`
	Checks []CheckResult `json:"checks"`
}

// CheckResult is one check's outcome.
type CheckResult struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// Handler returns the admin endpoints: /metrics, /healthz, /readyz and
// net/http/pprof under /debug/pprof/.
func Handler(cfg Config) http.Handler {
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.NewRegistry()
	}
	guard := func(h http.Handler) http.Handler {
		if cfg.Token == "" {
			return h
		}
		want := []byte("Bearer " + cfg.Token)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="chatmesh admin"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, guard(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})))
	mux.HandleFunc("GET "+HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"alive":true}` + "\n"))
	})
	mux.HandleFunc("GET "+ReadyPath, func(w http.ResponseWriter, r *http.Request) {
		rd := runChecks(r.Context(), cfg.Checks, cfg.CheckTimeout)
		w.Header().Set("Content-Type", "application/json")
		if !rd.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(rd)
	})
	mux.Handle(PprofPath, guard(http.HandlerFunc(pprof.Index)))
	mux.Handle(PprofPath+"cmdline", guard(http.HandlerFunc(pprof.Cmdline)))
	mux.Handle(PprofPath+"profile", guard(http.HandlerFunc(pprof.Profile)))
	mux.Handle(PprofPath+"symbol", guard(http.HandlerFunc(pprof.Symbol)))
	mux.Handle(PprofPath+"trace", guard(http.HandlerFunc(pprof.Trace)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "chatmesh admin: %s %s %s %s\n", MetricsPath, HealthPath, ReadyPath, PprofPath)
	})
	return mux
}

// runChecks runs every check at once, each bounded by timeout.
func runChecks(ctx context.Context, checks []Check, timeout time.Duration) Readiness {
	rd := Readiness{Ready: true, Checks: make([]CheckResult, len(checks))}
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			res := CheckResult{Name: c.Name, OK: true}
			if err := c.Fn(cctx); err != nil {
				res.OK, res.Reason = false, err.Error()
			}
			rd.Checks[i] = res
		})
	}
	wg.Wait()
	for _, c := range rd.Checks {
		rd.Ready = rd.Ready && c.OK
	}
	return rd
}

// Server is a running admin server.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	once sync.Once
	err  error
}

// Listen binds cfg.Addr (refusing an open non-loopback address, see
// CheckListen) and serves Handler(cfg) until Close.
func Listen(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		return nil, errors.New("admin: no address")
	}
	if err := CheckListen(cfg.Addr, cfg.Token); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", cfg.Addr, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{ln: ln, done: make(chan struct{}),
		srv: &http.Server{Handler: Handler(cfg), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the server's base URL, http://host:port.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Close stops the server, waiting for requests in progress until ctx
// ends. Idempotent.
func (s *Server) Close(ctx context.Context) error {
	s.once.Do(func() {
		s.err = s.srv.Shutdown(ctx)
		if s.err != nil {
			_ = s.srv.Close()
		}
		<-s.done
	})
	return s.err
}

// SameListener reports whether two listen addresses would share a port
// on a common interface (the admin address must never be a client port).
func SameListener(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp || ap == "0" {
		return false
	}
	wild := func(h string) bool { ip := net.ParseIP(h); return h == "" || (ip != nil && ip.IsUnspecified()) }
	return strings.EqualFold(ah, bh) || wild(ah) || wild(bh)
}
