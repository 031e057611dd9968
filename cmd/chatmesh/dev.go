package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/admin"
	"github.com/chatmesh/chatmesh/internal/benchload"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region"
)

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", ".chatmesh/dev", "data directory (Pebble store, edge key and certificate, endpoints.json)")
	ws := fs.String("ws", "127.0.0.1:7480", "WebSocket listen address")
	wt := fs.String("wt", "127.0.0.1:7443", "WebTransport (UDP) listen address; - disables")
	kafka := fs.String("kafka", "", "comma-separated Kafka brokers; empty runs an embedded broker")
	pg := fs.String("pg", "", "PostgreSQL/CockroachDB DSN; empty uses Pebble under --data")
	regionName := fs.String("region", "local", "region name")
	edgeID := fs.String("edge-id", "edge-1", "edge id (stable across restarts)")
	webhook := fs.String("webhook", "", "push-notification webhook URL for offline devices")
	namespace := fs.String("namespace", "", "prefix for the ingress/presence topics and the sequencer group (several regions on one Kafka)")
	pgSchema := fs.String("pg-schema", "", "PostgreSQL schema to use (created if absent)")
	maxConns := fs.Int("max-conns-per-ip", 0, "per-IP connection limit of the edge (0: edge default)")
	adm := addAdmissionFlags(fs)
	ret := addRetentionFlags(fs)
	bench := fs.Bool("bench", false, "benchmark target: lift the edge's per-IP and per-device budgets and per-IP connection limits so that many load clients from this host are served (chatmesh bench --edge); keeps the total connection limit and ingress admission. Load clients register with a --registration-token. Never in production")
	logLevel := fs.String("log", "info", "log level: debug, info, warn, error")
	regions := fs.Int("regions", 3, "regions to run: 1 (a single region) or 2..3 (a mesh: eu-central on 127.0.1.1, us-east on 127.0.2.1, ap-southeast on 127.0.3.1)")
	locate := fs.String("locate", "127.0.0.1:7470", "mesh only: also serve the locator (GET /v1/locate) here; - disables")
	raftPort := fs.Int("raft-port", 7491, "mesh only: each region's directory voter's raft port (on its 127.0.N.1); keep it across restarts")
	dirPort := fs.Int("dir-port", 7492, "mesh only: each region's directory voter's HTTP port")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole process to this file until it stops (for chatmesh bench runs)")
	adminF := addAdminFlags(fs, defaultDevAdmin)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := adminF.check(*ws, *wt); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if err := ret.check(); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	stopProfile, err := startCPUProfile("dev", *cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if *regions < 1 || *regions > len(stack.DevRegions()) {
		return fmt.Errorf("dev: --regions must be 1..%d", len(stack.DevRegions()))
	}
	if *regions > 1 {
		mc := meshDev{data: *data, ws: *ws, wt: *wt, kafka: *kafka, pg: *pg, pgSchema: *pgSchema, regions: *regions,
			locate: *locate, maxConns: *maxConns, adm: adm, bench: *bench, webhook: *webhook, raftPort: *raftPort, dirPort: *dirPort,
			admin: adminF, fs: fs, ret: ret}
		return mc.run(ctx, logger, stdout)
	}
	cfg := stack.Config{
		DataDir: *data, PostgresDSN: *pg, Region: *regionName, EdgeID: *edgeID,
		WSAddr: *ws, WTAddr: *wt, Logger: logger, MaxConnsPerIP: *maxConns,
		Namespace: *namespace, PGSchema: *pgSchema,
		RegionConfig: ret.apply,
		EdgeConfig: func(c *edge.Config) {
			adm.apply(&c.Admission)
			if *bench {
				benchload.LiftLimits(c, "")
			}
		},
	}
	if *kafka != "" {
		cfg.KafkaBrokers = strings.Split(*kafka, ",")
	}
	if *webhook != "" {
		cfg.Notifier = core.Notifier(&region.WebhookNotifier{URL: *webhook})
	}
	s, err := stack.Start(ctx, cfg)
	if err != nil {
		return err
	}
	path, err := s.WriteEndpoints()
	if err != nil {
		logger.Warn("could not write endpoints", "err", err)
	}
	e := s.Endpoints()
	b, _ := json.Marshal(e)
	fmt.Fprintf(stdout, "chatmesh dev: region %q running (kafka: %s, store: %s)\n", e.Region, e.Kafka, e.Store)
	fmt.Fprintf(stdout, "  WebSocket:     %s\n", e.WS)
	if e.WT != "" {
		fmt.Fprintf(stdout, "  WebTransport:  %s  (cert sha256 %s)\n", e.WT, e.CertHash)
	}
	fmt.Fprintf(stdout, "  edge key:      %s\n", e.EdgeKey)
	fmt.Fprintf(stdout, "  endpoints:     %s\n", path)
	reg := admin.NewRegistry(Version)
	adminSrv, err := adminF.start(fs, reg, stackMetrics(reg, s, logger), logger, stdout)
	if err != nil {
		_ = s.Shutdown(context.Background())
		return fmt.Errorf("dev: %w", err)
	}
	defer closeAdmin(adminSrv)
	fmt.Fprintf(stdout, "ENDPOINTS %s\n", b)
	fmt.Fprintf(stdout, "try: chatmesh chat --state /tmp/alice --edge %s register alice\n", e.WS)
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-s.Edge.Failed(): // a listener died: exit non-zero
		logger.Error("edge failed", "err", failed)
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return errors.Join(failed, s.Shutdown(sctx))
}
