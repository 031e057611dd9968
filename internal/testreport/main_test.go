package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func runReport(t *testing.T, file string, opt options) (string, string, bool) {
	t.Helper()
	in, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if opt.allow == nil {
		opt.allow = allowList{}
	}
	if opt.top == 0 {
		opt.top = 10
	}
	var out, log bytes.Buffer
	ok := report(bytes.NewReader(in), &out, &log, opt)
	return out.String(), log.String(), ok
}

func mustContain(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

// testdata/mixed.jsonl is real `go test -json` output: a package with a
// passing, a skipped and a failing test and a subtest that skips (with a
// two-line reason), a passing package, a package without tests, and a
// line that is not JSON.
func TestMixedStream(t *testing.T) {
	out, log, ok := runReport(t, "testdata/mixed.jsonl", options{})
	if ok {
		t.Fatal("a run with a failing test passed")
	}
	mustContain(t, out,
		"# a line that is not JSON\n",
		"    a_test.go:11: context line\n    a_test.go:11: boom\n--- FAIL: TestFail",
		"ok  \ttrdemo/ok\t",
		"packages: 1 ok, 1 failed, 1 without tests",
		"tests (subtests included): 4 passed, 1 failed, 2 skipped",
		"  trdemo TestSkip: a_test.go:6: CHATMESH_PG_DSN is not set: skipped\n",
		"  trdemo TestSub/skipped: a_test.go:9: needs the server\n",
		"slowest packages (of 2):",
		"FAIL: failed: 1 tests, 1 packages, 0 builds",
	)
	// Passing tests' output is not printed, only written to the log.
	if strings.Contains(out, "noise from a passing test") || strings.Contains(out, "quiet") {
		t.Errorf("a passing test's output was printed:\n%s", out)
	}
	mustContain(t, log, "noise from a passing test", "quiet", "=== RUN   TestFail")
	if strings.Contains(out, "FAIL: skipped") {
		t.Errorf("skips failed the run without -no-skips:\n%s", out)
	}
}

// With -no-skips a skip fails the run unless -allow names it with a reason.
func TestNoSkips(t *testing.T) {
	// Only the passing package and the package without tests, plus the
	// skips: drop the failing test so that the skips decide.
	in, err := os.ReadFile("testdata/mixed.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(string(in)), "\n") {
		if strings.Contains(l, `"TestFail"`) || strings.Contains(l, `"Output":"FAIL`) {
			continue
		}
		keep = append(keep, strings.Replace(l, `{"Action":"fail","Package":"trdemo",`, `{"Action":"pass","Package":"trdemo",`, 1))
	}
	file := t.TempDir() + "/noskip.jsonl"
	if err := os.WriteFile(file, []byte(strings.Join(keep, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	out, _, ok := runReport(t, file, options{})
	if !ok {
		t.Fatalf("without -no-skips a run with skips failed:\n%s", out)
	}
	out, _, ok = runReport(t, file, options{noSkips: true})
	if ok {
		t.Fatalf("-no-skips passed a run with 2 skips:\n%s", out)
	}
	mustContain(t, out, "FAIL: skipped: 2 tests;")

	out, _, ok = runReport(t, file, options{noSkips: true, allow: allowList{"trdemo.TestSkip": "no PG here", "TestSub/skipped": "demo"}})
	if !ok {
		t.Fatalf("-no-skips with both skips allowed failed:\n%s", out)
	}
	mustContain(t, out, "[allowed: no PG here]", "[allowed: demo]", "PASS\n")

	out, _, ok = runReport(t, file, options{noSkips: true, allow: allowList{"TestSkip": "only one"}})
	if ok {
		t.Fatalf("-no-skips with one of two skips allowed passed:\n%s", out)
	}
	mustContain(t, out, "FAIL: skipped: 1 tests;")
}

// A test still running when its package timed out is shown and counted.
func TestTimeout(t *testing.T) {
	out, _, ok := runReport(t, "testdata/timeout.jsonl", options{})
	if ok {
		t.Fatal("a timed-out run passed")
	}
	mustContain(t, out, "panic: test timed out after 2s", "goroutine 1 [chan receive]", "FAIL\ttrdemo\t")
}

// A stream cut off before its package ended fails and shows what it had.
func TestCutStream(t *testing.T) {
	in, err := os.ReadFile("testdata/mixed.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(in, []byte(`"Test":"TestFail","Output":"--- FAIL`))
	i = bytes.LastIndexByte(in[:i], '\n')
	file := t.TempDir() + "/cut.jsonl"
	if err := os.WriteFile(file, in[:i+1], 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, ok := runReport(t, file, options{})
	if ok {
		t.Fatalf("a cut stream passed:\n%s", out)
	}
	mustContain(t, out, "trdemo never finished", "a_test.go:11: boom", "--- (no result: TestFail")
}

func TestNothingRan(t *testing.T) {
	file := t.TempDir() + "/empty.jsonl"
	if err := os.WriteFile(file, []byte("go: no packages to test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, ok := runReport(t, file, options{})
	if ok {
		t.Fatalf("a run without tests passed:\n%s", out)
	}
	mustContain(t, out, "go: no packages to test", "FAIL: no test ran")
}

func TestSkipReason(t *testing.T) {
	for _, tc := range []struct {
		out  []string
		want string
	}{
		{[]string{"=== RUN   TestA\n", "    a_test.go:3: log\n", "    a_test.go:4: why\n", "--- SKIP: TestA (0.00s)\n"}, "a_test.go:4: why"},
		{[]string{"=== RUN   TestA\n", "--- SKIP: TestA (0.00s)\n"}, "(no reason given)"},
		{[]string{"=== RUN   TestA/b\n", "        x_test.go:9: two\n", "            lines\n", "    --- SKIP: TestA/b (0.00s)\n"}, "x_test.go:9: two lines"},
	} {
		if got := skipReason(tc.out); got != tc.want {
			t.Errorf("skipReason(%q) = %q, want %q", tc.out, got, tc.want)
		}
	}
}

func TestAllowFlag(t *testing.T) {
	a := allowList{}
	if err := a.Set("region/x.TestY=needs a GPU"); err != nil || a["region/x.TestY"] != "needs a GPU" {
		t.Fatalf("Set: %v %v", err, a)
	}
	for _, bad := range []string{"TestY", "TestY=", "=why"} {
		if err := a.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted an allowance without a name or reason", bad)
		}
	}
}
