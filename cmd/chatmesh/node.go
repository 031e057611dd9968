package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/admin"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/directory"
	"github.com/chatmesh/chatmesh/region/kafkabus"
	"github.com/chatmesh/chatmesh/region/pebblestore"
	"github.com/chatmesh/chatmesh/region/pgstore"
)

// newLogger is every server command's logger: slog key=value lines on
// stderr, or JSON lines with CHATMESH_LOG_FORMAT=json (for log shippers).
func newLogger(stderr io.Writer, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch f := os.Getenv("CHATMESH_LOG_FORMAT"); f {
	case "", "text":
		return slog.New(slog.NewTextHandler(stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(stderr, opts)), nil
	default:
		return nil, fmt.Errorf("CHATMESH_LOG_FORMAT=%q: want text or json", f)
	}
}

// runRegion runs the region services without an edge: the sequencer (a
// member of the consumer group) and the API that edges in other processes
// call over HTTP.
func runRegion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("region", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kafka := fs.String("kafka", "", "comma-separated Kafka brokers (required)")
	pg := fs.String("pg", "", "PostgreSQL/CockroachDB DSN; empty uses Pebble under --data (single region node only)")
	pgSchema := fs.String("pg-schema", "", "PostgreSQL schema (created if absent)")
	data := fs.String("data", ".chatmesh/region", "data directory for Pebble")
	name := fs.String("region", "local", "region name")
	listen := fs.String("listen", "127.0.0.1:7490", "internal API listen address (for edges); off loopback --token is required")
	token := fs.String("token", os.Getenv("CHATMESH_REGION_TOKEN"), "shared secret edges must present (env CHATMESH_REGION_TOKEN); required unless --listen is loopback")
	namespace := fs.String("namespace", "", "prefix for topics and the sequencer group")
	partitions := fs.Int("partitions", 8, "ingress partitions (when creating the topic)")
	webhook := fs.String("webhook", "", "push-notification webhook URL for offline devices")
	logLevel := fs.String("log", "info", "log level")
	mf := addMeshFlags(fs)
	adminF := addAdminFlags(fs, defaultRegionAdmin)
	ret := addRetentionFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kafka == "" {
		return errors.New("region: --kafka is required (the embedded broker lives in `chatmesh dev`)")
	}
	if err := adminF.check(*listen); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	if err := ret.check(); err != nil {
		return err
	}
	if err := mf.check(fs); err != nil {
		return err
	}
	if mf.active() && *pg == "" {
		return errors.New("region: a mesh member needs the shared store (--pg: CockroachDB, or PostgreSQL in tests); Pebble is local to one process")
	}
	if err := region.CheckInternalListen(*listen, *token); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	// The admin server answers from the start: /healthz while the region
	// waits for its store, Kafka and the directory's quorum, /readyz 503
	// ("starting") until the sequencer runs.
	mreg := admin.NewRegistry(Version)
	var running atomic.Pointer[region.Region]
	startingCheck := admin.Check{Name: "region " + *name, Fn: func(ctx context.Context) error {
		r := running.Load()
		if r == nil {
			return errors.New("region: starting")
		}
		return r.Ready(ctx, admin.DefaultCheckTimeout)
	}}
	adminSrv, err := adminF.start(fs, mreg, []admin.Check{startingCheck}, logger, stdout)
	if err != nil {
		return fmt.Errorf("region: %w", err)
	}
	defer closeAdmin(adminSrv)
	bus, err := kafkabus.New(kafkabus.Config{Brokers: strings.Split(*kafka, ","), ClientID: "chatmesh-region-" + *name, Logger: logger})
	if err != nil {
		return err
	}
	defer bus.Close()
	var st core.Store
	if *pg != "" {
		st, err = pgstore.Open(ctx, *pg, pgstore.Options{Logger: logger, Schema: *pgSchema})
	} else {
		st, err = pebblestore.Open(filepath.Join(*data, "pebble"), pebblestore.Options{Logger: logger})
	}
	if err != nil {
		return err
	}
	defer st.Close()
	names := region.NamesFor(*namespace)
	cfg := region.Config{Name: *name, IngressTopic: names.Ingress, PresenceTopic: names.Presence, SequencerGroup: names.SequencerGroup,
		DeadLetterTopic: names.DeadLetter, IngressPartitions: *partitions, Logger: logger}
	ret.apply(&cfg)
	if *webhook != "" {
		cfg.Notifier = &region.WebhookNotifier{URL: *webhook}
	}
	var mesh *meshMember
	if mf.active() {
		fmt.Fprintf(stdout, "chatmesh region %q: mesh member\n", *name)
		if mesh, err = openMesh(ctx, mf, *name, *kafka, *data, logger, stdout); err != nil {
			return err
		}
		defer mesh.close()
		cfg.Placement, cfg.Lease = region.DirectoryPlacement{D: mesh.dir}, mesh.lease
		cfg.LinkPrefix, cfg.DeadLetterTopic = names.LinkPrefix, names.DeadLetter
	}
	reg, err := region.New(cfg, st, bus)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("region: %w", err)
	}
	if err := region.CheckInternalListen(ln.Addr().String(), *token); err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: reg.API().Handler(*token), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	go srv.Serve(ln)
	defer srv.Close()
	if err := reg.Start(ctx); err != nil {
		return err
	}
	if mesh != nil {
		// Links once the sequencer runs; they stop after it (what they
		// have not forwarded stays in the local link topics).
		if err := mesh.startLinks(mf, bus, names, *namespace, stdout); err != nil {
			_ = reg.Shutdown(context.Background())
			return err
		}
	}
	register(mreg, logger, reg, bus)
	if mesh != nil {
		for _, l := range mesh.links {
			register(mreg, logger, l)
		}
		for _, b := range mesh.remote {
			register(mreg, logger, b)
		}
	}
	running.Store(reg)
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "chatmesh region %q: sequencer running; API for edges at %s\n", *name, url)
	fmt.Fprintf(stdout, "REGION %s\n", url)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	err = reg.Shutdown(sctx)
	if mesh != nil {
		mesh.report(stdout)
	}
	return err
}

// runEdge runs one edge that talks to a region over Kafka (writes) and
// the region's HTTP API (reads, sessions).
func runEdge(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kafka := fs.String("kafka", "", "comma-separated Kafka brokers (required)")
	regionURL := fs.String("region-url", "", "the region's internal API, e.g. http://10.0.0.5:7490 (required)")
	token := fs.String("token", os.Getenv("CHATMESH_REGION_TOKEN"), "shared secret for the region API (env CHATMESH_REGION_TOKEN)")
	data := fs.String("data", ".chatmesh/edge", "directory for the edge's Noise key and dev certificate")
	id := fs.String("edge-id", "edge-1", "edge id, stable across restarts")
	name := fs.String("region", "local", "region name; must be the region's (default: the name the region API reports)")
	ws := fs.String("ws", "127.0.0.1:7480", "WebSocket listen address")
	wt := fs.String("wt", "127.0.0.1:7443", "WebTransport (UDP) listen address; - disables")
	namespace := fs.String("namespace", "", "prefix for topics (must match the region's)")
	maxConns := fs.Int("max-conns-per-ip", 0, "per-IP connection limit (0: edge default)")
	adm := addAdmissionFlags(fs)
	mf := addEdgeMeshFlags(fs)
	logLevel := fs.String("log", "info", "log level")
	adminF := addAdminFlags(fs, defaultEdgeAdmin)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kafka == "" || *regionURL == "" {
		return errors.New("edge: --kafka and --region-url are required")
	}
	if err := adminF.check(*ws, *wt); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	if err := mf.check(fs, *ws, *wt); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*data, 0o700); err != nil {
		return err
	}
	key, err := stack.LoadOrCreateEdgeKey(filepath.Join(*data, "edge.key"))
	if err != nil {
		return err
	}
	bus, err := kafkabus.New(kafkabus.Config{Brokers: strings.Split(*kafka, ","), ClientID: "chatmesh-" + *id, Logger: logger})
	if err != nil {
		return err
	}
	defer bus.Close()
	names := region.NamesFor(*namespace)
	cfg := edge.Config{ID: *id, Region: *name, Static: key, WSAddr: *ws, Logger: logger,
		IngressTopic: names.Ingress, PresenceTopic: names.Presence, MaxConnsPerIP: *maxConns}
	adm.apply(&cfg.Admission)
	var certHash []byte
	if *wt != "-" {
		var tc *tls.Config
		tc, certHash, err = stack.LoadOrCreateCert(filepath.Join(*data, "edge-cert.pem"), time.Now())
		if err != nil {
			return err
		}
		cfg.WTAddr, cfg.TLSConfig = *wt, tc
	}
	api := &region.RemoteAPI{URL: strings.TrimRight(*regionURL, "/"), Token: *token}
	regionSet := false
	fs.Visit(func(f *flag.Flag) { regionSet = regionSet || f.Name == "region" })
	if cfg.Region, err = edgeRegion(ctx, api, *name, regionSet, logger); err != nil {
		return err
	}
	*name = cfg.Region
	// The locator (--geoip-db) reads the directory's edges in the
	// background from now on, so it usually has a copy by the first request.
	loc, err := mf.openLocator(logger)
	if err != nil {
		return err
	}
	if loc != nil {
		defer loc.close()
		cfg.Locate, cfg.LocateClientAddr = loc.Handler(), loc.ClientAddr
	}
	if mf.active() {
		// A mesh member stops serving while its region cannot sequence
		// (no directory lease, sequencer stopped, region API unreachable),
		// so clients move to another region's edge. A single region has
		// nowhere to send them: its edges keep their sessions, and sends
		// wait in Kafka until the sequencer is back.
		cfg.Ready = regionReady(api, logger)
	}
	e, err := edge.New(cfg, api, bus)
	if err != nil {
		return err
	}
	if err := e.Start(ctx); err != nil {
		return err
	}
	ends := stack.Endpoints{Region: *name, EdgeID: *id, WS: e.WSURL(), EdgeKey: hex.EncodeToString(key.Public), Kafka: "external", Store: "region"}
	if *wt != "-" {
		ends.WT, ends.CertHash = e.WTURL(), hex.EncodeToString(certHash)
	}
	b, _ := json.Marshal(ends)
	fmt.Fprintf(stdout, "chatmesh edge %q: WebSocket %s\n", *id, ends.WS)
	if ends.WT != "" {
		fmt.Fprintf(stdout, "  WebTransport %s (cert sha256 %s)\n", ends.WT, ends.CertHash)
	}
	mreg := admin.NewRegistry(Version)
	register(mreg, logger, e, bus)
	// Ready while the region can sequence (whether or not this edge stops
	// serving then: a single region's edge keeps its sessions) and while
	// the edge serves.
	ready := regionReady(api, logger)
	checks := []admin.Check{{Name: "region " + *name, Fn: ready}, edgeCheck(e, *id)}
	adminSrv, err := adminF.start(fs, mreg, checks, logger, stdout)
	if err != nil {
		_ = e.Shutdown(context.Background())
		return fmt.Errorf("edge: %w", err)
	}
	defer closeAdmin(adminSrv)
	fmt.Fprintf(stdout, "ENDPOINTS %s\n", b)
	var ann *announcer
	if mf.active() {
		pub := directory.Edge{ID: *id, WS: cmp.Or(mf.publicWS, ends.WS), NoiseKeyHex: ends.EdgeKey, CertHash: ends.CertHash, Healthy: true}
		if ends.WT != "" {
			pub.WT = cmp.Or(mf.publicWT, ends.WT)
		}
		fmt.Fprintf(stdout, "  announced in the directory at %s as %q of region %q: %s %s\n", mf.dirAddr, pub.ID, *name, pub.WS, pub.WT)
		ann = startAnnounce(mf.client(), *name, pub, logger)
	}
	if loc != nil {
		fmt.Fprintf(stdout, "  locator %s\n", locateURL(ends.WS))
		fmt.Fprintf(stdout, "LOCATE %s\n", locateURL(ends.WS))
	}
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-e.Failed(): // a listener died: exit non-zero so a supervisor restarts us
		logger.Error("edge failed; shutting down", "err", failed)
	}
	if ann != nil {
		// Out of the locators' answers before the sessions are closed.
		ann.leave()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return errors.Join(failed, e.Shutdown(sctx))
}

// regionReady is the edge's readiness check of its region (GET
// region.ReadyPath). A region that predates the endpoint is taken as
// ready (logged once).
func regionReady(api *region.RemoteAPI, logger *slog.Logger) func(context.Context) error {
	var warned atomic.Bool
	return func(ctx context.Context) error {
		err := api.Ready(ctx)
		if errors.Is(err, region.ErrNoReadiness) {
			if !warned.Swap(true) {
				logger.Warn("the region API has no readiness endpoint (an older region); the edge serves regardless", "region_url", api.URL)
			}
			return nil
		}
		return err
	}
}

// edgeRegion returns the region name an edge runs under: the name the
// region API reports (an edge's sessions carry it as Origin.region; in a
// mesh a wrong name routes their deliveries and acks to another region).
// An explicit --region that differs is refused; without --region the
// region's name is taken. A region that cannot say (an older release, or
// not reachable yet) leaves the flag's value, with a warning.
func edgeRegion(ctx context.Context, api *region.RemoteAPI, flagName string, explicit bool, logger *slog.Logger) (string, error) {
	ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := api.Info(ictx)
	switch {
	case errors.Is(err, core.ErrForbidden):
		return "", fmt.Errorf("edge: region API %s: %w", api.URL, err)
	case err != nil:
		logger.Warn("could not ask the region its name; using --region", "region", flagName, "err", err)
		return flagName, nil
	case info.Region == flagName:
		return flagName, nil
	case explicit:
		return "", fmt.Errorf("edge: --region %q but the region API at %s is region %q: start the edge with --region %s (or without --region)", flagName, api.URL, info.Region, info.Region)
	default:
		logger.Info("region name from the region API", "region", info.Region)
		return info.Region, nil
	}
}

// admissionFlags are the edge's registration and admission flags, shared
// by `chatmesh dev` and `chatmesh edge`.
type admissionFlags struct {
	tokens stringList
	pow    uint
	burst  int
	perIP  float64
}

func addAdmissionFlags(fs *flag.FlagSet) *admissionFlags {
	a := &admissionFlags{}
	if env := os.Getenv("CHATMESH_REGISTRATION_TOKENS"); env != "" {
		_ = a.tokens.Set(env)
	}
	fs.Var(&a.tokens, "registration-token", "operator-issued registration token that skips the per-IP registration limit and proof of work; repeatable or comma-separated; env CHATMESH_REGISTRATION_TOKENS")
	fs.UintVar(&a.pow, "register-pow-bits", 0, "proof of work asked of registrations without a token, in leading zero bits (0: none; 20 is about a second of one core)")
	fs.IntVar(&a.burst, "register-burst", 0, "registrations one client IP may start at once (0: edge default 10)")
	fs.Float64Var(&a.perIP, "ip-messages-per-second", 0, "message budget shared by all sessions of one client IP (0: edge default 100/s); raise it for many users behind one NAT")
	return a
}

func (a *admissionFlags) apply(c *edge.AdmissionConfig) {
	c.RegistrationTokens = append(c.RegistrationTokens, a.tokens...)
	c.RegisterPowBits = uint32(a.pow)
	if a.burst > 0 {
		c.RegisterBurst = a.burst
	}
	if a.perIP > 0 {
		c.IPMessagesPerSecond = a.perIP
		c.IPMessageBurst = int(4 * a.perIP)
	}
}
