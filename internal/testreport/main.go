// Command testreport reads `go test -json` on stdin and prints what plain
// `go test` prints (a line per package, the whole output of every failed
// test), then a summary: tests passed, failed and skipped, each skipped test
// with its reason, and the slowest packages and tests. It exits non-zero if
// anything failed, if nothing ran, or — with -no-skips — if any test was
// skipped that no -allow names. scripts/test.sh (make test) runs it.
//
//	go test -json ./... 2>&1 | go run ./internal/testreport -no-skips -log /tmp/test.log
//
// Lines that are not JSON events (build errors, go command messages) are
// printed as they come. -log writes the full verbose transcript (every
// test's output, as go test -v would print it) to a file.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

type allowList map[string]string // "<package>.<test>" or "<test>" -> reason

func (a allowList) String() string { return fmt.Sprint(map[string]string(a)) }

func (a allowList) Set(v string) error {
	name, reason, ok := strings.Cut(v, "=")
	if !ok || strings.TrimSpace(name) == "" || strings.TrimSpace(reason) == "" {
		return fmt.Errorf("want NAME=REASON (NAME is Test/sub or importpath.Test/sub), got %q", v)
	}
	a[strings.TrimSpace(name)] = strings.TrimSpace(reason)
	return nil
}

func main() {
	var opt options
	opt.allow = allowList{}
	flag.BoolVar(&opt.noSkips, "no-skips", false, "fail when a test was skipped, unless -allow names it")
	flag.Var(opt.allow, "allow", "NAME=REASON: a skip of NAME (Test/sub, or importpath.Test/sub) is expected; repeatable")
	flag.StringVar(&opt.logPath, "log", "", "write the full verbose test output to this file")
	flag.IntVar(&opt.top, "top", 10, "how many of the slowest packages and tests to list")
	flag.Parse()
	var logw *bufio.Writer
	if opt.logPath != "" {
		f, err := os.Create(opt.logPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testreport:", err)
			os.Exit(2)
		}
		logw = bufio.NewWriter(f)
		defer f.Close()
	}
	var log io.Writer
	if logw != nil {
		log = logw
	}
	ok := report(os.Stdin, os.Stdout, log, opt)
	if logw != nil {
		if err := logw.Flush(); err != nil {
			fmt.Fprintln(os.Stderr, "testreport: writing the log:", err)
		}
	}
	if !ok {
		os.Exit(1)
	}
}

type options struct {
	noSkips bool
	allow   allowList
	logPath string
	top     int
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time        time.Time
	Action      string
	Package     string
	ImportPath  string // build-output, build-fail
	Test        string
	Elapsed     float64
	Output      string
	FailedBuild string
}

type test struct {
	name    string
	out     []string
	result  string // pass, fail, skip; "" while running
	elapsed float64
}

type pkg struct {
	path   string
	tests  map[string]*test
	order  []*test
	out    []string
	result string
	elap   float64
}

type skipped struct {
	pkg, test, reason, allowed string
}

type timing struct {
	name    string
	elapsed float64
}

type state struct {
	w, log io.Writer
	pkgs   map[string]*pkg

	passed, failed, skips  int
	skipList               []skipped
	pkgOK, pkgFail, noTest int
	buildFail              int
	pkgTimes, testTimes    []timing
}

func (s *state) pkg(path string) *pkg {
	p := s.pkgs[path]
	if p == nil {
		p = &pkg{path: path, tests: map[string]*test{}}
		s.pkgs[path] = p
	}
	return p
}

func (p *pkg) test(name string) *test {
	t := p.tests[name]
	if t == nil {
		t = &test{name: name}
		p.tests[name] = t
		p.order = append(p.order, t)
	}
	return t
}

// report consumes the stream and prints as it goes, then the summary; it
// returns whether the run passed.
func report(r io.Reader, w, log io.Writer, opt options) bool {
	s := &state{w: w, log: log, pkgs: map[string]*pkg{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
			fmt.Fprintf(w, "%s\n", line)
			s.logf("%s\n", line)
			continue
		}
		s.handle(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(w, "testreport: reading the test stream: %v\n", err)
		s.buildFail++
	}
	// Packages that never ended: the stream was cut (go test killed).
	var open []string
	for path, p := range s.pkgs {
		if p.result == "" {
			open = append(open, path)
		}
	}
	sort.Strings(open)
	for _, path := range open {
		p := s.pkgs[path]
		fmt.Fprintf(w, "testreport: %s never finished; its output so far:\n", path)
		s.printFailed(p, true)
		s.pkgFail++
	}
	return s.summary(opt)
}

func (s *state) logf(format string, args ...any) {
	if s.log != nil {
		fmt.Fprintf(s.log, format, args...)
	}
}

func (s *state) handle(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.w, e.Output)
		s.logf("%s", e.Output)
		return
	case "build-fail":
		s.buildFail++
		return
	case "start":
		s.pkg(e.Package)
		return
	}
	p := s.pkg(e.Package)
	if e.Test == "" {
		switch e.Action {
		case "output":
			p.out = append(p.out, e.Output)
			s.logf("%s", e.Output)
		case "pass", "fail", "skip":
			s.endPackage(p, e)
		}
		return
	}
	t := p.test(e.Test)
	switch e.Action {
	case "output":
		t.out = append(t.out, e.Output)
		s.logf("%s", e.Output)
	case "pass":
		t.result, t.elapsed = "pass", e.Elapsed
		s.passed++
	case "fail":
		t.result, t.elapsed = "fail", e.Elapsed
		s.failed++
	case "skip":
		t.result, t.elapsed = "skip", e.Elapsed
		s.skips++
		s.skipList = append(s.skipList, skipped{pkg: p.path, test: t.name, reason: skipReason(t.out)})
	}
	if (e.Action == "pass" || e.Action == "fail") && !strings.Contains(e.Test, "/") {
		s.testTimes = append(s.testTimes, timing{p.path + "." + e.Test, e.Elapsed})
	}
}

func (s *state) endPackage(p *pkg, e event) {
	p.result, p.elap = e.Action, e.Elapsed
	switch e.Action {
	case "skip": // no test files
		s.noTest++
	case "pass":
		s.pkgOK++
		// The "ok  pkg  1.2s" line; other package-level output of a
		// passing package (stray logs) is only in the -log transcript.
		for _, l := range p.out {
			if strings.HasPrefix(l, "ok ") {
				fmt.Fprint(s.w, l)
			}
		}
		s.pkgTimes = append(s.pkgTimes, timing{p.path, e.Elapsed})
	case "fail":
		s.pkgFail++
		if e.FailedBuild == "" {
			s.pkgTimes = append(s.pkgTimes, timing{p.path, e.Elapsed})
		}
		s.printFailed(p, false)
	}
	// Free the package's output: only the counts and skips stay.
	p.tests, p.order = nil, nil
	p.out = nil
}

// printFailed prints the output of every failed or unfinished test of p,
// in the order they started, then p's own output.
func (s *state) printFailed(p *pkg, unfinished bool) {
	for _, t := range p.order {
		if t.result == "fail" || t.result == "" {
			for _, l := range t.out {
				fmt.Fprint(s.w, l)
			}
			if t.result == "" {
				fmt.Fprintf(s.w, "--- (no result: %s was still running when the package ended)\n", t.name)
				if !unfinished {
					s.failed++
				}
			}
		}
	}
	for _, l := range p.out {
		fmt.Fprint(s.w, l)
	}
}

// skipReason is the message a skipped test logged last (its file:line:
// line and the lines continuing it), without go test's own markers.
func skipReason(out []string) string {
	var lines []string
	start := -1
	for _, l := range out {
		t := strings.TrimRight(l, "\n")
		trim := strings.TrimSpace(t)
		if trim == "" || strings.HasPrefix(trim, "=== ") || strings.HasPrefix(trim, "--- ") {
			continue
		}
		lines = append(lines, trim)
		if isLogLine(trim) {
			start = len(lines) - 1
		}
	}
	if len(lines) == 0 {
		return "(no reason given)"
	}
	if start < 0 {
		start = len(lines) - 1
	}
	r := strings.Join(lines[start:], " ")
	if len(r) > 400 {
		r = r[:400] + "..."
	}
	return r
}

// isLogLine reports whether l starts like "name_test.go:123: ".
func isLogLine(l string) bool {
	file, rest, ok := strings.Cut(l, ":")
	if !ok || !strings.HasSuffix(file, ".go") {
		return false
	}
	num, _, ok := strings.Cut(rest, ":")
	if !ok || num == "" {
		return false
	}
	for _, c := range num {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func (s *state) allowed(opt options, sk skipped) (string, bool) {
	if r, ok := opt.allow[sk.pkg+"."+sk.test]; ok {
		return r, true
	}
	r, ok := opt.allow[sk.test]
	return r, ok
}

func (s *state) summary(opt options) bool {
	w := s.w
	fmt.Fprintf(w, "\n== test summary\n")
	fmt.Fprintf(w, "packages: %d ok, %d failed, %d without tests", s.pkgOK, s.pkgFail, s.noTest)
	if s.buildFail > 0 {
		fmt.Fprintf(w, ", %d build failures", s.buildFail)
	}
	fmt.Fprintf(w, "\ntests (subtests included): %d passed, %d failed, %d skipped\n", s.passed, s.failed, s.skips)

	var unexpected int
	if len(s.skipList) > 0 {
		fmt.Fprintf(w, "skipped:\n")
		for _, sk := range s.skipList {
			mark := ""
			if r, ok := s.allowed(opt, sk); ok {
				mark = " [allowed: " + r + "]"
			} else {
				unexpected++
			}
			fmt.Fprintf(w, "  %s %s: %s%s\n", sk.pkg, sk.test, sk.reason, mark)
		}
	}
	printTop := func(title string, ts []timing) {
		if len(ts) == 0 || opt.top <= 0 {
			return
		}
		sort.SliceStable(ts, func(i, j int) bool { return ts[i].elapsed > ts[j].elapsed })
		fmt.Fprintf(w, "%s:\n", title)
		for _, t := range ts[:min(opt.top, len(ts))] {
			fmt.Fprintf(w, "  %7.1fs  %s\n", t.elapsed, t.name)
		}
	}
	printTop(fmt.Sprintf("slowest packages (of %d)", len(s.pkgTimes)), s.pkgTimes)
	printTop(fmt.Sprintf("slowest tests (of %d top-level)", len(s.testTimes)), s.testTimes)

	ok := true
	fail := func(format string, args ...any) {
		fmt.Fprintf(w, "FAIL: "+format+"\n", args...)
		ok = false
	}
	if s.failed > 0 || s.pkgFail > 0 || s.buildFail > 0 {
		fail("failed: %d tests, %d packages, %d builds (their output is above)", s.failed, s.pkgFail, s.buildFail)
	}
	if s.passed == 0 {
		fail("no test ran")
	}
	if opt.noSkips && unexpected > 0 {
		fail("skipped: %d tests; under make test every test runs, real-server and end-to-end ones included "+
			"(set up what the reason names, or allow the skip with its reason in scripts/test.sh)", unexpected)
	}
	if ok {
		fmt.Fprintf(w, "PASS\n")
	}
	return ok
}
