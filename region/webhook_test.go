package region_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
)

// An offline recipient device gets a push notification through the webhook
// — routing metadata only, never the body — and an online one does not.
func TestWebhookPushForOfflineDevices(t *testing.T) {
	var mu sync.Mutex
	var got []region.WebhookPayload
	var raw []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p region.WebhookPayload
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		mu.Lock()
		raw = append(raw, string(b))
		mu.Unlock()
		if err := json.Unmarshal(b, &p); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	}))
	defer srv.Close()
	h := newHarness(t, func(c *region.Config) { c.Notifier = &region.WebhookNotifier{URL: srv.URL} })
	alice := h.register("alice", 1)
	h.register("bob", 0)   // offline
	h.register("carol", 3) // online
	conv := core.GroupID("alice", "push")
	h.ingress(alice, 1, 1, &pb.IngressRecord{Op: &pb.IngressRecord_CreateGroup{CreateGroup: &pb.CreateGroupRequest{ConvId: conv, Members: []string{"bob", "carol"}}}}, conv)
	const secret = "canary-7f3a"
	h.send(alice, 1, 2, conv, "m1", secret)
	h.waitFor("ack", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[2] != nil })
	waitUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 1 })
	// The sender counts a notification once the webhook has answered, a
	// moment after the handler above has recorded it.
	waitUntil(t, func() bool { return h.reg.Stats().Notified >= 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("%d notifications, want 1 (bob only): %+v", len(got), got)
	}
	p := got[0]
	if p.User != "bob" || p.Device != 1 || p.Conv != conv || p.Seq != 2 || p.MsgID == "" {
		t.Fatalf("notification %+v", p)
	}
	for _, r := range raw {
		if strings.Contains(r, secret) {
			t.Fatal("the webhook saw the message body")
		}
	}
	if s := h.reg.Stats(); s.Notified != 1 {
		t.Fatalf("stats: %+v", s)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 600 && !cond(); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if !cond() {
		t.Fatal("condition not met within 30 s")
	}
}
