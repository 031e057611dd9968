package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
)

// jsonEvent is one decoded line of the JSON stream.
type jsonEvent map[string]any

func (e jsonEvent) str(k string) string {
	s, _ := e[k].(string)
	return s
}

func (e jsonEvent) num(k string) uint64 {
	f, _ := e[k].(float64)
	return uint64(f)
}

func (e jsonEvent) flag(k string) bool {
	b, _ := e[k].(bool)
	return b
}

func (e jsonEvent) strs(k string) []string {
	var out []string
	for _, v := range e[k].([]any) {
		out = append(out, v.(string))
	}
	return out
}

// parseLines decodes JSON lines; every line must be an object with a type.
func parseLines(t *testing.T, out string) []jsonEvent {
	t.Helper()
	var evs []jsonEvent
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		var ev jsonEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("bad json line %q: %v", line, err)
		}
		if ev.str("type") == "" {
			t.Fatalf("line without a type: %q", line)
		}
		evs = append(evs, ev)
	}
	return evs
}

// runExit runs `chat` and returns stdout and the process exit status main
// would use.
func (c chatCLI) runExit(ctx context.Context, stdin string, args ...string) (string, int) {
	c.t.Helper()
	edge := []string{"--edge", c.ends.WS}
	full := append([]string{"--state", c.state, "--server-key", c.ends.EdgeKey, "--timeout", "20s"}, edge...)
	full = append(full, args...)
	var out, errb bytes.Buffer
	err := runChat(ctx, full, strings.NewReader(stdin), &out, &errb)
	if err != nil {
		c.t.Logf("chat %.200q: %.300v; stderr %.300s", args, err, errb.String())
	}
	return out.String(), exitCode(err)
}

// offline runs `chat` without an edge (commands that need no network).
func (c chatCLI) offline(args ...string) (string, error) {
	var out, errb bytes.Buffer
	err := runChat(context.Background(), append([]string{"--state", c.state}, args...), strings.NewReader(""), &out, &errb)
	return out.String(), err
}

// stream is a running `chat receive --json --follow`.
type stream struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	mu     sync.Mutex
	evs    []jsonEvent
	seen   int // events before this index were matched by next
}

func (c chatCLI) follow(args ...string) *stream {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	s := &stream{t: c.t, cancel: cancel, done: make(chan error, 1)}
	full := append([]string{"--state", c.state, "--server-key", c.ends.EdgeKey, "--timeout", "20s", "--edge", c.ends.WS,
		"receive", "--json", "--follow"}, args...)
	go func() {
		var errb bytes.Buffer
		err := runChat(ctx, full, strings.NewReader(""), pw, &errb)
		if err != nil {
			c.t.Logf("follow: %v; stderr %s", err, errb.String())
		}
		pw.Close()
		s.done <- err
	}()
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev jsonEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.str("type") == "" {
				ev = jsonEvent{"type": "BAD LINE", "line": sc.Text()}
			}
			s.mu.Lock()
			s.evs = append(s.evs, ev)
			s.mu.Unlock()
		}
	}()
	c.t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}

// waitFor returns the first event (from the start of the stream) that
// matches, waiting up to 60 s for it.
func (s *stream) waitFor(what string, match func(jsonEvent) bool) jsonEvent {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s.mu.Lock()
		for _, ev := range s.evs {
			if ev.str("type") == "BAD LINE" {
				s.mu.Unlock()
				s.t.Fatalf("bad line in the stream: %v", ev)
			}
			if match(ev) {
				s.mu.Unlock()
				return ev
			}
		}
		n := len(s.evs)
		s.mu.Unlock()
		if time.Now().After(deadline) {
			s.t.Fatalf("no %s in the stream after 60 s; %d events: %v", what, n, s.all())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *stream) all() []jsonEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.evs)
}

// stop interrupts the stream (as SIGINT does) and returns its error.
func (s *stream) stop() error {
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(30 * time.Second):
		s.t.Fatal("follow did not end after its context was cancelled")
		return nil
	}
}

func typ(t string) func(jsonEvent) bool {
	return func(e jsonEvent) bool { return e.str("type") == t }
}

// TestChatJSONStream drives a `receive --json --follow` of alice while
// bob, carol and alice's second device act, and checks each event type
// of the stream field by field: connection, presence (snapshot and
// changes), message (incoming, outgoing from this device and from the
// other device), receipt (sent, delivered, read), typing, membership,
// role, error (a failed send, and the fatal REPLACED), identity.
func TestChatJSONStream(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	alice := chatCLI{t: t, state: t.TempDir(), ends: ends}
	alice2 := chatCLI{t: t, state: t.TempDir(), ends: ends}
	bob := chatCLI{t: t, state: t.TempDir(), ends: ends}
	carol := chatCLI{t: t, state: t.TempDir(), ends: ends}
	alice.must("register", "alice")
	bob.must("register", "bob")
	carol.must("register", "carol")
	req := strings.TrimSpace(alice2.must("link-request"))
	tok := strings.TrimSpace(alice.must("link", req))
	alice2.must("register", "--link", tok)

	// alice's own message sent by `send`: a later receive shows it, as
	// outgoing (before, `send` marked it seen when its delivery came back
	// before the process ended, so it was shown or not by chance).
	out := alice.must("send", "--json", "@bob", "hello", "bob")
	sent := parseLines(t, out)
	if len(sent) != 1 || sent[0].str("type") != "receipt" || sent[0].str("status") != "sent" || sent[0].num("seq") != 1 ||
		sent[0].str("conv") != "d:alice:bob" || sent[0].str("client_msg_id") == "" || sent[0].str("msg_id") == "" ||
		sent[0].str("from") != "alice.1" || !sent[0].flag("self") {
		t.Fatalf("send --json: %q", out)
	}
	// Queued offline: the stream's own session sends them. One to a group
	// that does not exist (plaintext, so it is not sealed first) fails.
	q := parseLines(t, must(t)(alice.offline("send", "--no-wait", "--json", "@bob", "queued offline")))
	if len(q) != 1 || q[0].str("type") != "queued" || q[0].str("client_msg_id") == "" || q[0].str("conv") != "d:alice:bob" {
		t.Fatalf("send --no-wait --json: %v", q)
	}
	bad := parseLines(t, must(t)(alice.offline("--insecure-plaintext", "send", "--no-wait", "--json", "g:01J8ZC0000000000000000000A", "nowhere")))

	st := alice.follow("--presence", "bob,zed")
	conn := st.waitFor("connected", func(e jsonEvent) bool { return e.str("type") == "connection" && e.str("state") == "connected" })
	if conn.str("edge") != ends.WS || conn.str("edge_id") != ends.EdgeID || conn.str("region") != ends.Region {
		t.Fatalf("connection event: %v", conn)
	}
	snap := st.waitFor("presence snapshot", typ("presence"))
	if snap.str("user") != "bob" || snap.flag("online") || !snap.flag("snapshot") || snap.num("last_seen_ms") == 0 {
		t.Fatalf("presence snapshot: %v", snap)
	}
	own := st.waitFor("own message", typ("message"))
	if own.str("body") != "hello bob" || !own.flag("outgoing") || own.str("from") != "alice.1" || own.str("from_user") != "alice" ||
		own.num("from_device") != 1 || own.num("seq") != 1 || own.str("client_msg_id") != sent[0].str("client_msg_id") ||
		own.str("msg_id") != sent[0].str("msg_id") || own.num("sent_at_ms") == 0 {
		t.Fatalf("own message: %v", own)
	}
	qs := st.waitFor("sent receipt of the queued message", func(e jsonEvent) bool {
		return e.str("type") == "receipt" && e.str("status") == "sent" && e.str("client_msg_id") == q[0].str("client_msg_id")
	})
	if qs.str("conv") != "d:alice:bob" || qs.num("seq") != 2 || qs.str("msg_id") == "" || !qs.flag("self") || qs.str("from") != "alice.1" {
		t.Fatalf("sent receipt: %v", qs)
	}
	fe := st.waitFor("failed send", typ("error"))
	if fe.str("op") != "send" || fe.str("code") != "NOT_FOUND" || fe.flag("fatal") || fe.str("client_msg_id") != bad[0].str("client_msg_id") ||
		fe.str("conv") != "g:01J8ZC0000000000000000000A" || fe.str("detail") == "" {
		t.Fatalf("failed send: %v", fe)
	}

	// bob connects (presence online), receives (delivered), reads, types.
	bob.must("receive")
	on := st.waitFor("bob online", func(e jsonEvent) bool { return e.str("type") == "presence" && e.flag("online") })
	if on.str("user") != "bob" || on.flag("snapshot") {
		t.Fatalf("presence online: %v", on)
	}
	del := st.waitFor("delivered receipt", func(e jsonEvent) bool {
		return e.str("type") == "receipt" && e.str("status") == "delivered" && e.num("seq") == 2
	})
	if del.str("conv") != "d:alice:bob" || del.str("from") != "bob.1" || del.str("from_user") != "bob" || del.num("from_device") != 1 || del.flag("self") {
		t.Fatalf("delivered receipt: %v", del)
	}
	st.waitFor("bob offline", func(e jsonEvent) bool {
		return e.str("type") == "presence" && e.str("user") == "bob" && !e.flag("online") && !e.flag("snapshot") && e.num("last_seen_ms") > 0
	})
	bob.must("read", "@alice", "2")
	rd := st.waitFor("read receipt", func(e jsonEvent) bool { return e.str("type") == "receipt" && e.str("status") == "read" })
	if rd.str("conv") != "d:alice:bob" || rd.num("seq") != 2 || rd.str("from") != "bob.1" || rd.flag("self") {
		t.Fatalf("read receipt: %v", rd)
	}
	// Typing is best effort: repeated (bounded) until one arrives.
	for i := 0; ; i++ {
		bob.must("typing", "@alice")
		if i == 4 {
			break
		}
		time.Sleep(200 * time.Millisecond)
		if n := len(slices.DeleteFunc(st.all(), func(e jsonEvent) bool { return e.str("type") != "typing" })); n > 0 {
			break
		}
	}
	ty := st.waitFor("typing", typ("typing"))
	if ty.str("conv") != "d:alice:bob" || ty.str("from") != "bob.1" || ty.str("from_user") != "bob" || !ty.flag("typing") || ty.flag("self") {
		t.Fatalf("typing: %v", ty)
	}

	// An incoming message, and one of alice's other device (outgoing).
	bob.must("send", "@alice", "hi alice")
	in := st.waitFor("incoming message", func(e jsonEvent) bool { return e.str("type") == "message" && e.str("from_user") == "bob" })
	if in.str("body") != "hi alice" || in.flag("outgoing") || in.num("seq") != 3 || in.str("from") != "bob.1" {
		t.Fatalf("incoming message: %v", in)
	}
	alice2.must("send", "@bob", "from my phone")
	ph := st.waitFor("message of alice's other device", func(e jsonEvent) bool { return e.str("type") == "message" && e.str("from") == "alice.2" })
	if ph.str("body") != "from my phone" || !ph.flag("outgoing") || ph.num("seq") != 4 || ph.str("open_error") != "" {
		t.Fatalf("message from alice.2: %v", ph)
	}

	// Group changes made by bob: membership and role entries.
	gid := strings.Fields(bob.must("group", "create", "team", "alice"))[0]
	cr := st.waitFor("group create", func(e jsonEvent) bool { return e.str("type") == "membership" && e.str("op") == "create" })
	if cr.str("conv") != gid || cr.num("seq") != 1 || cr.str("actor") != "bob" || cr.str("title") != "team" || cr.flag("outgoing") ||
		cr["invited"] == nil || len(cr.strs("invited")) != 0 ||
		!slices.Contains(cr.strs("users"), "alice") || !slices.Equal(cr.strs("promoted"), []string{"bob"}) || cr.str("text") == "" {
		t.Fatalf("membership create: %v", cr)
	}
	bob.must("group", "add", gid, "carol")
	bob.must("group", "promote", gid, "alice")
	bob.must("group", "title", gid, "the", "team")
	carol.must("group", "leave", gid)
	bob.must("group", "demote", gid, "alice")
	add := st.waitFor("add", func(e jsonEvent) bool { return e.str("type") == "membership" && e.str("op") == "add" })
	if !slices.Equal(add.strs("users"), []string{"carol"}) || add.str("actor") != "bob" || add.num("seq") != 2 {
		t.Fatalf("membership add: %v", add)
	}
	pr := st.waitFor("promote", func(e jsonEvent) bool { return e.str("type") == "role" && e.str("op") == "promote" })
	if !slices.Equal(pr.strs("users"), []string{"alice"}) || pr.str("actor") != "bob" || pr.str("conv") != gid {
		t.Fatalf("role promote: %v", pr)
	}
	ti := st.waitFor("title", func(e jsonEvent) bool { return e.str("type") == "membership" && e.str("op") == "set_title" })
	if ti.str("title") != "the team" {
		t.Fatalf("membership title: %v", ti)
	}
	lv := st.waitFor("leave", func(e jsonEvent) bool { return e.str("type") == "membership" && e.str("op") == "leave" })
	if lv.str("actor") != "carol" || lv.str("from_user") != "carol" {
		t.Fatalf("membership leave: %v", lv)
	}
	de := st.waitFor("demote", func(e jsonEvent) bool { return e.str("type") == "role" && e.str("op") == "demote" })
	if !slices.Equal(de.strs("users"), []string{"alice"}) || de.num("seq") != 6 {
		t.Fatalf("role demote: %v", de)
	}
	bob.must("group", "add", gid, "carol")
	bob.must("group", "remove", gid, "carol")
	rm := st.waitFor("remove", func(e jsonEvent) bool { return e.str("type") == "membership" && e.str("op") == "remove" })
	if !slices.Equal(rm.strs("users"), []string{"carol"}) || rm.str("actor") != "bob" || rm.num("seq") != 8 {
		t.Fatalf("membership remove: %v", rm)
	}

	// Each entry appears once, in seq order per conversation.
	last := map[string]uint64{}
	for _, e := range st.all() {
		switch e.str("type") {
		case "message", "membership", "role":
			if e.num("seq") <= last[e.str("conv")] {
				t.Fatalf("entry out of order or repeated: %v after seq %d", e, last[e.str("conv")])
			}
			last[e.str("conv")] = e.num("seq")
		}
	}

	// SIGINT (here: the context) ends --follow cleanly.
	if err := st.stop(); err != nil || exitCode(err) != ExitOK {
		t.Fatalf("follow after interrupt: %v", err)
	}
	// Nothing is shown twice: the next receive has no entries.
	for _, e := range parseLines(t, alice.must("receive", "--json")) {
		if e.str("type") == "message" || e.str("type") == "membership" || e.str("type") == "role" {
			t.Fatalf("shown again: %v", e)
		}
	}

	// Another session of alice.1 (a copy of its state) replaces the
	// stream's: a disconnect with REPLACED, then a fatal error line, exit 7.
	st = alice.follow()
	st.waitFor("connected", func(e jsonEvent) bool { return e.str("type") == "connection" && e.str("state") == "connected" })
	twin := chatCLI{t: t, state: t.TempDir(), ends: ends}
	if err := os.CopyFS(twin.state, os.DirFS(alice.state)); err != nil {
		t.Fatal(err)
	}
	twin.must("conversations")
	dc := st.waitFor("disconnect", func(e jsonEvent) bool { return e.str("type") == "connection" && e.str("state") == "disconnected" })
	if dc.str("code") != "REPLACED" || dc.str("edge") != ends.WS {
		t.Fatalf("disconnect: %v", dc)
	}
	fatal := st.waitFor("fatal error", func(e jsonEvent) bool { return e.str("type") == "error" && e.flag("fatal") })
	if fatal.str("code") != "REPLACED" || fatal.num("exit") != ExitReplaced || fatal.str("op") != "session" {
		t.Fatalf("fatal error: %v", fatal)
	}
	if err := <-st.done; exitCode(err) != ExitReplaced {
		t.Fatalf("replaced follow ended with %v (exit %d)", err, exitCode(err))
	} else {
		st.done <- err
	}

	// Identity change: the server (here: a write into its store) swaps
	// bob's device list for one of an identity alice never saw. Sending
	// to bob fails with IDENTITY_CHANGED (exit 6); receive reports it.
	fake, _ := identity.Generate(nil)
	l := &identity.DeviceList{UserID: "bob", Version: 99, Devices: []identity.Device{{ID: 1, Identity: fake.Public()}}}
	if err := l.Sign(1, fake); err != nil {
		t.Fatal(err)
	}
	raw, _ := l.MarshalBinary()
	if err := s.Store.(core.PrekeyStore).PutDeviceList(ctx, "bob", l.Version, raw); err != nil {
		t.Fatal(err)
	}
	out, code := alice.runExit(ctx, "", "send", "--json", "@bob", "are you still you?")
	ie := parseLines(t, out)
	if code != ExitIdentity || len(ie) != 1 || ie[0].str("type") != "error" || ie[0].str("code") != "IDENTITY_CHANGED" || ie[0].str("op") != "send" {
		t.Fatalf("send after identity change: exit %d, %q", code, out)
	}
	out, code = alice.runExit(ctx, "x\ny\n", "send", "--json", "--stdin", "@bob")
	if ie := parseLines(t, out); code != ExitIdentity || len(ie) != 1 || ie[0].str("code") != "IDENTITY_CHANGED" || ie[0].num("line") != 1 {
		t.Fatalf("send --stdin after identity change: exit %d, %q", code, out)
	}
	var idev []jsonEvent
	for _, e := range parseLines(t, alice.must("receive", "--json")) {
		if e.str("type") == "identity" {
			idev = append(idev, e)
		}
	}
	if len(idev) != 1 || idev[0].str("user") != "bob" || idev[0].str("state") != "changed" {
		t.Fatalf("identity events: %v", idev)
	}
	// history --json uses the same schema.
	h := parseLines(t, alice.must("history", "--json", gid))
	if len(h) != 8 || h[0].str("type") != "membership" || h[2].str("type") != "role" || h[5].str("op") != "demote" || h[7].str("op") != "remove" {
		t.Fatalf("history --json: %v", h)
	}
}

func must(t *testing.T) func(string, error) string {
	return func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// TestChatSendStdin: one process sends every line of its input, one
// result line each in input order; a line at MaxLineBytes is sent, one
// byte more fails with MESSAGE_TOO_LARGE and the rest continue (exit 5).
func TestChatSendStdin(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	alice := chatCLI{t: t, state: t.TempDir(), ends: ends}
	bob := chatCLI{t: t, state: t.TempDir(), ends: ends}
	alice.must("register", "alice")
	bob.must("register", "bob")

	atLimit := strings.Repeat("x", MaxLineBytes)
	over := strings.Repeat("y", MaxLineBytes+1)
	input := "one\n\n" + atLimit + "\n" + over + "\r\ntwo\r\n" + "three" // no final newline
	out, code := alice.runExit(ctx, input, "send", "--json", "@bob", "-")
	res := parseLines(t, out)
	if code != ExitPartial || len(res) != 5 {
		t.Fatalf("exit %d, %d results: %s", code, len(res), out)
	}
	wantLines := []uint64{1, 3, 4, 5, 6}
	for i, r := range res {
		if r.num("line") != wantLines[i] || r.str("conv") != "d:alice:bob" {
			t.Fatalf("result %d: %v", i, r)
		}
	}
	if e := res[2]; e.str("type") != "error" || e.str("code") != "MESSAGE_TOO_LARGE" || e.str("op") != "send" || e.str("client_msg_id") != "" {
		t.Fatalf("over the limit: %v", e)
	}
	var seqs []uint64
	for _, i := range []int{0, 1, 3, 4} {
		if r := res[i]; r.str("type") != "receipt" || r.str("status") != "sent" || r.str("client_msg_id") == "" {
			t.Fatalf("result %d: %v", i, r)
		}
		seqs = append(seqs, res[i].num("seq"))
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3, 4}) {
		t.Fatalf("seqs %v", seqs)
	}
	var bodies []string
	for _, e := range parseLines(t, bob.must("receive", "--json")) {
		if e.str("type") == "message" {
			bodies = append(bodies, e.str("body"))
		}
	}
	if !slices.Equal(bodies, []string{"one", atLimit, "two", "three"}) {
		t.Fatalf("bob got %d bodies: %.40q", len(bodies), bodies)
	}

	// Many lines over one connection, all sent: exit 0; text mode.
	var b strings.Builder
	for i := range 40 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	out, code = alice.runExit(ctx, b.String(), "send", "@bob", "--stdin") // also after CONV
	if code != ExitOK || strings.Count(out, "sent d:alice:bob seq ") != 40 || !strings.HasSuffix(out, "sent d:alice:bob seq 44\n") {
		t.Fatalf("40 lines: exit %d, %q", code, out)
	}
	// receive (without --follow) sends what send --no-wait queued and
	// writes its sent receipt before it ends.
	q := parseLines(t, must(t)(alice.offline("send", "--json", "--no-wait", "@bob", "later")))
	out, code = alice.runExit(ctx, "", "receive", "--json")
	var got []jsonEvent
	for _, e := range parseLines(t, out) {
		if e.str("type") == "receipt" {
			got = append(got, e)
		}
	}
	if code != ExitOK || len(q) != 1 || len(got) != 1 || got[0].str("status") != "sent" || got[0].str("client_msg_id") != q[0].str("client_msg_id") || got[0].num("seq") != 45 {
		t.Fatalf("receive after send --no-wait: exit %d, queued %v, receipts %v", code, q, got)
	}
	// A single TEXT over the limit is refused the same way (exit 1).
	out, code = alice.runExit(ctx, "", "send", "--json", "@bob", over)
	if e := parseLines(t, out); code != ExitFailure || len(e) != 1 || e[0].str("code") != "MESSAGE_TOO_LARGE" {
		t.Fatalf("single send over the limit: exit %d, %q", code, out)
	}
}

func TestReadLineBounds(t *testing.T) {
	const max = 8
	in := "12345678\n123456789\r\n\r\nabc\r\n" + strings.Repeat("z", 100) + "\nlast"
	r := bufio.NewReaderSize(strings.NewReader(in), 16) // fragments: lines longer than the buffer
	type res struct {
		line    string
		tooLong bool
	}
	var got []res
	for {
		line, tooLong, err := readLine(r, max)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, res{string(line), tooLong})
	}
	want := []res{{"12345678", false}, {"", true}, {"", false}, {"abc", false}, {"", true}, {"last", false}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestChatExitCodes: the documented exit statuses.
func TestChatExitCodes(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	alice := chatCLI{t: t, state: t.TempDir(), ends: ends}
	alice.must("register", "alice")
	fresh := chatCLI{t: t, state: t.TempDir(), ends: ends}

	for _, args := range [][]string{{"send"}, {"send", "@bob"}, {"bogus"}, {"receive", "extra"}, {"receive", "--nope"},
		{"send", "@Bad", "x"}, {"read", "@bob", "x"}, {"typing", "@bob", "maybe"}, {"group", "add", "d:a:b", "x"}} {
		if _, code := alice.runExit(ctx, "", args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, ExitUsage)
		}
	}
	var errb bytes.Buffer
	if err := runChat(ctx, []string{"--state", alice.state, "receive"}, strings.NewReader(""), io.Discard, &errb); exitCode(err) != ExitUsage {
		t.Errorf("no --edge: %v", err)
	}
	if out, code := fresh.runExit(ctx, "", "receive", "--json"); code != ExitAuth {
		t.Errorf("unregistered receive: exit %d", code)
	} else if e := parseLines(t, out); len(e) != 1 || !e[0].flag("fatal") || e[0].str("code") != "UNAUTHENTICATED" || e[0].num("exit") != ExitAuth {
		t.Errorf("unregistered receive: %q", out)
	}
	if _, code := fresh.runExit(ctx, "", "register", "alice"); code != ExitAuth {
		t.Errorf("register of a taken user: exit %d", code)
	}
	// An edge that does not answer: exit 4 at --timeout, with a fatal line.
	dead := alice
	dead.ends.WS = "ws://127.0.0.1:1"
	out, code := dead.runExit(ctx, "", "--timeout", "1s", "receive", "--json")
	if e := parseLines(t, out); code != ExitUnavailable || len(e) != 1 || e[0].str("code") != "TIMEOUT" || e[0].num("exit") != ExitUnavailable {
		t.Errorf("unreachable edge: exit %d, %q", code, out)
	}
	// send --stdin stops at the first line that cannot be sent for want of
	// the network (sealing to bob needs his keys from the server).
	out, code = dead.runExit(ctx, "a\nb\nc\n", "--timeout", "1s", "send", "--json", "--stdin", "@bob")
	if e := parseLines(t, out); code != ExitUnavailable || len(e) != 1 || e[0].str("type") != "error" || e[0].num("line") != 1 || e[0].str("code") != "TIMEOUT" {
		t.Errorf("send --stdin without an edge: exit %d, %q", code, out)
	}
	// --follow ends cleanly at its own --timeout even when never connected.
	if _, code := dead.runExit(ctx, "", "receive", "--follow", "--timeout", "500ms"); code != ExitOK {
		t.Errorf("follow with timeout: exit %d", code)
	}
	// One process per device: while a stream runs, another command of the
	// same state dir is refused (exit 8) and the stream goes on.
	st := alice.follow()
	st.waitFor("connected", func(e jsonEvent) bool { return e.str("type") == "connection" && e.str("state") == "connected" })
	if out, code := alice.runExit(ctx, "", "send", "--json", "@bob", "x"); code != ExitBusy {
		t.Errorf("send while the stream runs: exit %d %q", code, out)
	}
	if err := st.stop(); err != nil {
		t.Errorf("stream after the refused second process: %v", err)
	}
	// An interrupted one-shot command.
	ictx, icancel := context.WithCancel(ctx)
	time.AfterFunc(300*time.Millisecond, icancel)
	if _, code := dead.runExit(ictx, "", "receive"); code != ExitInterrupted {
		t.Errorf("interrupted receive: exit %d", code)
	}
}

// TestChatFollowSignals runs `chat receive --json --follow` as a process
// and ends it with SIGINT and with SIGTERM: exit 0 both times.
func TestChatFollowSignals(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	alice := chatCLI{t: t, state: t.TempDir(), ends: ends}
	alice.must("register", "alice")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		args, _ := json.Marshal([]string{"chat", "--state", alice.state, "--edge", ends.WS, "--server-key", ends.EdgeKey,
			"receive", "--json", "--follow"})
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChatHelperProcess$")
		cmd.Env = append(os.Environ(), "CHATMESH_CHAT_HELPER="+string(args))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		connected := false
		for !connected && sc.Scan() {
			var ev jsonEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("bad line %q", sc.Text())
			}
			connected = ev.str("type") == "connection" && ev.str("state") == "connected"
		}
		if !connected {
			_ = cmd.Process.Kill()
			t.Fatalf("%v: no connected line; stderr %s", sig, errb.String())
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, stdout)
		err = cmd.Wait()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if code := cmd.ProcessState.ExitCode(); code != ExitOK {
			t.Fatalf("%v: exit %d; stderr %s", sig, code, errb.String())
		}
	}
}

// TestChatHelperProcess is the chatmesh process of TestChatFollowSignals.
func TestChatHelperProcess(t *testing.T) {
	raw := os.Getenv("CHATMESH_CHAT_HELPER")
	if raw == "" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		os.Exit(99)
	}
	os.Exit(mainExit(args, os.Stdin, os.Stdout, os.Stderr))
}

// TestJSONEveryClientEvent: every type of client event (found in the
// client package's source, so a new one cannot be missed) has a JSON
// form with a documented type; the schema in CLI.md names every type.
func TestJSONEveryClientEvent(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, filepath.Join("..", "..", "client"), func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range pkgs["client"].Files {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Name.Name != "isEvent" || fd.Recv == nil {
				continue
			}
			if id, ok := fd.Recv.List[0].Type.(*ast.Ident); ok {
				names = append(names, id.Name)
			}
		}
	}
	me := core.DeviceKey{User: "alice", Device: 1}
	bob := core.DeviceKey{User: "bob", Device: 2}
	msg := &pb.Message{ConvId: "d:alice:bob", Seq: 3, MsgId: "m", Sender: bob.Addr(), Kind: pb.MessageKind_MESSAGE_KIND_USER}
	samples := map[string]struct {
		ev   client.Event
		want string
	}{
		"MessageEvent":         {client.MessageEvent{Message: msg, Body: []byte("hi")}, "message"},
		"SendAckedEvent":       {client.SendAckedEvent{Conv: "d:alice:bob", ClientMsgID: "c", MsgID: "m", Seq: 4}, "receipt"},
		"SendFailedEvent":      {client.SendFailedEvent{Conv: "d:alice:bob", ClientMsgID: "c", Err: &core.WireError{Code: pb.ErrorCode_ERROR_CODE_NOT_MEMBER}}, "error"},
		"ReceiptEvent":         {client.ReceiptEvent{Conv: "d:alice:bob", From: bob, Kind: pb.ReceiptKind_RECEIPT_KIND_READ, Seq: 3}, "receipt"},
		"PresenceEvent":        {client.PresenceEvent{User: "bob", Online: true}, "presence"},
		"TypingEvent":          {client.TypingEvent{Conv: "d:alice:bob", From: bob, Typing: true}, "typing"},
		"IdentityChangedEvent": {client.IdentityChangedEvent{User: "bob"}, "identity"},
		"ConnectedEvent":       {client.ConnectedEvent{Edge: "ws://e", Hello: &pb.ServerHello{EdgeId: "e1", Region: "r"}}, "connection"},
		"DisconnectedEvent":    {client.DisconnectedEvent{Edge: "ws://e", Err: errors.New("gone")}, "connection"},
	}
	if len(names) < len(samples) {
		t.Fatalf("found only %v in the client package", names)
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "CLI.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		sm, ok := samples[n]
		if !ok {
			t.Errorf("client.%s has no JSON form here (add it to emitter.event and CLI.md)", n)
			continue
		}
		var buf bytes.Buffer
		em := &emitter{w: &buf, json: true, me: me}
		if err := em.event(sm.ev); err != nil {
			t.Fatal(err)
		}
		evs := parseLines(t, buf.String())
		if len(evs) != 1 || evs[0].str("type") != sm.want || strings.Contains(buf.String(), "unknown event") {
			t.Errorf("%s: %q, want type %q", n, buf.String(), sm.want)
		}
	}
	// Types written by the CLI itself, and the error codes it adds.
	for _, ty := range []string{evMessage, evMembership, evRole, evReceipt, evPresence, evTyping, evIdentity, evConnection, evError, evDropped, evQueued} {
		if !bytes.Contains(doc, []byte("### `"+ty+"`")) {
			t.Errorf("CLI.md has no section ### `%s`", ty)
		}
	}
	// dropped: the count since the last line and the total.
	var buf bytes.Buffer
	em := &emitter{w: &buf, json: true, me: me}
	_ = em.dropped(3, 10)
	if d := parseLines(t, buf.String()); len(d) != 1 || d[0].str("type") != "dropped" || d[0].num("count") != 3 || d[0].num("total") != 10 {
		t.Errorf("dropped: %q", buf.String())
	}
	// An undecryptable message and a binary body.
	buf.Reset()
	_ = em.message(msg, nil, fmt.Errorf("open: %w", e2ee.ErrNotForDevice))
	_ = em.message(msg, []byte{0xff, 0x00}, nil)
	d := parseLines(t, buf.String())
	if len(d) != 2 || d[0].str("open_error_code") != "NOT_FOR_DEVICE" || d[0].str("body") != "" || d[1].str("body_base64") != "/wA=" {
		t.Errorf("undecryptable / binary: %q", buf.String())
	}
}

// TestErrCodes: JSON error codes are the wire codes' names where one
// applies.
func TestErrCodes(t *testing.T) {
	cases := []struct {
		err  error
		code string
		exit int
	}{
		{&core.WireError{Code: pb.ErrorCode_ERROR_CODE_NOT_FOUND}, "NOT_FOUND", ExitFailure},
		{fmt.Errorf("x: %w", &core.WireError{Code: pb.ErrorCode_ERROR_CODE_REPLACED}), "REPLACED", ExitReplaced},
		{&core.WireError{Code: pb.ErrorCode_ERROR_CODE_UNAUTHENTICATED}, "UNAUTHENTICATED", ExitAuth},
		{&core.WireError{Code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE}, "UNAVAILABLE", ExitUnavailable},
		{errLineTooLong, "MESSAGE_TOO_LARGE", ExitFailure},
		{fmt.Errorf("seal: %w", e2ee.ErrIdentityChanged), "IDENTITY_CHANGED", ExitIdentity},
		{client.ErrNotRegistered, "UNAUTHENTICATED", ExitAuth},
		{context.DeadlineExceeded, "TIMEOUT", ExitUnavailable},
		{context.Canceled, "INTERRUPTED", ExitInterrupted},
		{&client.DisconnectError{Code: pb.ErrorCode_ERROR_CODE_REPLACED}, "REPLACED", ExitReplaced},
		{errors.New("disk on fire"), "CLIENT", ExitFailure},
		{withExit(ExitPartial, errors.New("2 of 3")), "CLIENT", ExitPartial},
		{usagef("bad"), "CLIENT", ExitUsage},
		{fmt.Errorf("open: %w", client.ErrStateInUse), "STATE_IN_USE", ExitBusy},
		{fmt.Errorf("send: %w", client.ErrOutboxFull), "OUTBOX_FULL", ExitUnavailable},
	}
	for _, tc := range cases {
		if got := errCode(tc.err); got != tc.code {
			t.Errorf("errCode(%v) = %q, want %q", tc.err, got, tc.code)
		}
		if got := exitCode(chatError(tc.err)); got != tc.exit {
			t.Errorf("exit of %v = %d, want %d", tc.err, got, tc.exit)
		}
	}
}
