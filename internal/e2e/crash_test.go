package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// chatmeshBinary builds cmd/chatmesh once per test run.
func chatmeshBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chatmesh-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "chatmesh")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/chatmesh/chatmesh/cmd/chatmesh").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// devProcess is a chatmesh child process (dev, region or edge).
type devProcess struct {
	t      *testing.T
	args   []string
	cmd    *exec.Cmd
	ends   stack.Endpoints // from its "ENDPOINTS {json}" line (dev, edge)
	region string          // from its "REGION url" line (region)
	logf   *os.File
}

func startDev(t *testing.T, args []string, logPath string) *devProcess {
	t.Helper()
	p := &devProcess{t: t, args: args}
	p.start()
	t.Cleanup(func() {
		if p.cmd != nil && p.cmd.ProcessState == nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { p.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				p.cmd.Process.Kill()
				<-done
			}
		}
	})
	return p
}

func (p *devProcess) start() {
	t := p.t
	t.Helper()
	cmd := exec.Command(chatmeshBinary(t), p.args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.CreateTemp("", "chatmesh-dev-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd, p.logf = cmd, logf
	found := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "ENDPOINTS "); ok {
				var e stack.Endpoints
				if json.Unmarshal([]byte(rest), &e) == nil {
					p.ends = e
					found <- struct{}{}
				}
			}
			if rest, ok := strings.CutPrefix(sc.Text(), "REGION "); ok {
				p.region = rest
				found <- struct{}{}
			}
		}
	}()
	select {
	case <-found:
	case <-time.After(2 * time.Minute):
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("chatmesh dev did not start:\n%s", b)
	}
}

// kill SIGKILLs the process and reaps it.
func (p *devProcess) kill() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// streamSends sends n messages from each sender to its conversation,
// spaced by gap, and calls mid once half are queued.
func streamSends(t *testing.T, ctx context.Context, n int, gap time.Duration, mid func(), sends map[*tclient]string) {
	t.Helper()
	for i := 1; i <= n; i++ {
		for c, conv := range sends {
			if _, err := c.Send(ctx, conv, []byte(fmt.Sprintf("%s #%04d", c.name, i))); err != nil {
				t.Fatal(err)
			}
		}
		if i == n/2 && mid != nil {
			mid()
		}
		time.Sleep(gap)
	}
}

// checkStream asserts every member saw every message of conv exactly once,
// in seq order, with each sender's messages in the order they were sent.
func checkStream(t *testing.T, conv string, members []*tclient, total uint64, from uint64) {
	t.Helper()
	waitFor(t, 3*time.Minute, "all members have all of "+conv, func() bool {
		for _, m := range members {
			if uint64(len(m.seqs(conv))) < total-from+1 {
				return false
			}
		}
		return true
	})
	time.Sleep(300 * time.Millisecond)
	checkSameStream(t, conv, members, int(total-from+1))
	ref := members[0].bodies(conv)
	last := map[string]string{}
	for _, b := range ref {
		sender, num, ok := strings.Cut(b, " #")
		if !ok {
			continue // membership entries
		}
		if prev, seen := last[sender]; seen && prev >= num {
			t.Fatalf("%s: %s's message %s came after %s", conv, sender, num, prev)
		}
		last[sender] = num
	}
}

// SIGKILL the whole region process (edge, sequencer, store and — on the
// embedded default — the Kafka broker) in the middle of a stream of sends,
// restart it; clients resend from their outboxes; nothing acked is lost,
// nothing shown twice, order holds.
func TestCrashRestartRegionProcess(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ws := freePort(t)
		args := []string{"dev", "--regions", "1", "--data", t.TempDir(), "--ws", ws, "--wt", "-", "--log", "warn", "--max-conns-per-ip", "100",
			"--register-burst", "1000", "--ip-messages-per-second", "100000"} // every client is on 127.0.0.1
		if b.brokers != nil {
			ns := uniq("crash")
			args = append(args, "--kafka", strings.Join(b.brokers, ","), "--pg", b.dsn, "--pg-schema", ns, "--namespace", ns, "--edge-id", ns)
		}
		p := startDev(t, args, "")
		edges := []string{p.ends.WS}
		alice := newClient(t, edges, uniq("alice"))
		bob := newClient(t, edges, uniq("bob"))
		carol := newClient(t, edges, uniq("carol"))
		for _, c := range []*tclient{alice, bob, carol} {
			c.start(t)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		info, err := alice.CreateGroup(ctx, "crash", []string{bob.name, carol.name})
		if err != nil {
			t.Fatal(err)
		}
		direct := core.DirectConvID(alice.name, bob.name)
		group := info.GetConvId()
		const n = 120
		kills := 0
		streamSends(t, ctx, n, 5*time.Millisecond, func() {
			p.kill()
			kills++
			time.Sleep(200 * time.Millisecond)
			p.start() // same data dir, same port: clients reconnect to it
		}, map[*tclient]string{alice: direct, bob: group, carol: group})
		for _, c := range []*tclient{alice, bob, carol} {
			if err := c.WaitIdle(ctx); err != nil {
				t.Fatalf("%s outbox did not drain: %v", c.name, err)
			}
		}
		if kills != 1 {
			t.Fatal("the process was not killed")
		}
		checkStream(t, direct, []*tclient{alice, bob}, n, 1)
		checkStream(t, group, []*tclient{alice, bob, carol}, 1+2*n, 1)
		for _, c := range []*tclient{alice, bob, carol} {
			c.rec.mu.Lock()
			failed := len(c.rec.failed)
			c.rec.mu.Unlock()
			if failed != 0 {
				t.Fatalf("%s: %d sends failed", c.name, failed)
			}
		}
	})
}

// SIGKILL one of the three Kafka brokers in the middle of a stream, then
// restart it: replication (RF 3, min ISR 2, acks=all) keeps every acked
// message; nothing is lost, duplicated or reordered.
func TestKafkaBrokerRestart(t *testing.T) {
	b, ok := realBackend(t)
	if !ok {
		t.Skip(notReal)
	}
	cluster := testenv.RealKafkaCluster(t, 3)
	s := startStack(t, b, nil)
	edges := []string{s.Endpoints().WS}
	alice := newClient(t, edges, uniq("alice"))
	bob := newClient(t, edges, uniq("bob"))
	alice.start(t)
	bob.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	direct := core.DirectConvID(alice.name, bob.name)
	const n = 150
	var wg sync.WaitGroup
	streamSends(t, ctx, n, 10*time.Millisecond, func() {
		cluster.Stop(t, 2, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(2 * time.Second)
			if err := cluster.StartErr(2); err != nil {
				t.Error(err)
			}
		}()
	}, map[*tclient]string{alice: direct})
	if err := alice.WaitIdle(ctx); err != nil {
		t.Fatalf("outbox did not drain: %v", err)
	}
	wg.Wait()
	checkStream(t, direct, []*tclient{alice, bob}, n, 1)
}

// The production split: a region process (sequencer + API) and an edge
// process. SIGKILL only the region process mid-stream while clients stay
// connected to the edge; restart it. The edge keeps taking sends (they
// wait in Kafka), and after the restart every message is acked and
// delivered exactly once, in order.
func TestCrashRegionBehindLiveEdge(t *testing.T) {
	b, ok := realBackend(t)
	if !ok {
		t.Skip(notReal + "; the region and the edge are separate processes on real Kafka")
	}
	ns := uniq("split")
	regionArgs := []string{"region", "--kafka", strings.Join(b.brokers, ","), "--pg", b.dsn, "--pg-schema", ns,
		"--namespace", ns, "--listen", freePort(t), "--partitions", "4", "--log", "warn"}
	reg := startDev(t, regionArgs, "")
	ed := startDev(t, []string{"edge", "--kafka", strings.Join(b.brokers, ","), "--region-url", reg.region,
		"--namespace", ns, "--edge-id", ns + "-edge", "--data", t.TempDir(), "--ws", freePort(t), "--wt", "-",
		"--log", "warn", "--max-conns-per-ip", "100", "--register-burst", "1000", "--ip-messages-per-second", "100000"}, "")
	edges := []string{ed.ends.WS}
	alice := newClient(t, edges, uniq("alice"))
	bob := newClient(t, edges, uniq("bob"))
	alice.start(t)
	bob.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	direct := core.DirectConvID(alice.name, bob.name)
	const n = 100
	streamSends(t, ctx, n, 10*time.Millisecond, func() {
		reg.kill()
		time.Sleep(time.Second)
		reg.start()
	}, map[*tclient]string{alice: direct})
	if err := alice.WaitIdle(ctx); err != nil {
		t.Fatalf("outbox did not drain: %v", err)
	}
	checkStream(t, direct, []*tclient{alice, bob}, n, 1)
}
