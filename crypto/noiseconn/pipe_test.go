package noiseconn

import (
	"bytes"
	"context"
	"errors"
	"sync"
)

var errPipeClosed = errors.New("pipe closed")

// pipeEnd is one end of an in-memory MsgConn pair. Every written message is
// also appended to log (shared by both ends), so tests can see the wire.
type pipeEnd struct {
	in, out chan []byte
	done    chan struct{} // shared by both ends: closing either closes the pair
	once    *sync.Once
	log     *wireLog
	tamper  func([]byte) []byte // applied to outgoing messages if set
}

type wireLog struct {
	mu   sync.Mutex
	msgs [][]byte
}

func (l *wireLog) add(b []byte) {
	l.mu.Lock()
	l.msgs = append(l.msgs, bytes.Clone(b))
	l.mu.Unlock()
}

func (l *wireLog) get() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.msgs...)
}

func newPipe() (a, b *pipeEnd) {
	ab, ba := make(chan []byte, 64), make(chan []byte, 64)
	done := make(chan struct{})
	once := new(sync.Once)
	log := new(wireLog)
	return &pipeEnd{in: ba, out: ab, done: done, once: once, log: log},
		&pipeEnd{in: ab, out: ba, done: done, once: once, log: log}
}

func (p *pipeEnd) ReadMessage(ctx context.Context) ([]byte, error) {
	select {
	case b := <-p.in:
		return b, nil
	case <-p.done:
		return nil, errPipeClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (p *pipeEnd) WriteMessage(ctx context.Context, b []byte) error {
	b = bytes.Clone(b)
	if p.tamper != nil {
		b = p.tamper(b)
	}
	p.log.add(bytes.Clone(b)) // the wire as sent: Recv decrypts b in place
	select {
	case p.out <- b:
		return nil
	case <-p.done:
		return errPipeClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *pipeEnd) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}
