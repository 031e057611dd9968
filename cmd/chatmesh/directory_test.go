package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
)

func loopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// voterAddr returns a free loopback address with a port below the
// kernel's ephemeral range, which a voter started first could otherwise
// take for an outgoing connection before a later voter binds it.
func voterAddr(t *testing.T, used map[int]bool) string {
	t.Helper()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if used[port] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		used[port] = true
		return ln.Addr().String()
	}
	t.Fatal("no free port")
	return ""
}

// startVoters starts three directory voters on loopback with token and
// returns them once one leads.
func startVoters(t *testing.T, token string) ([]*directory.Directory, []directory.Peer) {
	t.Helper()
	var peers []directory.Peer
	used := map[int]bool{}
	for i := range 3 {
		peers = append(peers, directory.Peer{ID: fmt.Sprintf("d%d", i), RaftAddr: voterAddr(t, used), HTTPAddr: voterAddr(t, used)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base := t.TempDir()
	var ds []*directory.Directory
	for _, p := range peers {
		d, err := directory.Open(ctx, directory.Config{ID: p.ID, Dir: filepath.Join(base, p.ID), Peers: peers, Token: token,
			HeartbeatTimeout: 400 * time.Millisecond, ElectionTimeout: 400 * time.Millisecond,
			LeaderLeaseTimeout: 300 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		ds = append(ds, d)
	}
	// Seed through voter 0 (its writes wait for a leader).
	for _, r := range []directory.Region{
		{Name: "eu-central", Lat: 50.11, Long: 8.68, Healthy: true, LinkEndpoint: "127.0.1.1:9092"},
		{Name: "us-east", Lat: 39.04, Long: -77.49, Healthy: true},
		{Name: "ap-southeast", Lat: 1.35, Long: 103.82, Healthy: true},
	} {
		if err := ds[0].PutRegion(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ds[0].SetUserHome(ctx, "alice", "eu-central", true); err != nil {
		t.Fatal(err)
	}
	if _, err := ds[0].SetConvHome(ctx, "d:alice:bob", "eu-central", 0); err != nil {
		t.Fatal(err)
	}
	return ds, peers
}

// dirCLI runs `chatmesh directory` through run (the dispatch main uses)
// and returns stdout, stderr and the exit status main would use.
func dirCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err := run(ctx, append([]string{"directory"}, args...), strings.NewReader(""), &out, &errb)
	if err != nil {
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), exitCode(err)
}

func TestDirectoryCLI(t *testing.T) {
	const token = "op-token"
	t.Setenv("CHATMESH_DIRECTORY_ADDR", "")
	t.Setenv("CHATMESH_DIRECTORY_TOKEN", "")
	ds, peers := startVoters(t, token)
	var leader, follower *directory.Directory
	deadline := time.Now().Add(15 * time.Second)
	for leader == nil && time.Now().Before(deadline) {
		for _, d := range ds {
			if d.IsLeader() {
				leader = d
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if leader == nil {
		t.Fatal("no leader")
	}
	var addr string
	for i, d := range ds {
		if d != leader {
			follower = d
			addr = "http://" + peers[i].HTTPAddr
			break
		}
	}
	flags := []string{"--addr", addr, "--token", token}
	ok := func(args ...string) string {
		t.Helper()
		out, errs, code := dirCLI(t, append(args, flags...)...)
		if code != 0 {
			t.Fatalf("directory %v: exit %d: %s", args, code, errs)
		}
		return out
	}

	// Edges through the CLI, then status as a table and as JSON.
	ok("put-edge", "eu-central", "--id", "fra-1", "--ws", "ws://127.0.1.1:7480/v1/ws", "--noise-key", strings.Repeat("ab", 32))
	ok("put-edge", "eu-central", "--id", "fra-2", "--wt", "https://127.0.1.2:7443/v1/wt", "--cert-hash", "00ff")
	ok("edge-health", "eu-central", "fra-2", "down")
	ok("region-health", "ap-southeast", "down")
	table := ok("status")
	for _, want := range []string{
		"voter " + follower.ID() + " (follower); leader " + leader.ID(),
		"users: 1  conversations: 1",
		"eu-central    up      -               50.11  8.68    127.0.1.1:9092", // table rows (no heartbeats: detection off)
		"1/2", "ap-southeast  DOWN",
		"fra-1", "fra-2", "abababababababab…",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	var st directory.Status
	if err := json.Unmarshal([]byte(ok("status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Leader != leader.ID() || st.IsLeader || st.State.Users != 1 || st.State.Convs != 1 || len(st.State.Regions) != 3 {
		t.Fatalf("status json: %+v", st)
	}
	if eu := st.State.Regions[1]; eu.Name != "eu-central" || len(eu.Edges) != 2 || !eu.Edges[0].Healthy || eu.Edges[1].Healthy || eu.Edges[1].CertHash != "00ff" {
		t.Fatalf("eu-central in status: %+v", eu)
	}

	// Moves, read back through the CLI and the voters.
	if out := ok("move-conversation", "d:alice:bob", "us-east", "--json"); !strings.Contains(out, `"epoch": 2`) {
		t.Fatalf("move-conversation: %s", out)
	}
	if out := ok("conv", "d:alice:bob"); strings.TrimSpace(out) != "conversation d:alice:bob: home us-east, epoch 2" {
		t.Fatalf("conv: %q", out)
	}
	if out := ok("move-conversation", "d:alice:bob", "us-east"); !strings.Contains(out, "home us-east, epoch 2") {
		t.Fatalf("move to the current home: %q", out)
	}
	// Nothing is homed in a region that is down.
	if _, errs, code := dirCLI(t, append([]string{"move-user", "alice", "ap-southeast"}, flags...)...); code != 1 || !strings.Contains(errs, "failed (unhealthy)") {
		t.Fatalf("move-user to a region that is down: exit %d, %s", code, errs)
	}
	ok("region-health", "ap-southeast", "up")
	var u userJSON
	if err := json.Unmarshal([]byte(ok("move-user", "alice", "ap-southeast", "--json")), &u); err != nil || u.From != "eu-central" || u.Home != "ap-southeast" {
		t.Fatalf("move-user: %+v %v", u, err)
	}
	if out := ok("user", "alice", "--local"); !strings.Contains(out, "home ap-southeast") && !strings.Contains(out, "home eu-central") {
		t.Fatalf("user --local: %q", out)
	}
	if out := ok("user", "alice"); strings.TrimSpace(out) != "user alice: home ap-southeast" {
		t.Fatalf("user: %q", out)
	}
	if h, _, err := leader.ConvLinearizable(context.Background(), "d:alice:bob"); err != nil || h != (directory.ConvHome{Region: "us-east", Epoch: 2}) {
		t.Fatalf("leader sees %+v %v", h, err)
	}
	if out := ok("convs", "--limit", "1"); !strings.Contains(strings.Join(strings.Fields(out), " "), "d:alice:bob us-east 2") {
		t.Fatalf("convs: %q", out)
	}
	// A failover by hand: us-east's conversation goes to the nearest
	// healthy region (ap-southeast is down), at epoch + 1.
	ok("region-health", "ap-southeast", "down")
	if out := ok("fail-region", "us-east"); strings.TrimSpace(out) != "region us-east failed over to eu-central: 0 user(s) and 1 conversation(s) moved (epoch + 1 each)" {
		t.Fatalf("fail-region: %q", out)
	}
	if out := ok("conv", "d:alice:bob"); strings.TrimSpace(out) != "conversation d:alice:bob: home eu-central, epoch 3" {
		t.Fatalf("conv after fail-region: %q", out)
	}
	if out := ok("restore-region", "us-east"); !strings.Contains(out, "region us-east: healthy again") {
		t.Fatalf("restore-region: %q", out)
	}
	if out := ok("conv", "d:alice:bob"); !strings.Contains(out, "home eu-central, epoch 3") {
		t.Fatalf("restore moved a home back: %q", out)
	}

	// Failures: exit 1.
	for _, args := range [][]string{
		{"move-conversation", "d:alice:bob", "mars"},
		{"move-conversation", "d:nobody:zed", "us-east"},
		{"conv", "d:nobody:zed"},
		{"edge-health", "eu-central", "nope", "up"},
		{"move-user", "nobody", "us-east"},
	} {
		if _, errs, code := dirCLI(t, append(args, flags...)...); code != 1 {
			t.Errorf("%v: exit %d, want 1 (%s)", args, code, errs)
		}
	}
	if _, errs, code := dirCLI(t, "status", "--addr", addr, "--token", "wrong"); code != 1 || !strings.Contains(errs, "unauthorized") {
		t.Errorf("wrong token: exit %d, %s", code, errs)
	}
	if _, _, code := dirCLI(t, "status", "--addr", "http://"+loopback(t), "--timeout", "2s"); code != 1 {
		t.Errorf("nothing listening: exit %d, want 1", code)
	}

	// Usage errors: exit 2.
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"conv"},
		{"move-user", "alice"},
		{"edge-health", "eu-central", "fra-1", "sideways"},
		{"status", "--bogus"},
		{"convs", "--limit", "5000"},
		{"put-edge", "eu-central", "--id", "x"},
	} {
		if _, errs, code := dirCLI(t, append(args, flags...)...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errs)
		}
	}
	if _, _, code := dirCLI(t, "status"); code != 2 {
		t.Errorf("no --addr: exit %d, want 2", code)
	}
	if out, _, code := dirCLI(t, "-h"); code != 0 || !strings.Contains(out, "exit status: 0 done, 1 failed") {
		t.Errorf("-h: exit %d, %q", code, out)
	}
	if err := runDirectory(context.Background(), []string{"status", "-h"}, &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, flag.ErrHelp) || exitCode(err) != 0 {
		t.Errorf("status -h: %v", err)
	}

	// The environment stands in for --addr and --token (host:port works).
	t.Setenv("CHATMESH_DIRECTORY_ADDR", strings.TrimPrefix(addr, "http://"))
	t.Setenv("CHATMESH_DIRECTORY_TOKEN", token)
	if out, errs, code := dirCLI(t, "user", "alice", "--json"); code != 0 || !strings.Contains(out, `"home": "ap-southeast"`) {
		t.Fatalf("from env: exit %d %q %s", code, out, errs)
	}

	// Without a leader, status still answers from the voter's copy, warning.
	for _, d := range ds {
		if d != follower {
			d.Close()
		}
	}
	out, errs, code := dirCLI(t, append([]string{"status", "--timeout", "2s"}, flags...)...)
	if code != 0 || !strings.Contains(errs, "warning: no linearizable read") || !strings.Contains(out, "users: 1  conversations: 1") {
		t.Fatalf("status without a leader: exit %d\n%s\n%s", code, out, errs)
	}
	if _, _, code := dirCLI(t, append([]string{"conv", "d:alice:bob", "--timeout", "1s"}, flags...)...); code != 1 {
		t.Fatalf("linearizable conv without a leader: exit %d, want 1", code)
	}
	if out, _, code := dirCLI(t, append([]string{"conv", "d:alice:bob", "--local"}, flags...)...); code != 0 || !strings.Contains(out, "eu-central, epoch 3") {
		t.Fatalf("local conv without a leader: exit %d %q", code, out)
	}
}
