package kafkabus

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// EmbeddedConfig configures an in-process Kafka-protocol broker. The zero
// value is a one-broker, in-memory cluster on a random loopback port.
type EmbeddedConfig struct {
	// Addr is the listen address. Only 127.0.0.1 is supported by kfake;
	// "" or a port of 0 picks a random free port. Example "127.0.0.1:9092".
	Addr string
	// DataDir, if set, makes the broker persist topics, records, committed
	// offsets and group state to this directory (created if needed) and
	// reload them on the next start. Empty keeps everything in memory.
	DataDir string
	// SyncWrites fsyncs every produced batch before it is acknowledged.
	// Without it records reach the OS page cache at once (they survive a
	// process kill, not a machine crash) and are fsynced on segment roll
	// and Close. Only meaningful with DataDir.
	SyncWrites bool
	// Logger receives the broker's warnings and errors. Default: discard.
	Logger *slog.Logger
	// GroupMinSessionTimeout is the smallest group session timeout the broker
	// accepts. Default 1s (kfake's own default is 6s).
	GroupMinSessionTimeout time.Duration
	// TrimInterval is how often the broker deletes records that every
	// consumer group has consumed, and records of group-less topics past
	// their retention (Embedded.Trim). Default 30s; < 0: never (the data
	// then grows without bound).
	TrimInterval time.Duration
	// SegmentBytes is the size at which a partition's segment file is
	// rolled (kfake's log.segment.bytes); records are deleted from disk a
	// whole segment at a time. Default DefaultEmbeddedSegmentBytes.
	SegmentBytes int

	// innerListener, if set, wraps the broker's TCP listener under the
	// resilient one (tests inject Accept errors with it).
	innerListener func(net.Listener) net.Listener
}

// Embedded is a running in-process broker (franz-go's kfake).
type Embedded struct {
	c         *kfake.Cluster
	addrs     []string
	lns       []*resilientListener
	log       *slog.Logger
	stopTrim  chan struct{}
	trimDone  chan struct{}
	closeOnce sync.Once
}

// StartEmbedded starts a one-node kfake cluster. ctx bounds only the start
// (loading a persisted DataDir may take a while); the broker runs until
// Close. Topics are not created automatically: use Bus.EnsureTopic.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("kafkabus: start embedded broker: %w", err)
	}
	port := 0
	if cfg.Addr != "" {
		host, p, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("kafkabus: start embedded broker: %w: addr %q: %w", ErrInvalidConfig, cfg.Addr, err)
		}
		if host != "" && host != "127.0.0.1" && host != "localhost" {
			return nil, fmt.Errorf("kafkabus: start embedded broker: %w: kfake listens on 127.0.0.1 only, not %q", ErrInvalidConfig, host)
		}
		if port, err = strconv.Atoi(p); err != nil || port < 0 || port > 65535 {
			return nil, fmt.Errorf("kafkabus: start embedded broker: %w: port %q", ErrInvalidConfig, p)
		}
	}
	if cfg.GroupMinSessionTimeout <= 0 {
		cfg.GroupMinSessionTimeout = time.Second
	}
	if cfg.TrimInterval == 0 {
		cfg.TrimInterval = DefaultEmbeddedTrimInterval
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = DefaultEmbeddedSegmentBytes
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.DataDir != "" {
		// Refuse a damaged directory before kfake loads it: kfake cuts
		// damaged bytes off (changing the files) with one warning.
		if err := CheckEmbeddedData(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	var (
		lnMu sync.Mutex
		lns  []*resilientListener
	)
	listen := func(network, addr string) (net.Listener, error) {
		l, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		if cfg.innerListener != nil {
			l = cfg.innerListener(l)
		}
		rl := &resilientListener{Listener: l, log: log.With("component", "kfake")}
		lnMu.Lock()
		lns = append(lns, rl)
		lnMu.Unlock()
		return rl, nil
	}
	opts := []kfake.Opt{
		kfake.ListenFn(listen),
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ClusterID("chatmesh-embedded"),
		kfake.WithLogger(kfakeLogger{log.With("component", "kfake")}),
		kfake.GroupMinSessionTimeout(cfg.GroupMinSessionTimeout),
		kfake.BrokerConfigs(map[string]string{
			// Only Trim deletes records (it respects committed offsets).
			"log.cleaner.backoff.ms": kfakeCleanerOff,
			"log.segment.bytes":      strconv.Itoa(cfg.SegmentBytes),
		}),
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
		if cfg.SyncWrites {
			opts = append(opts, kfake.SyncWrites())
		}
	}
	type result struct {
		c   *kfake.Cluster
		err error
	}
	// NewCluster has no context; run it aside so ctx can bound the wait.
	ch := make(chan result, 1)
	go func() {
		c, err := kfake.NewCluster(opts...)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("kafkabus: start embedded broker: %w", r.err)
		}
		lnMu.Lock()
		defer lnMu.Unlock()
		e := &Embedded{c: r.c, addrs: r.c.ListenAddrs(), lns: lns, log: log, stopTrim: make(chan struct{}), trimDone: make(chan struct{})}
		if cfg.TrimInterval > 0 {
			go func() {
				defer close(e.trimDone)
				e.runTrim(cfg.TrimInterval, e.stopTrim)
			}()
		} else {
			close(e.trimDone)
		}
		return e, nil
	case <-ctx.Done():
		// The start goroutine finishes on its own; close what it built.
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("kafkabus: start embedded broker: %w", ctx.Err())
	}
}

// Addrs returns the broker's listen addresses (host:port), to use as
// Config.Brokers.
func (e *Embedded) Addrs() []string { return append([]string(nil), e.addrs...) }

// AcceptErrors returns how many Accept errors the broker's listeners
// retried since the start (see the package documentation, Embedded
// broker): non-zero means the process ran out of descriptors at some point.
func (e *Embedded) AcceptErrors() int64 {
	var n int64
	for _, l := range e.lns {
		n += l.failures.Load()
	}
	return n
}

// Close stops the broker; with a DataDir it first saves its state. It is
// idempotent.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		close(e.stopTrim)
		<-e.trimDone
		e.c.Close()
	})
	return nil
}

// kfakeLogger adapts slog to kfake's logger: errors and warnings only.
type kfakeLogger struct{ l *slog.Logger }

func (k kfakeLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var l slog.Level
	switch level {
	case kfake.LogLevelError:
		l = slog.LevelError
	case kfake.LogLevelWarn:
		l = slog.LevelWarn
	default:
		return
	}
	if k.l.Enabled(context.Background(), l) {
		k.l.Log(context.Background(), l, fmt.Sprintf(format, args...))
	}
}
