package edge_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/quic-go/webtransport-go"

	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/edge"
)

// TestConnectionLimitsBeforeUpgrade floods the WebSocket listener with
// idle TCP connections from two addresses, three times the per-IP accept
// limit each, half of them idling on a kept-alive HTTP connection after a
// request. The excess is closed at accept, every admitted one is closed
// once idle for HandshakeTimeout, and an honest client connects and chats
// during and after.
func TestConnectionLimitsBeforeUpgrade(t *testing.T) {
	const perIP, perAttacker = 5, 15
	v := newEnv(t, func(c *edge.Config) {
		c.MaxAcceptPerIP, c.MaxConns = perIP, 100
		c.HandshakeTimeout = 3 * time.Second
	})
	u, err := url.Parse(v.e.WSURL())
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	keptAlive := map[net.Conn]bool{}
	for _, src := range []string{"127.0.0.2", "127.0.0.3"} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		for i := range perAttacker {
			c, err := d.Dial("tcp", u.Host)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			conns = append(conns, c)
			if i%2 == 0 {
				// A request, then idle on the kept-alive connection (a write
				// to a connection closed at accept may fail; that is fine).
				_, _ = io.WriteString(c, "GET /nothing HTTP/1.1\r\nHost: edge\r\n\r\n")
				keptAlive[c] = true
			}
		}
	}
	waitFor(t, func() bool { return v.e.Stats().RejectedAtAccept == 2*(perAttacker-perIP) })
	if st := v.e.Stats(); st.OpenConns != 2*perIP {
		t.Fatalf("open connections %d, want %d", st.OpenConns, 2*perIP)
	}

	// During the flood an honest client from another address chats.
	honest, _ := v.registered("ws", "honest")
	honest.ping()

	// Every flooding connection ends: refused ones at once, admitted ones
	// (idle before or after a request) after HandshakeTimeout.
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err := io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection %d (kept alive %v) still open after 15 s", i, keptAlive[c])
		}
	}
	waitFor(t, func() bool { return v.e.Stats().OpenConns == 1 }) // the honest session
	honest.ping()
	// The flooders' addresses may connect again.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, func() bool { return v.e.Stats().OpenConns == 2 })
	if st := v.e.Stats(); st.RejectedAtAccept != 2*(perAttacker-perIP) || st.ListenerFailures != 0 {
		t.Fatalf("stats %+v", st)
	}
	again, _ := v.registered("ws", "honest2")
	again.ping()
}

// TestQUICConnectionLimit: QUIC connections over the per-IP accept limit
// are closed at accept; the admitted ones keep working.
func TestQUICConnectionLimit(t *testing.T) {
	v := newEnv(t, func(c *edge.Config) { c.MaxAcceptPerIP = 2 })
	a := v.connect("wt", newKey(t), nil)
	b := v.connect("wt", newKey(t), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := &webtransport.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer d.Close()
	if _, sess, err := d.Dial(ctx, v.e.WTURL(), nil); err == nil {
		// The session may be set up before the close arrives: it must end.
		if code := wtCode(t, sess); code == pb.ErrorCode_ERROR_CODE_OK {
			t.Fatal("third QUIC connection served")
		}
	}
	if st := v.e.Stats(); st.RejectedAtAccept != 1 || st.OpenConns != 2 {
		t.Fatalf("stats %+v", st)
	}
	a.ping()
	b.ping()
}
