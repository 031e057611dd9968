package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/internal/testenv"
)

// stop ends the process with SIGTERM (a clean shutdown) and reaps it.
func (p *devProcess) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-done
		t.Fatal("chatmesh dev did not stop within 30s of SIGTERM")
	}
}

// copyTree copies the regular files and directories under src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// refusedStart runs `chatmesh dev` on dataDir and requires it to exit
// non-zero within two minutes with every one of wants in its output.
func refusedStart(t *testing.T, dataDir string, wants ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chatmeshBinary(t), "dev", "--regions", "1", "--data", dataDir, "--ws", freePort(t), "--wt", "-", "--log", "warn")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || ctx.Err() != nil {
		t.Fatalf("chatmesh dev on damaged data: want a non-zero exit, got %v\n%s", err, out)
	}
	for _, w := range wants {
		if !strings.Contains(string(out), w) {
			t.Errorf("chatmesh dev output lacks %q:\n%s", w, out)
		}
	}
}

// TestDamagedDataRefusedAtStart is issue 6 defect 10 at the process level:
// a dev region with acked messages is stopped, its data damaged in three
// ways (Pebble WAL truncated, store deleted, ingress partition cut), and
// `chatmesh dev` must exit non-zero saying what is wrong and how to
// recover, leaving the data as it found it. Before, each started: the
// first and second reused seqs that devices already held, the third
// stalled the partition. The undamaged original then starts normally.
func TestDamagedDataRefusedAtStart(t *testing.T) {
	data := t.TempDir()
	p := startDev(t, []string{"dev", "--regions", "1", "--data", data, "--ws", freePort(t), "--wt", "-", "--log", "warn"}, "")
	edges := []string{p.ends.WS}
	alice := newClient(t, edges, uniq("alice"))
	bob := newClient(t, edges, uniq("bob"))
	alice.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ids []string
	for i := 1; i <= 20; i++ {
		id, err := alice.SendDirect(ctx, bob.name, []byte(fmt.Sprintf("m%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		if _, err := alice.WaitSent(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	alice.close()
	bob.close()
	p.stop(t)

	t.Run("WALTruncated", func(t *testing.T) {
		d := filepath.Join(t.TempDir(), "data")
		copyTree(t, data, d)
		logs, _ := filepath.Glob(filepath.Join(d, "pebble", "*.log"))
		if len(logs) == 0 {
			t.Fatal("no Pebble WAL")
		}
		slices.Sort(logs)
		wal := logs[len(logs)-1]
		b, err := os.ReadFile(wal)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(wal, b[:len(b)/2], 0o600); err != nil {
			t.Fatal(err)
		}
		before := testenv.TreeDigest(t, d)
		refusedStart(t, d, "store damaged", "committed writes are missing", "restore")
		if testenv.TreeDigest(t, d) != before {
			t.Fatal("the refused start changed the data directory")
		}
	})
	t.Run("StoreDeleted", func(t *testing.T) {
		d := filepath.Join(t.TempDir(), "data")
		copyTree(t, data, d)
		if err := os.RemoveAll(filepath.Join(d, "pebble")); err != nil {
			t.Fatal(err)
		}
		refusedStart(t, d, "store missing", "committed offsets")
		// Still refused the second time: the refusal did not mark the new store.
		refusedStart(t, d, "store missing")
	})
	t.Run("IngressPartitionCut", func(t *testing.T) {
		d := filepath.Join(t.TempDir(), "data")
		copyTree(t, data, d)
		segs, _ := filepath.Glob(filepath.Join(d, "kafka", "partitions", "ingress-*", "*.dat"))
		cut := false
		for _, s := range segs {
			b, err := os.ReadFile(s)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > 100 {
				if err := os.WriteFile(s, b[:len(b)-10], 0o600); err != nil {
					t.Fatal(err)
				}
				cut = true
				break
			}
		}
		if !cut {
			t.Fatalf("no ingress segment with records among %v", segs)
		}
		before := testenv.TreeDigest(t, d)
		refusedStart(t, d, "embedded broker data damaged", "restore")
		if testenv.TreeDigest(t, d) != before {
			t.Fatal("the refused start changed the data directory")
		}
	})
	t.Run("UndamagedStarts", func(t *testing.T) {
		p := startDev(t, []string{"dev", "--regions", "1", "--data", data, "--ws", freePort(t), "--wt", "-", "--log", "warn"}, "")
		p.stop(t)
	})
}
