package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"gopkg.in/yaml.v3"

	"github.com/chatmesh/chatmesh/internal/admin"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
)

// scrape reads an admin server's /metrics.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + admin.MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// metricValue sums the value of every series of name whose labels include
// want: a counter's or gauge's value, a histogram's sample count.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	sum, found := 0.0, false
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, found
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// commonFreePort is a port free on every dev region's address.
func commonFreePort(t *testing.T) string {
	t.Helper()
	for range 20 {
		p := freeTCPPort(t, "127.0.1.1")
		ok := true
		for _, h := range []string{"127.0.2.1", "127.0.3.1"} {
			if ln, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(p))); err != nil {
				ok = false
			} else {
				ln.Close()
			}
		}
		if ok {
			return strconv.Itoa(p)
		}
	}
	t.Fatal("no common free port")
	return ""
}

// A three-region `chatmesh dev` serves its admin address: messages sent
// from one region to another move the key series (edge, sequencer,
// store, bus, links, every stage histogram), /healthz and /readyz answer
// 200, pprof answers, and every series the Grafana dashboard and the
// Prometheus alert rules under deploy/ reference is exported.
func TestAdminMetricsDevMesh(t *testing.T) {
	testenv.SkipShort(t, "starts the three-region dev mesh")
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- runDev(ctx, []string{"--data", t.TempDir(), "--ws", "127.0.0.1:" + commonFreePort(t), "--wt", "-", "--log", "error",
			"--raft-port", commonFreePort(t), "--dir-port", commonFreePort(t), "--locate", "-", "--admin", "127.0.0.1:0"}, pw, io.Discard)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("dev: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("dev did not stop")
		}
	})
	ends := map[string]stack.Endpoints{}
	adminURL := ""
	sc := bufio.NewScanner(pr)
	for adminURL == "" && sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "ENDPOINTS "); ok {
			var e stack.Endpoints
			if err := json.Unmarshal([]byte(rest), &e); err != nil {
				t.Fatal(err)
			}
			ends[e.Region] = e
		}
		if rest, ok := strings.CutPrefix(line, "ADMIN "); ok {
			adminURL = rest
		}
	}
	go io.Copy(io.Discard, pr)
	if len(ends) != 3 || adminURL == "" {
		t.Fatalf("dev printed %d regions and admin %q", len(ends), adminURL)
	}
	if code, body := httpGet(t, adminURL+admin.HealthPath); code != 200 {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	// Ready once every region holds its first lease.
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		code, body := httpGet(t, adminURL+admin.ReadyPath)
		if code == 200 && strings.Count(body, `"ok":true`) == 6 {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("/readyz: %d %s", code, body)
		}
	}
	if code, body := httpGet(t, adminURL+admin.PprofPath); code != 200 || !strings.Contains(body, "heap") {
		t.Fatalf("pprof: %d %.200s", code, body)
	}

	alice := chatCLI{t: t, state: t.TempDir(), ends: ends["eu-central"]}
	bob := chatCLI{t: t, state: t.TempDir(), ends: ends["us-east"]}
	alice.must("register", "alice")
	bob.must("register", "bob")
	alice.must("send", "@bob", "first")
	before := scrape(t, adminURL)
	for i := range 3 {
		alice.must("send", "@bob", "hello "+strconv.Itoa(i))
	}
	if out := bob.must("receive", "--timeout", "10s"); !strings.Contains(out, "hello 2") {
		t.Fatalf("bob received %q", out)
	}
	eu, us := map[string]string{"region": "eu-central"}, map[string]string{"region": "us-east"}
	euEdge, usEdge := map[string]string{"edge": "edge-eu-central"}, map[string]string{"edge": "edge-us-east"}
	moved := []struct {
		name   string
		labels map[string]string
	}{
		{"chatmesh_edge_frames_in_total", euEdge},
		{"chatmesh_edge_ingress_produced_total", euEdge},
		{"chatmesh_edge_frames_out_total", usEdge},
		{"chatmesh_edge_writes_out_total", usEdge},
		{"chatmesh_edge_ingress_produce_seconds", euEdge}, // stage: edge receive → ingress
		{"chatmesh_edge_write_answer_seconds", euEdge},    // a write until its answer at the edge
		{"chatmesh_edge_push_seconds", euEdge},            // stage: produced → edge push (the acks)
		{"chatmesh_region_appended_total", nil},
		{"chatmesh_region_commits_total", nil},
		{"chatmesh_region_edge_records_total", nil},
		{"chatmesh_region_commit_seconds", nil}, // store latency
		{"chatmesh_region_commit_entries", nil},
		{"chatmesh_region_batch_records", eu},
		{"chatmesh_region_sequence_seconds", nil}, // stage: ingress → committed
		{"chatmesh_region_fanout_seconds", nil},   // stage: committed → produced
		{"chatmesh_bus_produce_seconds", map[string]string{"client": "chatmesh-edge-eu-central"}},
		{"chatmesh_bus_produced_records_total", map[string]string{"client": "chatmesh-edge-eu-central"}},
		{"chatmesh_bus_consume_delay_seconds", map[string]string{"client": "chatmesh-region-eu-central", "topic": "ingress"}},
		{"chatmesh_bus_consumed_records_total", map[string]string{"topic": "ingress"}},
		{"chatmesh_link_forwarded_total", nil},
		{"chatmesh_link_batches_total", nil},
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		after := scrape(t, adminURL)
		var still []string
		for _, m := range moved {
			b, _ := metricValue(before, m.name, m.labels)
			a, ok := metricValue(after, m.name, m.labels)
			if !ok || a <= b {
				still = append(still, m.name+" "+strconv.FormatFloat(b, 'f', -1, 64)+"→"+strconv.FormatFloat(a, 'f', -1, 64))
			}
		}
		if len(still) == 0 {
			for _, g := range []struct {
				name   string
				labels map[string]string
				want   float64
			}{
				{"chatmesh_region_ready", eu, 1}, {"chatmesh_region_ready", us, 1},
				{"chatmesh_region_sequencer_consuming", eu, 1}, {"chatmesh_region_lease_held", us, 1},
				{"chatmesh_link_consuming", map[string]string{"from": "eu-central", "to": "us-east"}, 1},
				{"chatmesh_edge_sessions", euEdge, 0}, {"chatmesh_edge_not_serving", usEdge, 0},
				{"chatmesh_build_info", map[string]string{"version": Version}, 1},
			} {
				if v, ok := metricValue(after, g.name, g.labels); !ok || v != g.want {
					t.Errorf("%s%v = %v (exported %v), want %v", g.name, g.labels, v, ok, g.want)
				}
			}
			if _, ok := after["chatmesh_bus_consumer_lag_records"]; !ok {
				t.Error("no chatmesh_bus_consumer_lag_records")
			}
			checkDeployReferences(t, after)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("series did not move: %s", strings.Join(still, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// metricRef finds the series names an expression uses.
var metricRef = regexp.MustCompile(`\b(?:chatmesh|go|process)_[a-z0-9_]+`)

// checkDeployReferences parses deploy/grafana/chatmesh.json and
// deploy/prometheus/alerts.yml and checks that every chatmesh_ (and go_,
// process_) series they reference is one fams exports, so the dashboard
// and the alerts cannot drift from the code.
func checkDeployReferences(t *testing.T, fams map[string]*dto.MetricFamily) {
	t.Helper()
	var exprs []string
	b, err := os.ReadFile("../../deploy/grafana/chatmesh.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("chatmesh.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if s, ok := v.Query.(string); ok {
			exprs = append(exprs, s)
		}
	}
	b, err = os.ReadFile("../../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("alerts.yml: group %s: a rule without alert or expr", g.Name)
			}
			alerts++
			exprs = append(exprs, r.Expr)
		}
	}
	if alerts < 10 || len(exprs) < 30 {
		t.Fatalf("deploy files parsed to %d alerts and %d expressions: the parse is wrong", alerts, len(exprs))
	}
	refs := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricRef.FindAllString(e, -1) {
			refs[n] = true
		}
	}
	var missing []string
	for n := range refs {
		if _, ok := fams[n]; ok {
			continue
		}
		base := n
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, suf)
		}
		if f, ok := fams[base]; ok && base != n && f.GetType() == dto.MetricType_HISTOGRAM {
			continue
		}
		missing = append(missing, n)
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("deploy/ references series no process exports: %v", missing)
	}
	t.Logf("deploy/: %d alerts, %d expressions, %d distinct series, all exported", alerts, len(exprs), len(refs))
}

// In-process: /readyz of a dev stack is 200 while the sequencer consumes
// and 503, naming the sequencer, once it stopped; /healthz stays 200.
func TestAdminReadySequencerStops(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir(), WTAddr: "-"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	reg := admin.NewRegistry(Version)
	srv, err := admin.Listen(admin.Config{Addr: "127.0.0.1:0", Gatherer: reg, Checks: stackMetrics(reg, s, slog.New(slog.DiscardHandler))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())
	if code, body := httpGet(t, srv.URL()+admin.ReadyPath); code != 200 {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	if v, ok := metricValue(scrape(t, srv.URL()), "chatmesh_region_sequencer_consuming", nil); !ok || v != 1 {
		t.Fatalf("chatmesh_region_sequencer_consuming = %v, %v", v, ok)
	}
	if err := s.Region.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	code, body := httpGet(t, srv.URL()+admin.ReadyPath)
	var rd admin.Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil || code != http.StatusServiceUnavailable || rd.Ready ||
		rd.Checks[0].OK || !strings.Contains(rd.Checks[0].Reason, "sequencer not consuming") {
		t.Fatalf("/readyz after the sequencer stopped: %d %s", code, body)
	}
	if v, _ := metricValue(scrape(t, srv.URL()), "chatmesh_region_sequencer_consuming", nil); v != 0 {
		t.Fatalf("chatmesh_region_sequencer_consuming = %v after the stop", v)
	}
	if code, _ := httpGet(t, srv.URL()+admin.HealthPath); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
}

// cmdProc is a server command (runRegion, runEdge) running in-process.
type cmdProc struct {
	cancel context.CancelFunc
	done   chan error
	lines  map[string]string // first line of each prefix (ADMIN, REGION, ENDPOINTS)
}

// startCmd runs fn with args until stop and waits until it printed every
// prefix in want.
func startCmd(t *testing.T, fn func(context.Context, []string, io.Writer, io.Writer) error, args []string, want ...string) *cmdProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	p := &cmdProc{cancel: cancel, done: make(chan error, 1), lines: map[string]string{}}
	go func() {
		err := fn(ctx, args, pw, io.Discard)
		pw.Close()
		p.done <- err
	}()
	sc := bufio.NewScanner(pr)
	for len(p.lines) < len(want) && sc.Scan() {
		for _, w := range want {
			if rest, ok := strings.CutPrefix(sc.Text(), w+" "); ok && p.lines[w] == "" {
				p.lines[w] = rest
			}
		}
	}
	go io.Copy(io.Discard, pr)
	if len(p.lines) < len(want) {
		cancel()
		t.Fatalf("%v: printed %v, want %v (error: %v)", args, p.lines, want, <-p.done)
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop cancels the command and waits for it (idempotent).
func (p *cmdProc) stop(t *testing.T) {
	t.Helper()
	p.cancel()
	select {
	case err, ok := <-p.done:
		if ok && err != nil {
			t.Errorf("command: %v", err)
		}
		if ok {
			close(p.done)
		}
	case <-time.After(30 * time.Second):
		t.Error("command did not stop")
	}
}

// waitReady polls url's /readyz until it answers code (bounded).
func waitReady(t *testing.T, url string, code int) string {
	t.Helper()
	var last string
	for start := time.Now(); time.Since(start) < 30*time.Second; time.Sleep(100 * time.Millisecond) {
		c, body := httpGet(t, url+admin.ReadyPath)
		if c == code {
			return body
		}
		last = strconv.Itoa(c) + " " + body
	}
	t.Fatalf("%s/readyz never answered %d; last %s", url, code, last)
	return ""
}

// `chatmesh region` and `chatmesh edge` as separate commands: each serves
// its admin address; the edge's /readyz follows its region — 503 while
// the region (its sequencer) is down, 200 again once it is back.
func TestAdminReadyEdgeFollowsRegion(t *testing.T) {
	testenv.SkipShort(t, "runs a broker, a region and an edge")
	broker := startCmd(t, runBroker, []string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, "BROKER")
	var br BrokerReady
	if err := json.Unmarshal([]byte(broker.lines["BROKER"]), &br); err != nil || br.Admin == "" {
		t.Fatalf("BROKER %s: %v", broker.lines["BROKER"], err)
	}
	waitReady(t, br.Admin, 200)

	listen := "127.0.0.1:" + strconv.Itoa(freeTCPPort(t, "127.0.0.1"))
	regionArgs := []string{"--kafka", br.Addr, "--data", t.TempDir(), "--listen", listen, "--admin", "127.0.0.1:0", "--log", "error"}
	reg := startCmd(t, runRegion, regionArgs, "ADMIN", "REGION")
	waitReady(t, reg.lines["ADMIN"], 200)
	edgeProc := startCmd(t, runEdge, []string{"--kafka", br.Addr, "--region-url", reg.lines["REGION"], "--data", t.TempDir(),
		"--ws", "127.0.0.1:0", "--wt", "-", "--admin", "127.0.0.1:0", "--log", "error"}, "ENDPOINTS", "ADMIN")
	edgeAdmin := edgeProc.lines["ADMIN"]
	waitReady(t, edgeAdmin, 200)
	fams := scrape(t, edgeAdmin)
	for _, n := range []string{"chatmesh_edge_sessions", "chatmesh_edge_write_answer_seconds", "chatmesh_bus_produce_seconds", "go_goroutines"} {
		if _, ok := fams[n]; !ok {
			t.Errorf("the edge does not export %s", n)
		}
	}
	if _, ok := scrape(t, reg.lines["ADMIN"])["chatmesh_region_commit_seconds"]; !ok {
		t.Error("the region does not export chatmesh_region_commit_seconds")
	}

	reg.stop(t) // the region process is gone: nothing sequences
	body := waitReady(t, edgeAdmin, http.StatusServiceUnavailable)
	if !strings.Contains(body, `"name":"region local","ok":false`) {
		t.Fatalf("edge /readyz while the region is down: %s", body)
	}
	reg2 := startCmd(t, runRegion, regionArgs, "ADMIN", "REGION")
	waitReady(t, reg2.lines["ADMIN"], 200)
	waitReady(t, edgeAdmin, 200)
}
