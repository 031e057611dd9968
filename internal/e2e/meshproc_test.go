package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/region/geo"
)

// meshProc is a chatmesh child process whose stdout lines the test reads
// while it runs.
type meshProc struct {
	name string
	cmd  *exec.Cmd
	logf *os.File
	done chan struct{} // closed when the process has exited and stdout is drained

	mu    sync.Mutex
	lines []string
	more  chan struct{} // signalled on every new line
}

// spawn starts `chatmesh args...` without waiting for it to be ready. The
// process is stopped (SIGTERM, then SIGKILL) when the test ends, and its
// log is printed if the test failed.
func spawn(t *testing.T, name string, args ...string) *meshProc {
	t.Helper()
	cmd := exec.Command(chatmeshBinary(t), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.CreateTemp("", "chatmesh-meshproc-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &meshProc{name: name, cmd: cmd, logf: logf, done: make(chan struct{}), more: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- %s (chatmesh %s) stdout:\n%s\n--- stderr (last 6000 bytes):\n%s", name, strings.Join(args, " "),
				strings.Join(p.output(), "\n"), tail(b, 6000))
		}
		os.Remove(logf.Name())
	})
	return p
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// output returns the stdout lines so far.
func (p *meshProc) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// wait returns the rest of the first stdout line starting with prefix,
// failing the test if the process exits or d passes first.
func (p *meshProc) wait(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		for _, l := range p.output() {
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest
			}
		}
		select {
		case <-p.more:
		case <-p.done:
			for _, l := range p.output() {
				if rest, ok := strings.CutPrefix(l, prefix); ok {
					return rest
				}
			}
			t.Fatalf("%s exited (%v) before printing %q", p.name, p.cmd.ProcessState, prefix)
		case <-deadline:
			t.Fatalf("%s printed no %q within %v", p.name, prefix, d)
		}
	}
}

// stop sends SIGTERM and waits for the exit (SIGKILL after 30 s).
func (p *meshProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// chatOS runs `chatmesh chat` as an OS process for one device.
func chatOS(t *testing.T, state string, ends stack.Endpoints, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	full := append([]string{"chat", "--state", state, "--edge", ends.WS, "--server-key", ends.EdgeKey, "--timeout", "20s"}, args...)
	cmd := exec.CommandContext(ctx, chatmeshBinary(t), full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chatmesh %s: %v\nstdout: %s\nstderr: %s", strings.Join(full, " "), err, out, stderr.String())
	}
	return string(out)
}

// linkReport is a "LINK {json}" line of a stopping `chatmesh region`.
type linkReport struct {
	From, To                                         string
	Forwarded, Batches, Dropped, Malformed, Restarts uint64
	LagMs                                            int64
}

// chatMessage is one line of `chatmesh chat receive --json`.
type chatMessage struct {
	Type string `json:"type"`
	Conv string `json:"conv"`
	Seq  uint64 `json:"seq"`
	From string `json:"from"`
	Body string `json:"body"`
	Kind string `json:"kind"`
}

// receiveUntil runs `chat receive --json` until a message with body has
// arrived (bounded: 30 attempts), and returns everything received.
func receiveUntil(t *testing.T, state string, ends stack.Endpoints, body string) []chatMessage {
	t.Helper()
	var all []chatMessage
	for attempt := 0; attempt < 30; attempt++ {
		for _, line := range strings.Split(strings.TrimSpace(chatOS(t, state, ends, "receive", "--json")), "\n") {
			if line == "" {
				continue
			}
			var m chatMessage
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("receive: bad json %q: %v", line, err)
			}
			if m.Type != "message" {
				continue // receipts and connection events carry seqs too (CLI.md)
			}
			all = append(all, m)
		}
		for _, m := range all {
			if m.Body == body {
				return all
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("%q never arrived; received %+v", body, all)
	return nil
}

// checkReceived asserts that got holds want exactly once (same conversation,
// seq and sender) and no seq twice. (A device's first receive may also
// print the messages it sent itself.)
func checkReceived(t *testing.T, who string, got []chatMessage, want chatMessage) {
	t.Helper()
	seen, found := map[uint64]bool{}, 0
	for _, m := range got {
		if seen[m.Seq] {
			t.Fatalf("%s received seq %d twice: %+v", who, m.Seq, got)
		}
		seen[m.Seq] = true
		if m.Body == want.Body {
			found++
			if m.Conv != want.Conv || m.Seq != want.Seq || m.From != want.From {
				t.Fatalf("%s received %+v, want %+v", who, m, want)
			}
		}
	}
	if found != 1 {
		t.Fatalf("%s received %q %d times: %+v", who, want.Body, found, got)
	}
}

// The production path of the mesh (issue 7): two regions as separate OS
// processes — per region a `chatmesh region` (directory voter, sequencer,
// link worker towards the other region) and a `chatmesh edge` — on real
// Kafka and PostgreSQL (the one logical store, standing in for
// CockroachDB). Two people homed in different regions chat with the
// `chatmesh chat` CLI, both ways: alice (Frankfurt) starts the 1:1, so it
// is homed in eu-central; bob's message goes to his own region's ingress,
// is forwarded over the us-east → eu-central link, sequenced at the home,
// and its ack and alice's delivery come back over the eu-central → us-east
// link. The region processes' link counters (printed when they stop) show
// both links carried records. (A one-shot `chat receive` also syncs from
// the shared store when it connects, so bob's receipt alone would not
// prove the eu→us link; bob's "sent … seq 2" does need both links — with
// the link workers disabled the test fails there, checked once — and the
// counters cover the rest.)
//
// The edges announce themselves in the directory through their region's
// voter (with the voters' token, which the regions require), and the
// eu-central edge serves GET /v1/locate from the directory's edges over a
// generated City database: a client from 127.0.2.x (Virginia) gets
// us-east's edge first, one from 127.0.1.x (Frankfurt) eu-central's, each
// with the URL and Noise key the edge process printed; after us-east's
// edge is stopped cleanly (it marks itself unhealthy) the locator leaves
// it out — with the edge's leave disabled the test fails there, checked
// once. The edges listen on 127.0.0.1; the test's locate requests come
// from the Virginia and Frankfurt source addresses.
//
// make test offers one Kafka cluster (CHATMESH_KAFKA_BROKERS), so the two
// regions share it under distinct --namespace values and each link names
// the other region's namespace (--link-namespace); the link workers still
// consume the local outbound topic and produce to "the remote cluster"
// through a client of their own, as with one cluster per region.
func TestMeshRegionProcesses(t *testing.T) {
	b, ok := realBackend(t)
	if !ok {
		t.Skip(notReal + "; the mesh runs as region and edge processes on real Kafka")
	}
	run := uniq("mp")
	brokers := strings.Join(b.brokers, ",")
	type spec struct {
		name, ns, lat, long string
		raft, dir, api      string
		proc                *meshProc
		url                 string
		edge                stack.Endpoints
		edgeProc            *meshProc
	}
	// The voters' token: the regions' voters require it, and the edges
	// present it when they announce themselves and read the edges.
	const dirToken = "meshproc-directory-token"
	regions := []*spec{
		{name: "eu-central", ns: run + "-eu", lat: "50.11", long: "8.68"},
		{name: "us-east", ns: run + "-us", lat: "39.04", long: "-77.49"},
	}
	var peers []string
	for _, r := range regions {
		r.raft, r.dir, r.api = freePort(t), freePort(t), freePort(t)
		peers = append(peers, r.name+"="+r.raft+"="+r.dir)
	}
	// The region processes start together: each waits for a directory
	// quorum (both voters) before it announces itself.
	for i, r := range regions {
		other := regions[1-i]
		r.proc = spawn(t, "region "+r.name, "region", "--region", r.name, "--kafka", brokers, "--pg", b.dsn, "--pg-schema", run,
			"--namespace", r.ns, "--listen", r.api, "--partitions", "4", "--data", t.TempDir(), "--log", "warn",
			"--directory-peers", strings.Join(peers, ","), "--directory-token", dirToken, "--lat", r.lat, "--long", r.long,
			"--link", other.name+"="+brokers, "--link-namespace", other.name+"="+other.ns, "--link-health-every", "1s")
	}
	for _, r := range regions {
		r.url = r.proc.wait(t, "REGION ", 3*time.Minute)
	}

	// An edge whose --region is not its region's is refused.
	wrong := spawn(t, "edge with a wrong --region", "edge", "--region", "us-east", "--region-url", regions[0].url, "--kafka", brokers,
		"--namespace", regions[0].ns, "--edge-id", run+"-wrong", "--data", t.TempDir(), "--ws", freePort(t), "--wt", "-", "--log", "warn")
	select {
	case <-wrong.done:
		if wrong.cmd.ProcessState.Success() {
			t.Fatal("an edge with --region us-east started against eu-central's region API")
		}
	case <-time.After(time.Minute):
		t.Fatal("an edge with --region us-east against eu-central's region API is still running")
	}

	// Each edge announces itself through its own region's voter; the
	// eu-central edge also serves GET /v1/locate from the directory's
	// edges, with a City database that places 127.0.1.0/24 in Frankfurt
	// and 127.0.2.0/24 in Virginia (geo.DevCities).
	cityDB := filepath.Join(t.TempDir(), "city.mmdb")
	if err := geo.GenerateCityDB(cityDB, geo.DevCities()); err != nil {
		t.Fatal(err)
	}
	for i, r := range regions {
		args := []string{"edge", "--region", r.name, "--region-url", r.url, "--kafka", brokers, "--namespace", r.ns,
			"--edge-id", r.ns + "-edge", "--data", t.TempDir(), "--ws", freePort(t), "--wt", "-", "--log", "warn",
			"--directory-addr", "http://" + r.dir, "--directory-token", dirToken}
		if i == 0 {
			args = append(args, "--geoip-db", cityDB, "--locate-refresh", "500ms")
		}
		r.edgeProc = spawn(t, "edge "+r.name, args...)
		if err := json.Unmarshal([]byte(r.edgeProc.wait(t, "ENDPOINTS ", 2*time.Minute)), &r.edge); err != nil {
			t.Fatal(err)
		}
		if r.edge.Region != r.name {
			t.Fatalf("edge of %s says region %q", r.name, r.edge.Region)
		}
	}
	locate := regions[0].edgeProc.wait(t, "LOCATE ", time.Minute)
	if want := strings.Replace(strings.Replace(regions[0].edge.WS, "ws://", "http://", 1), "/v1/ws", geo.Path, 1); locate != want {
		t.Fatalf("LOCATE %s, want %s", locate, want)
	}
	// A client in Virginia gets us-east's edge first, one in Frankfurt
	// eu-central's; both with the edges' URLs and Noise keys.
	want := map[string]stack.Endpoints{"eu-central": regions[0].edge, "us-east": regions[1].edge}
	fromVirginia := waitLocate(t, locate, "127.0.2.5", func(a geo.Answer) bool { return len(a.Edges) == 2 })
	checkLocate(t, fromVirginia, want, "us-east", "eu-central")
	checkLocate(t, waitLocate(t, locate, "127.0.1.5", func(a geo.Answer) bool { return len(a.Edges) == 2 }), want, "eu-central", "us-east")

	eu, us := regions[0], regions[1]
	alice, bob := uniq("alice"), uniq("bob")
	aliceState, bobState := t.TempDir(), t.TempDir()
	if out := chatOS(t, aliceState, eu.edge, "register", alice); out != "registered "+alice+".1\n" {
		t.Fatalf("register alice: %q", out)
	}
	if out := chatOS(t, bobState, us.edge, "register", bob); out != "registered "+bob+".1\n" {
		t.Fatalf("register bob: %q", out)
	}
	conv := "d:" + alice + ":" + bob
	if alice > bob {
		conv = "d:" + bob + ":" + alice
	}

	// eu → us: alice's message, sequenced at home (eu-central), delivered
	// to bob's edge in us-east over the link.
	if out := chatOS(t, aliceState, eu.edge, "send", "@"+bob, "hello from Frankfurt"); out != "sent "+conv+" seq 1\n" {
		t.Fatalf("alice send: %q", out)
	}
	checkReceived(t, "bob", receiveUntil(t, bobState, us.edge, "hello from Frankfurt"),
		chatMessage{Conv: conv, Seq: 1, From: alice + ".1", Body: "hello from Frankfurt"})

	// us → eu: bob's reply is forwarded to the home and acked back over
	// the link ("sent ... seq 2" is that ack).
	if out := chatOS(t, bobState, us.edge, "send", "@"+alice, "hello from Virginia"); out != "sent "+conv+" seq 2\n" {
		t.Fatalf("bob send: %q", out)
	}
	checkReceived(t, "alice", receiveUntil(t, aliceState, eu.edge, "hello from Virginia"),
		chatMessage{Conv: conv, Seq: 2, From: bob + ".1", Body: "hello from Virginia"})

	// us-east's edge stops cleanly: it marks itself unhealthy in the
	// directory, and the locator leaves it out.
	us.edgeProc.stop()
	if !us.edgeProc.cmd.ProcessState.Success() {
		t.Fatalf("us-east edge exited with %v", us.edgeProc.cmd.ProcessState)
	}
	checkLocate(t, waitLocate(t, locate, "127.0.2.5", func(a geo.Answer) bool { return len(a.Edges) == 1 }), want, "eu-central")

	// Stop the regions and read their link counters.
	for _, r := range regions {
		r.proc.stop()
		if !r.proc.cmd.ProcessState.Success() {
			t.Fatalf("region %s exited with %v", r.name, r.proc.cmd.ProcessState)
		}
		var reports []linkReport
		for _, l := range r.proc.output() {
			if rest, ok := strings.CutPrefix(l, "LINK "); ok {
				var rep linkReport
				if err := json.Unmarshal([]byte(rest), &rep); err != nil {
					t.Fatal(err)
				}
				reports = append(reports, rep)
			}
		}
		if len(reports) != 1 || reports[0].From != r.name || reports[0].Forwarded == 0 || reports[0].Malformed != 0 {
			t.Fatalf("region %s link reports %+v: want one link that forwarded records", r.name, reports)
		}
		t.Logf("link %+v", reports[0])
	}
}

// waitLocate asks the locator at url, as a client at from (a loopback
// source address), until the answer satisfies done (bounded: 60 tries
// about a second apart, within the locator's per-client budget).
func waitLocate(t *testing.T, url, from string, done func(geo.Answer) bool) geo.Answer {
	t.Helper()
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}}
	var last string
	for range 60 {
		resp, err := client.Get(url)
		if err != nil {
			last = err.Error()
		} else {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
			var a geo.Answer
			if resp.StatusCode == http.StatusOK {
				if err := json.Unmarshal(body, &a); err != nil {
					t.Fatalf("locate: %v in %s", err, body)
				}
				if a.Client.IP != from {
					t.Fatalf("locate saw client %q, want %s", a.Client.IP, from)
				}
				if done(a) {
					return a
				}
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("locate from %s never gave the expected answer; last: %s", from, last)
	return geo.Answer{}
}

// checkLocate asserts the answer lists exactly the edges of the regions
// given, in that order, each with the URL and Noise key its edge process
// printed.
func checkLocate(t *testing.T, a geo.Answer, edges map[string]stack.Endpoints, order ...string) {
	t.Helper()
	if len(a.Edges) != len(order) {
		t.Fatalf("locate from %s (%s): %d edges %+v, want %v", a.Client.IP, a.Client.City, len(a.Edges), a.Edges, order)
	}
	for i, r := range order {
		got, e := a.Edges[i], edges[r]
		if got.Region != r || got.WS != e.WS || got.NoiseKey != e.EdgeKey || got.NoiseKey == "" {
			t.Fatalf("locate from %s (%s): edge %d is %+v, want region %s at %s with key %s", a.Client.IP, a.Client.City, i, got.Edge, r, e.WS, e.EdgeKey)
		}
	}
}
