package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatmesh/chatmesh/internal/admin"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// BrokerReady is the "BROKER {json}" line `chatmesh broker` prints on
// stdout once it accepts connections.
type BrokerReady struct {
	Addr string `json:"addr"` // host:port clients bootstrap from
	Data string `json:"data"` // the data directory ("" when in memory)
	PID  int    `json:"pid"`
	// Admin is the admin server's URL (--admin), "" when off.
	Admin string `json:"admin,omitempty"`
}

const brokerUsage = `usage: chatmesh broker [flags]

Runs the embedded Kafka-protocol broker (franz-go's kfake, as in
chatmesh dev) as a process of its own, so that a region's Kafka can be
killed and restarted apart from the region (the region simulator's broker
kills). With --data it persists topics, records, committed offsets and
group state there and reloads them on the next start; records reach the
OS page cache before they are acknowledged (they survive a SIGKILL of the
broker, not a machine crash) unless --sync fsyncs each batch.

Once it listens it prints one line on stdout:

  BROKER {"addr":"127.0.0.1:PORT","data":"DIR","pid":N}

(with "admin":"http://HOST:PORT" when --admin serves /metrics, /healthz,
/readyz and /debug/pprof/; off by default).

and runs until SIGTERM or SIGINT, when it saves its state and exits 0.
kfake listens on 127.0.0.1 only.

flags:
`

// runBroker is `chatmesh broker`.
func runBroker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), brokerUsage)
		fs.PrintDefaults()
	}
	listen := fs.String("listen", "127.0.0.1:9092", "listen address, 127.0.0.1:PORT (port 0 picks a free one; see the BROKER line)")
	data := fs.String("data", "", "data directory (created if absent); empty keeps everything in memory")
	syncWrites := fs.Bool("sync", false, "fsync every produced batch before acknowledging it (with --data)")
	minSession := fs.Duration("group-min-session-timeout", time.Second, "smallest consumer-group session timeout accepted")
	logLevel := fs.String("log", "warn", "log level")
	adminF := addAdminFlags(fs, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := adminF.check(*listen); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("broker: unexpected arguments %q", strings.Join(fs.Args(), " "))
	}
	if *syncWrites && *data == "" {
		return errors.New("broker: --sync needs --data")
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	if *data != "" {
		if err := os.MkdirAll(*data, 0o700); err != nil {
			return fmt.Errorf("broker: --data: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	b, err := kafkabus.StartEmbedded(sctx, kafkabus.EmbeddedConfig{Addr: *listen, DataDir: *data, SyncWrites: *syncWrites,
		Logger: logger, GroupMinSessionTimeout: *minSession})
	cancel()
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	mreg := admin.NewRegistry(Version)
	mreg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "chatmesh_broker_accept_errors_total",
		Help: "Failed Accept calls of the embedded broker's listener (retried; out of descriptors?)."},
		func() float64 { return float64(b.AcceptErrors()) }))
	brokerUp := admin.Check{Name: "broker " + b.Addrs()[0], Fn: func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", b.Addrs()[0])
		if err != nil {
			return err
		}
		return c.Close()
	}}
	adminSrv, err := adminF.start(fs, mreg, []admin.Check{brokerUp}, logger, io.Discard)
	if err != nil {
		_ = b.Close()
		return fmt.Errorf("broker: %w", err)
	}
	defer closeAdmin(adminSrv)
	ready := BrokerReady{Addr: b.Addrs()[0], Data: *data, PID: os.Getpid()}
	if adminSrv != nil {
		ready.Admin = adminSrv.URL()
	}
	line, _ := json.Marshal(ready)
	fmt.Fprintf(stdout, "BROKER %s\n", line)
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}
	<-ctx.Done()
	logger.Info("broker stopping", "addr", b.Addrs()[0])
	if err := b.Close(); err != nil {
		return fmt.Errorf("broker: close: %w", err)
	}
	if n := b.AcceptErrors(); n > 0 {
		logger.Warn("the broker's listener retried Accept errors (out of descriptors?)", "errors", n)
	}
	return nil
}
