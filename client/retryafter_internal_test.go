package client

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// A send refused with RATE_LIMITED and retry_after_ms waits at least that
// long before it is sent again, even when the backoff is shorter.
func TestSendHonoursRetryAfter(t *testing.T) {
	ob, err := OpenOutbox(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	req := sreq("d:a:b", "m1")
	if err := ob.Add(req); err != nil {
		t.Fatal(err)
	}
	if p, _ := ob.sendable(time.Now(), 8, 100); len(p) != 1 {
		t.Fatalf("picked %d", len(p))
	}
	c := &Client{cfg: Config{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, log: slog.New(slog.DiscardHandler), outbox: ob}
	s := &session{c: c, ctx: context.Background()}
	werr := wireErr(&pb.Error{Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, Detail: "busy", RetryAfterMs: 3000})
	if we := werr.(*core.WireError); we.RetryAfter != 3*time.Second {
		t.Fatalf("decoded retry_after %v", we.RetryAfter)
	}
	before := time.Now()
	c.sendDone(s, req, nil, werr)
	p, wake := ob.sendable(before.Add(time.Second), 8, 100)
	if len(p) != 0 {
		t.Fatalf("resent after 1 s though the server asked for 3 s")
	}
	if wake.Before(before.Add(3 * time.Second)) {
		t.Fatalf("next attempt at +%v, want ≥ 3 s", wake.Sub(before))
	}
	if p, _ := ob.sendable(before.Add(4*time.Second), 8, 100); len(p) != 1 {
		t.Fatalf("not resent after the wait: %d", len(p))
	}
}
