package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/quic-go/webtransport-go"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// Transport paths on an edge.
const (
	WebSocketPath    = "/v1/ws"
	WebTransportPath = "/v1/wt"
)

// closeCodeBase is added to a pb.ErrorCode to form the WebSocket close
// status an edge uses to reject a connection.
const closeCodeBase = 4000

// DialOptions configures Dial.
type DialOptions struct {
	// CertHash pins the SHA-256 hash of the edge's TLS leaf certificate
	// (like WebTransport's serverCertificateHashes), for dev edges with
	// self-signed certificates. With a pin the certificate chain is not
	// verified against system roots; without one it is.
	CertHash []byte
}

// Dial opens a message transport to an edge URL. The scheme selects it:
// ws:// and wss:// dial WebSocket (path /v1/ws when the URL has none),
// https:// dials WebTransport (path /v1/wt when the URL has none).
// ctx bounds dialing only.
func Dial(ctx context.Context, edge string, opt DialOptions) (noiseconn.MsgConn, error) {
	u, err := url.Parse(edge)
	if err != nil {
		return nil, fmt.Errorf("%w: edge url %q: %w", ErrDial, edge, err)
	}
	switch u.Scheme {
	case "ws", "wss":
		if u.Path == "" || u.Path == "/" {
			u.Path = WebSocketPath
		}
		return dialWebSocket(ctx, u.String(), opt)
	case "https":
		if u.Path == "" || u.Path == "/" {
			u.Path = WebTransportPath
		}
		return dialWebTransport(ctx, u.String(), opt)
	default:
		return nil, fmt.Errorf("%w: edge url %q: scheme must be ws, wss or https", ErrDial, edge)
	}
}

// tlsConfig returns a TLS config that pins the leaf certificate hash when given.
func tlsConfig(hash []byte) *tls.Config {
	if len(hash) == 0 {
		return &tls.Config{MinVersion: tls.VersionTLS13}
	}
	want := bytes.Clone(hash)
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no server certificate")
			}
			got := sha256.Sum256(raw[0])
			if !bytes.Equal(got[:], want) {
				return fmt.Errorf("server certificate hash %x does not match the pinned hash", got[:])
			}
			return nil
		},
	}
}

// wireCloseError converts an edge's rejection close code into a
// *core.WireError (or returns nil).
func wireCloseError(code int64, reason string) error {
	if code < closeCodeBase || code > closeCodeBase+1000 {
		return nil
	}
	return &core.WireError{Code: pb.ErrorCode(code - closeCodeBase), Detail: reason}
}

// ---------------------------------------------------------------- WebSocket

type wsConn struct{ c *websocket.Conn }

func dialWebSocket(ctx context.Context, u string, opt DialOptions) (noiseconn.MsgConn, error) {
	dopt := &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled}
	if len(opt.CertHash) > 0 {
		dopt.HTTPClient = httpClientWithTLS(tlsConfig(opt.CertHash))
	}
	c, _, err := websocket.Dial(ctx, u, dopt)
	if err != nil {
		return nil, fmt.Errorf("%w: websocket %s: %w", ErrDial, u, err)
	}
	c.SetReadLimit(noiseconn.MaxMessage + 16)
	return &wsConn{c: c}, nil
}

func (w *wsConn) ReadMessage(ctx context.Context) ([]byte, error) {
	typ, b, err := w.c.Read(ctx)
	if err != nil {
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			if we := wireCloseError(int64(ce.Code), ce.Reason); we != nil {
				return nil, fmt.Errorf("client: websocket closed: %w", we)
			}
		}
		return nil, fmt.Errorf("client: websocket read: %w", err)
	}
	if typ != websocket.MessageBinary {
		return nil, fmt.Errorf("client: websocket: unexpected text message")
	}
	return b, nil
}

func (w *wsConn) WriteMessage(ctx context.Context, b []byte) error {
	if err := w.c.Write(ctx, websocket.MessageBinary, b); err != nil {
		return fmt.Errorf("client: websocket write: %w", err)
	}
	return nil
}

func (w *wsConn) Close() error {
	// A close handshake can take up to 5 s when the peer is gone; the
	// session has nothing left to say, so close the socket now.
	_ = w.c.Close(websocket.StatusNormalClosure, "")
	return nil
}

// ---------------------------------------------------------------- WebTransport

type wtConn struct {
	sess *webtransport.Session
	str  *webtransport.Stream
	tr   *webtransport.Transport
	r    *bufio.Reader

	wmu       sync.Mutex
	closeOnce sync.Once
}

func dialWebTransport(ctx context.Context, u string, opt DialOptions) (noiseconn.MsgConn, error) {
	tr := &webtransport.Transport{TLSClientConfig: tlsConfig(opt.CertHash)}
	_, sess, err := tr.Dial(ctx, u, nil)
	if err != nil {
		_ = tr.Close()
		return nil, fmt.Errorf("%w: webtransport %s: %w", ErrDial, u, err)
	}
	str, err := sess.OpenStreamSync(ctx)
	if err != nil {
		_ = sess.CloseWithError(0, "")
		_ = tr.Close()
		return nil, fmt.Errorf("%w: webtransport %s: open stream: %w", ErrDial, u, wtError(err))
	}
	return &wtConn{sess: sess, str: str, tr: tr, r: bufio.NewReaderSize(str, 16<<10)}, nil
}

// wtError turns a session closed with an error code into a *core.WireError.
func wtError(err error) error {
	var se *webtransport.SessionError
	if errors.As(err, &se) && se.Remote && se.ErrorCode != 0 {
		return fmt.Errorf("%w (%w)", &core.WireError{Code: pb.ErrorCode(se.ErrorCode), Detail: se.Message}, err)
	}
	return err
}

// withDeadline makes a blocking stream call respect ctx by moving the
// stream deadline into the past when ctx ends.
func withDeadline(ctx context.Context, set func(time.Time) error) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		_ = set(dl)
	} else {
		_ = set(time.Time{})
	}
	return context.AfterFunc(ctx, func() { _ = set(time.Unix(1, 0)) })
}

func (w *wtConn) ReadMessage(ctx context.Context) ([]byte, error) {
	stop := withDeadline(ctx, w.str.SetReadDeadline)
	defer stop()
	var hdr [2]byte
	if _, err := io.ReadFull(w.r, hdr[:]); err != nil {
		return nil, w.readErr(ctx, err)
	}
	b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(w.r, b); err != nil {
		return nil, w.readErr(ctx, err)
	}
	return b, nil
}

func (w *wtConn) readErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("client: webtransport read: %w", ctx.Err())
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		// The edge may have closed the session with a code just after the stream.
		select {
		case <-w.sess.Context().Done():
			err = context.Cause(w.sess.Context())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("client: webtransport read: %w", wtError(err))
}

func (w *wtConn) WriteMessage(ctx context.Context, b []byte) error {
	if len(b) > 0xffff {
		return fmt.Errorf("client: webtransport write: %w", noiseconn.ErrTooLarge)
	}
	w.wmu.Lock()
	defer w.wmu.Unlock()
	stop := withDeadline(ctx, w.str.SetWriteDeadline)
	defer stop()
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	if _, err := w.str.Write(buf); err != nil {
		return fmt.Errorf("client: webtransport write: %w", wtError(err))
	}
	return nil
}

func (w *wtConn) Close() error {
	w.closeOnce.Do(func() {
		_ = w.str.Close()
		_ = w.sess.CloseWithError(0, "")
		_ = w.tr.Close()
	})
	return nil
}

func httpClientWithTLS(cfg *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false}}
}
