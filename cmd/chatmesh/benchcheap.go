package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/benchload"
	"github.com/chatmesh/chatmesh/internal/stack"
)

// benchMode finds --mode in args without parsing the rest (each mode
// has its own flags).
func benchMode(args []string) string {
	for i, a := range args {
		for _, p := range []string{"--mode=", "-mode="} {
			if v, ok := strings.CutPrefix(a, p); ok {
				return v
			}
		}
		if (a == "--mode" || a == "-mode") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return "e2e"
}

// runBenchCheap is `chatmesh bench --mode pairs|group|idle|reconnect`:
// cheap clients (internal/benchload) against an edge — chatmesh's, or a
// Centrifugo server with --target centrifugo — or, without --edge,
// against an in-process chatmesh region.
func runBenchCheap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "pairs", "pairs (1:1 pairs, fixed rate or --sweep), group (one group), idle (idle connections: connect rate and server RSS per connection), reconnect (all devices drop, reconnect and sync at once)")
	target := fs.String("target", "chatmesh", "chatmesh or centrifugo")
	edgeURL := fs.String("edge", "", "chatmesh: the edge's WebSocket URL (ws://127.0.0.1:7480/v1/ws); centrifugo: its WebSocket URL (ws://127.0.0.1:8100/connection/websocket); empty (chatmesh only): an in-process region (embedded broker, Pebble)")
	regToken := fs.String("registration-token", os.Getenv("CHATMESH_REGISTRATION_TOKEN"), "chatmesh with --edge: registration token the edge accepts (chatmesh dev --bench --registration-token T)")
	secret := fs.String("hmac-secret", os.Getenv("CENTRIFUGO_HMAC_SECRET"), "centrifugo: client.token.hmac_secret_key of the server")
	pid := fs.Int("server-pid", 0, "server process to sample for CPU (utime+stime) and RSS from /proc (0: none; the in-process region: this process)")
	pairs := fs.Int("pairs", 100, "pairs: 1:1 pairs (2 devices each)")
	rate := fs.Float64("rate", 0, "messages per second in total, open loop (default 1000 for pairs, 100 for group)")
	sweepSpec := fs.String("sweep", "", "pairs, group: start,step,max — raise the rate each round on the same connections until a round fails (ack or delivery p99 > --max-p99, anything missing, rejected or failed); reports the highest passing rate")
	maxP99 := fs.Duration("max-p99", time.Second, "--sweep: the ack and delivery p99 bound of a passing round")
	members := fs.Int("members", 500, "group: members (at most 500)")
	senders := fs.Int("senders", 20, "group: members that send")
	acks := fs.Bool("acks", true, "chatmesh: devices acknowledge every delivery (DeliveryAck); false sends none")
	ackInterval := fs.Duration("ack-interval", client.DefaultAckInterval, "chatmesh: mean pause between two acks of one conversation by one device under a stream, drawn as the SDK's AckInterval (from half to 1.5 times it); a negative value: the next ack goes as soon as the last is answered")
	ordered := fs.Bool("ordered", true, "chatmesh: each send names the device's previous send to the conversation (after_client_msg_id), so the region enforces per-sender order as with the SDK's pipelined sends; false sends without")
	conns := fs.Int("conns", 1000, "idle, reconnect: devices")
	duration := fs.Duration("duration", 10*time.Second, "sending time of a round")
	drain := fs.Duration("drain", 10*time.Second, "most a round waits for acks and deliveries after sending")
	size := fs.Int("size", 64, "message body bytes (at least 32)")
	workers := fs.Int("workers", 4, "pacing goroutines")
	dialConc := fs.Int("dial-concurrency", 64, "connections set up at once (the reconnect storm: 4x)")
	settle := fs.Duration("settle", 2*time.Second, "idle: wait after connecting before sampling the server's RSS")
	progress := fs.Duration("progress", 5*time.Second, "while a round runs, print its counts so far to stderr this often (elapsed, sent, acked, failed, refused, deliveries)")
	out := fs.String("out", "", "also write the JSON report to this file")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this load process to this file (with --edge the server is not in it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	stopProfile, err := startCPUProfile("bench", *cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	cfg := benchload.Config{
		Pairs: *pairs, Rate: *rate, Members: *members, Senders: *senders, Conns: *conns,
		Duration: *duration, Drain: *drain, BodySize: *size, Workers: *workers, DialConcurrency: *dialConc,
		MaxP99: *maxP99, Settle: *settle, ServerPID: *pid, Progress: stderr, ProgressEvery: *progress,
	}
	switch *target {
	case "chatmesh":
		t := &benchload.Chatmesh{Edge: *edgeURL, RegistrationToken: *regToken, Acks: *acks, AckInterval: *ackInterval, Ordered: *ordered}
		if *edgeURL == "" {
			dir, err := os.MkdirTemp("", "chatmesh-bench-")
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			defer os.RemoveAll(dir)
			t.RegistrationToken = "bench-" + rand.Text()
			s, err := stack.Start(ctx, stack.Config{
				DataDir: dir, WTAddr: "-",
				Logger:     slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
				EdgeConfig: func(c *edge.Config) { benchload.LiftLimits(c, t.RegistrationToken) },
			})
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			defer s.Shutdown(context.Background())
			t.Edge = s.Endpoints().WS
			if cfg.ServerPID == 0 {
				cfg.ServerPID = os.Getpid() // includes the load clients' own CPU
			}
			fmt.Fprintf(stderr, "bench: in-process region at %s (server figures include the load clients)\n", t.Edge)
		}
		cfg.Target = t
	case "centrifugo":
		if *edgeURL == "" || *secret == "" {
			return errors.New("bench: --target centrifugo needs --edge and --hmac-secret")
		}
		cfg.Target = &benchload.Centrifugo{URL: *edgeURL, HMACSecret: *secret}
	default:
		return fmt.Errorf("bench: unknown --target %q", *target)
	}
	var rep benchload.Report
	switch *mode {
	case "pairs":
		if *sweepSpec != "" {
			var start, step, maxRate float64
			if start, step, maxRate, err = parseSweep(*sweepSpec); err != nil {
				return err
			}
			rep, err = benchload.Sweep(ctx, cfg, start, step, maxRate)
		} else {
			rep, err = benchload.Pairs(ctx, cfg)
		}
	case "group":
		if *sweepSpec != "" {
			var start, step, maxRate float64
			if start, step, maxRate, err = parseSweep(*sweepSpec); err != nil {
				return err
			}
			rep, err = benchload.GroupSweep(ctx, cfg, start, step, maxRate)
		} else {
			rep, err = benchload.Group(ctx, cfg)
		}
	case "idle":
		rep, err = benchload.Idle(ctx, cfg)
	case "reconnect":
		rep, err = benchload.Reconnect(ctx, cfg)
	}
	if err != nil && rep.Scenario == "" {
		return fmt.Errorf("bench: %w", err)
	}
	b, jerr := json.MarshalIndent(rep, "", "  ")
	if jerr != nil {
		return jerr
	}
	fmt.Fprintln(stdout, string(b))
	if *out != "" {
		if werr := os.WriteFile(*out, append(b, '\n'), 0o644); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	printReport(stderr, rep)
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func parseSweep(s string) (start, step, maxRate float64, err error) {
	p := strings.Split(s, ",")
	if len(p) != 3 {
		return 0, 0, 0, fmt.Errorf("bench: --sweep %q: want start,step,max", s)
	}
	var v [3]float64
	for i := range p {
		if v[i], err = strconv.ParseFloat(strings.TrimSpace(p[i]), 64); err != nil {
			return 0, 0, 0, fmt.Errorf("bench: --sweep %q: %w", s, err)
		}
	}
	return v[0], v[1], v[2], nil
}

// printReport writes the short human table of a report.
func printReport(w io.Writer, r benchload.Report) {
	fmt.Fprintf(w, "\n%s / %s, %d devices\n", r.Scenario, r.Target, r.Devices)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	defer tw.Flush()
	if len(r.Rounds) > 0 {
		fmt.Fprintln(tw, "rate\tacked/s\tdelivered/s\tack p50\tp99\tp999\tdeliv p50\tp99\tp999\tcpu s/1k msgs\tcores\tRSS MiB\tmissing\tdups\treorders\trejected\tverdict\t")
		for _, rd := range r.Rounds {
			t := rd.Traffic
			cpu, cores, rss := "-", "-", "-"
			if s := rd.Server; s != nil {
				cpu, cores, rss = fmt.Sprintf("%.3f", s.CPUPer1kMsgs), fmt.Sprintf("%.2f", s.CPUCores), fmt.Sprintf("%.0f", s.RSSAfterMiB)
			}
			verdict := "pass"
			if !rd.Pass {
				verdict = "FAIL: " + rd.Why
			}
			fmt.Fprintf(tw, "%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t\n",
				rd.Rate, t.AckedPerS, t.DeliveredPerS, t.AckLatency.P50, t.AckLatency.P99, t.AckLatency.P999,
				t.DeliveryLatency.P50, t.DeliveryLatency.P99, t.DeliveryLatency.P999, cpu, cores, rss,
				t.Checks.Missing, t.Checks.Duplicates+t.Checks.SeqDuplicates, t.Checks.Reorders+t.Checks.SeqReorders, t.Rejected, verdict)
		}
		if r.MaxPassingRate > 0 && len(r.Rounds) > 1 {
			fmt.Fprintf(tw, "highest passing rate: %.0f msg/s\t\n", r.MaxPassingRate)
		}
	}
	if r.ConnectPerS > 0 {
		fmt.Fprintf(tw, "connect: %d in %.2f s = %.0f conn/s, %d failed\t\n", r.Devices, r.ConnectS, r.ConnectPerS, r.Failures)
	}
	if r.CatchUpS > 0 {
		fmt.Fprintf(tw, "reconnect + sync: all caught up in %.2f s, %d retries, %d failures\t\n", r.CatchUpS, r.Retries, r.Failures)
	}
	if s := r.Server; s != nil {
		fmt.Fprintf(tw, "server: RSS %.1f -> %.1f MiB", s.RSSBeforeMiB, s.RSSAfterMiB)
		if s.RSSPerConnKiB != 0 {
			fmt.Fprintf(tw, " (%.1f KiB per connection)", s.RSSPerConnKiB)
		}
		fmt.Fprintf(tw, ", CPU %.2f s\t\n", s.CPUSeconds)
	}
}

// runBenchRatio is `chatmesh bench --mode ratio --results DIR`: a table
// comparing the reports <name>.chatmesh.json and <name>.centrifugo.json
// in DIR (as scripts/bench-compare.sh writes them).
func runBenchRatio(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.String("mode", "ratio", "ratio")
	dir := fs.String("results", ".chatmesh/bench", "directory of <name>.chatmesh.json and <name>.centrifugo.json reports")
	if err := fs.Parse(args); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(*dir, "*.chatmesh.json"))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	slices.Sort(files)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "scenario\tmetric\tchatmesh\tcentrifugo\tchatmesh/centrifugo")
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".chatmesh.json")
		var a, b benchload.Report
		if err := readReport(f, &a); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(*dir, name+".centrifugo.json")); err != nil {
			continue // a chatmesh-only scenario (reconnect), or the peer's run failed
		}
		if err := readReport(filepath.Join(*dir, name+".centrifugo.json"), &b); err != nil {
			return err
		}
		for _, m := range ratioMetrics(a, b) {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, m.name, fmtNum(m.a), fmtNum(m.b), fmtRatio(m.a, m.b))
		}
	}
	return nil
}

func readReport(path string, r *benchload.Report) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := json.Unmarshal(b, r); err != nil {
		return fmt.Errorf("bench: %s: %w", path, err)
	}
	return nil
}

type metric struct {
	name string
	a, b float64
}

// ratioMetrics picks the comparable figures of two reports of one
// scenario (chatmesh first).
func ratioMetrics(a, b benchload.Report) []metric {
	var ms []metric
	if len(a.Rounds) > 1 || len(b.Rounds) > 1 {
		ms = append(ms, metric{"highest passing rate (msg/s)", a.MaxPassingRate, b.MaxPassingRate})
		if a.Scenario == "group" {
			ms = append(ms, metric{"deliveries/s at that rate", passingDeliveries(a), passingDeliveries(b)})
		}
		return ms
	}
	if len(a.Rounds) > 0 && len(b.Rounds) > 0 {
		ra, rb := a.Rounds[len(a.Rounds)-1], b.Rounds[len(b.Rounds)-1]
		ta, tb := ra.Traffic, rb.Traffic
		ms = append(ms,
			metric{"acked msg/s", ta.AckedPerS, tb.AckedPerS},
			metric{"delivered/s", ta.DeliveredPerS, tb.DeliveredPerS},
			metric{"ack p50 ms", ta.AckLatency.P50, tb.AckLatency.P50},
			metric{"ack p99 ms", ta.AckLatency.P99, tb.AckLatency.P99},
			metric{"delivery p50 ms", ta.DeliveryLatency.P50, tb.DeliveryLatency.P50},
			metric{"delivery p99 ms", ta.DeliveryLatency.P99, tb.DeliveryLatency.P99},
			metric{"delivery p999 ms", ta.DeliveryLatency.P999, tb.DeliveryLatency.P999},
			metric{"missing+dups+reorders", float64(ta.Checks.Missing + ta.Checks.Duplicates + ta.Checks.Reorders), float64(tb.Checks.Missing + tb.Checks.Duplicates + tb.Checks.Reorders)},
		)
		if ra.Server != nil && rb.Server != nil {
			ms = append(ms, metric{"server CPU s / 1k msgs", ra.Server.CPUPer1kMsgs, rb.Server.CPUPer1kMsgs},
				metric{"server CPU s / 1k deliveries", ra.Server.CPUPer1kDeliveries, rb.Server.CPUPer1kDeliveries},
				metric{"server RSS MiB", ra.Server.RSSAfterMiB, rb.Server.RSSAfterMiB})
		}
	}
	if a.ConnectPerS > 0 || b.ConnectPerS > 0 {
		ms = append(ms, metric{"connect rate (conn/s)", a.ConnectPerS, b.ConnectPerS})
	}
	if a.Server != nil && b.Server != nil && (a.Server.RSSPerConnKiB != 0 || b.Server.RSSPerConnKiB != 0) {
		ms = append(ms, metric{"server RSS per idle conn (KiB)", a.Server.RSSPerConnKiB, b.Server.RSSPerConnKiB})
	}
	return ms
}

func fmtNum(v float64) string {
	switch {
	case v >= 100 || v == 0:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func fmtRatio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// passingDeliveries is the delivery rate of a sweep's last passing round.
func passingDeliveries(r benchload.Report) float64 {
	v := 0.0
	for _, rd := range r.Rounds {
		if rd.Pass {
			v = rd.Traffic.DeliveredPerS
		}
	}
	return v
}
