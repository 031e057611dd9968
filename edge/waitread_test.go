package edge_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
	"github.com/chatmesh/chatmesh/edge"
)

// rawWS is a minimal WebSocket client over a plain TCP connection whose
// WriteMessages puts several messages into one socket write, as a client
// that pipelines its frames does.
type rawWS struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRawWS(t *testing.T, wsURL string) *rawWS {
	t.Helper()
	u, err := url.Parse(wsURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", u.Path, u.Host, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	return &rawWS{c: c, br: br}
}

func (w *rawWS) frame(b []byte) []byte {
	out := []byte{0x82} // FIN, binary
	switch n := len(b); {
	case n < 126:
		out = append(out, 0x80|byte(n))
	case n < 1<<16:
		out = append(out, 0x80|126, byte(n>>8), byte(n))
	default:
		out = append(out, 0x80|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	out = append(out, mask...)
	for i, c := range b {
		out = append(out, c^mask[i%4])
	}
	return out
}

func (w *rawWS) WriteMessage(_ context.Context, b []byte) error {
	_, err := w.c.Write(w.frame(b))
	return err
}

// WriteMessages writes every message with one socket write.
func (w *rawWS) WriteMessages(_ context.Context, msgs [][]byte) error {
	var all []byte
	for _, m := range msgs {
		all = append(all, w.frame(m)...)
	}
	_, err := w.c.Write(all)
	return err
}

func (w *rawWS) ReadMessage(ctx context.Context) ([]byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = w.c.SetReadDeadline(dl)
	}
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return nil, err
	}
	if h[0]&0x0f == 0x8 {
		return nil, errors.New("close frame")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(w.br, l[:]); err != nil {
			return nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(w.br, l[:]); err != nil {
			return nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	if n > 1<<20 {
		return nil, errors.New("frame too large")
	}
	b := make([]byte, n)
	_, err := io.ReadFull(w.br, b)
	return b, err
}

func (w *rawWS) Close() error { return w.c.Close() }

// TestPipelinedFramesInOneWrite: several frames that reach the edge in
// one TCP segment are all answered. The edge reads them into its buffer
// at once; an idle session's wait for the socket (which then has nothing
// more) must not hold back the ones already buffered.
func TestPipelinedFramesInOneWrite(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.WTAddr = "" })
	ws := dialRawWS(t, v.e.WSURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := noiseconn.Client(ctx, ws, noiseconn.ClientConfig{Static: newKey(t), Payload: clientHello(nil), ServerStatic: v.e.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		const n = 6
		var batch [][]byte
		for i := range n {
			b, err := proto.Marshal(&pb.ClientFrame{ReqId: uint64(round*n + i + 1), Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{ClientTimeMs: int64(i)}}})
			if err != nil {
				t.Fatal(err)
			}
			batch = append(batch, b)
		}
		if err := nc.SendBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			b, err := nc.Recv(rctx)
			rcancel()
			if err != nil {
				t.Fatalf("round %d: pong %d of %d: %v", round, i+1, n, err)
			}
			var f pb.ServerFrame
			if err := proto.Unmarshal(b, &f); err != nil {
				t.Fatal(err)
			}
			if got, want := f.GetResponse().GetReqId(), uint64(round*n+i+1); got != want || f.GetResponse().GetPong() == nil {
				t.Fatalf("round %d: answer %d: %v, want the pong to %d", round, i, &f, want)
			}
		}
		time.Sleep(50 * time.Millisecond) // idle: the session waits on the socket again
	}
}

// TestPipelinedLargeFramesInOneWrite: frames far larger than the edge's
// 512-byte read buffer, at the frame limit and above it, pipelined in one
// socket write with small ones behind them, are each answered (a pong, or
// FRAME_TOO_LARGE for the one above the limit) in order.
func TestPipelinedLargeFramesInOneWrite(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.WTAddr = "" })
	ws := dialRawWS(t, v.e.WSURL())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := noiseconn.Client(ctx, ws, noiseconn.ClientConfig{Static: newKey(t), Payload: clientHello(nil), ServerStatic: v.e.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	// A ping padded with an unknown field to n bytes in all.
	ping := func(id uint64, n int) []byte {
		b, err := proto.Marshal(&pb.ClientFrame{ReqId: id, Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{}}})
		if err != nil {
			t.Fatal(err)
		}
		if pad := n - len(b) - 6; pad > 0 {
			b = protowire.AppendTag(b, 9999, protowire.BytesType)
			b = protowire.AppendBytes(b, make([]byte, pad))
		}
		return b
	}
	limit := core.MaxClientFrameBytes
	sizes := []int{0, 600, 5000, limit - 64, 0, 0}
	if limit+100 <= noiseconn.MaxMessage-16 {
		sizes = append(sizes, limit+100, 0) // above the frame limit: FRAME_TOO_LARGE, then a small one
	}
	var batch [][]byte
	for i, n := range sizes {
		batch = append(batch, ping(uint64(i+1), n))
	}
	if err := nc.SendBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	for i, n := range sizes {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		b, err := nc.Recv(rctx)
		rcancel()
		if err != nil {
			t.Fatalf("answer %d of %d (frame of %d bytes): %v", i+1, len(sizes), n, err)
		}
		var f pb.ServerFrame
		if err := proto.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		r := f.GetResponse()
		if r.GetReqId() != uint64(i+1) {
			t.Fatalf("answer %d: %v, want req %d", i+1, &f, i+1)
		}
		if n > limit {
			if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE {
				t.Fatalf("frame of %d bytes: %v, want FRAME_TOO_LARGE", n, r)
			}
		} else if r.GetPong() == nil {
			t.Fatalf("frame of %d bytes: %v, want a pong", n, r)
		}
	}
}
