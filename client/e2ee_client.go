package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chatmesh/chatmesh/client/e2ee"

	"github.com/chatmesh/chatmesh/core/pb"
)

// MessageSealer is an optional extension of Sealer: Send passes the new
// message's client message id, so the sealer can keep the plaintext as the
// local copy of an own message (own messages come back through sync and
// delivery without a ciphertext for the sending device), and the sealer
// may return several envelopes: the last is the message, the ones before
// it are key-distribution messages Send puts into the outbox first (each
// under its own client message id; Open returns e2ee.ErrControlMessage
// for them and the client hands no event). The end-to-end sealer
// implements it.
type MessageSealer interface {
	Sealer
	SealMessages(ctx context.Context, conv, clientMsgID string, body []byte) ([]*pb.Envelope, error)
}

// ErrNoE2EE: the operation needs the end-to-end sealer, but Config.Sealer
// replaced it.
var ErrNoE2EE = errors.New("client: end-to-end encryption is not enabled (Config.Sealer is set)")

// IdentityChangedEvent: the identity of User (one of its devices, or its
// whole device list) changed from the one this device trusted. Sending to
// conversations with User fails until the user compares the new safety
// number (SafetyNumber) and accepts it with TrustIdentity.
type IdentityChangedEvent struct {
	User string
}

func (IdentityChangedEvent) isEvent() {}

// Request sends f on the current session (waiting for one) and returns its
// response; a server error is returned as an error wrapping
// *core.WireError. A lost session or a transient server error sends f
// again, so use it for requests that may be repeated. It is how the
// end-to-end sealer reaches the region's key directory.
func (c *Client) Request(ctx context.Context, f *pb.ClientFrame) (*pb.Response, error) {
	return c.request(ctx, "request", f, true)
}

// SafetyNumber returns the safety number of this device's user and user
// (60 digits in 12 groups of 5), the same on both sides. After an identity
// change it is the new number, to compare before TrustIdentity.
func (c *Client) SafetyNumber(ctx context.Context, user string) (string, error) {
	if c.e2ee == nil {
		return "", ErrNoE2EE
	}
	n, err := c.e2ee.SafetyNumber(ctx, user)
	if err != nil {
		return "", fmt.Errorf("client: safety number: %w", err)
	}
	return n, nil
}

// TrustIdentity accepts user's changed identity (see IdentityChangedEvent)
// and unblocks sending to it.
func (c *Client) TrustIdentity(user string) error {
	if c.e2ee == nil {
		return ErrNoE2EE
	}
	return c.e2ee.TrustIdentity(user)
}

// IdentityChanged reports whether user has a changed identity waiting for
// TrustIdentity.
func (c *Client) IdentityChanged(user string) bool {
	return c.e2ee != nil && c.e2ee.IdentityChanged(user)
}

// PublishLinkedDevices adds the devices this device linked (Link) and
// that have registered since to the user's signed device list. The client
// also does it on every connect and before every send.
func (c *Client) PublishLinkedDevices(ctx context.Context) error {
	if c.e2ee == nil {
		return ErrNoE2EE
	}
	return c.e2ee.PublishLinks(ctx)
}

// e2eeSetup runs at the start of every session: publish the device list if
// not yet done, upload prekeys (idempotent), publish linked devices. It
// closes s.keysReady when done, successful or not.
func (c *Client) e2eeSetup(s *session) {
	defer close(s.keysReady)
	if c.e2ee == nil {
		return
	}
	if err := c.e2ee.EnsurePrekeys(s.ctx); err != nil && s.ctx.Err() == nil {
		c.log.Warn("client: prekey upload failed", "err", err)
	}
	if err := c.e2ee.PublishLinks(s.ctx); err != nil && s.ctx.Err() == nil {
		c.log.Warn("client: device list publication failed", "err", err)
	}
}

// replenish uploads one-time prekeys after the server said it runs low.
// At most one runs per session at a time.
func (c *Client) replenish(s *session) {
	if c.e2ee == nil || !s.replenishing.CompareAndSwap(false, true) {
		return
	}
	s.wg.Go(func() {
		defer s.replenishing.Store(false)
		if err := c.e2ee.Replenish(s.ctx); err != nil && s.ctx.Err() == nil {
			c.log.Warn("client: prekey replenish failed", "err", err)
		}
	})
}

// OpenMessage returns the body of a user message (from History,
// FetchHistory or an event) through the configured sealer: decrypted, or
// the local copy of an own message. Opening an entry again gives the same
// body; a replayed or tampered entry fails.
func (c *Client) OpenMessage(ctx context.Context, m *pb.Message) ([]byte, error) {
	if m.GetKind() != pb.MessageKind_MESSAGE_KIND_USER {
		return nil, fmt.Errorf("%w: not a user message", ErrBadArgument)
	}
	return c.sealer.Open(ctx, m)
}

// linkWatch bounds how long watchLinks waits for a linked device to register.
const linkWatch = 5 * time.Minute

// watchLinks publishes the device list as soon as the devices linked by
// Link have registered: it tries every second for up to linkWatch (while
// the client is open; a device that registers later is published on the
// next connect or send). At most one runs at a time.
func (c *Client) watchLinks() {
	c.mu.Lock()
	if c.linking || c.ctx.Err() != nil {
		c.mu.Unlock()
		return
	}
	c.linking = true
	c.mu.Unlock()
	c.wg.Go(func() {
		defer func() {
			c.mu.Lock()
			c.linking = false
			c.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(c.ctx, linkWatch)
		defer cancel()
		for c.e2ee.PendingLinks() > 0 {
			if err := sleepCtx(ctx, time.Second); err != nil {
				return
			}
			if _, ok := c.Device(); !ok {
				continue
			}
			if err := c.e2ee.PublishLinks(ctx); err != nil && ctx.Err() == nil {
				c.log.Debug("client: linked device not published yet", "err", err)
			}
		}
	})
}

// isKeyDistribution reports whether req is a key-distribution entry of the
// end-to-end sealer (see MessageSealer): the outbox sends it alone and
// nothing of its conversation after it until it is acked.
func isKeyDistribution(req *pb.SendRequest) bool {
	env := req.GetEnvelope()
	return env.GetContentHint() == e2ee.ContentKeys && len(env.GetCiphertext()) == 0 && len(env.GetPerDevice()) > 0
}
