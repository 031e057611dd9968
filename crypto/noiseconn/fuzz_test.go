package noiseconn

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// fixedKey is a deterministic server key for the fuzz targets.
var fixedKey = keypairOf(bytes.Repeat([]byte{7}, 32))

// FuzzServerHandshake feeds arbitrary bytes as the client's messages 1 and
// 3. The server must fail with ErrHandshake (never panic or hang); the only
// way to succeed would be a valid message 3, which the fuzzer cannot forge.
func FuzzServerHandshake(f *testing.F) {
	f.Add(make([]byte, 32), []byte{})
	f.Add(bytes.Repeat([]byte{9}, 32), make([]byte, 64))
	f.Add([]byte("garbage"), []byte("more garbage"))
	f.Add(make([]byte, 96), []byte{}) // IK-sized message 1
	f.Add(bytes.Repeat([]byte{1}, 200), []byte{})
	f.Fuzz(func(t *testing.T, m1, m3 []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		atk, srvEnd := newPipe()
		defer atk.Close()
		atk.out <- m1
		atk.out <- m3
		_, err := Server(ctx, srvEnd, ServerConfig{Static: fixedKey})
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("server accepted forged handshake: %v", err)
		}
	})
}

// FuzzRecv feeds arbitrary bytes to an established Conn's Recv: it must
// return ErrDecrypt or ErrTooLarge, never a plaintext.
func FuzzRecv(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Add(make([]byte, 100))
	ck := keypairOf(bytes.Repeat([]byte{3}, 32))
	f.Fuzz(func(t *testing.T, msg []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a, b := newPipe()
		defer a.Close()
		errc := make(chan error, 1)
		var srv *Conn
		go func() { var err error; srv, err = Server(ctx, b, ServerConfig{Static: fixedKey}); errc <- err }()
		if _, err := Client(ctx, a, ClientConfig{Static: ck}); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		a.out <- msg
		pt, err := srv.Recv(ctx)
		if err == nil {
			t.Fatalf("forged transport message decrypted to %x", pt)
		}
		if !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
