package noiseconn

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

type vector struct {
	ProtocolName  string `json:"protocol_name"`
	InitPrologue  string `json:"init_prologue"`
	InitStatic    string `json:"init_static"`
	InitEphemeral string `json:"init_ephemeral"`
	RespPrologue  string `json:"resp_prologue"`
	RespStatic    string `json:"resp_static"`
	RespEphemeral string `json:"resp_ephemeral"`
	HandshakeHash string `json:"handshake_hash"`
	Messages      []struct {
		Payload    string `json:"payload"`
		Ciphertext string `json:"ciphertext"`
	} `json:"messages"`
}

func loadVector(t *testing.T, name string) vector {
	t.Helper()
	raw, err := os.ReadFile("testdata/cacophony.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Vectors []vector }
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	for _, v := range f.Vectors {
		if v.ProtocolName == name {
			return v
		}
	}
	t.Fatalf("no vector %s", name)
	return vector{}
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func keypairOf(priv []byte) Keypair {
	pub, err := PublicKey(priv)
	if err != nil {
		panic(err)
	}
	return Keypair{Private: priv, Public: pub}
}

// runXXVector drives this package's Client and Server (not flynn/noise
// directly) with the vector's keys, ephemerals, prologue and payloads over
// an in-memory pipe, and compares every message on the wire and the
// handshake hash with the vector.
func runXXVector(v vector) error { return runVector(v, false) }

// runVector runs an XX vector, or with ik an IK vector (client UseIK with
// the responder's static key pinned; the server detects IK itself).
func runVector(v vector, ik bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := newPipe()
	defer a.Close()
	m := v.Messages
	type res struct {
		c   *Conn
		err error
	}
	srvCh := make(chan res, 1)
	hsLen, clientPayload := 3, unhex(m[2].Payload)
	if ik {
		hsLen, clientPayload = 2, unhex(m[0].Payload)
	}
	go func() {
		c, err := server(ctx, b, ServerConfig{
			Static:  keypairOf(unhex(v.RespStatic)),
			Payload: unhex(m[1].Payload),
			Rand:    bytes.NewReader(unhex(v.RespEphemeral)),
		}, options{prologue: unhex(v.RespPrologue), allowFirst: !ik})
		srvCh <- res{c, err}
	}()
	ccfg := ClientConfig{
		Static:  keypairOf(unhex(v.InitStatic)),
		Payload: clientPayload,
		Rand:    bytes.NewReader(unhex(v.InitEphemeral)),
	}
	if ik {
		ccfg.UseIK, ccfg.ServerStatic = true, keypairOf(unhex(v.RespStatic)).Public
	}
	cli, err := client(ctx, a, ccfg, options{prologue: unhex(v.InitPrologue), firstPayload: unhex(m[0].Payload)})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	sr := <-srvCh
	if sr.err != nil {
		return fmt.Errorf("server: %w", sr.err)
	}
	srv := sr.c
	if !bytes.Equal(srv.PeerPayload(), clientPayload) || !bytes.Equal(cli.PeerPayload(), unhex(m[1].Payload)) {
		return errors.New("handshake payload mismatch")
	}
	if !bytes.Equal(cli.HandshakeHash(), unhex(v.HandshakeHash)) || !bytes.Equal(srv.HandshakeHash(), unhex(v.HandshakeHash)) {
		return fmt.Errorf("handshake hash %x, want %s", cli.HandshakeHash(), v.HandshakeHash)
	}
	if !bytes.Equal(srv.PeerStatic(), keypairOf(unhex(v.InitStatic)).Public) {
		return errors.New("server learned the wrong client key")
	}
	// Transport messages continue the alternation: even indexes are sent
	// by the initiator.
	for i := hsLen; i < len(m); i++ {
		from, to := srv, cli
		if i%2 == 0 {
			from, to = cli, srv
		}
		if err := from.Send(ctx, unhex(m[i].Payload)); err != nil {
			return fmt.Errorf("send %d: %w", i, err)
		}
		got, err := to.Recv(ctx)
		if err != nil {
			return fmt.Errorf("recv %d: %w", i, err)
		}
		if !bytes.Equal(got, unhex(m[i].Payload)) {
			return fmt.Errorf("message %d plaintext mismatch", i)
		}
	}
	wire := a.log.get()
	if len(wire) != len(m) {
		return fmt.Errorf("%d messages on the wire, want %d", len(wire), len(m))
	}
	for i := range m {
		if !bytes.Equal(wire[i], unhex(m[i].Ciphertext)) {
			return fmt.Errorf("message %d: wire %x, vector %s", i, wire[i], m[i].Ciphertext)
		}
	}
	return nil
}

func TestCacophonyXX(t *testing.T) {
	v := loadVector(t, ProtocolName)
	if len(v.Messages) < 6 {
		t.Fatalf("vector has %d messages", len(v.Messages))
	}
	if err := runXXVector(v); err != nil {
		t.Fatal(err)
	}
}

func TestCacophonyIK(t *testing.T) {
	v := loadVector(t, ProtocolNameIK)
	if err := runVector(v, true); err != nil {
		t.Fatal(err)
	}
	v.Messages = append(v.Messages[:0:0], v.Messages...)
	b := unhex(v.Messages[0].Ciphertext)
	b[50] ^= 1
	v.Messages[0].Ciphertext = hex.EncodeToString(b)
	if err := runVector(v, true); err == nil {
		t.Fatal("mutated IK vector passed")
	}
}

func TestIKHandshake(t *testing.T) {
	ck, sk := mustKeypair(t), mustKeypair(t)
	cli, srv, cerr, serr, a, _ := handshake(t,
		ClientConfig{Static: ck, Payload: []byte("hello"), ServerStatic: sk.Public, UseIK: true},
		ServerConfig{Static: sk, Payload: []byte("welcome")})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	if n := len(a.log.get()); n != 2 {
		t.Fatalf("IK took %d messages", n)
	}
	if !bytes.Equal(srv.PeerStatic(), ck.Public) || string(srv.PeerPayload()) != "hello" || string(cli.PeerPayload()) != "welcome" {
		t.Fatal("IK results wrong")
	}
	ctx := context.Background()
	if err := cli.Send(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got, err := srv.Recv(ctx); err != nil || string(got) != "x" {
		t.Fatal(got, err)
	}
	// A wrong pin: the server cannot decrypt message 1.
	_, _, cerr, serr, _, _ = handshake(t,
		ClientConfig{Static: ck, ServerStatic: mustKeypair(t).Public, UseIK: true},
		ServerConfig{Static: sk})
	if !errors.Is(serr, ErrHandshake) || !errors.Is(cerr, ErrHandshake) {
		t.Fatalf("wrong IK pin: server %v, client %v", serr, cerr)
	}
	// IK without a pin is refused locally.
	_, _, cerr, _, _, _ = handshake(t, ClientConfig{Static: ck, UseIK: true}, ServerConfig{Static: sk})
	if !errors.Is(cerr, ErrHandshake) {
		t.Fatalf("IK without pin: %v", cerr)
	}
}

// TestCacophonyXXCanFail shows the vector comparison is sensitive: one
// flipped bit anywhere in the expected data makes it fail.
func TestCacophonyXXCanFail(t *testing.T) {
	base := loadVector(t, ProtocolName)
	flip := func(s string, i int) string {
		b := unhex(s)
		b[i%len(b)] ^= 0x01
		return hex.EncodeToString(b)
	}
	cases := map[string]func(v *vector){
		"ciphertext of message 1": func(v *vector) { v.Messages[1].Ciphertext = flip(v.Messages[1].Ciphertext, 40) },
		"ciphertext of message 5": func(v *vector) { v.Messages[5].Ciphertext = flip(v.Messages[5].Ciphertext, 3) },
		"handshake hash":          func(v *vector) { v.HandshakeHash = flip(v.HandshakeHash, 0) },
		"initiator ephemeral":     func(v *vector) { v.InitEphemeral = flip(v.InitEphemeral, 7) },
		"responder prologue":      func(v *vector) { v.RespPrologue = flip(v.RespPrologue, 0) },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			v := base
			v.Messages = append(v.Messages[:0:0], base.Messages...)
			mutate(&v)
			if err := runXXVector(v); err == nil {
				t.Fatal("mutated vector passed")
			}
		})
	}
}

func mustKeypair(t testing.TB) Keypair {
	t.Helper()
	k, err := GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// handshake runs Client and Server over a fresh pipe.
func handshake(t *testing.T, ccfg ClientConfig, scfg ServerConfig) (cli, srv *Conn, cerr, serr error, a, b *pipeEnd) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, b = newPipe()
	t.Cleanup(func() { a.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv, serr = Server(ctx, b, scfg)
		if serr != nil {
			b.Close()
		}
	}()
	cli, cerr = Client(ctx, a, ccfg)
	if cerr != nil {
		a.Close()
	}
	<-done
	return
}

func TestHandshakeAndTransport(t *testing.T) {
	ck, sk := mustKeypair(t), mustKeypair(t)
	cli, srv, cerr, serr, _, _ := handshake(t,
		ClientConfig{Static: ck, Payload: []byte("hello from client"), ServerStatic: sk.Public},
		ServerConfig{Static: sk, Payload: []byte("hello from server")})
	if cerr != nil || serr != nil {
		t.Fatalf("client %v, server %v", cerr, serr)
	}
	if !bytes.Equal(cli.PeerStatic(), sk.Public) || !bytes.Equal(srv.PeerStatic(), ck.Public) {
		t.Fatal("peer static keys wrong")
	}
	if string(srv.PeerPayload()) != "hello from client" || string(cli.PeerPayload()) != "hello from server" {
		t.Fatal("payloads wrong")
	}
	if len(cli.HandshakeHash()) != 32 || !bytes.Equal(cli.HandshakeHash(), srv.HandshakeHash()) {
		t.Fatal("handshake hashes differ")
	}
	ctx := context.Background()
	for _, n := range []int{0, 1, 1000, MaxPlaintext} {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		if err := cli.Send(ctx, msg); err != nil {
			t.Fatal(err)
		}
		got, err := srv.Recv(ctx)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("size %d: err %v, equal %v", n, err, bytes.Equal(got, msg))
		}
	}
	if err := srv.Send(ctx, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if got, err := cli.Recv(ctx); err != nil || string(got) != "pong" {
		t.Fatalf("got %q, %v", got, err)
	}
	if err := cli.Send(ctx, make([]byte, MaxPlaintext+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized send: %v", err)
	}
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cli.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := cli.Send(ctx, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
}

func TestConcurrentSend(t *testing.T) {
	ck, sk := mustKeypair(t), mustKeypair(t)
	cli, srv, cerr, serr, _, _ := handshake(t, ClientConfig{Static: ck}, ServerConfig{Static: sk})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	ctx := context.Background()
	const senders, each = 4, 10 // pipe buffers 64 messages
	errs := make(chan error, senders)
	for i := range senders {
		go func() {
			for j := range each {
				if err := cli.Send(ctx, []byte{byte(i), byte(j)}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range senders {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for range senders * each {
		if _, err := srv.Recv(ctx); err != nil {
			t.Fatal("concurrent sends broke nonce order:", err)
		}
	}
}

func TestTamperedTransportRejected(t *testing.T) {
	ck, sk := mustKeypair(t), mustKeypair(t)
	cli, srv, cerr, serr, a, _ := handshake(t, ClientConfig{Static: ck}, ServerConfig{Static: sk})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	ctx := context.Background()
	a.tamper = func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }
	if err := cli.Send(ctx, []byte("attack at dawn")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Recv(ctx); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("tampered message: %v", err)
	}
	a.tamper = nil
	if err := cli.Send(ctx, []byte("genuine")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Recv(ctx); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("receive direction must stay dead after a failure, got %v", err)
	}
}

func TestReplayedTransportRejected(t *testing.T) {
	ck, sk := mustKeypair(t), mustKeypair(t)
	cli, srv, cerr, serr, a, _ := handshake(t, ClientConfig{Static: ck}, ServerConfig{Static: sk})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	ctx := context.Background()
	if err := cli.Send(ctx, []byte("once")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	wire := a.log.get()
	a.out <- wire[len(wire)-1] // replay the transport message
	if _, err := srv.Recv(ctx); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("replayed transport message: %v", err)
	}
}

// TestReplayedMessage3Rejected records a genuine handshake, then replays the
// client's messages 1 and 3 against a fresh server: message 3 was bound to
// the old server ephemeral and must fail, so an eavesdropper cannot
// impersonate the device.
func TestReplayedMessage3Rejected(t *testing.T) {
	ck, sk := mustKeypair(t), mustKeypair(t)
	_, _, cerr, serr, a, _ := handshake(t, ClientConfig{Static: ck, Payload: []byte("hi")}, ServerConfig{Static: sk})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	wire := a.log.get()
	m1, m3 := wire[0], wire[2]

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	atk, srvEnd := newPipe()
	defer atk.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := Server(ctx, srvEnd, ServerConfig{Static: sk})
		errc <- err
	}()
	if err := atk.WriteMessage(ctx, m1); err != nil {
		t.Fatal(err)
	}
	if _, err := atk.ReadMessage(ctx); err != nil {
		t.Fatal(err)
	}
	if err := atk.WriteMessage(ctx, m3); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrHandshake) {
		t.Fatalf("replayed message 3 accepted: %v", err)
	}
}

func TestPinMismatchRejected(t *testing.T) {
	ck, sk, other := mustKeypair(t), mustKeypair(t), mustKeypair(t)
	_, _, cerr, _, a, _ := handshake(t, ClientConfig{Static: ck, ServerStatic: other.Public}, ServerConfig{Static: sk})
	if !errors.Is(cerr, ErrHandshake) {
		t.Fatalf("pin mismatch: %v", cerr)
	}
	if n := len(a.log.get()); n != 2 {
		t.Fatalf("client must abort before message 3 (revealing its identity); %d messages on wire", n)
	}
}

func TestGarbageFirstMessageRejected(t *testing.T) {
	sk := mustKeypair(t)
	for name, m1 := range map[string][]byte{
		"empty":           {},
		"short":           []byte("GET / HTTP/1.1"),
		"with payload":    make([]byte, 64),
		"low-order point": make([]byte, 32), // all-zero X25519 point: DH fails in message 2
		"huge":            make([]byte, MaxMessage+1),
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			atk, srvEnd := newPipe()
			defer atk.Close()
			if err := atk.WriteMessage(ctx, m1); err != nil {
				t.Fatal(err)
			}
			if _, err := Server(ctx, srvEnd, ServerConfig{Static: sk}); !errors.Is(err, ErrHandshake) {
				t.Fatalf("garbage accepted: %v", err)
			}
		})
	}
}

func TestTamperedHandshakeRejected(t *testing.T) {
	ck, sk := mustKeypair(t), mustKeypair(t)
	// Flip a bit in message 2 (server -> client): the client must fail.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, b := newPipe()
	defer a.Close()
	b.tamper = func(m []byte) []byte { m[40] ^= 1; return m }
	go func() { _, _ = Server(ctx, b, ServerConfig{Static: sk}) }()
	if _, err := Client(ctx, a, ClientConfig{Static: ck}); !errors.Is(err, ErrHandshake) {
		t.Fatalf("tampered message 2 accepted: %v", err)
	}
	// Flip a bit in message 3 (client -> server): the server must fail.
	a2, b2 := newPipe()
	defer a2.Close()
	n := 0
	a2.tamper = func(m []byte) []byte {
		n++
		if n == 2 {
			m[len(m)-5] ^= 1
		}
		return m
	}
	errc := make(chan error, 1)
	go func() { _, err := Server(ctx, b2, ServerConfig{Static: sk}); errc <- err }()
	_, _ = Client(ctx, a2, ClientConfig{Static: ck})
	if err := <-errc; !errors.Is(err, ErrHandshake) {
		t.Fatalf("tampered message 3 accepted: %v", err)
	}
}

func TestBadKeys(t *testing.T) {
	ctx := context.Background()
	a, _ := newPipe()
	defer a.Close()
	if _, err := Client(ctx, a, ClientConfig{}); !errors.Is(err, ErrHandshake) {
		t.Fatalf("zero keypair: %v", err)
	}
	if _, err := Client(ctx, a, ClientConfig{Static: mustKeypair(t), ServerStatic: []byte{1}}); !errors.Is(err, ErrHandshake) {
		t.Fatalf("short pin: %v", err)
	}
	if _, err := Server(ctx, a, ServerConfig{}); !errors.Is(err, ErrHandshake) {
		t.Fatalf("zero server keypair: %v", err)
	}
}

func TestHandshakeContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	_, b := newPipe()
	defer b.Close()
	errc := make(chan error, 1)
	go func() { _, err := Server(ctx, b, ServerConfig{Static: mustKeypair(t)}); errc <- err }()
	cancel()
	if err := <-errc; !errors.Is(err, ErrHandshake) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: %v", err)
	}
}

func BenchmarkHandshake(b *testing.B) {
	ck, sk := mustKeypair(b), mustKeypair(b)
	ctx := context.Background()
	for b.Loop() {
		x, y := newPipe()
		errc := make(chan error, 1)
		go func() { _, err := Server(ctx, y, ServerConfig{Static: sk}); errc <- err }()
		if _, err := Client(ctx, x, ClientConfig{Static: ck}); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		x.Close()
	}
}

func BenchmarkTransport1KiB(b *testing.B) {
	ck, sk := mustKeypair(b), mustKeypair(b)
	ctx := context.Background()
	x, y := newPipe()
	defer x.Close()
	errc := make(chan error, 1)
	var srv *Conn
	go func() { var err error; srv, err = Server(ctx, y, ServerConfig{Static: sk}); errc <- err }()
	cli, err := Client(ctx, x, ClientConfig{Static: ck})
	if err != nil || <-errc != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 1024)
	b.SetBytes(1024)
	for b.Loop() {
		if err := cli.Send(ctx, msg); err != nil {
			b.Fatal(err)
		}
		if _, err := srv.Recv(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// batchPipe is a pipeEnd that is also a BatchWriter, counting batches.
type batchPipe struct {
	*pipeEnd
	batches int
}

func (b *batchPipe) WriteMessages(ctx context.Context, msgs [][]byte) error {
	b.batches++
	for _, m := range msgs {
		if err := b.WriteMessage(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// TestSendBatch: a batch arrives as one transport message per plaintext,
// in order, interleaving correctly with Send; a BatchWriter gets the batch
// in one call; an oversized plaintext sends nothing.
func TestSendBatch(t *testing.T) {
	for _, batching := range []bool{false, true} {
		ck, sk := mustKeypair(t), mustKeypair(t)
		cli, srv, cerr, serr, _, _ := handshake(t, ClientConfig{Static: ck}, ServerConfig{Static: sk})
		if cerr != nil || serr != nil {
			t.Fatal(cerr, serr)
		}
		var bp *batchPipe
		if batching {
			bp = &batchPipe{pipeEnd: srv.mc.(*pipeEnd)}
			srv.mc = bp
		}
		ctx := context.Background()
		want := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte{7}, MaxPlaintext), []byte("last")}
		if err := srv.Send(ctx, []byte("first")); err != nil {
			t.Fatal(err)
		}
		if err := srv.SendBatch(ctx, want); err != nil {
			t.Fatal(err)
		}
		if err := srv.SendBatch(ctx, [][]byte{[]byte("x"), make([]byte, MaxPlaintext+1)}); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("oversized batch: %v", err)
		}
		if err := srv.Send(ctx, []byte("after")); err != nil {
			t.Fatal(err)
		}
		for _, w := range append(append([][]byte{[]byte("first")}, want...), []byte("after")) {
			got, err := cli.Recv(ctx)
			if err != nil || !bytes.Equal(got, w) {
				t.Fatalf("batching %v: got %d bytes (%v), want %d", batching, len(got), err, len(w))
			}
		}
		if batching && bp.batches != 1 {
			t.Fatalf("%d batch writes, want 1", bp.batches)
		}
	}
}
