package edge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/webtransport-go"

	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// transport is one client connection carrying Noise messages.
type transport interface {
	noiseconn.MsgConn
	// closeWith closes the connection with an error code: WebSocket close
	// status 4000+code, WebTransport session error code. It flushes what
	// was written before (best effort, bounded by a short grace period).
	closeWith(code pb.ErrorCode, reason string)
}

// ----------------------------------------------------------------- WebSocket

// wsConn adapts a coder/websocket connection: one binary message per Noise
// message. cork, when set, is the connection's write side (see leanWriter):
// WriteMessages then writes a batch of messages with one flush.
type wsConn struct {
	c    *websocket.Conn
	cork *corkWriter
	// idle, when set, waits on a shallow stack until the socket has bytes
	// to read (waitread_unix.go); nil for TLS and other connections.
	idle *idleWaiter
	// lr limits the message being read (ReadMessage is called by one
	// goroutine at a time): one per connection, not an allocation per
	// message.
	lr io.LimitedReader
}

// waitReadable blocks until the next ReadMessage has something to read
// (or the connection failed), without reading. A session calls it before
// each ReadMessage so that it sits idle in a few small frames instead of
// the library's read path, and the runtime can shrink its stack.
func (w *wsConn) waitReadable() {
	if w.idle != nil {
		w.idle.wait()
	}
}

var errTextMessage = errors.New("edge: text WebSocket message")

func (w *wsConn) ReadMessage(ctx context.Context) ([]byte, error) {
	typ, r, err := w.c.Reader(ctx)
	if err != nil {
		return nil, err
	}
	// The library's read limit is off; this reader enforces the Noise
	// limit itself so that an oversized message can be answered with a
	// Disconnect before the close.
	w.lr = io.LimitedReader{R: r, N: noiseconn.MaxMessage + 1}
	b, err := io.ReadAll(&w.lr)
	w.lr.R = nil
	if err != nil {
		return nil, err
	}
	if len(b) > noiseconn.MaxMessage {
		return nil, fmt.Errorf("edge: websocket message: %w", noiseconn.ErrTooLarge)
	}
	if typ != websocket.MessageBinary {
		return nil, errTextMessage
	}
	return b, nil
}

// WriteMessage writes one message (the handshake's, a Disconnect) with
// ctx handed to the library, so cancelling ctx ends the write.
func (w *wsConn) WriteMessage(ctx context.Context, b []byte) error {
	return w.c.Write(ctx, websocket.MessageBinary, b)
}

// WriteMessages writes msgs, one binary message each, with one flush to
// the socket (noiseconn.BatchWriter).
func (w *wsConn) WriteMessages(ctx context.Context, msgs [][]byte) error {
	if w.cork == nil {
		ctx, cancel := timed(ctx)
		defer cancel()
		for _, b := range msgs {
			if err := w.WriteMessage(ctx, b); err != nil {
				return err
			}
		}
		return nil
	}
	return w.cork.writeBinary(ctx, msgs)
}

func (w *wsConn) Close() error { return w.c.CloseNow() }

func (w *wsConn) closeWith(code pb.ErrorCode, reason string) {
	if w.idle != nil {
		w.idle.close()
	}
	// Close writes the close frame after everything written before and
	// waits (up to 5 s, library-bounded) for the peer's close frame.
	_ = w.c.Close(websocket.StatusCode(CloseCodeBase+int(code)), reason)
}

func (e *Edge) listenWS() error {
	tcp, err := net.Listen("tcp", e.cfg.WSAddr)
	if err != nil {
		return fmt.Errorf("edge: listen ws: %w", err)
	}
	return e.serveWSOn(tcp)
}

// serveWSOn serves WebSocket upgrades on ln, and Config.Locate at
// LocatePath when set. Every connection is limited
// (MaxConns, MaxAcceptPerIP) at accept, before TLS and HTTP, and timed out
// until it has upgraded: HandshakeTimeout to send its request headers and
// body, to receive the response, and between requests on a kept-alive
// connection. A hijacked (upgraded) connection has no deadlines; the
// session's idle timeout takes over.
func (e *Edge) serveWSOn(tcp net.Listener) error {
	var ln net.Listener = newLimitListener(tcp, e.conns, e.log, &e.n.rejectedAtAccept, &e.n.acceptErrors)
	scheme := "ws"
	if e.cfg.WSTLS {
		ln = tls.NewListener(ln, e.tls)
		scheme = "wss"
	}
	mux := http.NewServeMux()
	mux.HandleFunc(WSPath, e.serveWS)
	if e.cfg.Locate != nil {
		mux.HandleFunc(LocatePath, e.serveLocate)
	}
	t := e.cfg.HandshakeTimeout
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: t, ReadTimeout: t, WriteTimeout: t, IdleTimeout: t,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(e.log.Handler(), slog.LevelDebug)}
	e.mu.Lock()
	e.httpSrv = srv
	e.wsURL = scheme + "://" + ln.Addr().String() + WSPath
	e.mu.Unlock()
	if !e.goTracked(func() { e.serveUntilShutdown("websocket", func() error { return srv.Serve(ln) }) }) {
		_ = ln.Close()
		return ErrClosed
	}
	return nil
}

func (e *Edge) serveWS(w http.ResponseWriter, r *http.Request) {
	lw := &leanWriter{ResponseWriter: w}
	c, err := websocket.Accept(lw, r, &websocket.AcceptOptions{
		OriginPatterns:  e.cfg.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept has answered
	}
	c.SetReadLimit(-1) // enforced per message by wsConn.ReadMessage
	ws := &wsConn{c: c, cork: lw.cork, idle: lw.idle}
	ip := clientIP(r.RemoteAddr)
	if !e.admit(ip) {
		ws.closeWith(pb.ErrorCode_ERROR_CODE_TOO_MANY_CONNECTIONS, "too many connections from this address")
		return
	}
	// The session runs on a goroutine tracked by e.wg (so Shutdown waits
	// for it); this handler returns, and with it net/http's goroutine and
	// its request state, since the connection is hijacked.
	if !e.goTracked(func() { e.serveConn(ws, ip) }) {
		e.releaseIP(ip)
		_ = c.Close(websocket.StatusCode(CloseCodeBase+int(pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN)), "shutting down")
	}
}

// Buffer sizes of a hijacked WebSocket connection. net/http hands over a
// 4 KiB reader and a 4 KiB writer; an idle session needs neither, and a
// busy one reads frame headers and small frames (larger payloads are read
// past the buffer) and writes its batches through corkWriter, with a pooled
// buffer only while a batch is being written.
const (
	wsReadBuffer = 512
	// wsWriteBuffer holds a whole control frame (2 + 125 bytes), so that
	// the library hands each to corkWriter in one Write.
	wsWriteBuffer = 128
	// corkBuffer is the most a corkWriter holds before it writes to the
	// socket mid-batch.
	corkBuffer = 64 << 10
)

// leanWriter lets websocket.Accept hijack the connection with small
// buffers and a corkWriter (see the sizes above).
type leanWriter struct {
	http.ResponseWriter
	cork *corkWriter
	idle *idleWaiter // for a plain TCP connection (waitread_unix.go)
}

func (l *leanWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(l.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, wsReadBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent right after its request: they must be in
		// the returned reader's buffer (websocket.Accept keeps only those
		// and reads the rest from conn).
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn), max(wsReadBuffer, n))
		if _, err := br.Peek(n); err != nil {
			_ = conn.Close()
			return nil, nil, fmt.Errorf("edge: hijack: %w", err)
		}
	}
	l.cork = &corkWriter{conn: conn}
	l.idle = newIdleWaiter(conn, br)
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(l.cork, wsWriteBuffer)), nil
}

// corkWriter is the socket side of a WebSocket connection's writer. The
// session's batches of binary messages do not go through the library:
// writeBinary frames them itself (a server's frames are a 2- or 4-byte
// header and the payload, RFC 6455 §5.2) into a pooled buffer of at most
// corkBuffer bytes and writes it with one call (the library's Write was
// 0.95 s of a 17 s server profile of a 500-member group, this framing 0.15
// s of a like one). Everything the
// library writes (the Noise handshake, a Disconnect, pongs, the close
// frame) passes through Write to the socket; mu orders both. A batch never
// lands inside a library frame: the library's buffer (wsWriteBuffer) holds
// a whole control frame, so each reaches Write in one call, and its data
// messages are written under the same Noise send lock as the batches; lib
// follows the library's frame boundaries and a batch that would break that
// fails the connection instead of corrupting it. After the library's close
// frame, batches are refused.
type corkWriter struct {
	mu   sync.Mutex
	conn net.Conn
	lib  wsFrames // the library's frames as they passed through Write
	// dl is the write deadline set on conn (zero: none). A batch keeps
	// the one already set when it is close enough to its own (armLocked):
	// two deadline changes per batch — each a runtime timer moved — took
	// 0.3 s of a group profile in which encryption took 0.5 s.
	dl    time.Time
	wrErr error // sticky: a failed socket write
}

// corkPool holds batch buffers: corkBuffer bytes and room for one more
// frame header, so that the largest Noise message fits one with its header.
var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, corkBuffer+wsHeaderMax); return &b }}

var (
	errCloseSent   = errors.New("edge: websocket close frame sent")
	errInterleaved = errors.New("edge: websocket batch inside a library frame")
)

// Write writes the library's bytes through, without a deadline (the
// library bounds its own writes).
func (w *corkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.wrErr != nil {
		return 0, w.wrErr
	}
	if !w.dl.IsZero() {
		_ = w.conn.SetWriteDeadline(time.Time{})
		w.dl = time.Time{}
	}
	w.lib.feed(p)
	n, err := w.conn.Write(p)
	if err != nil {
		w.wrErr = err // a frame cut short: nothing after it can be read
	}
	return n, err
}

// writeBinary writes msgs as binary messages of one frame each, in socket
// writes of at most corkBuffer bytes plus a header, bounded by ctx's
// deadline (see armLocked). A message above noiseconn.MaxMessage refuses
// the whole batch before anything is written (noiseconn never makes one).
func (w *corkWriter) writeBinary(ctx context.Context, msgs [][]byte) error {
	for _, m := range msgs {
		if len(m) > noiseconn.MaxMessage {
			return fmt.Errorf("edge: websocket message of %d bytes: %w", len(m), noiseconn.ErrTooLarge)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.wrErr != nil:
		return w.wrErr
	case w.lib.closeSent:
		return errCloseSent
	case !w.lib.boundary():
		w.wrErr = errInterleaved
		return w.wrErr
	}
	if dl, ok := ctx.Deadline(); ok {
		w.armLocked(time.Now(), dl)
	} else if !w.dl.IsZero() {
		_ = w.conn.SetWriteDeadline(time.Time{})
		w.dl = time.Time{}
	}
	bp := corkPool.Get().(*[]byte)
	b := (*bp)[:0]
	var err error
	for _, m := range msgs {
		if len(b) > 0 && len(b)+wsHeaderMax+len(m) > cap(b) {
			if err = w.writeLocked(b); err != nil {
				break
			}
			b = b[:0]
		}
		b = append(appendBinaryHeader(b, len(m)), m...)
	}
	if err == nil && len(b) > 0 {
		err = w.writeLocked(b)
	}
	// b never grew: a message with its header fits the buffer (checked
	// above), and a fuller buffer is written before the next is added.
	*bp = b[:0]
	corkPool.Put(bp)
	return err
}

func (w *corkWriter) writeLocked(b []byte) error {
	if _, err := w.conn.Write(b); err != nil {
		w.wrErr = err
		return err
	}
	return nil
}

// armLocked bounds the coming socket writes by dl, or by the deadline
// already set if that is no later than dl and at least half of the time
// from now to dl away: a busy connection moves its deadline about once per
// half write timeout rather than twice per batch, and no write is ever
// allowed longer than asked nor less than half of it.
func (w *corkWriter) armLocked(now, dl time.Time) {
	if !w.dl.IsZero() && !w.dl.After(dl) && w.dl.Sub(now) >= dl.Sub(now)/2 {
		return
	}
	_ = w.conn.SetWriteDeadline(dl)
	w.dl = dl
}

// wsHeaderMax is the longest header appendBinaryHeader writes (a Noise
// message is at most noiseconn.MaxMessage = 65,535 bytes).
const wsHeaderMax = 4

// appendBinaryHeader appends the header of an unmasked, final binary frame
// of n payload bytes (n <= noiseconn.MaxMessage; writeBinary checks).
func appendBinaryHeader(b []byte, n int) []byte {
	const finBinary = 0x80 | 0x2
	if n < 126 {
		return append(b, finBinary, byte(n))
	}
	return append(b, finBinary, 126, byte(n>>8), byte(n))
}

// wsFrames follows frame boundaries in a stream of WebSocket frames
// written in arbitrary pieces (RFC 6455 §5.2), and notes a close frame.
type wsFrames struct {
	hdr       [14]byte
	n         int    // header bytes held
	rest      uint64 // payload bytes still to come
	closeSent bool
}

func (t *wsFrames) feed(p []byte) {
	for len(p) > 0 {
		if t.rest > 0 {
			k := min(t.rest, uint64(len(p)))
			t.rest -= k
			p = p[k:]
			continue
		}
		t.hdr[t.n] = p[0]
		t.n++
		p = p[1:]
		if t.n < 2 {
			continue
		}
		need := 2
		switch t.hdr[1] & 0x7f {
		case 126:
			need = 4
		case 127:
			need = 10
		}
		if t.hdr[1]&0x80 != 0 {
			need += 4 // masking key
		}
		if t.n < need {
			continue
		}
		switch l := t.hdr[1] & 0x7f; l {
		case 126:
			t.rest = uint64(binary.BigEndian.Uint16(t.hdr[2:4]))
		case 127:
			t.rest = binary.BigEndian.Uint64(t.hdr[2:10])
		default:
			t.rest = uint64(l)
		}
		if t.hdr[0]&0x0f == 0x8 {
			t.closeSent = true
		}
		t.n = 0
	}
}

// boundary says the stream so far ends with a whole frame.
func (t *wsFrames) boundary() bool { return t.n == 0 && t.rest == 0 }

// ------------------------------------------------------------- WebTransport

// wtConn adapts a WebTransport session whose first bidirectional stream
// (opened by the client) carries Noise messages, each prefixed with its
// length as a 2-byte big-endian integer.
type wtConn struct {
	sess *webtransport.Session
	str  *webtransport.Stream
	rmu  sync.Mutex
	hdr  [2]byte
}

func (w *wtConn) ReadMessage(ctx context.Context) ([]byte, error) {
	w.rmu.Lock()
	defer w.rmu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = w.str.SetReadDeadline(time.Now()) })
	defer func() {
		if !stop() {
			_ = w.str.SetReadDeadline(time.Time{})
		}
	}()
	if _, err := io.ReadFull(w.str, w.hdr[:]); err != nil {
		return nil, ctxErr(ctx, err)
	}
	b := make([]byte, binary.BigEndian.Uint16(w.hdr[:]))
	if _, err := io.ReadFull(w.str, b); err != nil {
		return nil, ctxErr(ctx, err)
	}
	return b, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

func (w *wtConn) WriteMessage(ctx context.Context, b []byte) error {
	if len(b) > noiseconn.MaxMessage {
		return noiseconn.ErrTooLarge
	}
	stop := context.AfterFunc(ctx, func() { _ = w.str.SetWriteDeadline(time.Now()) })
	defer func() {
		if !stop() {
			_ = w.str.SetWriteDeadline(time.Time{})
		}
	}()
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	_, err := w.str.Write(buf)
	return ctxErr(ctx, err)
}

// WriteMessages writes msgs, each length-prefixed, with one stream write
// (noiseconn.BatchWriter).
func (w *wtConn) WriteMessages(ctx context.Context, msgs [][]byte) error {
	n := 0
	for _, b := range msgs {
		if len(b) > noiseconn.MaxMessage {
			return noiseconn.ErrTooLarge
		}
		n += 2 + len(b)
	}
	ctx, cancel := timed(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = w.str.SetWriteDeadline(time.Now()) })
	defer func() {
		if !stop() {
			_ = w.str.SetWriteDeadline(time.Time{})
		}
	}()
	buf := make([]byte, 0, n)
	for _, b := range msgs {
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(b)))
		buf = append(buf, b...)
	}
	_, err := w.str.Write(buf)
	return ctxErr(ctx, err)
}

func (w *wtConn) Close() error {
	return w.sess.CloseWithError(0, "")
}

// wtGrace is how long closeWith waits, after the final frames and the
// stream's FIN, for the client to close the session itself before the edge
// tears it down (closing at once could reset the unread frames).
const wtGrace = time.Second

func (w *wtConn) closeWith(code pb.ErrorCode, reason string) {
	if w.str != nil {
		_ = w.str.Close() // FIN after the pending data
		t := time.NewTimer(wtGrace)
		select {
		case <-w.sess.Context().Done():
		case <-t.C:
		}
		t.Stop()
	}
	_ = w.sess.CloseWithError(webtransport.SessionErrorCode(code), reason)
}

func (e *Edge) listenWT() error {
	udp, err := net.ListenPacket("udp", e.cfg.WTAddr)
	if err != nil {
		return fmt.Errorf("edge: listen wt: %w", err)
	}
	mux := http.NewServeMux()
	qc := &quic.Config{EnableDatagrams: true, EnableStreamResetPartialDelivery: true, HandshakeIdleTimeout: e.cfg.HandshakeTimeout}
	h3 := &http3.Server{
		TLSConfig:  http3.ConfigureTLSConfig(e.tls.Clone()),
		QUICConfig: qc,
		Handler:    mux,
	}
	webtransport.ConfigureHTTP3Server(h3)
	srv := &webtransport.Server{H3: h3, CheckOrigin: e.checkOrigin}
	mux.HandleFunc(WTPath, func(w http.ResponseWriter, r *http.Request) {
		sess, err := srv.Upgrade(w, r)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		ip := clientIP(r.RemoteAddr)
		if !e.admit(ip) {
			_ = sess.CloseWithError(webtransport.SessionErrorCode(pb.ErrorCode_ERROR_CODE_TOO_MANY_CONNECTIONS), "too many connections from this address")
			return
		}
		if !e.goTracked(func() { e.serveWT(sess, ip) }) {
			e.releaseIP(ip)
			_ = sess.CloseWithError(webtransport.SessionErrorCode(pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN), "shutting down")
		}
	})
	ln, err := quic.ListenEarly(udp, h3.TLSConfig, qc)
	if err != nil {
		_ = udp.Close()
		return fmt.Errorf("edge: listen wt: %w", err)
	}
	e.mu.Lock()
	e.wtSrv, e.udpConn, e.quicLn = srv, udp, ln
	e.wtURL = "https://" + udp.LocalAddr().String() + WTPath
	e.mu.Unlock()
	if !e.goTracked(func() { e.serveUntilShutdown("webtransport", func() error { return e.acceptQUIC(ln, srv) }) }) {
		_ = ln.Close()
		_ = udp.Close()
		return ErrClosed
	}
	return nil
}

// acceptQUIC accepts QUIC connections and serves each with srv, after
// the connection limits (MaxConns, MaxAcceptPerIP): a connection over them
// is closed at once. It returns only when the listener is closed (quic-go's
// Accept fails for no other reason).
func (e *Edge) acceptQUIC(ln *quic.EarlyListener, srv *webtransport.Server) error {
	for {
		conn, err := ln.Accept(e.ctx)
		if err != nil {
			return err
		}
		ip := clientIP(conn.RemoteAddr().String())
		if reason := e.conns.acquire(ip); reason != "" {
			e.n.rejectedAtAccept.Add(1)
			e.log.Debug("connection refused at accept", "ip", ip, "limit", reason)
			_ = conn.CloseWithError(quic.ApplicationErrorCode(pb.ErrorCode_ERROR_CODE_TOO_MANY_CONNECTIONS), "too many connections")
			continue
		}
		context.AfterFunc(conn.Context(), func() { e.conns.release(ip) })
		if !e.goTracked(func() {
			if err := srv.ServeQUICConn(conn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.log.Debug("quic connection ended", "ip", ip, "err", err)
			}
		}) {
			_ = conn.CloseWithError(0, "shutting down")
		}
	}
}

func (e *Edge) serveWT(sess *webtransport.Session, ip string) {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.HandshakeTimeout)
	str, err := sess.AcceptStream(ctx)
	cancel()
	if err != nil {
		e.releaseIP(ip)
		e.n.handshakeFailures.Add(1)
		_ = sess.CloseWithError(webtransport.SessionErrorCode(pb.ErrorCode_ERROR_CODE_HANDSHAKE_FAILED), "no stream")
		return
	}
	e.serveConn(&wtConn{sess: sess, str: str}, ip)
}

// checkOrigin allows requests without Origin (native clients), same-origin
// requests, and origins whose host matches an OriginPatterns entry.
func (e *Edge) checkOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range e.cfg.OriginPatterns {
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(u.Host)); ok {
			return true
		}
	}
	return false
}

func clientIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

// selfSignedTLS makes an ECDSA P-256 certificate for localhost/127.0.0.1/::1
// valid from an hour ago for 13 days: browsers accept certificates pinned
// by serverCertificateHashes only if valid for at most 14 days.
func selfSignedTLS(now time.Time) (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("edge: tls key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("edge: tls serial: %w", err)
	}
	tmpl := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "chatmesh edge"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(13 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("edge: tls certificate: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	}, nil
}
