package pebblestore

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

const testConv = "g:wal"

// fill appends n messages to testConv (creating it) and returns the acked
// seqs. If flush, the memtable is flushed to an sstable afterwards.
func fill(t *testing.T, s *Store, from, n int, flush bool) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := from; i < from+n; i++ {
		req := core.AppendRequest{Epoch: 1, Message: &pb.Message{
			ConvId: testConv, ClientMsgId: fmt.Sprint("k", i),
			Sender:   &pb.DeviceAddr{UserId: "a", DeviceId: 1},
			Envelope: &pb.Envelope{Ciphertext: []byte(strings.Repeat("x", 200))},
		}}
		if i == 0 {
			req.Create = &core.Conversation{ID: testConv}
		}
		res, err := s.Append(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, res.Message.Seq)
	}
	if flush {
		if err := s.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	return seqs
}

// newest returns the path of the newest file in dir with the suffix.
func newest(t *testing.T, dir, suffix string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"+suffix))
	if len(m) == 0 {
		t.Fatalf("no *%s file in %s", suffix, dir)
	}
	slices.Sort(m)
	return m[len(m)-1]
}

// dirState is every file's name and SHA-256, to show a refused Open
// changed nothing.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		out[e.Name()] = hex.EncodeToString(h[:])
	}
	return out
}

func rewrite(t *testing.T, path string, f func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, f(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedStoreRefused is the scenario: acked appends, then the
// WAL (or an sstable, or the database files) damaged while the process is
// down. Open must refuse with ErrCorrupt, say how to recover, and change
// nothing on disk; a second Open refuses again. Before the witness, Pebble
// opened every one of these silently and the next append reused a seq.
func TestDamagedStoreRefused(t *testing.T) {
	cases := []struct {
		name   string
		flush  bool // the 20 entries are in an sstable, not only the WAL
		damage func(t *testing.T, dir string)
	}{
		{"WAL truncated to half", false, func(t *testing.T, dir string) {
			rewrite(t, newest(t, dir, ".log"), func(b []byte) []byte { return b[:len(b)/2] })
		}},
		{"WAL last record cut", false, func(t *testing.T, dir string) {
			rewrite(t, newest(t, dir, ".log"), func(b []byte) []byte { return b[:len(b)-60] })
		}},
		{"WAL last record corrupted", false, func(t *testing.T, dir string) {
			rewrite(t, newest(t, dir, ".log"), func(b []byte) []byte { b[len(b)-40] ^= 0xff; return b })
		}},
		{"WAL first record corrupted", false, func(t *testing.T, dir string) {
			rewrite(t, newest(t, dir, ".log"), func(b []byte) []byte { b[20] ^= 0xff; return b })
		}},
		{"WAL emptied", false, func(t *testing.T, dir string) {
			rewrite(t, newest(t, dir, ".log"), func(b []byte) []byte { return nil })
		}},
		{"WAL deleted", false, func(t *testing.T, dir string) {
			if err := os.Remove(newest(t, dir, ".log")); err != nil {
				t.Fatal(err)
			}
		}},
		{"sstable corrupted", true, func(t *testing.T, dir string) {
			rewrite(t, newest(t, dir, ".sst"), func(b []byte) []byte { b[len(b)/3] ^= 0xff; return b })
		}},
		{"sstable truncated", true, func(t *testing.T, dir string) {
			rewrite(t, newest(t, dir, ".sst"), func(b []byte) []byte { return b[:len(b)-100] })
		}},
		{"database files deleted", false, func(t *testing.T, dir string) {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != WitnessFile {
					if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
						t.Fatal(err)
					}
				}
			}
		}},
		{"witness corrupted", false, func(t *testing.T, dir string) {
			rewrite(t, filepath.Join(dir, WitnessFile), func(b []byte) []byte {
				for i := range b {
					b[i] ^= 0x55
				}
				return b
			})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			fill(t, s, 0, 20, tc.flush)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, dir)
			before := dirState(t, dir)
			for attempt := 1; attempt <= 2; attempt++ {
				s, err := Open(dir, Options{})
				if err == nil {
					c, cerr := s.Conversation(t.Context(), testConv)
					res, aerr := s.Append(t.Context(), core.AppendRequest{Epoch: 1, Message: &pb.Message{ConvId: testConv, ClientMsgId: "after"}})
					s.Close()
					t.Fatalf("attempt %d: damaged store opened (head %d, %v; next append %v, %v)", attempt, c.Head, cerr, res.Message, aerr)
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("attempt %d: error is not ErrCorrupt: %v", attempt, err)
				}
				if msg := err.Error(); !strings.Contains(msg, "restore") || !strings.Contains(msg, dir) {
					t.Errorf("attempt %d: error does not say where and how to recover: %v", attempt, err)
				}
				if after := dirState(t, dir); !maps(before, after) {
					t.Fatalf("attempt %d: refused Open changed the directory:\nbefore %v\nafter  %v", attempt, before, after)
				}
			}
		})
	}
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestCleanReopenKeepsSeqs: without damage the witness never refuses, over
// several reopens with and without flushes, and seqs continue gaplessly.
func TestCleanReopenKeepsSeqs(t *testing.T) {
	dir := t.TempDir()
	next := 0
	for round := 0; round < 4; round++ {
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		seqs := fill(t, s, next, 10, round%2 == 1)
		if seqs[0] != uint64(next)+1 {
			t.Fatalf("round %d: first seq %d, want %d", round, seqs[0], next+1)
		}
		next += 10
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOlderStoreGetsWitness: a store without a witness file (made before
// it existed) opens, gets one, and is protected from then on.
func TestOlderStoreGetsWitness(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, 0, 5, false)
	s.Close()
	if err := os.Remove(filepath.Join(dir, WitnessFile)); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatalf("store without witness: %v", err)
	}
	fill(t, s, 5, 5, false)
	s.Close()
	rewrite(t, newest(t, dir, ".log"), func(b []byte) []byte { return b[:len(b)/2] })
	if s, err := Open(dir, Options{}); !errors.Is(err, ErrCorrupt) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("damage after the witness was created: %v", err)
	}
}

// TestMarker: a new store is not initialized until marked; a store with
// data counts as initialized; the mark survives a reopen.
func TestMarker(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Initialized(ctx); ok || err != nil {
		t.Fatalf("new store: initialized %v, %v", ok, err)
	}
	if err := s.MarkInitialized(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkInitialized(ctx); err != nil {
		t.Fatalf("second mark: %v", err)
	}
	s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ok, err := s.Initialized(ctx); !ok || err != nil {
		t.Fatalf("marked store after reopen: initialized %v, %v", ok, err)
	}

	s2, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	fill(t, s2, 0, 1, false)
	if ok, err := s2.Initialized(ctx); !ok || err != nil {
		t.Fatalf("store with data but no mark: initialized %v, %v", ok, err)
	}
}

const killChildEnv = "PEBBLESTORE_KILL_CHILD_DIR"

// TestSIGKILLNoFalseAlarm: a process appending (and printing each acked
// seq) is SIGKILLed mid-stream; the store must open without complaint and
// hold every acked entry, and the next append continues after them. This
// is the witness's other half: a crash is not damage.
func TestSIGKILLNoFalseAlarm(t *testing.T) {
	if dir := os.Getenv(killChildEnv); dir != "" {
		s, err := Open(dir, Options{})
		if err != nil {
			fmt.Println("CHILD-ERR", err)
			os.Exit(1)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for w := 0; w < 4; w++ {
			wg.Go(func() {
				for i := 0; i < 100000; i++ {
					conv := fmt.Sprintf("g:%d", w)
					res, err := s.Append(t.Context(), core.AppendRequest{Epoch: 1, Create: &core.Conversation{ID: conv},
						Message: &pb.Message{ConvId: conv, ClientMsgId: fmt.Sprint(i)}})
					if err != nil {
						fmt.Println("CHILD-ERR", err)
						os.Exit(1)
					}
					mu.Lock()
					fmt.Printf("ACK %s %d\n", conv, res.Message.Seq)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		os.Exit(0)
	}
	dir := t.TempDir()
	for round := 0; round < 2; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSIGKILLNoFalseAlarm$", "-test.count=1")
		cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := map[string]uint64{}
		sc := bufio.NewScanner(out)
		deadline := time.Now().Add(60 * time.Second)
		n := 0
		for n < 300 && time.Now().Before(deadline) && sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || f[0] != "ACK" {
				t.Fatalf("child: %s", sc.Text())
			}
			seq, _ := strconv.ParseUint(f[2], 10, 64)
			acked[f[1]] = max(acked[f[1]], seq)
			n++
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if n < 300 {
			t.Fatalf("round %d: child acked only %d appends", round, n)
		}
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("round %d: store refused after a plain SIGKILL: %v", round, err)
		}
		for conv, seq := range acked {
			c, err := s.Conversation(t.Context(), conv)
			if err != nil || c.Head < seq {
				s.Close()
				t.Fatalf("round %d: %s head %d (%v) but seq %d was acked", round, conv, c.Head, err, seq)
			}
		}
		s.Close()
	}
}

// A crash while the witness is being created leaves at most a partial
// temporary file, never an empty witness: the next Open creates the
// witness again instead of refusing a healthy store.
func TestWitnessCreationCrash(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, 0, 3, false)
	s.Close()
	if err := os.Remove(filepath.Join(dir, WitnessFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, WitnessFile+".tmp"), []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatalf("store after a crash during witness creation: %v", err)
	}
	fill(t, s, 3, 3, false)
	s.Close()
	b, err := os.ReadFile(filepath.Join(dir, WitnessFile))
	if err != nil || len(b) != 2*slotSize {
		t.Fatalf("witness: %d bytes, %v", len(b), err)
	}
	if s, err = Open(dir, Options{}); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	s.Close()
}
