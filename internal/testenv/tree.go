package testenv

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TreeDigest is a digest of every file's path and content under dir: two
// equal digests mean nothing under dir changed (tests of refused starts
// use it to show a refusal wrote nothing).
func TreeDigest(tb testing.TB, dir string) string {
	tb.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
