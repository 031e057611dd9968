package main

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/internal/stack"
	"github.com/chatmesh/chatmesh/internal/testenv"
)

func TestResolveConv(t *testing.T) {
	me := core.DeviceKey{User: "bob", Device: 1}
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"@alice", "d:alice:bob", true},
		{"@zed", "d:bob:zed", true},
		{"d:alice:bob", "d:alice:bob", true},
		{"g:01J8ZC0000000000000000000A", "g:01J8ZC0000000000000000000A", true},
		{"@Bad", "", false},
		{"alice", "", false},
		{"d:bob:alice", "", false}, // not canonical
	}
	for _, tc := range cases {
		got, err := resolveConv(me, tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("resolveConv(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// chatCLI runs `chatmesh chat` against a stack for one device.
type chatCLI struct {
	t     *testing.T
	state string
	ends  stack.Endpoints
	wt    bool
}

func (c chatCLI) run(stdin string, args ...string) (string, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	edge := []string{"--edge", c.ends.WS}
	if c.wt {
		edge = []string{"--edge", c.ends.WT, "--cert-hash", c.ends.CertHash}
	}
	full := append([]string{"--state", c.state, "--server-key", c.ends.EdgeKey, "--timeout", "20s"}, edge...)
	full = append(full, args...)
	var out, errb bytes.Buffer
	err := runChat(ctx, full, strings.NewReader(stdin), &out, &errb)
	if err != nil {
		c.t.Logf("chat %v: stderr %s", args, errb.String())
	}
	return out.String(), err
}

func (c chatCLI) must(args ...string) string {
	c.t.Helper()
	out, err := c.run("", args...)
	if err != nil {
		c.t.Fatalf("chat %v: %v", args, err)
	}
	return out
}

// receiveJSON runs `receive --json` and returns its conversation entries
// (types message, membership and role).
func receiveJSON(t *testing.T, c chatCLI) []entryLine {
	t.Helper()
	out := c.must("receive", "--json")
	var ms []entryLine
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m entryLine
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad json line %q: %v", line, err)
		}
		switch m.Type {
		case evMessage, evMembership, evRole:
			ms = append(ms, m)
		case "":
			t.Fatalf("line without type: %q", line)
		}
	}
	return ms
}

// entryLine decodes any conversation entry line (message, membership, role).
type entryLine struct {
	messageJSON
	Op string `json:"op"`
}

func body(m entryLine) string { return m.Body }

func TestChatCLIEndToEnd(t *testing.T) {
	testenv.SkipShort(t, "needs the in-process stack")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := stack.Start(ctx, stack.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ends := s.Endpoints()
	alice := chatCLI{t: t, state: t.TempDir(), ends: ends}
	bob := chatCLI{t: t, state: t.TempDir(), ends: ends, wt: true}

	if out := alice.must("register", "alice"); out != "registered alice.1\n" {
		t.Fatalf("register: %q", out)
	}
	bob.must("register", "bob")
	if out := alice.must("send", "@bob", "hello", "bob"); out != "sent d:alice:bob seq 1\n" {
		t.Fatalf("send: %q", out)
	}
	alice.must("send", "d:alice:bob", "second")

	ms := receiveJSON(t, bob)
	if len(ms) != 2 || body(ms[0]) != "hello bob" || ms[0].From != "alice.1" || ms[0].Seq != 1 || ms[0].Outgoing ||
		ms[0].Conv != "d:alice:bob" || ms[0].Type != "message" || ms[0].MsgID == "" || ms[0].SentAtMs == 0 || body(ms[1]) != "second" {
		t.Fatalf("receive: %+v", ms)
	}
	// Each message is printed once, across runs.
	if ms := receiveJSON(t, bob); len(ms) != 0 {
		t.Fatalf("second receive printed %+v", ms)
	}

	out := alice.must("group", "create", "friends", "bob")
	gid := strings.Fields(out)[0]
	if !core.IsGroupID(gid) {
		t.Fatalf("group create: %q", out)
	}
	alice.must("send", gid, "hi group")
	ms = receiveJSON(t, bob)
	if len(ms) != 2 || ms[0].Type != "membership" || body(ms[1]) != "hi group" || ms[1].Seq != 2 {
		t.Fatalf("group receive: %+v", ms)
	}
	if out := bob.must("history", "@alice"); strings.Count(out, "\n") != 2 || !strings.Contains(out, "alice.1: hello bob") {
		t.Fatalf("history: %q", out)
	}
	bob.must("read", "@alice", "2")
	if out := bob.must("presence", "alice"); !strings.HasPrefix(out, "alice\toffline last seen ") {
		t.Fatalf("presence: %q", out)
	}
	// Privacy: alice hides her last seen; bob (a peer) still sees her
	// offline, without a time. Nobody sees a non-peer's presence.
	if out := alice.must("privacy", "--hide-last-seen=true", "--add-policy", "contacts"); out != "privacy: last seen hidden, add policy contacts\n" {
		t.Fatalf("privacy: %q", out)
	}
	if _, err := alice.run("", "privacy", "--add-policy", "nobody"); err == nil {
		t.Fatal("privacy --add-policy nobody accepted")
	}
	if out := bob.must("presence", "alice", "zed"); out != "alice\toffline\nzed\tunknown (not a conversation peer)\n" {
		t.Fatalf("presence with last seen hidden: %q", out)
	}
	alice.must("privacy", "--hide-last-seen=false")
	if out := bob.must("presence", "alice"); !strings.HasPrefix(out, "alice\toffline last seen ") {
		t.Fatalf("presence with last seen shown again: %q", out)
	}

	// A second device for bob via link-request / link / register --link.
	phone := chatCLI{t: t, state: t.TempDir(), ends: ends}
	req := strings.TrimSpace(phone.must("link-request"))
	tok := strings.TrimSpace(bob.must("link", req))
	if out := phone.must("register", "--link", tok); out != "registered bob.2\n" {
		t.Fatalf("linked register: %q", out)
	}
	// The new device has no ciphertext for what was sent before it existed.
	// Conversations come in the order sync pages them (not fixed); within
	// one conversation they come in seq order.
	{
		ms := receiveJSON(t, phone)
		var direct, group []string
		for _, m := range ms {
			switch {
			case m.Conv == "d:alice:bob":
				direct = append(direct, m.Type+"/"+m.OpenErrorCode)
			case strings.HasPrefix(m.Conv, "g:"):
				group = append(group, m.Type+"/"+m.OpenErrorCode)
			}
		}
		if len(ms) != 4 || strings.Join(direct, ",") != "message/NOT_FOR_DEVICE,message/NOT_FOR_DEVICE" ||
			len(group) != 2 || group[0] != "membership/" {
			t.Fatalf("new device history: %+v", ms)
		}
	}

	// --follow prints what arrives while it runs and ends cleanly at --timeout.
	alice.must("send", "@bob", "while following")
	out = bob.must("receive", "--follow", "--timeout", "1500ms")
	if !strings.Contains(out, "alice.1: while following") || strings.Count(out, "\n") != 1 {
		t.Fatalf("follow: %q", out)
	}

	// Interactive: choose a conversation, send a line, end of input.
	out, err = alice.run("/to @bob\nfrom the prompt\n", "interactive")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "✓ sent [d:alice:bob #4]") {
		t.Fatalf("interactive output: %q", out)
	}
	if ms := receiveJSON(t, bob); len(ms) != 1 || body(ms[0]) != "from the prompt" {
		t.Fatalf("after interactive: %+v", ms)
	}

	// Safety numbers: 60 digits in groups of 5, the same on both sides.
	sa, sb := alice.must("safety", "bob"), bob.must("safety", "@alice")
	if sa != sb || !regexp.MustCompile(`^(\d{5} \d{5} \d{5} \d{5}\n){3}$`).MatchString(sa) {
		t.Fatalf("safety numbers %q / %q", sa, sb)
	}
	if out := alice.must("trust", "bob"); !strings.Contains(out, "no identity change") {
		t.Fatalf("trust without change: %q", out)
	}
}
