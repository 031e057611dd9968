package archtest

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/chatmesh/chatmesh/"

// rule: packages under prefix may only import module packages that some
// allowed prefix matches.
type rule struct {
	prefix  string
	allowed []string
}

var rules = []rule{
	{"core", []string{"core"}},
	{"crypto", []string{"crypto"}},
	{"edge", []string{"edge", "core", "crypto/noiseconn", "crypto/prekey", "crypto/identity"}},
	{"region", []string{"region", "core", "crypto/noiseconn", "crypto/prekey", "crypto/identity"}},
	{"client", []string{"client", "core", "crypto"}},
	{"sim", []string{"sim", "core", "crypto", "edge", "region", "client", "internal"}},
	// Imported by the tests of every package: a leaf.
	{"internal/testenv", nil},
}

func under(pkg, prefix string) bool {
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}

func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}", mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		path, imports, _ := strings.Cut(sc.Text(), "|")
		if !strings.HasPrefix(path, mod) {
			continue
		}
		pkg := strings.TrimPrefix(path, mod)
		for _, imp := range strings.Fields(imports) {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			dep := strings.TrimPrefix(imp, mod)
			if under(dep, "sim") && !under(pkg, "cmd") && !under(pkg, "sim") {
				t.Errorf("%s imports %s: only cmd/ may import sim/", pkg, dep)
			}
			for _, r := range rules {
				if !under(pkg, r.prefix) {
					continue
				}
				checked++
				ok := false
				for _, a := range r.allowed {
					if under(dep, a) {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s imports %s: not allowed for %s/ (allowed: %v)", pkg, dep, r.prefix, r.allowed)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no module imports checked: the test is not looking at the module")
	}
}

func TestRulesCatchViolation(t *testing.T) {
	// The rule table itself must reject the forbidden edges, or the test above could never fail.
	bad := [][2]string{{"core", "region"}, {"crypto/ratchet", "core"}, {"edge", "region"}, {"region", "edge"}, {"region", "crypto/ratchet"}, {"edge", "crypto/ratchet"}}
	for _, b := range bad {
		for _, r := range rules {
			if !under(b[0], r.prefix) {
				continue
			}
			for _, a := range r.allowed {
				if under(b[1], a) {
					t.Errorf("rule for %s allows %s", b[0], b[1])
				}
			}
		}
	}
}
