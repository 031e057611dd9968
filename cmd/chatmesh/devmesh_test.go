package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/internal/stack"
)

func freeTCPPort(t *testing.T, host string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// `chatmesh dev` (what `make run` runs) starts the three-region mesh; two
// people registered in different regions chat through the CLI, each on
// their own region's edge (the README's quick start).
func TestDevMeshQuickStart(t *testing.T) {
	// Ports free on every region's address (127.0.1.1 .. 127.0.3.1).
	port := func() string {
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
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- runDev(ctx, []string{"--data", t.TempDir(), "--ws", "127.0.0.1:" + port(), "--wt", "-", "--log", "error",
			"--raft-port", port(), "--dir-port", port(), "--locate", "127.0.0.1:0"}, pw, io.Discard)
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
	sc := bufio.NewScanner(pr)
	locate := ""
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "ENDPOINTS "); ok {
			var e stack.Endpoints
			if err := json.Unmarshal([]byte(rest), &e); err != nil {
				t.Fatal(err)
			}
			ends[e.Region] = e
		}
		if rest, ok := strings.CutPrefix(line, "LOCATE "); ok {
			locate = rest
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if len(ends) != 3 || locate == "" {
		t.Fatalf("dev printed %d regions and locator %q", len(ends), locate)
	}
	for _, r := range []string{"eu-central", "us-east", "ap-southeast"} {
		if !strings.Contains(ends[r].WS, stack.DevRegions()[map[string]int{"eu-central": 0, "us-east": 1, "ap-southeast": 2}[r]].Host) {
			t.Fatalf("region %s edge at %s, not on its own address", r, ends[r].WS)
		}
	}
	alice := chatCLI{t: t, state: t.TempDir(), ends: ends["eu-central"]}
	bob := chatCLI{t: t, state: t.TempDir(), ends: ends["us-east"]}
	alice.must("register", "alice")
	bob.must("register", "bob")
	alice.must("send", "@bob", "hello from Frankfurt")
	if out := bob.must("receive", "--timeout", "10s"); !strings.Contains(out, "hello from Frankfurt") {
		t.Fatalf("bob received %q", out)
	}
	bob.must("send", "@alice", "hi from Virginia")
	if out := alice.must("receive", "--timeout", "10s"); !strings.Contains(out, "hi from Virginia") {
		t.Fatalf("alice received %q", out)
	}
	// carol knows only a locator: any edge's /v1/locate.
	carolState := t.TempDir()
	carol := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var out, errb strings.Builder
		locate := strings.TrimSuffix(ends["ap-southeast"].WS, "/v1/ws") + "/v1/locate"
		locate = "http" + strings.TrimPrefix(locate, "ws")
		full := append([]string{"--state", carolState, "--locate", locate, "--timeout", "20s"}, args...)
		if err := runChat(ctx, full, strings.NewReader(""), &out, &errb); err != nil {
			t.Fatalf("chat --locate %v: %v (%s)", args, err, errb.String())
		}
		return out.String()
	}
	carol("register", "carol")
	carol("send", "@alice", "hello via the locator")
	if out := alice.must("receive", "--timeout", "10s"); !strings.Contains(out, "hello via the locator") {
		t.Fatalf("alice received %q", out)
	}
}
