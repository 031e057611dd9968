package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Environment variables that select the real servers and make them required.
const (
	// EnvPGDSN is a PostgreSQL DSN (deploy/postgres/ensure.sh prints one).
	EnvPGDSN = "CHATMESH_PG_DSN"
	// EnvRequirePG, when "1", turns a missing EnvPGDSN into a failure.
	EnvRequirePG = "CHATMESH_REQUIRE_PG"
	// EnvKafkaBrokers lists a real Kafka cluster's bootstrap brokers,
	// comma-separated (deploy/kafka/cluster.sh start prints it).
	EnvKafkaBrokers = "CHATMESH_KAFKA_BROKERS"
	// EnvKafkaDir is that cluster's deploy/kafka/cluster.sh --dir, needed
	// by the tests that stop and restart one of its brokers.
	EnvKafkaDir = "CHATMESH_KAFKA_DIR"
	// EnvMeshKafka lists one Kafka cluster per region of a multi-region
	// test: clusters separated by ";", each cluster's bootstrap brokers by
	// "," (scripts/test.sh starts three single-broker clusters and sets it,
	// e.g. "127.0.0.1:19200;127.0.0.1:19210;127.0.0.1:19220").
	EnvMeshKafka = "CHATMESH_MESH_KAFKA"
	// EnvRequireKafka, when "1", turns a missing EnvKafkaBrokers or
	// EnvKafkaDir (or a cluster of fewer nodes than a test needs) into a
	// failure.
	EnvRequireKafka = "CHATMESH_REQUIRE_KAFKA"
)

// Required reports whether any real server is required (CHATMESH_REQUIRE_PG
// or CHATMESH_REQUIRE_KAFKA is "1"), as under make test.
func Required() bool {
	return os.Getenv(EnvRequirePG) == "1" || os.Getenv(EnvRequireKafka) == "1"
}

// missing fails tb when required, or skips it with why and how to fix it.
func missing(tb testing.TB, required bool, requireVar, why, fix string) {
	tb.Helper()
	if required {
		tb.Fatalf("%s=1 but %s (%s)", requireVar, why, fix)
	}
	tb.Skipf("%s: skipped (%s; %s=1 makes this a failure)", why, fix, requireVar)
}

// PostgresDSN returns CHATMESH_PG_DSN. When it is unset the test is skipped,
// or fails if CHATMESH_REQUIRE_PG=1.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	d := strings.TrimSpace(os.Getenv(EnvPGDSN))
	if d == "" {
		missing(tb, os.Getenv(EnvRequirePG) == "1", EnvRequirePG, EnvPGDSN+" is not set",
			`export `+EnvPGDSN+`="$(deploy/postgres/ensure.sh | tail -1)"`)
	}
	return d
}

// KafkaBrokers returns the brokers named by CHATMESH_KAFKA_BROKERS. When it
// is unset the test is skipped, or fails if CHATMESH_REQUIRE_KAFKA=1.
func KafkaBrokers(tb testing.TB) []string {
	tb.Helper()
	var out []string
	for _, b := range strings.Split(os.Getenv(EnvKafkaBrokers), ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		missing(tb, os.Getenv(EnvRequireKafka) == "1", EnvRequireKafka, EnvKafkaBrokers+" is not set",
			"deploy/kafka/cluster.sh start prints it")
	}
	return out
}

// MeshKafka returns the first regions clusters named by
// CHATMESH_MESH_KAFKA, each a list of bootstrap brokers. When it is unset
// or names fewer clusters, the test is skipped, or fails if
// CHATMESH_REQUIRE_KAFKA=1.
func MeshKafka(tb testing.TB, regions int) [][]string {
	tb.Helper()
	var out [][]string
	for _, cluster := range strings.Split(os.Getenv(EnvMeshKafka), ";") {
		var brokers []string
		for _, b := range strings.Split(cluster, ",") {
			if b = strings.TrimSpace(b); b != "" {
				brokers = append(brokers, b)
			}
		}
		if len(brokers) > 0 {
			out = append(out, brokers)
		}
	}
	if len(out) < regions {
		missing(tb, os.Getenv(EnvRequireKafka) == "1", EnvRequireKafka,
			fmt.Sprintf("%s names %d Kafka clusters, this test needs %d (one per region)", EnvMeshKafka, len(out), regions),
			"scripts/test.sh starts them; by hand: deploy/kafka/cluster.sh start --brokers 1 with a --dir and CHATMESH_KAFKA_PORT_BASE per region")
	}
	return out[:regions]
}

// SkipShort skips tb under `go test -short` with reason (an in-process
// stack or a long run), unless a real server is required (make test), where
// -short is a mistake and fails.
func SkipShort(tb testing.TB, reason string) {
	tb.Helper()
	if !testing.Short() {
		return
	}
	if Required() {
		tb.Fatalf("-short with %s=1 or %s=1: %s must run", EnvRequirePG, EnvRequireKafka, tb.Name())
	}
	tb.Skipf("-short: %s", reason)
}

// KafkaCluster is a deploy/kafka/cluster.sh cluster whose nodes a test may
// stop and restart. The test holds the cluster's restart lock (a file lock
// in Dir, shared by every test process) from RealKafkaCluster until it
// ends, so two packages running in parallel never stop nodes of one
// cluster at the same time; every node the test stopped is started again
// before the lock is released.
type KafkaCluster struct {
	Brokers []string
	Dir     string
	script  string
	stopped map[int]bool
}

// How long a test waits for another test's restart lock, and for one
// cluster.sh command.
const (
	lockWait    = 8 * time.Minute
	commandWait = 3 * time.Minute
)

// RealKafkaCluster returns the cluster named by CHATMESH_KAFKA_BROKERS and
// CHATMESH_KAFKA_DIR, with at least minNodes brokers, and takes its restart
// lock. A missing variable or a smaller cluster skips the test, or fails
// it if CHATMESH_REQUIRE_KAFKA=1.
func RealKafkaCluster(t testing.TB, minNodes int) *KafkaCluster {
	t.Helper()
	brokers := KafkaBrokers(t)
	required := os.Getenv(EnvRequireKafka) == "1"
	dir := strings.TrimSpace(os.Getenv(EnvKafkaDir))
	if dir == "" {
		missing(t, required, EnvRequireKafka, EnvKafkaDir+" (the cluster.sh --dir) is not set",
			"scripts/test.sh sets it; stopping a broker needs it")
	}
	if len(brokers) < minNodes {
		missing(t, required, EnvRequireKafka, fmt.Sprintf("%s names %d brokers, this test needs %d", EnvKafkaBrokers, len(brokers), minNodes),
			fmt.Sprintf("deploy/kafka/cluster.sh start --brokers %d", minNodes))
	}
	if _, err := os.Stat(filepath.Join(dir, "brokers")); err != nil {
		t.Fatalf("%s=%s holds no cluster.sh cluster: %v", EnvKafkaDir, dir, err)
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := &KafkaCluster{Brokers: brokers, Dir: dir, script: filepath.Join(root, "deploy", "kafka", "cluster.sh"), stopped: map[int]bool{}}
	unlock, waited, err := lockFile(filepath.Join(dir, "test-restart.lock"), lockWait)
	if err != nil {
		t.Fatal(err)
	}
	if waited > time.Second {
		t.Logf("waited %v for another test to finish restarting brokers of %s", waited.Round(time.Second), dir)
	}
	t.Cleanup(unlock)
	// Registered after unlock, so it runs before it. Starting a node that
	// already runs only waits for it.
	t.Cleanup(func() {
		for i := range c.stopped {
			if err := c.run("start-one", fmt.Sprint(i)); err != nil {
				t.Errorf("restart node %d after the test: %v", i, err)
			}
		}
	})
	return c
}

// Stop stops node i (1-based): SIGKILL when kill, else SIGTERM (controlled
// shutdown). It returns once the process is gone.
func (c *KafkaCluster) Stop(t testing.TB, i int, kill bool) {
	t.Helper()
	args := []string{"stop-one", fmt.Sprint(i)}
	if kill {
		args = append(args, "--kill")
	}
	c.stopped[i] = true
	if err := c.run(args...); err != nil {
		t.Fatal(err)
	}
}

// Start starts node i again and returns once it answers metadata listing
// every node.
func (c *KafkaCluster) Start(t testing.TB, i int) {
	t.Helper()
	if err := c.run("start-one", fmt.Sprint(i)); err != nil {
		t.Fatal(err)
	}
	delete(c.stopped, i)
}

// StartErr is Start for goroutines other than the test's: it returns the
// error instead of failing the test.
func (c *KafkaCluster) StartErr(i int) error {
	return c.run("start-one", fmt.Sprint(i))
}

func (c *KafkaCluster) run(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), commandWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script}, append(args, "--dir", c.Dir)...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("cluster.sh %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// moduleRoot returns the directory of the nearest go.mod above the working
// directory (go test runs each package in its own directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testenv: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
}

// lockFile takes an exclusive file lock on path (tryLock: flock on Unix,
// LockFileEx on Windows), polling for at most wait, and returns the
// function that releases it and how long it waited.
func lockFile(path string, wait time.Duration) (unlock func(), waited time.Duration, err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("testenv: lock %s: %w", path, err)
	}
	start := time.Now()
	for {
		ok, err := tryLock(f)
		if ok {
			break
		}
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("testenv: lock %s: %w", path, err)
		}
		if time.Since(start) > wait {
			f.Close()
			return nil, 0, fmt.Errorf("testenv: lock %s still held by another test after %v", path, wait)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return func() {
		unlockFile(f)
		f.Close()
	}, time.Since(start), nil
}
