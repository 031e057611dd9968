package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/chatmesh/chatmesh/region/directory"
)

const directoryUsage = `usage: chatmesh directory <command> [flags] [args]

Operator commands for the region directory, sent to one voter's HTTP
address (any voter: writes go through the leader wherever it is).

commands:
  status                               leader, applied index, regions with their edges and health,
                                       how many users and conversations are homed
  conv <conversation>                  a conversation's home region and owner epoch
  user <user>                          a user's home region
  convs [--after ID] [--limit N]       conversations in id order, one page (N <= 1000)
  move-conversation <conversation> <region>
                                       move a conversation's home (compare-and-set on its epoch;
                                       the old home is fenced); a no-op if already there
  move-user <user> <region>            home the user there and move the conversations they own
                                       (created or started) with them, each at epoch + 1
  edge-health <region> <edge-id> up|down
  region-health <region> up|down
  fail-region <region>                 fail a region over by hand: mark it unhealthy and move every
                                       user and conversation homed there to the nearest healthy
                                       region, each conversation at epoch + 1 (one step)
  restore-region <region>              mark a failed region healthy again (homes stay; move them
                                       back with move-conversation / move-user)
  put-edge <region> --id ID [--ws URL] [--wt URL] [--cert-hash HEX] [--noise-key HEX] [--down]
                                       add or replace an edge (an id held by another region moves)

flags (any command, before or after the arguments):
  --addr URL     a voter's HTTP address, http://host:port (env CHATMESH_DIRECTORY_ADDR)
  --token T      the voters' shared token (env CHATMESH_DIRECTORY_TOKEN)
  --json         print JSON instead of text
  --local        conv, user, status: answer from the voter's applied copy (possibly stale)
                 instead of a linearizable read (status falls back to it, with a warning,
                 when no leader answers within 5s or half of --timeout)
  --timeout D    time limit (default 30s)

exit status: 0 done, 1 failed (refused by the directory, or not reachable), 2 usage error.
`

// usageError is a command-line mistake; main exits with status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// dirFlags are the flags every directory command takes.
type dirFlags struct {
	addr, token    string
	asJSON, local  bool
	timeout        time.Duration
	after          string // convs
	limit          int    // convs
	edge           directory.Edge
	down           bool // put-edge
	stdout, stderr io.Writer
}

// runDirectory is `chatmesh directory`.
func runDirectory(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, directoryUsage)
		return usagef("directory: no command")
	}
	cmd, args := args[0], args[1:]
	if cmd == "-h" || cmd == "--help" || cmd == "help" {
		fmt.Fprint(stdout, directoryUsage)
		return nil
	}
	run, nargs, ok := directoryCommand(cmd)
	if !ok {
		fmt.Fprint(stderr, directoryUsage)
		return usagef("directory: unknown command %q", cmd)
	}
	f := &dirFlags{stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("directory "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, directoryUsage) }
	fs.StringVar(&f.addr, "addr", os.Getenv("CHATMESH_DIRECTORY_ADDR"), "a voter's HTTP address (env CHATMESH_DIRECTORY_ADDR)")
	fs.StringVar(&f.token, "token", os.Getenv("CHATMESH_DIRECTORY_TOKEN"), "the voters' token (env CHATMESH_DIRECTORY_TOKEN)")
	fs.BoolVar(&f.asJSON, "json", false, "JSON output")
	fs.BoolVar(&f.local, "local", false, "read the voter's applied copy (no linearizable read)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "time limit")
	switch cmd {
	case "convs":
		fs.StringVar(&f.after, "after", "", "list conversations whose id sorts after this one")
		fs.IntVar(&f.limit, "limit", 100, fmt.Sprintf("page size, 1..%d", directory.MaxConvsPage))
	case "put-edge":
		fs.StringVar(&f.edge.ID, "id", "", "edge id (unique across regions)")
		fs.StringVar(&f.edge.WS, "ws", "", "WebSocket URL")
		fs.StringVar(&f.edge.WT, "wt", "", "WebTransport URL")
		fs.StringVar(&f.edge.CertHash, "cert-hash", "", "hex SHA-256 of the WebTransport certificate")
		fs.StringVar(&f.edge.NoiseKeyHex, "noise-key", "", "hex Noise static public key")
		fs.BoolVar(&f.down, "down", false, "store the edge as unhealthy")
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{fmt.Errorf("directory %s: %w", cmd, err)}
	}
	if len(pos) != nargs {
		return usagef("directory %s: want %d argument(s), got %d (chatmesh directory -h)", cmd, nargs, len(pos))
	}
	if f.addr == "" {
		return usagef("directory %s: --addr (or CHATMESH_DIRECTORY_ADDR) is required", cmd)
	}
	if !strings.Contains(f.addr, "://") {
		f.addr = "http://" + f.addr
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	ac := &directory.AdminClient{URL: f.addr, Token: f.token, HTTP: &http.Client{}}
	return run(ctx, ac, f, pos)
}

type dirCommand func(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error

// directoryCommand returns a command and its number of arguments.
func directoryCommand(name string) (dirCommand, int, bool) {
	switch name {
	case "status":
		return dirStatus, 0, true
	case "conv":
		return dirConv, 1, true
	case "user":
		return dirUser, 1, true
	case "convs":
		return dirConvs, 0, true
	case "move-conversation":
		return dirMoveConv, 2, true
	case "move-user":
		return dirMoveUser, 2, true
	case "edge-health":
		return dirEdgeHealth, 3, true
	case "region-health":
		return dirRegionHealth, 2, true
	case "put-edge":
		return dirPutEdge, 1, true
	case "fail-region":
		return dirFailRegion, 1, true
	case "restore-region":
		return dirRestoreRegion, 1, true
	}
	return nil, 0, false
}

func (f *dirFlags) printJSON(v any) error {
	enc := json.NewEncoder(f.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dirStatus(ctx context.Context, ac *directory.AdminClient, f *dirFlags, _ []string) error {
	st, err := dirReadStatus(ctx, ac, f)
	if err != nil {
		return err
	}
	if st.HeartbeatAgeMS == nil && st.Leader != "" && !st.IsLeader {
		// Only the leader knows when each region last heartbeat: ask it
		// (best effort; the rest of the status stands without it).
		for _, p := range st.Voters {
			if p.ID == st.Leader {
				lac := *ac
				lac.URL = "http://" + p.HTTPAddr
				if lst, err := lac.Status(ctx, false); err == nil && lst.IsLeader {
					st.HeartbeatAgeMS = lst.HeartbeatAgeMS
				}
			}
		}
	}
	if f.asJSON {
		return f.printJSON(st)
	}
	role, leader := "follower", st.Leader
	if st.IsLeader {
		role = "leader"
	}
	if leader == "" {
		leader = "(none known)"
	}
	w := f.stdout
	fmt.Fprintf(w, "voter %s (%s); leader %s; applied index %d\n", st.ID, role, leader, st.AppliedIndex)
	var voters []string
	for _, p := range st.Voters {
		voters = append(voters, fmt.Sprintf("%s http://%s", p.ID, p.HTTPAddr))
	}
	fmt.Fprintf(w, "voters: %s\n", strings.Join(voters, ", "))
	fmt.Fprintf(w, "users: %d  conversations: %d\n\n", st.State.Users, st.State.Convs)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tHEALTH\tLAST HEARTBEAT\tLAT\tLONG\tLINK\tEDGES (UP/ALL)")
	for _, r := range st.State.Regions {
		up := 0
		for _, e := range r.Edges {
			if e.Healthy {
				up++
			}
		}
		beat := "-"
		if age, ok := st.HeartbeatAgeMS[r.Name]; ok && age >= 0 {
			beat = (time.Duration(age) * time.Millisecond).Round(100*time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t%.2f\t%s\t%d/%d\n", r.Name, health(r.Healthy), beat, r.Lat, r.Long, dash(r.LinkEndpoint), up, len(r.Edges))
	}
	if len(st.State.Regions) == 0 {
		fmt.Fprintln(tw, "(no regions)")
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := false
	for _, r := range st.State.Regions {
		for _, e := range r.Edges {
			if !header {
				fmt.Fprintln(tw, "\nEDGE\tREGION\tHEALTH\tWS\tWT\tNOISE KEY")
				header = true
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, r.Name, health(e.Healthy), dash(e.WS), dash(e.WT), short(e.NoiseKeyHex))
		}
	}
	return tw.Flush()
}

// statusSyncBudget bounds status's linearizable attempt before it falls
// back to the voter's applied copy (at most half of --timeout).
const statusSyncBudget = 5 * time.Second

// dirReadStatus reads the status linearizably (it then shows the
// operator's own writes made through any voter) and, when no leader
// answers in time, the voter's applied copy with a warning: status must
// work when the directory has no leader.
func dirReadStatus(ctx context.Context, ac *directory.AdminClient, f *dirFlags) (directory.Status, error) {
	if f.local {
		return ac.Status(ctx, false)
	}
	sctx, cancel := context.WithTimeout(ctx, min(statusSyncBudget, f.timeout/2))
	st, err := ac.Status(sctx, true)
	cancel()
	if err == nil || errors.Is(err, directory.ErrUnauthorized) || ctx.Err() != nil {
		return st, err
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" { // nothing there: no fallback either
		return st, err
	}
	fmt.Fprintf(f.stderr, "warning: no linearizable read (%v); showing the voter's applied copy, possibly stale\n", err)
	return ac.Status(ctx, false)
}

func health(ok bool) string {
	if ok {
		return "up"
	}
	return "DOWN"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// short abbreviates a hex key for the table (--json has it whole).
func short(k string) string {
	if len(k) <= 16 {
		return dash(k)
	}
	return k[:16] + "…"
}

func dirConv(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	h, err := ac.Conv(ctx, args[0], !f.local)
	if err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(directory.ConvEntry{Conv: args[0], Region: h.Region, Epoch: h.Epoch})
	}
	fmt.Fprintf(f.stdout, "conversation %s: home %s, epoch %d\n", args[0], h.Region, h.Epoch)
	return nil
}

type userJSON struct {
	User  string `json:"user"`
	Home  string `json:"home"`
	From  string `json:"from,omitempty"`  // move-user: the home before
	Moved int    `json:"moved,omitempty"` // move-user: owned conversations moved
}

func dirUser(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	h, err := ac.UserHome(ctx, args[0], !f.local)
	if err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(userJSON{User: args[0], Home: h})
	}
	fmt.Fprintf(f.stdout, "user %s: home %s\n", args[0], h)
	return nil
}

func dirConvs(ctx context.Context, ac *directory.AdminClient, f *dirFlags, _ []string) error {
	if f.limit < 1 || f.limit > directory.MaxConvsPage {
		return usagef("directory convs: --limit must be 1..%d", directory.MaxConvsPage)
	}
	p, err := ac.Convs(ctx, f.after, f.limit)
	if err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(p)
	}
	tw := tabwriter.NewWriter(f.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONVERSATION\tHOME\tEPOCH")
	for _, e := range p.Convs {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", e.Conv, e.Region, e.Epoch)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p.Next != "" {
		fmt.Fprintf(f.stdout, "more: --after %s\n", p.Next)
	}
	return nil
}

func dirMoveConv(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	h, err := ac.MoveConversation(ctx, args[0], args[1])
	if err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(directory.ConvEntry{Conv: args[0], Region: h.Region, Epoch: h.Epoch})
	}
	fmt.Fprintf(f.stdout, "conversation %s: home %s, epoch %d\n", args[0], h.Region, h.Epoch)
	return nil
}

func dirMoveUser(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	from, moved, err := ac.MoveUser(ctx, args[0], args[1])
	if err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(userJSON{User: args[0], Home: args[1], From: from, Moved: moved})
	}
	fmt.Fprintf(f.stdout, "user %s: home %s (was %s); %d conversation(s) they own moved with them (epoch + 1 each)\n", args[0], args[1], from, moved)
	return nil
}

func parseUpDown(s string) (bool, error) {
	switch s {
	case "up":
		return true, nil
	case "down":
		return false, nil
	}
	return false, usagef("directory: want up or down, got %q", s)
}

type healthJSON struct {
	Region  string `json:"region"`
	Edge    string `json:"edge,omitempty"`
	Healthy bool   `json:"healthy"`
}

func dirEdgeHealth(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	up, err := parseUpDown(args[2])
	if err != nil {
		return err
	}
	if err := ac.SetEdgeHealth(ctx, args[0], args[1], up); err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(healthJSON{Region: args[0], Edge: args[1], Healthy: up})
	}
	fmt.Fprintf(f.stdout, "edge %s of %s: %s\n", args[1], args[0], args[2])
	return nil
}

func dirRegionHealth(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	up, err := parseUpDown(args[1])
	if err != nil {
		return err
	}
	if err := ac.SetRegionHealth(ctx, args[0], up); err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(healthJSON{Region: args[0], Healthy: up})
	}
	fmt.Fprintf(f.stdout, "region %s: %s\n", args[0], args[1])
	return nil
}

func dirFailRegion(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	fo, err := ac.FailRegion(ctx, args[0])
	if err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(struct {
			Region string `json:"region"`
			To     string `json:"to"`
			Users  int    `json:"users"`
			Convs  int    `json:"convs"`
		}{args[0], fo.To, fo.Users, fo.Convs})
	}
	fmt.Fprintf(f.stdout, "region %s failed over to %s: %d user(s) and %d conversation(s) moved (epoch + 1 each)\n", args[0], fo.To, fo.Users, fo.Convs)
	return nil
}

func dirRestoreRegion(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	if err := ac.RestoreRegion(ctx, args[0]); err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(healthJSON{Region: args[0], Healthy: true})
	}
	fmt.Fprintf(f.stdout, "region %s: healthy again; its former homes stay where they are\n", args[0])
	return nil
}

func dirPutEdge(ctx context.Context, ac *directory.AdminClient, f *dirFlags, args []string) error {
	if f.edge.ID == "" || (f.edge.WS == "" && f.edge.WT == "") {
		return usagef("directory put-edge: --id and --ws or --wt are required")
	}
	e := f.edge
	e.Healthy = !f.down
	if err := ac.PutEdge(ctx, args[0], e); err != nil {
		return err
	}
	if f.asJSON {
		return f.printJSON(struct {
			Region string         `json:"region"`
			Edge   directory.Edge `json:"edge"`
		}{args[0], e})
	}
	fmt.Fprintf(f.stdout, "edge %s of %s: %s\n", e.ID, args[0], health(e.Healthy))
	return nil
}
