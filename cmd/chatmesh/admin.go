package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/admin"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region"
)

// Default admin addresses (loopback; see README, "Operating"). `chatmesh
// broker` has none by default (the simulator runs several).
const (
	defaultDevAdmin    = "127.0.0.1:7479"
	defaultEdgeAdmin   = "127.0.0.1:7481"
	defaultRegionAdmin = "127.0.0.1:7493"
)

// adminFlags are --admin and --admin-token, shared by every server command.
type adminFlags struct {
	addr, token, def string
}

func addAdminFlags(fs *flag.FlagSet, def string) *adminFlags {
	a := &adminFlags{def: def}
	shown := def
	if shown == "" {
		shown = "-"
	}
	fs.StringVar(&a.addr, "admin", shown, "admin HTTP address: /metrics (Prometheus), /healthz, /readyz, /debug/pprof/; - disables. Never a client port; off loopback it needs --admin-token")
	fs.StringVar(&a.token, "admin-token", os.Getenv("CHATMESH_ADMIN_TOKEN"), "bearer token for /metrics and /debug/pprof/ on the admin address (env CHATMESH_ADMIN_TOKEN); required off loopback")
	return a
}

// check validates the flags before anything starts: a non-loopback
// address needs a token, and the admin address is none of the client
// listeners.
func (a *adminFlags) check(public ...string) error {
	if a.addr == "-" || a.addr == "" {
		return nil
	}
	if err := admin.CheckListen(a.addr, a.token); err != nil {
		return err
	}
	for _, p := range public {
		if p != "" && p != "-" && admin.SameListener(a.addr, p) {
			return fmt.Errorf("--admin %s is a client port (%s): give the admin server its own address", a.addr, p)
		}
	}
	return nil
}

// start serves the admin endpoints for reg and checks, and prints
// "ADMIN http://host:port". nil when disabled. The default address taken
// by another process is a warning (the process runs without an admin
// server); an address given explicitly that cannot be bound is an error.
func (a *adminFlags) start(fs *flag.FlagSet, reg *prometheus.Registry, checks []admin.Check, logger *slog.Logger, stdout io.Writer) (*admin.Server, error) {
	if a.addr == "-" || a.addr == "" {
		return nil, nil
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "admin" })
	srv, err := admin.Listen(admin.Config{Addr: a.addr, Token: a.token, Gatherer: reg, Checks: checks, Logger: logger})
	if err != nil {
		var op *net.OpError
		if !explicit && errors.As(err, &op) {
			logger.Warn("admin address in use; running without the admin server (give --admin ADDR, or --admin - to silence this)", "addr", a.addr, "err", err)
			return nil, nil
		}
		return nil, err
	}
	fmt.Fprintf(stdout, "  admin:         %s (/metrics /healthz /readyz /debug/pprof/)\n", srv.URL())
	fmt.Fprintf(stdout, "ADMIN %s\n", srv.URL())
	return srv, nil
}

// closeAdmin stops an admin server (nil: none).
func closeAdmin(srv *admin.Server) {
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Close(ctx)
}

// collectorOf is what the buses, regions, edges and links offer.
type collectorOf interface{ Collector() prometheus.Collector }

// register registers the collector of every component that has one
// (kafkabus buses do; other core.Bus implementations may not). A
// collector that collides with one already registered (two buses with
// one client id) is logged and left out.
func register(reg prometheus.Registerer, logger *slog.Logger, comps ...any) {
	for _, c := range comps {
		co, ok := c.(collectorOf)
		if !ok || c == nil {
			continue
		}
		if err := reg.Register(co.Collector()); err != nil {
			logger.Warn("metrics: collector not registered", "err", err)
		}
	}
}

// regionCheck is the readiness of a region: its sequencer consumes, it
// holds its lease (mesh), and its store answers.
func regionCheck(r *region.Region, name string) admin.Check {
	return admin.Check{Name: "region " + name, Fn: func(ctx context.Context) error { return r.Ready(ctx, admin.DefaultCheckTimeout) }}
}

// edgeCheck is the readiness of an in-process edge: it serves (it stops
// while its region cannot sequence, in a mesh).
func edgeCheck(e *edge.Edge, id string) admin.Check {
	return admin.Check{Name: "edge " + id, Fn: func(context.Context) error {
		if e.Stats().NotServing {
			return errors.New(edge.NotServingDetail)
		}
		return nil
	}}
}

// stackMetrics registers a single-region stack's collectors and returns
// its readiness checks.
func stackMetrics(reg prometheus.Registerer, s *stack.Stack, logger *slog.Logger) []admin.Check {
	register(reg, logger, s.Region, s.Edge, s.Bus, s.EdgeBus)
	e := s.Endpoints()
	return []admin.Check{regionCheck(s.Region, e.Region), edgeCheck(s.Edge, e.EdgeID)}
}

// meshMetrics registers an in-process mesh's collectors (every region,
// edge, bus and link) and returns its readiness checks.
func meshMetrics(reg prometheus.Registerer, m *stack.Mesh, logger *slog.Logger) []admin.Check {
	var checks []admin.Check
	for _, n := range m.Nodes {
		register(reg, logger, n.Region, n.Edge, n.Bus, n.EdgeBus)
		for _, l := range n.Links {
			register(reg, logger, l)
		}
		checks = append(checks, regionCheck(n.Region, n.Spec.Name), edgeCheck(n.Edge, n.Ends.EdgeID))
	}
	return checks
}
