package benchload_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/internal/benchload"
	"github.com/chatmesh/chatmesh/internal/stack"
)

const token = "bench-test-token"

func startStack(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	s, err := stack.Start(ctx, stack.Config{
		DataDir: t.TempDir(), WTAddr: "-",
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		EdgeConfig: func(c *edge.Config) { benchload.LiftLimits(c, token) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s.Endpoints().WS
}

func checkTraffic(t *testing.T, r benchload.Report) {
	t.Helper()
	if len(r.Rounds) != 1 {
		t.Fatalf("rounds = %d, want 1", len(r.Rounds))
	}
	tr := r.Rounds[0].Traffic
	t.Logf("%s: sent %d acked %d (%.0f/s) deliveries %d/%d (%.0f/s) self %d ack p99 %.1f ms delivery p99 %.1f ms checks %+v",
		r.Scenario, tr.Sent, tr.Acked, tr.AckedPerS, tr.Deliveries, tr.ExpectedDeliveries, tr.DeliveredPerS, tr.SelfDeliveries,
		tr.AckLatency.P99, tr.DeliveryLatency.P99, tr.Checks)
	if tr.Sent == 0 || tr.Acked != tr.Sent || tr.Failed != 0 || tr.Rejected != 0 || tr.Unanswered != 0 {
		t.Errorf("sent %d, acked %d, failed %d, rejected %d, unanswered %d", tr.Sent, tr.Acked, tr.Failed, tr.Rejected, tr.Unanswered)
	}
	if tr.Deliveries == 0 || tr.Deliveries != tr.ExpectedDeliveries {
		t.Errorf("deliveries %d, expected %d", tr.Deliveries, tr.ExpectedDeliveries)
	}
	if !tr.Checks.OK() || tr.Checks.Stale != 0 {
		t.Errorf("checks: %+v", tr.Checks)
	}
	if tr.AckedPerS <= 0 || tr.DeliveredPerS <= 0 {
		t.Errorf("throughput: acked %.1f/s, delivered %.1f/s", tr.AckedPerS, tr.DeliveredPerS)
	}
}

// TestSmoke runs every cheap scenario briefly against an in-process
// region (embedded broker, Pebble): the smoke test of `chatmesh bench`.
// It asserts what the bench checks — nothing missing, duplicated or
// reordered, everything acknowledged, non-zero throughput — and no
// timing.
func TestSmoke(t *testing.T) {
	ws := startStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress io.Writer
	if testing.Verbose() {
		progress = os.Stderr
	}
	base := benchload.Config{Duration: 2 * time.Second, Drain: 30 * time.Second, ServerPID: os.Getpid(), Progress: progress}

	t.Run("pairs", func(t *testing.T) {
		cfg := base
		cfg.Target = &benchload.Chatmesh{Edge: ws, RegistrationToken: token, Acks: true, Ordered: true}
		cfg.Pairs, cfg.Rate = 10, 100
		r, err := benchload.Pairs(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkTraffic(t, r)
		if s := r.Rounds[0].Server; s == nil || s.CPUSeconds <= 0 || s.RSSAfterMiB <= 0 {
			t.Errorf("server sample: %+v", s)
		}
	})
	t.Run("group", func(t *testing.T) {
		for _, acks := range []bool{true, false} {
			cfg := base
			target := &benchload.Chatmesh{Edge: ws, RegistrationToken: token, Acks: acks, Ordered: true}
			cfg.Target = target
			cfg.Members, cfg.Senders, cfg.Rate = 20, 4, 20
			r, err := benchload.Group(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkTraffic(t, r)
			if got := r.Receipts > 0; got != acks {
				t.Errorf("acks %v: %d receipts", acks, r.Receipts)
			}
			if r.ReceiptFrames > r.Receipts {
				t.Errorf("%d receipt frames for %d receipts", r.ReceiptFrames, r.Receipts)
			}
		}
	})
	t.Run("idle", func(t *testing.T) {
		cfg := base
		cfg.Target = &benchload.Chatmesh{Edge: ws, RegistrationToken: token}
		cfg.Conns, cfg.Settle = 20, 100*time.Millisecond
		r, err := benchload.Idle(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if r.Failures != 0 || r.ConnectPerS <= 0 || r.Server == nil {
			t.Errorf("idle: %+v", r)
		}
	})
	t.Run("reconnect", func(t *testing.T) {
		cfg := base
		cfg.Target = &benchload.Chatmesh{Edge: ws, RegistrationToken: token}
		cfg.Conns = 20
		r, err := benchload.Reconnect(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Each device syncs its pair's two messages.
		if r.Failures != 0 || r.Synced != 2*int64(r.Devices) || r.CatchUpS <= 0 {
			t.Errorf("reconnect: %+v", r)
		}
	})
}
