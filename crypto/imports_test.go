package crypto

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports enforces the tree's dependency rules on the packages this
// manual covers: only the standard library, golang.org/x/crypto,
// github.com/flynn/noise and this tree; and the server-importable packages
// (identity, prekey) do not reach session code (internal/wire is the
// shared byte reader of their decoders; internal/dh25519 the X25519 DH
// function pqxdh and the transport share).
func TestImports(t *testing.T) {
	const self = "github.com/chatmesh/chatmesh/crypto/"
	allowed := map[string][]string{
		"identity":         {"internal/wire"},
		"prekey":           {"identity", "internal/wire"},
		"safety":           {},
		"ratchet":          {},
		"senderkey":        {"ratchet"}, // tests only
		"pqxdh":            {"identity", "internal/dh25519", "prekey", "ratchet"},
		"internal/dh25519": {},
		// the test vectors (tests only import the tree)
		"vectors": {"identity", "prekey", "pqxdh", "ratchet", "senderkey", "safety"},
	}
	for pkg, internal := range allowed {
		files, err := filepath.Glob(filepath.Join(pkg, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: no files (%v)", pkg, err)
		}
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				first := strings.SplitN(path, "/", 2)[0]
				switch {
				case !strings.Contains(first, "."): // standard library
				case strings.HasPrefix(path, "golang.org/x/crypto/"), path == "github.com/flynn/noise":
				case strings.HasPrefix(path, self):
					sub := strings.TrimPrefix(path, self)
					ok := sub == pkg // external test package
					for _, a := range internal {
						ok = ok || a == sub
					}
					if !ok || (sub == "ratchet" && pkg == "senderkey" && !strings.HasSuffix(f, "_test.go")) {
						t.Errorf("%s imports %s", f, path)
					}
				default:
					t.Errorf("%s imports %s: crypto/ may import only stdlib, x/crypto and flynn/noise", f, path)
				}
			}
		}
	}
}
