package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/internal/benchload"
)

// TestBenchCheapPairs runs `chatmesh bench --mode pairs` briefly against
// its in-process region and checks the JSON report, then the ratio table
// over it.
func TestBenchCheapPairs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	err := run(ctx, []string{"bench", "--mode", "pairs", "--pairs", "4", "--rate", "40", "--duration", "1s",
		"--drain", "30s", "--progress", "200ms", "--out", filepath.Join(dir, "p.chatmesh.json")}, nil, &stdout, &stderr)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, stderr.String())
	}
	var r benchload.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("report: %v\n%s", err, stdout.String())
	}
	if len(r.Rounds) != 1 {
		t.Fatalf("rounds: %+v", r)
	}
	tr := r.Rounds[0].Traffic
	if r.Scenario != "pairs" || tr.Acked == 0 || tr.Acked != tr.Sent || tr.Deliveries != tr.ExpectedDeliveries || !tr.Checks.OK() {
		t.Errorf("report: %+v", r)
	}
	if r.Rounds[0].Server == nil || !strings.Contains(stderr.String(), "acked/s") {
		t.Errorf("no server figures or table:\n%s", stderr.String())
	}
	// Progress lines on stderr while the round ran (the report on stdout parsed above).
	if !strings.Contains(stderr.String(), "msg/s round, ") || !strings.Contains(stderr.String(), ", acked ") {
		t.Errorf("no progress lines:\n%s", stderr.String())
	}
	// The ratio table pairs <name>.chatmesh.json with <name>.centrifugo.json.
	b, _ := os.ReadFile(filepath.Join(dir, "p.chatmesh.json"))
	if err := os.WriteFile(filepath.Join(dir, "p.centrifugo.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if err := run(ctx, []string{"bench", "--mode", "ratio", "--results", dir}, nil, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "acked msg/s") || !strings.Contains(stdout.String(), "1.00x") {
		t.Errorf("ratio table:\n%s", stdout.String())
	}
}

// `chatmesh bench` (end-to-end clients) prints progress lines to stderr
// while it runs, and its JSON result alone on stdout.
func TestBenchProgress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, []string{"bench", "--clients", "4", "--groups", "0", "--rate", "20", "--group-rate", "0", "--duration", "1500ms",
		"--drain", "30s", "--progress", "200ms"}, nil, &stdout, &stderr)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, stderr.String())
	}
	var res struct {
		Sent  int64 `json:"sent"`
		Acked int64 `json:"acked"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || res.Sent == 0 || res.Acked != res.Sent {
		t.Fatalf("result on stdout: %v %+v\n%s", err, res, stdout.String())
	}
	lines := 0
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(l, "bench: ") && strings.Contains(l, "s sending: sent ") {
			lines++
		}
	}
	if lines < 2 {
		t.Fatalf("%d progress lines on stderr:\n%s", lines, stderr.String())
	}
}
