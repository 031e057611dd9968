package kafkabus

import (
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// Accept backoff of the embedded broker's listener, as net/http's server
// does it: 5 ms doubling to 1 s.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// resilientListener keeps the embedded broker accepting. kfake's accept
// loop returns on the first Accept error and never starts again, after
// which every client hangs silently; an error such as EMFILE (the process
// ran out of descriptors) is transient, so this listener retries it with
// backoff, logging each streak of failures, and returns an error only once
// it was closed.
type resilientListener struct {
	net.Listener
	log    *slog.Logger
	closed atomic.Bool
	// failures counts Accept errors retried since the start (tests, health).
	failures atomic.Int64
}

func (l *resilientListener) Accept() (net.Conn, error) {
	delay := time.Duration(0)
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if delay > 0 {
				l.log.Warn("embedded broker accepting again", "addr", l.Addr().String())
			}
			return c, nil
		}
		if l.closed.Load() || errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		l.failures.Add(1)
		if delay == 0 {
			delay = acceptBackoffMin
			// Loud: while this lasts, no new broker connection is accepted.
			l.log.Error("embedded broker accept failed; retrying with backoff", "addr", l.Addr().String(), "err", err)
		} else {
			delay = min(2*delay, acceptBackoffMax)
		}
		time.Sleep(delay)
	}
}

func (l *resilientListener) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}
