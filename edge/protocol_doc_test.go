package edge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

var updateProtocol = flag.Bool("update-protocol", false, "rewrite the test-vector section of ../PROTOCOL.md")

const (
	vecBegin = "<!-- BEGIN GENERATED VECTORS (edge/protocol_doc_test.go) -->"
	vecEnd   = "<!-- END GENERATED VECTORS -->"
)

// fixedKey derives a deterministic private key from a label.
func fixedKey(label string) []byte {
	h := sha256.Sum256([]byte("chatmesh test vector: " + label))
	return h[:]
}

func mustPair(t *testing.T, label string) noiseconn.Keypair {
	priv := fixedKey(label)
	pub, err := noiseconn.PublicKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return noiseconn.Keypair{Private: priv, Public: pub}
}

// tapConn records every message written through it.
type tapConn struct {
	*memConn
	log *[][]byte
}

func (c tapConn) WriteMessage(ctx context.Context, b []byte) error {
	*c.log = append(*c.log, bytes.Clone(b))
	return c.memConn.WriteMessage(ctx, b)
}

// protocolVectors runs the real handshake and one frame each way with
// fixed keys and ephemerals, and renders the Markdown section.
func protocolVectors(t *testing.T) string {
	cs, ce := mustPair(t, "client static"), mustPair(t, "client ephemeral")
	ss, se := mustPair(t, "server static"), mustPair(t, "server ephemeral")
	serverHello, _ := marshal(&pb.ServerHello{ProtocolVersion: 1, EdgeId: "e1", Region: "eu", MaxFrameBytes: core.MaxClientFrameBytes, MaxMessagesPerSecond: 50, MaxEnvelopeBytes: core.MaxEnvelopeBytes})
	clientHello, _ := marshal(&pb.ClientHello{ProtocolVersion: 1, ClientName: "example/1"})
	ping, _ := marshal(&pb.ClientFrame{ReqId: 1, Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{ClientTimeMs: 1767225600000}}})
	pong, _ := marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: &pb.Response{ReqId: 1,
		Body: &pb.Response_Pong{Pong: &pb.Pong{ClientTimeMs: 1767225600000, ServerTimeMs: 1767225600007}}}}})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srvEnd, cliEnd := memPipe()
	var wire [][]byte
	type res struct {
		c   *noiseconn.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := noiseconn.Server(ctx, tapConn{srvEnd, &wire}, noiseconn.ServerConfig{Static: ss, Payload: serverHello, Rand: bytes.NewReader(se.Private)})
		ch <- res{c, err}
	}()
	cli, err := noiseconn.Client(ctx, tapConn{cliEnd, &wire}, noiseconn.ClientConfig{Static: cs, Payload: clientHello, ServerStatic: ss.Public, Rand: bytes.NewReader(ce.Private)})
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	srv := r.c
	go func() { _ = cli.Send(ctx, ping) }()
	if got, err := srv.Recv(ctx); err != nil || !bytes.Equal(got, ping) {
		t.Fatal("ping did not arrive", err)
	}
	go func() { _ = srv.Send(ctx, pong) }()
	if got, err := cli.Recv(ctx); err != nil || !bytes.Equal(got, pong) {
		t.Fatal("pong did not arrive", err)
	}
	if len(wire) != 5 {
		t.Fatalf("%d messages", len(wire))
	}

	// The same keys and ephemerals with the one-round-trip IK handshake.
	srvEnd2, cliEnd2 := memPipe()
	var wireIK [][]byte
	go func() {
		c, err := noiseconn.Server(ctx, tapConn{srvEnd2, &wireIK}, noiseconn.ServerConfig{Static: ss, Payload: serverHello, Rand: bytes.NewReader(se.Private)})
		ch <- res{c, err}
	}()
	cliIK, err := noiseconn.Client(ctx, tapConn{cliEnd2, &wireIK}, noiseconn.ClientConfig{Static: cs, Payload: clientHello, ServerStatic: ss.Public, UseIK: true, Rand: bytes.NewReader(ce.Private)})
	if err != nil {
		t.Fatal(err)
	}
	r = <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	go func() { _ = cliIK.Send(ctx, ping) }()
	if got, err := r.c.Recv(ctx); err != nil || !bytes.Equal(got, ping) {
		t.Fatal("IK ping did not arrive", err)
	}
	if len(wireIK) != 3 {
		t.Fatalf("%d IK messages", len(wireIK))
	}

	var b strings.Builder
	row := func(name string, v []byte) { fmt.Fprintf(&b, "%-28s %s\n", name, hex.EncodeToString(v)) }
	b.WriteString(vecBegin + "\n```text\n")
	fmt.Fprintf(&b, "%-28s %s\n", "protocol", noiseconn.ProtocolName)
	row("prologue (\"chatmesh/1\")", []byte(noiseconn.Prologue))
	row("client static private", cs.Private)
	row("client static public", cs.Public)
	row("client ephemeral private", ce.Private)
	row("client ephemeral public", ce.Public)
	row("server static private", ss.Private)
	row("server static public", ss.Public)
	row("server ephemeral private", se.Private)
	row("server ephemeral public", se.Public)
	row("ServerHello payload", serverHello)
	row("ClientHello payload", clientHello)
	row("message 1 (-> e)", wire[0])
	row("message 2 (<- e,ee,s,es)", wire[1])
	row("message 3 (-> s,se)", wire[2])
	row("handshake hash", cli.HandshakeHash())
	row("ClientFrame ping plaintext", ping)
	row("ClientFrame ping on wire", wire[3])
	row("ServerFrame pong plaintext", pong)
	row("ServerFrame pong on wire", wire[4])
	b.WriteString("\n")
	fmt.Fprintf(&b, "%-28s %s\n", "IK protocol", noiseconn.ProtocolNameIK)
	row("IK message 1 (-> e,es,s,ss)", wireIK[0])
	row("IK message 2 (<- e,ee,se)", wireIK[1])
	row("IK handshake hash", cliIK.HandshakeHash())
	row("IK ClientFrame ping on wire", wireIK[2])
	b.WriteString("```\n" + vecEnd)
	return b.String()
}

// TestProtocolDocVectors regenerates the worked example of PROTOCOL.md and
// fails if the document differs, so it cannot go stale. Run with
// -update-protocol to rewrite it.
func TestProtocolDocVectors(t *testing.T) {
	want := protocolVectors(t)
	if again := protocolVectors(t); again != want {
		t.Fatal("vectors are not deterministic")
	}
	const path = "../PROTOCOL.md"
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i, j := bytes.Index(doc, []byte(vecBegin)), bytes.Index(doc, []byte(vecEnd))
	if i < 0 || j < i {
		t.Fatalf("%s lacks the vector markers", path)
	}
	got := string(doc[i : j+len(vecEnd)])
	if got == want {
		return
	}
	if *updateProtocol {
		out := append(append(append([]byte(nil), doc[:i]...), want...), doc[j+len(vecEnd):]...)
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("PROTOCOL.md vectors are stale; run go test ./edge -run TestProtocolDocVectors -update-protocol\nwant:\n%s", want)
}
