package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// startBroker runs runBroker in the background and returns the address
// from its BROKER line, a stop function (the SIGTERM path: ctx ends) and
// the runner's error channel.
func startBroker(t *testing.T, args ...string) (string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := runBroker(ctx, args, pw, io.Discard)
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "BROKER "); ok {
				lines <- rest
			}
		}
		close(lines)
	}()
	var ready BrokerReady
	select {
	case l, ok := <-lines:
		if !ok {
			cancel()
			t.Fatalf("broker exited without a BROKER line: %v", <-done)
		}
		if err := json.Unmarshal([]byte(l), &ready); err != nil {
			t.Fatalf("BROKER %s: %v", l, err)
		}
	case <-time.After(time.Minute):
		cancel()
		t.Fatal("no BROKER line within a minute")
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("broker did not stop within 30 s of its context ending")
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })
	return ready.Addr, stop
}

// TestBrokerCommandPersists: `chatmesh broker --data DIR` prints its
// address, serves the Kafka protocol, stops cleanly when its context ends
// (SIGTERM), and a restart on the same directory and port still holds the
// records produced before.
func TestBrokerCommandPersists(t *testing.T) {
	data := t.TempDir()
	addr, stop := startBroker(t, "--listen", "127.0.0.1:0", "--data", data)
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("BROKER addr %q: want a concrete 127.0.0.1 port", addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	bus, err := kafkabus.New(kafkabus.Config{Brokers: []string{addr}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureTopic(ctx, "t", 1); err != nil {
		t.Fatal(err)
	}
	if err := bus.Produce(ctx, core.BusRecord{Topic: "t", Key: []byte("k"), Value: []byte("before the restart")}); err != nil {
		t.Fatal(err)
	}
	bus.Close()
	if err := stop(); err != nil {
		t.Fatalf("broker stop: %v", err)
	}

	addr2, _ := startBroker(t, "--listen", addr, "--data", data)
	if addr2 != addr {
		t.Fatalf("restarted at %s, want %s", addr2, addr)
	}
	bus, err = kafkabus.New(kafkabus.Config{Brokers: []string{addr}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	got := make(chan string, 1)
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	go bus.Consume(cctx, core.ConsumeSpec{Topic: "t", Group: "g"}, func(_ context.Context, r core.BusRecord) error {
		select {
		case got <- string(r.Value):
		default:
		}
		return nil
	})
	select {
	case v := <-got:
		if v != "before the restart" {
			t.Fatalf("consumed %q", v)
		}
	case <-ctx.Done():
		t.Fatal("the record produced before the restart was not consumed")
	}
}

// TestBrokerCommandFlags: bad flags are refused before anything starts.
func TestBrokerCommandFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--sync"},                           // --sync without --data
		{"--listen", "10.0.0.1:9092"},        // kfake: 127.0.0.1 only
		{"--listen", "127.0.0.1:0", "extra"}, // stray argument
		{"--listen", "127.0.0.1:0", "--log", "loud"},
	} {
		var out strings.Builder
		if err := runBroker(context.Background(), args, &out, io.Discard); err == nil {
			t.Fatalf("chatmesh broker %v: no error", args)
		}
		if out.Len() != 0 {
			t.Fatalf("chatmesh broker %v printed %q", args, out.String())
		}
	}
}
