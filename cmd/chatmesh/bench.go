package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/loadgen"
	"github.com/chatmesh/chatmesh/internal/stack"
)

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	mode := benchMode(args)
	switch mode {
	case "e2e":
	case "pairs", "group", "idle", "reconnect":
		return runBenchCheap(ctx, args, stdout, stderr)
	case "ratio":
		return runBenchRatio(args, stdout, stderr)
	default:
		return fmt.Errorf("bench: unknown --mode %q (e2e, pairs, group, idle, reconnect, ratio)", mode)
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.String("mode", "e2e", "e2e: end-to-end encrypting SDK clients (this mode); pairs, group, idle, reconnect: cheap clients (see chatmesh bench --mode pairs -h); ratio: compare reports")
	fs.SetOutput(stderr)
	edgeURL := fs.String("edge", "", "edge URL(s), comma-separated; empty starts an in-process region (embedded, or --kafka/--pg)")
	certHash := fs.String("cert-hash", "", "hex SHA-256 of the edge's WebTransport certificate")
	kafka := fs.String("kafka", "", "with no --edge: Kafka brokers for the in-process region")
	pg := fs.String("pg", "", "with no --edge: PostgreSQL DSN for the in-process region")
	transport := fs.String("transport", "ws", "with no --edge: ws or wt")
	users := fs.Int("clients", 50, "number of clients (one device each)")
	groups := fs.Int("groups", 1, "number of groups")
	groupSize := fs.Int("group-size", 20, "members per group")
	directRate := fs.Float64("rate", 200, "1:1 messages per second (total)")
	groupRate := fs.Float64("group-rate", 10, "group messages per second (total)")
	duration := fs.Duration("duration", 10*time.Second, "sending time")
	drain := fs.Duration("drain", 60*time.Second, "max wait for acks and deliveries after sending")
	size := fs.Int("size", 128, "message body bytes")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (clients and in-process region) to this file")
	regToken := fs.String("registration-token", os.Getenv("CHATMESH_REGISTRATION_TOKEN"), "with --edge: registration token for the clients (they all register from this host)")
	progress := fs.Duration("progress", 5*time.Second, "print a progress line to stderr this often (elapsed, sent, acked, failed, deliveries); 0: none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	stopProfile, err := startCPUProfile("bench", *cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	cfg := loadgen.Config{
		Users: *users, Groups: *groups, GroupSize: *groupSize, DirectRate: *directRate, GroupRate: *groupRate,
		Duration: *duration, Drain: *drain, BodySize: *size, RegistrationToken: *regToken,
	}
	if *progress > 0 {
		cfg.Progress, cfg.ProgressEvery = loadProgress(stderr, "bench"), *progress
	}
	if *edgeURL != "" {
		cfg.Edges = strings.Split(*edgeURL, ",")
		if *certHash != "" {
			h, err := hex.DecodeString(*certHash)
			if err != nil {
				return fmt.Errorf("bench: --cert-hash: %w", err)
			}
			cfg.CertHash = h
		}
	} else {
		dir, err := os.MkdirTemp("", "chatmesh-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		sc := stack.Config{DataDir: dir, PostgresDSN: *pg, MaxConnsPerIP: *users + 16, Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
		// Every client runs on this host, so they share one IP: they
		// register with a token and the per-IP budgets are lifted.
		cfg.RegistrationToken = "bench-" + rand.Text()
		sc.EdgeConfig = func(c *edge.Config) {
			c.Admission.RegistrationTokens = []string{cfg.RegistrationToken}
			c.Admission.IPMessagesPerSecond, c.Admission.IPMessageBurst = 1e9, 1e9
			c.Admission.IPReadsPerSecond, c.Admission.IPReadBurst = 1e9, 1e9
		}
		if *kafka != "" {
			sc.KafkaBrokers = strings.Split(*kafka, ",")
			// Fresh topics and sequencer group per run: a previous run's
			// group members would hold partitions until their session
			// timeout and stall the start of this one.
			sc.Namespace = fmt.Sprintf("bench%d", time.Now().UnixNano())
			sc.EdgeID = sc.Namespace + "-edge"
			sc.PGSchema = sc.Namespace
		}
		s, err := stack.Start(ctx, sc)
		if err != nil {
			return err
		}
		defer s.Shutdown(context.Background())
		e := s.Endpoints()
		cfg.Edges = []string{e.WS}
		if *transport == "wt" {
			cfg.Edges = []string{e.WT}
			cfg.CertHash, _ = hex.DecodeString(e.CertHash)
		}
		fmt.Fprintf(stderr, "bench: in-process region (kafka %s, store %s) at %s\n", e.Kafka, e.Store, cfg.Edges[0])
	}
	res, err := loadgen.Run(ctx, cfg)
	out, jerr := json.MarshalIndent(res, "", "  ")
	if jerr != nil {
		return jerr
	}
	fmt.Fprintln(stdout, string(out))
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
