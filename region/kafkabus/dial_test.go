package kafkabus_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// Config.Dial opens every broker connection: topic admin, produce, group
// consume and commits. The broker counts what it accepted, and every one of
// those connections came through Dial (a proxy in front of the bootstrap
// address alone would be bypassed by metadata).
func TestDialOpensEveryConnection(t *testing.T) {
	var ecfg kafkabus.EmbeddedConfig
	accepts := kafkabus.CountAccepts(&ecfg)
	e := startEmbedded(t, ecfg)
	var dials, failed atomic.Int64
	var d net.Dialer
	b, err := kafkabus.New(kafkabus.Config{Brokers: e.Addrs(), ClientID: "dialtest", Logger: testLogger(),
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			// A dial cancelled while a reader stops may or may not have
			// reached the broker (connected, then closed for the
			// cancellation): such dials are counted apart.
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				dials.Add(1)
			} else {
				failed.Add(1)
			}
			return c, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.EnsureTopic(ctx, "dial", 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Produce(ctx, core.BusRecord{Topic: "dial", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(cctx, core.ConsumeSpec{Topic: "dial", Group: "g"}, func(context.Context, core.BusRecord) error {
			select {
			case got <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatal("the record was not consumed")
	}
	ccancel()
	<-done
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if dials.Load() == 0 {
		t.Fatal("Dial was never called")
	}
	deadline := time.Now().Add(10 * time.Second)
	// Every accepted connection came through Dial: the broker accepted at
	// least the dials that connected and at most those plus the ones that
	// failed (exactly the connected ones when none failed).
	settled := func() bool {
		a, n, f := accepts.Load(), dials.Load(), failed.Load()
		return a >= n && a <= n+f
	}
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a, n, f := accepts.Load(), dials.Load(), failed.Load(); a < n || a > n+f {
		t.Fatalf("the broker accepted %d connections, Dial opened %d (and %d failed): some bypassed Dial", a, n, f)
	}
}

// A Dial that refuses everything leaves the bus unable to reach the
// cluster at all.
func TestDialRefusingFailsEverything(t *testing.T) {
	e := startEmbedded(t, kafkabus.EmbeddedConfig{})
	refused := errors.New("refused by the test")
	b, err := kafkabus.New(kafkabus.Config{Brokers: e.Addrs(), ClientID: "dialtest", Logger: testLogger(), DialTimeout: time.Second,
		Dial: func(context.Context, string, string) (net.Conn, error) { return nil, refused }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := b.EnsureTopic(ctx, "dial", 1); err == nil {
		t.Fatal("EnsureTopic reached the cluster around Dial")
	}
	if err := b.Produce(ctx, core.BusRecord{Topic: "dial", Value: []byte("v")}); err == nil {
		t.Fatal("Produce reached the cluster around Dial")
	}
}
