package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/admin"
	"github.com/chatmesh/chatmesh/internal/benchload"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region"
)

// meshDev is `chatmesh dev --regions N` (N > 1): the mesh in one process.
type meshDev struct {
	data, ws, wt, kafka, pg, pgSchema, locate, webhook string
	regions, maxConns, raftPort, dirPort               int
	adm                                                *admissionFlags
	bench                                              bool // benchload.LiftLimits on every edge
	admin                                              *adminFlags
	fs                                                 *flag.FlagSet
	ret                                                *retentionFlags
}

// port returns the port of a host:port flag.
func port(addr string) (int, error) {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}

func (d meshDev) run(ctx context.Context, logger *slog.Logger, stdout io.Writer) error {
	wsPort, err := port(d.ws)
	if err != nil {
		return fmt.Errorf("dev: --ws: %w", err)
	}
	wtPort := 0
	if d.wt != "-" {
		if wtPort, err = port(d.wt); err != nil {
			return fmt.Errorf("dev: --wt: %w", err)
		}
	}
	regions := stack.DevRegions()[:d.regions]
	for i := range regions {
		r := &regions[i]
		// Fixed ports on each region's own loopback address: raft keeps
		// its peers' addresses, so a restart must find them again.
		r.WSPort, r.WTPort, r.RaftPort, r.DirPort = wsPort, wtPort, d.raftPort, d.dirPort
		if d.kafka != "" { // one external cluster shared by the regions
			r.KafkaBrokers, r.Namespace = strings.Split(d.kafka, ","), r.Name
		}
	}
	cfg := stack.MeshConfig{DataDir: d.data, Regions: regions, PostgresDSN: d.pg, PGSchema: d.pgSchema,
		WTDisabled: d.wt == "-", MaxConnsPerIP: d.maxConns, Logger: logger,
		EdgeConfig: func(_ string, c *edge.Config) {
			d.adm.apply(&c.Admission)
			if d.bench {
				benchload.LiftLimits(c, "")
			}
		}}
	if d.locate != "-" {
		cfg.LocateAddr = d.locate
	}
	cfg.RegionConfig = func(c *region.Config) {
		if d.ret != nil {
			d.ret.apply(c)
		}
		if d.webhook != "" {
			c.Notifier = core.Notifier(&region.WebhookNotifier{URL: d.webhook})
		}
	}
	m, err := stack.StartMesh(ctx, cfg)
	if err != nil {
		return err
	}
	path, err := m.WriteEndpoints()
	if err != nil {
		logger.Warn("could not write endpoints", "err", err)
	}
	fmt.Fprintf(stdout, "chatmesh dev: %d-region mesh running (store: %s)\n", len(m.Nodes), storeName(d.pg))
	for _, n := range m.Nodes {
		e := n.Ends
		fmt.Fprintf(stdout, "  region %-13s WebSocket %s", e.Region, e.WS)
		if e.WT != "" {
			fmt.Fprintf(stdout, "  WebTransport %s", e.WT)
		}
		fmt.Fprintf(stdout, "  (kafka: %s, directory: http://%s:%d)\n", e.Kafka, n.Spec.Host, n.Spec.DirPort)
		fmt.Fprintf(stdout, "    edge key %s\n", e.EdgeKey)
		b, _ := json.Marshal(e)
		fmt.Fprintf(stdout, "ENDPOINTS %s\n", b)
	}
	if m.LocateURL != "" {
		fmt.Fprintf(stdout, "  locator:   %s\n", m.LocateURL)
		fmt.Fprintf(stdout, "LOCATE %s\n", m.LocateURL)
	}
	fmt.Fprintf(stdout, "  endpoints: %s\n", path)
	if d.admin != nil {
		reg := admin.NewRegistry(Version)
		adm, err := d.admin.start(d.fs, reg, meshMetrics(reg, m, logger), logger, stdout)
		if err != nil {
			_ = m.Shutdown(context.Background())
			return fmt.Errorf("dev: %w", err)
		}
		defer closeAdmin(adm)
	}
	fmt.Fprintf(stdout, "try: chatmesh chat --state /tmp/alice --edge %s register alice   (Frankfurt)\n", m.Nodes[0].Ends.WS)
	if len(m.Nodes) > 1 {
		fmt.Fprintf(stdout, "     chatmesh chat --state /tmp/bob --edge %s register bob       (Virginia)\n", m.Nodes[1].Ends.WS)
	}
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-m.Failed():
		logger.Error("edge failed", "err", failed)
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return errors.Join(failed, m.Shutdown(sctx))
}

func storeName(pg string) string {
	if pg != "" {
		return "postgres (shared)"
	}
	return "pebble (shared)"
}
