package region

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// WebhookNotifier posts a JSON document per push notification to a URL,
// for a push gateway (APNs/FCM bridge) to forward. The document carries
// routing metadata only: user, device, conversation, seq, message id and
// time — never content.
type WebhookNotifier struct {
	URL    string
	Client *http.Client // nil: a client with a 5 s timeout
}

// WebhookPayload is the JSON body a WebhookNotifier posts.
type WebhookPayload struct {
	User     string `json:"user"`
	Device   uint32 `json:"device"`
	Conv     string `json:"conv"`
	Seq      uint64 `json:"seq"`
	MsgID    string `json:"msg_id"`
	SentAtMs int64  `json:"sent_at_ms"`
}

// Notify posts one notification; any non-2xx answer is an error.
func (w *WebhookNotifier) Notify(ctx context.Context, n core.PushNotification) error {
	body, err := json.Marshal(WebhookPayload{
		User: n.Device.User, Device: n.Device.Device, Conv: n.Conv, Seq: n.Seq, MsgID: n.MsgID, SentAtMs: n.SentAtMs,
	})
	if err != nil {
		return fmt.Errorf("webhook: encode: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	c := w.Client
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: post: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: status %d", resp.StatusCode)
	}
	return nil
}
