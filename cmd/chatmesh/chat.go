package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

const chatUsage = `usage: chatmesh chat --state DIR --edge URL [--edge URL...] [--cert-hash HEX] [--server-key HEX] <command>
       chatmesh chat --state DIR --locate URL <command>

  --locate URL asks a locator (any edge's /v1/locate; https, or http on loopback) for the
  nearest healthy edges and their Noise keys: the CLI connects to the first, fails over down
  the list and locates again when all failed (env CHATMESH_LOCATE). It replaces --edge and
  --server-key (each edge is authenticated against the key in the answer); --edge URLs given
  as well are tried after the located ones, and alone while the locator is unreachable.

commands:
  register USER                 register this device as the first device of USER
  register --link TOKEN         register this device with a link token from an existing device
                                (both: --registration-token T sends an operator-issued token that
                                skips the edge's per-IP limit and proof of work; env
                                CHATMESH_REGISTRATION_TOKEN)
  link-request                  print this (new) device's link request token
  link REQUEST                  sign a new device's link request; prints the link token (the signed
                                device list naming the new device is published when this device
                                next connects after the new one registered)
  send [--json] [--no-wait] CONV|@USER TEXT...
                                send a message; waits for "sent ✓" unless --no-wait (flags
                                before CONV: the text after it may start with -)
  send [--json] [--no-wait] --stdin CONV|@USER   (or: send CONV|@USER -)
                                send each line of standard input as one message over one
                                connection; --json prints one result line per message (CLI.md)
  receive [--json] [--follow] [--timeout D] [--presence USER,...]
                                print messages not printed before and every other event the client
                                sees (receipts, membership, presence, typing, ...; JSON lines with
                                --json, schema in CLI.md); --follow streams until SIGINT/SIGTERM
  typing CONV|@USER [on|off]    tell the conversation's members you are (not) typing
  history CONV [--json] [--remote N]
                                print the local history of CONV (--remote: fetch N from the server first)
  conversations                 list conversations (server view)
  read CONV SEQ                 mark CONV read up to SEQ
  group create TITLE USER...    create a group (you are its admin); prints its id
  group add CONV USER...        add members (admins; users who admit only contacts are invited)
  group remove CONV USER...     remove members or cancel invitations (admins)
  group promote CONV USER...    make members admins (admins)
  group demote CONV USER...     take admin rights away (admins; not from the last admin)
  group title CONV TITLE...     change the title (admins)
  group leave CONV              leave (the last admin leaving promotes the longest-standing member)
  group accept CONV             join a group you were invited to
  group decline CONV            refuse an invitation
  group info CONV               print title, members, admins (*) and invitations
  presence USER...              print the users' presence (only your conversation peers' is shown)
  privacy [--hide-last-seen=true|false] [--add-policy everyone|contacts]
                                set who sees your last seen and who may add you to groups
                                (replaces both settings; an omitted flag takes its default)
  whoami                        print this device
  safety USER                   print the safety number with USER (compare it in person)
  trust USER                    accept USER's changed identity (after comparing the safety number)
  interactive                   line-based chat (the default): /to @bob, /group g:..., /quit

exit status: 0 ok, 1 failed, 2 usage error, 3 not registered / not accepted, 4 edge unreachable or
no answer within --timeout, 5 send --stdin: some lines not sent, 6 a peer's identity changed
(trust it first), 7 replaced by another session of this device, 8 state dir in use by another
process, 130 interrupted (see CLI.md).
`

// chatGlobals are the flags shared by every chat subcommand.
type chatGlobals struct {
	state    string
	edges    []string
	locate   string // locator URL (client.Config.LocateURL)
	certHash []byte
	srvKey   []byte
	timeout  time.Duration
	verbose  bool
	insecure bool   // no end-to-end encryption (control runs only)
	regToken string // RegisterRequest.registration_token
	stdin    io.Reader
	stdout   io.Writer
	stderr   io.Writer
}

type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

type hexFlag struct{ b *[]byte }

func (h hexFlag) String() string {
	if h.b == nil {
		return ""
	}
	return hex.EncodeToString(*h.b)
}
func (h hexFlag) Set(v string) error {
	b, err := hex.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return err
	}
	*h.b = b
	return nil
}

func runChat(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	g := &chatGlobals{stdin: stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, chatUsage); fs.PrintDefaults() }
	fs.StringVar(&g.state, "state", envOr("CHATMESH_STATE", ".chatmesh/device"), "device state directory (keys, outbox, messages); env CHATMESH_STATE")
	edges := stringList{}
	fs.Var(&edges, "edge", "edge URL (ws://host:port or https://host:port for WebTransport); repeatable; env CHATMESH_EDGE")
	fs.Var(hexFlag{&g.certHash}, "cert-hash", "hex SHA-256 of the edge's TLS certificate (self-signed dev edges)")
	fs.Var(hexFlag{&g.srvKey}, "server-key", "hex Noise static key of the edge to pin (optional; with --locate it replaces the located keys)")
	fs.StringVar(&g.locate, "locate", os.Getenv("CHATMESH_LOCATE"), "locator URL (an edge's /v1/locate): connect to the nearest healthy edge it names; env CHATMESH_LOCATE")
	fs.DurationVar(&g.timeout, "timeout", 30*time.Second, "time limit of one-shot commands")
	fs.BoolVar(&g.verbose, "v", false, "log connection events to stderr")
	fs.BoolVar(&g.insecure, "insecure-plaintext", os.Getenv("CHATMESH_INSECURE_PLAINTEXT") == "1", "send and read bodies WITHOUT end-to-end encryption (control runs only); env CHATMESH_INSECURE_PLAINTEXT=1")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if len(edges) == 0 {
		if e := os.Getenv("CHATMESH_EDGE"); e != "" {
			_ = edges.Set(e)
		}
	}
	g.edges = edges
	rest := fs.Args()
	if len(rest) == 0 {
		rest = []string{"interactive"}
	}
	return chatError(chatCommand(ctx, g, rest[0], rest[1:]))
}

// flagError makes a flag parsing error a usage error (help stays help).
func flagError(err error) error {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usageError{err}
}

// chatCommand runs one chat command.
func chatCommand(ctx context.Context, g *chatGlobals, cmd string, cargs []string) error {
	stdout, stderr := g.stdout, g.stderr
	switch cmd {
	case "register":
		return chatRegister(ctx, g, cargs)
	case "link-request":
		return chatLinkRequest(ctx, g)
	case "link":
		return chatLink(ctx, g, cargs)
	case "send":
		return chatSend(ctx, g, cargs)
	case "receive":
		return chatReceive(ctx, g, cargs)
	case "history":
		return chatHistory(ctx, g, cargs)
	case "conversations":
		return chatConversations(ctx, g)
	case "read":
		return chatRead(ctx, g, cargs)
	case "group":
		return chatGroup(ctx, g, cargs)
	case "presence":
		return chatPresence(ctx, g, cargs)
	case "privacy":
		return chatPrivacy(ctx, g, cargs)
	case "whoami":
		return chatWhoami(ctx, g)
	case "safety":
		return chatSafety(ctx, g, cargs)
	case "trust":
		return chatTrust(ctx, g, cargs)
	case "typing":
		return chatTyping(ctx, g, cargs)
	case "interactive":
		return chatInteractive(ctx, g)
	case "help":
		fmt.Fprint(stdout, chatUsage)
		return nil
	default:
		fmt.Fprint(stderr, chatUsage)
		return usagef("chat: unknown command %q", cmd)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// open opens the device state (no network). The app cursor moves only by
// Commit, after a command has shown a message: a command that does not
// show messages (send, whoami, group, ...) must not mark them seen, or the
// next `receive` would skip them (before, `send` marked its own message
// seen whenever its delivery arrived before the process ended).
func (g *chatGlobals) open(ctx context.Context) (*client.Client, error) {
	logger := slog.New(slog.DiscardHandler)
	if g.verbose {
		logger = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := client.Config{
		StateDir: g.state, Edges: g.edges, LocateURL: g.locate, CertHash: g.certHash, ServerKey: g.srvKey,
		Logger: logger, ManualCommit: true, ClientName: "chatmesh-cli/" + Version,
		RegistrationToken: g.regToken,
	}
	if g.insecure {
		cfg.Sealer = client.InsecurePlaintextSealer{}
	}
	return client.Open(ctx, cfg)
}

// errNoEdge: neither --edge nor --locate (nor their environment variables).
var errNoEdge = errors.New("chat: --edge or --locate is required")

// online reports whether the CLI knows where to connect.
func (g *chatGlobals) online() bool { return len(g.edges) > 0 || g.locate != "" }

// connected opens the state and starts the connection loop.
func (g *chatGlobals) connected(ctx context.Context) (*client.Client, error) {
	if !g.online() {
		return nil, errNoEdge
	}
	c, err := g.open(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		c.Close()
		if errors.Is(err, client.ErrNotRegistered) {
			return nil, fmt.Errorf("chat: this device is not registered; run `chatmesh chat register USER` first: %w", err)
		}
		return nil, err
	}
	return c, nil
}

// waitUp waits for the first sync, reporting a fatal connection error early.
func waitUp(ctx context.Context, c *client.Client) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := c.WaitConnected(wctx)
		cancel()
		if err == nil {
			return nil
		}
		if e := c.Err(); e != nil {
			return e
		}
		if ctx.Err() != nil {
			return fmt.Errorf("chat: not connected: %w", ctx.Err())
		}
	}
}

func chatRegister(ctx context.Context, g *chatGlobals, args []string) error {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	fs.SetOutput(g.stderr)
	link := fs.String("link", "", "link token from an existing device (`chatmesh chat link`)")
	fs.StringVar(&g.regToken, "registration-token", os.Getenv("CHATMESH_REGISTRATION_TOKEN"), "operator-issued registration token (skips the per-IP limit and proof of work); env CHATMESH_REGISTRATION_TOKEN")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if !g.online() {
		return errNoEdge
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var key core.DeviceKey
	switch {
	case *link != "":
		key, err = c.RegisterLinked(ctx, *link)
	case fs.NArg() == 1:
		key, err = c.Register(ctx, fs.Arg(0))
	default:
		return usagef("chat: usage: register USER | register --link TOKEN")
	}
	if err != nil {
		if chatExitCode(err) == ExitFailure { // refused: taken, forbidden, bad token, ...
			return withExit(ExitAuth, fmt.Errorf("chat: registration refused: %w", err))
		}
		return err
	}
	fmt.Fprintf(g.stdout, "registered %s\n", key)
	return nil
}

func chatLinkRequest(ctx context.Context, g *chatGlobals) error {
	c, err := g.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if key, ok := c.Device(); ok {
		return fmt.Errorf("chat: this device is already registered as %s", key)
	}
	fmt.Fprintln(g.stdout, c.LinkRequest())
	return nil
}

func chatLink(ctx context.Context, g *chatGlobals, args []string) error {
	if len(args) != 1 {
		return usagef("chat: usage: link REQUEST-TOKEN (from `chatmesh chat link-request` on the new device)")
	}
	c, err := g.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	tok, err := c.Link(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, tok)
	return nil
}

func chatWhoami(ctx context.Context, g *chatGlobals) error {
	c, err := g.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	key, ok := c.Device()
	if !ok {
		fmt.Fprintf(g.stdout, "unregistered (noise key %x)\n", c.NoisePublicKey())
		return nil
	}
	fmt.Fprintf(g.stdout, "%s (noise key %x)\n", key, c.NoisePublicKey())
	return nil
}

// resolveConv turns "@user" into the direct conversation with user.
func resolveConv(me core.DeviceKey, target string) (string, error) {
	if u, ok := strings.CutPrefix(target, "@"); ok {
		if !core.ValidUserID(u) {
			return "", usagef("chat: bad user id %q", u)
		}
		return core.DirectConvID(me.User, u), nil
	}
	if core.KindOf(target) == pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED {
		return "", usagef("chat: %q is neither @user nor a conversation id", target)
	}
	return target, nil
}

// MaxLineBytes bounds one message body of `chat send` (a line of --stdin,
// or the joined TEXT arguments), in bytes, without the line end. A longer
// line fails with MESSAGE_TOO_LARGE and the next lines are still sent.
// The sealed message must also fit the edge's max_envelope_bytes: with
// end-to-end encryption a 1:1 message is encrypted once per recipient
// device, so to users with many devices a shorter body can still fail
// with MESSAGE_TOO_LARGE.
const MaxLineBytes = 16 << 10

// sendQueue bounds the lines of `send --stdin` read ahead of their acks.
const sendQueue = 256

var errLineTooLong = fmt.Errorf("chat: message longer than %d bytes", MaxLineBytes)

// readLine reads one line of at most max bytes (without "\n" or "\r\n").
// A longer line is consumed to its end and reported by tooLong. err is
// io.EOF only when nothing was read.
func readLine(r *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		frag, err := r.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(frag) > max+2 { // room for "\r\n"
				tooLong, line = true, nil
			} else {
				line = append(line, frag...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && (len(line) > 0 || tooLong):
			err = nil
		case err != nil:
			return nil, false, err
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > max {
			return nil, true, nil
		}
		return line, tooLong, nil
	}
}

func chatSend(ctx context.Context, g *chatGlobals, args []string) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(g.stderr)
	noWait := fs.Bool("no-wait", false, "return once the message is in the durable outbox")
	fromStdin := fs.Bool("stdin", false, "send each line of standard input as one message (same as TEXT -)")
	asJSON := fs.Bool("json", false, "print one JSON line per message: a sent receipt, queued, or an error (see CLI.md)")
	// Flags go before CONV: the text after it may start with "-".
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	pos := fs.Args()
	if len(pos) == 2 && (pos[1] == "-" || pos[1] == "--stdin") {
		*fromStdin, pos = true, pos[:1]
	}
	if len(pos) < 1 || (*fromStdin && len(pos) != 1) || (!*fromStdin && len(pos) < 2) {
		return usagef("chat: usage: send CONV|@USER TEXT... | send CONV|@USER --stdin (or -)")
	}
	if !*noWait && !g.online() {
		return errNoEdge
	}
	c, err := g.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	me, ok := c.Device()
	if !ok {
		return client.ErrNotRegistered
	}
	conv, err := resolveConv(me, pos[0])
	if err != nil {
		return err
	}
	// Connect first when possible: sealing to a device for the first time
	// needs its device list and prekey bundle from the server.
	if g.online() {
		if err := c.Start(); err != nil {
			return err
		}
	}
	em := &emitter{w: g.stdout, json: *asJSON, me: me}
	if *fromStdin {
		return sendLines(ctx, g, c, em, conv, *noWait)
	}
	body := []byte(strings.Join(pos[1:], " "))
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	id, err := sendOne(ctx, c, conv, body)
	if err != nil {
		_ = em.sendError(conv, "", 0, err)
		return err
	}
	if *noWait {
		return em.queued(conv, id, 0)
	}
	res, err := waitSent(ctx, c, id)
	if err != nil {
		_ = em.sendError(conv, id, 0, err)
		return err
	}
	return em.sent(res, 0)
}

// sendOne checks the body's size and puts it into the outbox.
func sendOne(ctx context.Context, c *client.Client, conv string, body []byte) (string, error) {
	if len(body) > MaxLineBytes {
		return "", fmt.Errorf("%w (%d bytes)", errLineTooLong, len(body))
	}
	return c.Send(ctx, conv, body)
}

// lineSend is one line of send --stdin on its way: in the outbox as id,
// or failed with err.
type lineSend struct {
	line int
	id   string
	err  error
}

// sendLines sends each non-empty line of stdin as one message over one
// connection, reading ahead of the acks by at most sendQueue lines, and
// writes one result per line in input order. A line that fails (too
// long, refused) is reported and the rest continue: the command then
// ends with ExitPartial. An error that would fail every later line too
// (stopsSending: no answer within --timeout, the peer's identity
// changed, ...) ends the command with its own status; a message whose
// ack did not come stays in the outbox.
func sendLines(ctx context.Context, g *chatGlobals, c *client.Client, em *emitter, conv string, noWait bool) error {
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	queue := make(chan lineSend, sendQueue)
	// sendMu makes the reader's Send and the end of this function exclusive:
	// once stopped, the reader sends nothing more (the client is closed
	// after this returns).
	var sendMu sync.Mutex
	stopped := false
	go func() {
		defer close(queue)
		r := bufio.NewReaderSize(g.stdin, 64<<10)
		for n := 1; ; n++ {
			line, tooLong, err := readLine(r, MaxLineBytes)
			if err != nil {
				if err != io.EOF {
					select {
					case queue <- lineSend{line: n, err: fmt.Errorf("chat: read stdin: %w", err)}:
					case <-rctx.Done():
					}
				}
				return
			}
			ls := lineSend{line: n}
			switch {
			case tooLong:
				ls.err = fmt.Errorf("%w (line %d)", errLineTooLong, n)
			case len(line) == 0:
				continue // blank lines carry no message
			default:
				sendMu.Lock()
				if stopped {
					sendMu.Unlock()
					return
				}
				sctx, cancel := context.WithTimeout(rctx, g.timeout)
				ls.id, ls.err = c.Send(sctx, conv, line)
				cancel()
				sendMu.Unlock()
			}
			select {
			case queue <- ls:
			case <-rctx.Done():
				return
			}
		}
	}()
	// The reader may be blocked reading stdin when this returns early; it
	// ends at end of input or with the process, like the interactive one,
	// and sends nothing after this returns.
	defer func() {
		stop()
		sendMu.Lock()
		stopped = true
		sendMu.Unlock()
	}()
	failed, total := 0, 0
	for ls := range queue {
		total++
		if ls.err != nil && ls.id == "" {
			if err := em.sendError(conv, "", ls.line, ls.err); err != nil {
				return err
			}
			if stopsSending(ls.err) {
				return ls.err
			}
			failed++
			continue
		}
		if noWait {
			if err := em.queued(conv, ls.id, ls.line); err != nil {
				return err
			}
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, g.timeout)
		res, err := waitSent(wctx, c, ls.id)
		cancel()
		switch {
		case err == nil:
			if err := em.sent(res, ls.line); err != nil {
				return err
			}
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), c.Err() != nil:
			// No ack in time, or the session ended for good: stop here.
			_ = em.sendError(conv, ls.id, ls.line, err)
			return err
		default:
			failed++
			if err := em.sendError(conv, ls.id, ls.line, err); err != nil {
				return err
			}
		}
	}
	if failed > 0 {
		return withExit(ExitPartial, fmt.Errorf("chat: %d of %d lines not sent", failed, total))
	}
	return nil
}

// stopsSending reports whether a line's error concerns every line after
// it too (the connection, the device, the peer's identity), so that
// send --stdin stops with that error's exit status instead of failing
// the remaining lines one by one.
func stopsSending(err error) bool {
	switch chatExitCode(err) {
	case ExitUnavailable, ExitInterrupted, ExitAuth, ExitIdentity, ExitReplaced, ExitBusy:
		return true
	}
	return false
}

// waitSent waits for the ack, returning early on a fatal connection error.
func waitSent(ctx context.Context, c *client.Client, id string) (client.SendResult, error) {
	for {
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		res, err := c.WaitSent(wctx, id)
		cancel()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			if err != nil && ctx.Err() != nil {
				return res, fmt.Errorf("chat: no ack yet (the message stays in the outbox and is sent on the next run): %w", ctx.Err())
			}
			return res, err
		}
		if e := c.Err(); e != nil {
			return res, e
		}
	}
}

func describeMembership(mc *pb.MembershipChange) string {
	users := strings.Join(mc.GetUsers(), ", ")
	var d string
	switch mc.GetOp() {
	case pb.MembershipOp_MEMBERSHIP_OP_CREATE:
		d = fmt.Sprintf("%s created %q with %s", mc.GetActor(), mc.GetTitle(), users)
	case pb.MembershipOp_MEMBERSHIP_OP_ADD:
		d = fmt.Sprintf("%s added %s", mc.GetActor(), users)
	case pb.MembershipOp_MEMBERSHIP_OP_REMOVE:
		d = fmt.Sprintf("%s removed %s", mc.GetActor(), users)
	case pb.MembershipOp_MEMBERSHIP_OP_LEAVE:
		d = fmt.Sprintf("%s left", mc.GetActor())
	case pb.MembershipOp_MEMBERSHIP_OP_PROMOTE:
		d = fmt.Sprintf("%s made %s admin", mc.GetActor(), users)
	case pb.MembershipOp_MEMBERSHIP_OP_DEMOTE:
		d = fmt.Sprintf("%s took admin rights from %s", mc.GetActor(), users)
	case pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE:
		d = fmt.Sprintf("%s changed the title to %q", mc.GetActor(), mc.GetTitle())
	case pb.MembershipOp_MEMBERSHIP_OP_ACCEPT:
		d = fmt.Sprintf("%s accepted the invitation", mc.GetActor())
	case pb.MembershipOp_MEMBERSHIP_OP_DECLINE:
		d = fmt.Sprintf("%s declined the invitation", mc.GetActor())
	default:
		d = "membership change"
	}
	if inv := mc.GetInvited(); len(inv) > 0 {
		d += fmt.Sprintf("; invited %s", strings.Join(inv, ", "))
	}
	if p := mc.GetPromoted(); len(p) > 0 && mc.GetOp() != pb.MembershipOp_MEMBERSHIP_OP_CREATE {
		d += fmt.Sprintf("; %s now admin", strings.Join(p, ", "))
	}
	return d
}

// chatReceive writes every event the client sees: each stored message
// this device has not shown before (committing the app cursor after each
// written line, so repeated runs show each message exactly once, the
// device's own messages included), and the live events (receipts,
// presence, typing, identity changes, connection changes, errors).
// Without --follow it ends once everything pending after the first sync
// is written and the outbox is empty; with --follow it runs until --timeout, SIGINT or SIGTERM
// (exit 0) or a fatal error (an "error" line with fatal true).
func chatReceive(ctx context.Context, g *chatGlobals, args []string) error {
	fs := flag.NewFlagSet("receive", flag.ContinueOnError)
	fs.SetOutput(g.stderr)
	asJSON := fs.Bool("json", false, "JSON lines, one event each (see CLI.md)")
	follow := fs.Bool("follow", false, "keep writing events until interrupted (SIGINT/SIGTERM: exit 0)")
	timeout := fs.Duration("timeout", 0, "with --follow: stop after this long (0: until interrupted); without: connect+sync limit (default --timeout)")
	var presence stringList
	fs.Var(&presence, "presence", "subscribe to these users' presence (comma-separated or repeated); their current state is written first")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() != 0 {
		return usagef("chat: usage: receive [--json] [--follow] [--timeout D] [--presence USER,...]")
	}
	em := &emitter{w: g.stdout, json: *asJSON}
	c, err := g.connected(ctx)
	if err != nil {
		_ = em.fatal("connect", err)
		return err
	}
	defer c.Close()
	em.me, _ = c.Device()
	runCtx := ctx
	if *follow && *timeout > 0 || !*follow {
		d := *timeout
		if d <= 0 {
			d = g.timeout
		}
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	// ended reports the end of runCtx: clean with --follow, else an error.
	ended := func(op string) error {
		if *follow {
			return nil
		}
		err := fmt.Errorf("chat: %s: %w", op, runCtx.Err())
		_ = em.fatal(op, err)
		return err
	}
	if err := waitUp(runCtx, c); err != nil {
		if runCtx.Err() != nil && c.Err() == nil {
			if *follow {
				return nil
			}
			err = fmt.Errorf("chat: connect: %w", runCtx.Err())
		}
		_ = em.fatal("connect", err)
		return err
	}
	// Identity changes not yet trusted (detected by an earlier command)
	// are state: written at every start until `chat trust`.
	for _, s := range c.Conversations() {
		if a, b, ok := core.ParseDirect(s.Conv); ok {
			peer := a
			if peer == em.me.User {
				peer = b
			}
			if c.IdentityChanged(peer) {
				if err := em.identity(peer); err != nil {
					return err
				}
			}
		}
	}
	if len(presence) > 0 {
		ps, err := c.SubscribePresence(runCtx, presence)
		if err != nil {
			if runCtx.Err() != nil && c.Err() == nil {
				return ended("presence")
			}
			_ = em.fatal("presence", err)
			return err
		}
		for _, p := range ps {
			if err := em.presence(p, true); err != nil {
				return err
			}
		}
	}
	// The outbox entries to see answered before a drain ends.
	unsent := map[string]bool{}
	for _, p := range c.Outbox().Pending() {
		unsent[p.ClientMsgID] = true
	}
	show := func(ev client.Event) error {
		if err := em.event(ev); err != nil {
			return err
		}
		switch x := ev.(type) {
		case client.SendAckedEvent:
			delete(unsent, x.ClientMsgID)
		case client.SendFailedEvent:
			delete(unsent, x.ClientMsgID)
		}
		if m, ok := ev.(client.MessageEvent); ok {
			return c.Commit(m.Conv(), m.Seq())
		}
		return nil
	}
	var dropped uint64
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if d := c.DroppedNotices(); d > dropped {
			if err := em.dropped(d-dropped, d); err != nil {
				return err
			}
			dropped = d
		}
		if err := c.Err(); err != nil {
			// The session ended for good: write what is still pending
			// (the disconnect, at least), then the error.
			for dl := time.Now().Add(time.Second); c.Pending() > 0 && time.Now().Before(dl); {
				select {
				case ev := <-c.Events():
					if err := show(ev); err != nil {
						return err
					}
				case <-time.After(10 * time.Millisecond):
				}
			}
			_ = em.fatal("session", err)
			return err
		}
		// Drained: every event handed and written, and what earlier
		// `send --no-wait` runs left in the outbox sent, with its sent
		// receipts or errors written.
		if !*follow && c.Pending() == 0 && len(unsent) == 0 {
			return nil
		}
		select {
		case ev := <-c.Events():
			if err := show(ev); err != nil {
				return err
			}
		case <-runCtx.Done():
			return ended("receive")
		case <-tick.C:
		}
	}
}

// parseInterspersed parses flags placed before or after the positional
// arguments (for commands whose positionals never start with "-").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func chatHistory(ctx context.Context, g *chatGlobals, args []string) error {
	fs := flag.NewFlagSet("history", flag.ContinueOnError)
	fs.SetOutput(g.stderr)
	asJSON := fs.Bool("json", false, "JSON lines")
	remote := fs.Int("remote", 0, "first fetch this many newest entries from the server")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) != 1 {
		return usagef("chat: usage: history CONV|@USER [--json] [--remote N]")
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	var c *client.Client
	if *remote > 0 {
		c, err = g.connected(ctx)
	} else {
		c, err = g.open(ctx)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	me, _ := c.Device()
	conv, err := resolveConv(me, pos[0])
	if err != nil {
		return err
	}
	if *remote > 0 {
		if err := waitUp(ctx, c); err != nil {
			return err
		}
		msgs, err := c.FetchHistory(ctx, conv, 0, *remote)
		if err != nil {
			return err
		}
		return printHistory(ctx, c, g.stdout, *asJSON, msgs)
	}
	msgs, err := c.History(conv, 0, 0)
	if err != nil {
		return err
	}
	return printHistory(ctx, c, g.stdout, *asJSON, msgs)
}

func chatConversations(ctx context.Context, g *chatGlobals) error {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	infos, err := c.ListConversations(ctx)
	if err != nil {
		return err
	}
	local := map[string]client.ConvSummary{}
	for _, s := range c.Conversations() {
		local[s.Conv] = s
	}
	me, _ := c.Device()
	for _, in := range infos {
		mark := ""
		if slices.Contains(in.GetInvited(), me.User) {
			mark = "\tinvited (group accept|decline " + in.GetConvId() + ")"
		}
		fmt.Fprintf(g.stdout, "%s\thead %d\tstored %d\t%q\t%s%s\n", in.GetConvId(), in.GetHeadSeq(),
			local[in.GetConvId()].Head, in.GetTitle(), strings.Join(in.GetMembers(), ","), mark)
	}
	return nil
}

func chatRead(ctx context.Context, g *chatGlobals, args []string) error {
	if len(args) != 2 {
		return usagef("chat: usage: read CONV SEQ")
	}
	seq, err := strconv.ParseUint(args[1], 10, 64)
	if err != nil {
		return usagef("chat: bad seq: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	me, _ := c.Device()
	conv, err := resolveConv(me, args[0])
	if err != nil {
		return err
	}
	if err := c.MarkRead(ctx, conv, seq); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "read %s up to %d\n", conv, seq)
	return nil
}

// chatTyping sends a typing indicator (best effort; the members' devices
// online now see a "typing" event).
func chatTyping(ctx context.Context, g *chatGlobals, args []string) error {
	if len(args) < 1 || len(args) > 2 || (len(args) == 2 && args[1] != "on" && args[1] != "off") {
		return usagef("chat: usage: typing CONV|@USER [on|off]")
	}
	on := len(args) == 1 || args[1] == "on"
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	me, _ := c.Device()
	conv, err := resolveConv(me, args[0])
	if err != nil {
		return err
	}
	if err := waitUp(ctx, c); err != nil {
		return err
	}
	if err := c.SetTyping(ctx, conv, on); err != nil {
		return err
	}
	// Typing has no answer: a ping round trip makes sure the edge read
	// the frame before the session closes.
	if _, err := c.Ping(ctx); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "typing %s %v\n", conv, on)
	return nil
}

const groupUsage = "chat: usage: group create TITLE USER... | group add|remove|promote|demote CONV USER... | " +
	"group title CONV TITLE... | group leave|accept|decline|info CONV"

// groupCmd is one parsed `group` command.
type groupCmd struct {
	op    string // create, add, remove, promote, demote, title, leave, accept, decline, info
	conv  string // every op but create
	title string // create, title
	users []string
}

// parseGroupArgs parses the arguments of `group` (no network). Users may
// be written with a leading @.
func parseGroupArgs(args []string) (groupCmd, error) {
	if len(args) < 2 {
		return groupCmd{}, errors.New(groupUsage)
	}
	gc := groupCmd{op: args[0]}
	users := func(us []string) ([]string, error) {
		out := make([]string, 0, len(us))
		for _, u := range us {
			u = strings.TrimPrefix(u, "@")
			if !core.ValidUserID(u) {
				return nil, fmt.Errorf("chat: bad user id %q", u)
			}
			out = append(out, u)
		}
		return out, nil
	}
	var err error
	switch gc.op {
	case "create":
		gc.title = args[1]
		gc.users, err = users(args[2:])
		return gc, err
	case "add", "remove", "promote", "demote", "title", "leave", "accept", "decline", "info":
	default:
		return groupCmd{}, fmt.Errorf("chat: unknown group command %q (%s)", gc.op, groupUsage)
	}
	gc.conv = args[1]
	if !core.IsGroupID(gc.conv) {
		return groupCmd{}, fmt.Errorf("chat: %q is not a group id (g:...)", gc.conv)
	}
	rest := args[2:]
	switch gc.op {
	case "add", "remove", "promote", "demote":
		if len(rest) == 0 {
			return groupCmd{}, fmt.Errorf("chat: usage: group %s CONV USER...", gc.op)
		}
		gc.users, err = users(rest)
	case "title":
		if len(rest) == 0 {
			return groupCmd{}, usagef("chat: usage: group title CONV TITLE...")
		}
		gc.title = strings.Join(rest, " ")
		if len(gc.title) > core.MaxTitleLen {
			return groupCmd{}, fmt.Errorf("chat: title longer than %d bytes", core.MaxTitleLen)
		}
	default:
		if len(rest) != 0 {
			return groupCmd{}, fmt.Errorf("chat: usage: group %s CONV", gc.op)
		}
	}
	return gc, err
}

// run performs the command and returns the group's info.
func (gc groupCmd) run(ctx context.Context, c *client.Client) (*pb.ConversationInfo, error) {
	switch gc.op {
	case "create":
		return c.CreateGroup(ctx, gc.title, gc.users)
	case "add":
		return c.AddMembers(ctx, gc.conv, gc.users...)
	case "remove":
		return c.RemoveMembers(ctx, gc.conv, gc.users...)
	case "promote":
		return c.Promote(ctx, gc.conv, gc.users...)
	case "demote":
		return c.Demote(ctx, gc.conv, gc.users...)
	case "title":
		return c.SetTitle(ctx, gc.conv, gc.title)
	case "leave":
		return c.Leave(ctx, gc.conv)
	case "accept":
		return c.AcceptInvite(ctx, gc.conv)
	case "decline":
		return c.DeclineInvite(ctx, gc.conv)
	case "info":
		infos, err := c.ListConversations(ctx)
		if err != nil {
			return nil, err
		}
		for _, in := range infos {
			if in.GetConvId() == gc.conv {
				return in, nil
			}
		}
		return nil, fmt.Errorf("chat: %s is not among your conversations or invitations", gc.conv)
	}
	return nil, fmt.Errorf("chat: unknown group command %q", gc.op)
}

func chatGroup(ctx context.Context, g *chatGlobals, args []string) error {
	gc, err := parseGroupArgs(args)
	if err != nil {
		return usageError{err}
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	info, err := gc.run(ctx, c)
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, formatGroupInfo(info))
	return nil
}

// formatGroupInfo renders a group's info on one line: id, title, members
// with admins marked *, pending invitations, head. For example
//
//	g:01J…	"friends"	members alice*,bob	invited carol	head 3
func formatGroupInfo(info *pb.ConversationInfo) string {
	admin := map[string]bool{}
	for _, u := range client.GroupAdmins(info) {
		admin[u] = true
	}
	ms := make([]string, 0, len(info.GetMembers()))
	for _, u := range info.GetMembers() {
		if admin[u] {
			u += "*"
		}
		ms = append(ms, u)
	}
	line := fmt.Sprintf("%s\t%q\tmembers %s", info.GetConvId(), info.GetTitle(), strings.Join(ms, ","))
	if len(info.GetInvited()) > 0 {
		line += "\tinvited " + strings.Join(info.GetInvited(), ",")
	}
	return line + fmt.Sprintf("\thead %d", info.GetHeadSeq())
}

func chatPresence(ctx context.Context, g *chatGlobals, args []string) error {
	if len(args) == 0 {
		return usagef("chat: usage: presence USER...")
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	ps, err := c.SubscribePresence(ctx, args)
	if err != nil {
		return err
	}
	byUser := map[string]client.PresenceEvent{}
	for _, p := range ps {
		byUser[p.User] = p
	}
	users := slices.Clone(args)
	slices.Sort(users)
	for _, u := range slices.Compact(users) {
		p, ok := byUser[u]
		if !ok { // the server shows only conversation peers
			fmt.Fprintf(g.stdout, "%s\tunknown (not a conversation peer)\n", u)
			continue
		}
		state := "offline"
		if p.Online {
			state = "online"
		}
		last := ""
		if p.LastSeenMs > 0 {
			last = " last seen " + time.UnixMilli(p.LastSeenMs).Format(time.RFC3339)
		}
		fmt.Fprintf(g.stdout, "%s\t%s%s\n", p.User, state, last)
	}
	return nil
}

func chatPrivacy(ctx context.Context, g *chatGlobals, args []string) error {
	fs := flag.NewFlagSet("privacy", flag.ContinueOnError)
	fs.SetOutput(g.stderr)
	hide := fs.Bool("hide-last-seen", false, "show others your online state but no last-seen time")
	policy := fs.String("add-policy", "everyone", "who may add you to a group directly: everyone, or contacts (users you have a 1:1 conversation with; others' adds become invitations)")
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() != 0 {
		return usagef("chat: usage: privacy [--hide-last-seen=true|false] [--add-policy everyone|contacts]")
	}
	p := core.Privacy{HideLastSeen: *hide}
	switch *policy {
	case "everyone":
		p.AddPolicy = pb.AddPolicy_ADD_POLICY_EVERYONE
	case "contacts":
		p.AddPolicy = pb.AddPolicy_ADD_POLICY_CONTACTS
	default:
		return usagef("chat: --add-policy must be everyone or contacts, not %q", *policy)
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetPrivacy(ctx, p); err != nil {
		return err
	}
	last := "shown"
	if p.HideLastSeen {
		last = "hidden"
	}
	fmt.Fprintf(g.stdout, "privacy: last seen %s, add policy %s\n", last, *policy)
	return nil
}

const interactiveHelp = `commands:
  /to @USER | /to CONV     choose where plain lines go
  /group CONV              same as /to CONV
  /create TITLE USER...    create a group and switch to it
  /add USER... | /remove USER... | /leave   change the current group
  /promote USER... | /demote USER... | /title TITLE...   admin rights and title (admins)
  /accept | /decline       answer an invitation to the current group
  /info                    the current group's members, admins (*) and invitations
  /history                 show the current conversation's local history
  /presence USER...        subscribe to presence
  /convs                   list conversations
  /safety USER             show the safety number with USER
  /trust USER              accept USER's changed identity (sending to USER is blocked until then)
  /quit                    leave (also end of input)
plain lines are sent to the current conversation.
marks: … queued, ✓ sent, ✓✓ delivered, ✓✓ read
`

// chatInteractive is the line-based UI. The goroutine that reads input
// ends at end of input; when the context ends first it stays blocked in
// Read until the process exits (an io.Reader cannot be interrupted).
func chatInteractive(ctx context.Context, g *chatGlobals) error {
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	me, _ := c.Device()
	out := g.stdout
	fmt.Fprintf(out, "chatmesh: you are %s. /help for commands.\n", me)

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(g.stdin)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()

	// Read markers for displayed messages go out from one goroutine, so a
	// slow confirmation never stalls the screen; if it falls behind, older
	// markers are skipped (a later marker covers them).
	reads := make(chan *pb.Message, 64)
	var readers sync.WaitGroup
	defer readers.Wait()
	defer close(reads)
	readers.Go(func() {
		for m := range reads {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = c.MarkRead(rctx, m.GetConvId(), m.GetSeq())
			cancel()
		}
	})

	conv := ""
	pending := map[string]string{} // client msg id -> conv
	for {
		select {
		case <-ctx.Done():
			return nil
		case line, ok := <-lines:
			if !ok {
				// End of input: show the outcome of what was typed, for up to 5 s.
				fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				for len(pending) > 0 {
					select {
					case ev := <-c.Events():
						interactiveEvent(c, me, out, ev, pending, reads)
					case <-fctx.Done():
						fmt.Fprintf(out, "… %d message(s) still in the outbox; they are sent next time\n", c.Outbox().Len())
						return nil
					}
				}
				return nil
			}
			quit, err := interactiveLine(ctx, c, me, out, line, &conv, pending)
			if err != nil {
				fmt.Fprintf(out, "! %v\n", err)
			}
			if quit {
				return nil
			}
		case ev := <-c.Events():
			interactiveEvent(c, me, out, ev, pending, reads)
		}
	}
}

func interactiveLine(ctx context.Context, c *client.Client, me core.DeviceKey, out io.Writer, line string, conv *string, pending map[string]string) (quit bool, err error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return false, nil
	}
	if !strings.HasPrefix(line, "/") {
		if *conv == "" {
			return false, errors.New("no conversation chosen: /to @user or /group g:...")
		}
		id, err := c.Send(ctx, *conv, []byte(line))
		if err != nil {
			return false, err
		}
		pending[id] = *conv
		fmt.Fprintf(out, "… [%s] %s\n", *conv, line)
		return false, nil
	}
	f := strings.Fields(line)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch f[0] {
	case "/quit", "/exit":
		return true, nil
	case "/help":
		fmt.Fprint(out, interactiveHelp)
	case "/to", "/group":
		if len(f) != 2 {
			return false, errors.New("usage: /to @user | /to CONV")
		}
		cv, err := resolveConv(me, f[1])
		if err != nil {
			return false, err
		}
		*conv = cv
		fmt.Fprintf(out, "→ now talking in %s\n", cv)
	case "/create":
		if len(f) < 2 {
			return false, errors.New("usage: /create TITLE USER...")
		}
		info, err := c.CreateGroup(rctx, f[1], f[2:])
		if err != nil {
			return false, err
		}
		*conv = info.GetConvId()
		fmt.Fprintf(out, "→ created %s (%s); now talking there\n", info.GetConvId(), strings.Join(info.GetMembers(), ", "))
	case "/add", "/remove", "/leave", "/promote", "/demote", "/title", "/accept", "/decline", "/info":
		if !core.IsGroupID(*conv) {
			return false, errors.New("no group chosen: /group g:...")
		}
		gc, err := parseGroupArgs(append([]string{strings.TrimPrefix(f[0], "/"), *conv}, f[1:]...))
		if err != nil {
			return false, err
		}
		info, err := gc.run(rctx, c)
		if err != nil {
			return false, err
		}
		fmt.Fprintf(out, "→ %s\n", formatGroupInfo(info))
	case "/history":
		if *conv == "" {
			return false, errors.New("no conversation chosen")
		}
		msgs, err := c.History(*conv, 0, 0)
		if err != nil {
			return false, err
		}
		_ = printHistory(ctx, c, out, false, msgs)
	case "/presence":
		ps, err := c.SubscribePresence(rctx, f[1:])
		if err != nil {
			return false, err
		}
		shown := map[string]bool{}
		for _, p := range ps {
			printPresence(out, p)
			shown[p.User] = true
		}
		for _, u := range f[1:] {
			if !shown[u] {
				fmt.Fprintf(out, "• %s: unknown (not a conversation peer)\n", u)
				shown[u] = true
			}
		}
	case "/safety":
		if len(f) != 2 {
			return false, errors.New("usage: /safety USER")
		}
		n, err := c.SafetyNumber(rctx, strings.TrimPrefix(f[1], "@"))
		if err != nil {
			return false, err
		}
		fmt.Fprintf(out, "safety number with %s:\n  %s\n", f[1], n)
	case "/trust":
		if len(f) != 2 {
			return false, errors.New("usage: /trust USER")
		}
		if err := c.TrustIdentity(strings.TrimPrefix(f[1], "@")); err != nil {
			return false, err
		}
		fmt.Fprintf(out, "→ trusted the current identity of %s; sending unblocked\n", f[1])
	case "/convs":
		infos, err := c.ListConversations(rctx)
		if err != nil {
			return false, err
		}
		for _, in := range infos {
			mark := ""
			if slices.Contains(in.GetInvited(), me.User) {
				mark = " [invited: /group " + in.GetConvId() + " then /accept or /decline]"
			}
			fmt.Fprintf(out, "  %s %q (%s) head %d%s\n", in.GetConvId(), in.GetTitle(), strings.Join(in.GetMembers(), ", "), in.GetHeadSeq(), mark)
		}
	default:
		return false, fmt.Errorf("unknown command %s (/help)", f[0])
	}
	return false, nil
}

func printPresence(out io.Writer, p client.PresenceEvent) {
	if p.Online {
		fmt.Fprintf(out, "• %s is online\n", p.User)
		return
	}
	last := ""
	if p.LastSeenMs > 0 {
		last = ", last seen " + time.UnixMilli(p.LastSeenMs).Format("15:04:05")
	}
	fmt.Fprintf(out, "• %s is offline%s\n", p.User, last)
}

func interactiveEvent(c *client.Client, me core.DeviceKey, out io.Writer, ev client.Event, pending map[string]string, reads chan<- *pb.Message) {
	switch e := ev.(type) {
	case client.MessageEvent:
		// Shown (or, for our own, already shown when typed): commit.
		defer func() { _ = c.Commit(e.Conv(), e.Seq()) }()
		if e.From() == me {
			return // our own message, already shown when typed
		}
		em := &emitter{w: out, me: me}
		_ = em.message(e.Message, e.Body, e.OpenErr)
		if gch, ok := e.GroupChange(); ok && gch.InvitesUser(me.User) {
			fmt.Fprintf(out, "  → you are invited to %s: /group %s, then /accept or /decline\n", gch.Conv, gch.Conv)
		}
		if e.From().User != me.User && e.Message.GetKind() == pb.MessageKind_MESSAGE_KIND_USER {
			select {
			case reads <- e.Message:
			default:
			}
		}
	case client.SendAckedEvent:
		delete(pending, e.ClientMsgID)
		fmt.Fprintf(out, "  ✓ sent [%s #%d]\n", e.Conv, e.Seq)
	case client.SendFailedEvent:
		delete(pending, e.ClientMsgID)
		fmt.Fprintf(out, "  ✗ not sent [%s]: %v\n", e.Conv, e.Err)
	case client.ReceiptEvent:
		if e.From.User == me.User {
			return
		}
		mark := "✓✓ delivered to"
		if e.Kind == pb.ReceiptKind_RECEIPT_KIND_READ {
			mark = "✓✓ read by"
		}
		fmt.Fprintf(out, "  %s %s [%s up to #%d]\n", mark, e.From, e.Conv, e.Seq)
	case client.PresenceEvent:
		printPresence(out, e)
	case client.TypingEvent:
		if e.From.User != me.User && e.Typing {
			fmt.Fprintf(out, "  %s is typing in %s…\n", e.From.User, e.Conv)
		}
	case client.IdentityChangedEvent:
		fmt.Fprintf(out, "⚠ the identity of %s has changed (new device, reinstall — or an attack).\n"+
			"  Sending to %s is blocked. Compare the safety number (/safety %s) with them,\n"+
			"  then accept it with /trust %s.\n", e.User, e.User, e.User, e.User)
	case client.ConnectedEvent:
		fmt.Fprintf(out, "• connected to %s (%s)\n", e.Hello.GetEdgeId(), e.Hello.GetRegion())
	case client.DisconnectedEvent:
		fmt.Fprintf(out, "• disconnected (%v); reconnecting\n", e.Err)
	}
}

// printHistory prints stored or fetched entries with their opened bodies
// (key-distribution entries are skipped; an entry that does not open is
// shown with the reason).
func printHistory(ctx context.Context, c *client.Client, w io.Writer, asJSON bool, msgs []*pb.Message) error {
	me, _ := c.Device()
	em := &emitter{w: w, json: asJSON, me: me}
	for _, m := range msgs {
		var body []byte
		var openErr error
		if m.GetKind() == pb.MessageKind_MESSAGE_KIND_USER {
			body, openErr = c.OpenMessage(ctx, m)
			if errors.Is(openErr, e2ee.ErrControlMessage) {
				continue
			}
		}
		if err := em.message(m, body, openErr); err != nil {
			return err
		}
	}
	return nil
}

// formatSafety renders a safety number as 12 groups of 5 digits in three lines.
func formatSafety(n string) string {
	g := strings.Fields(n)
	var lines []string
	for i := 0; i < len(g); i += 4 {
		lines = append(lines, strings.Join(g[i:min(i+4, len(g))], " "))
	}
	return strings.Join(lines, "\n")
}

func chatSafety(ctx context.Context, g *chatGlobals, args []string) error {
	if len(args) != 1 {
		return usagef("chat: usage: safety USER")
	}
	user := strings.TrimPrefix(args[0], "@")
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := g.connected(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := waitUp(ctx, c); err != nil {
		return err
	}
	n, err := c.SafetyNumber(ctx, user)
	if err != nil {
		return err
	}
	if c.IdentityChanged(user) {
		fmt.Fprintf(g.stdout, "⚠ %s's identity changed; this is the NEW safety number (accept with `trust %s`):\n", user, user)
	}
	fmt.Fprintln(g.stdout, formatSafety(n))
	return nil
}

func chatTrust(ctx context.Context, g *chatGlobals, args []string) error {
	if len(args) != 1 {
		return usagef("chat: usage: trust USER")
	}
	user := strings.TrimPrefix(args[0], "@")
	c, err := g.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if !c.IdentityChanged(user) {
		fmt.Fprintf(g.stdout, "no identity change of %s to accept\n", user)
		return nil
	}
	if err := c.TrustIdentity(user); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "trusted the new identity of %s; sending unblocked\n", user)
	return nil
}
