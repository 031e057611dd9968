package e2ee

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestKVDurableTornTailAndCompaction(t *testing.T) {
	dir := t.TempDir()
	s, err := openKV(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.put("a", []byte("1"))
	s.put("b", []byte("2"))
	s.del("a")
	if err := s.commit(); err != nil {
		t.Fatal(err)
	}
	s.put("c", []byte("staged only")) // never committed
	_ = s.close()
	// A torn record at the end (crash during a write) is cut off.
	p := filepath.Join(dir, "state.log")
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0o600)
	_, _ = f.Write(appendRecord(nil, kvPut, "d", []byte("torn"))[:7])
	_ = f.Close()
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("state mode %v", fi.Mode().Perm())
	}
	s, err = openKV(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.get("a"); ok {
		t.Fatal("deleted key back")
	}
	if v, _ := s.get("b"); string(v) != "2" {
		t.Fatalf("b = %q", v)
	}
	if _, ok := s.get("c"); ok {
		t.Fatal("uncommitted key survived")
	}
	// Many overwrites: the log is compacted and stays readable.
	big := bytes.Repeat([]byte("x"), 64<<10)
	for i := range 300 {
		s.put("hot", append(big, fmt.Sprint(i)...))
		if err := s.commit(); err != nil {
			t.Fatal(err)
		}
	}
	fi, _ := os.Stat(p)
	if fi.Size() > 2*s.live+compactSlack+int64(len(big))*2 {
		t.Fatalf("log not compacted: %d bytes for %d live", fi.Size(), s.live)
	}
	_ = s.close()
	s, err = openKV(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if v, _ := s.get("hot"); !bytes.HasSuffix(v, []byte("299")) {
		t.Fatal("last value lost across compaction")
	}
	if v, _ := s.get("b"); string(v) != "2" {
		t.Fatal("b lost across compaction")
	}
}
