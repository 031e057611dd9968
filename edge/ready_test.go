package edge_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/edge"
)

// readyFlag is a Config.Ready whose answer the test flips; it counts the
// calls.
type readyFlag struct {
	down  atomic.Bool
	calls atomic.Int64
}

var errNotSequencing = errors.New("test: region not sequencing")

func (r *readyFlag) Ready(context.Context) error {
	r.calls.Add(1)
	if r.down.Load() {
		return errNotSequencing
	}
	return nil
}

// polls waits until the edge has called Ready n more times.
func (r *readyFlag) polls(t *testing.T, n int64) {
	t.Helper()
	want := r.calls.Load() + n
	waitUntil(t, 10*time.Second, "readiness polls", func() bool { return r.calls.Load() >= want })
}

// fakeClock is the edge's Config.Now: it moves only when the test says,
// so the grace period is crossed exactly when the test wants.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// An edge whose region cannot sequence stops serving after the grace
// period: open sessions (registered or not, on both transports) get
// Disconnect{UNAVAILABLE, reconnect} and the close code UNAVAILABLE, a new
// connection is refused before the Noise handshake with UNAVAILABLE; once
// the region is ready again, the edge serves again. A blip shorter than
// the grace ends nothing.
func TestEdgeStopsServingWhileRegionNotReady(t *testing.T) {
	const grace = 5 * time.Second // on the fake clock
	rf, clock := &readyFlag{}, newFakeClock()
	v := newEnv(t, func(c *edge.Config) {
		c.Ready, c.NotReadyGrace, c.ReadyInterval, c.Now = rf.Ready, grace, 5*time.Millisecond, clock.Now
	})
	ws, _ := v.registered("ws", "alice")
	wt, _ := v.registered("wt", "bob")
	anon := v.connect("ws", newKey(t), nil) // not registered yet

	// Not ready for a while, but less than the grace: nothing changes,
	// and the stretch ends with the first ready answer.
	rf.down.Store(true)
	rf.polls(t, 3)
	clock.Advance(grace - time.Millisecond)
	rf.polls(t, 3)
	rf.down.Store(false)
	rf.polls(t, 3)
	clock.Advance(grace)
	rf.down.Store(true)
	rf.polls(t, 3) // a new stretch: its grace starts now
	rf.down.Store(false)
	rf.polls(t, 2)
	ws.ping()
	wt.ping()
	if st := v.e.Stats(); st.NotServing || st.NotReadyStops != 0 || st.NotReadyClosed != 0 {
		t.Fatalf("a blip within the grace stopped the edge: %+v", st)
	}

	rf.down.Store(true)
	rf.polls(t, 2)
	clock.Advance(grace)
	for name, c := range map[string]*client{"ws": ws, "wt": wt, "unregistered": anon} {
		code, d := c.expectClosed()
		if code != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || d.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE ||
			!d.GetReconnect() || d.GetDetail() != edge.NotServingDetail {
			t.Fatalf("%s session: closed with %v after %v; want Disconnect{UNAVAILABLE, %q, reconnect} and close UNAVAILABLE", name, code, d, edge.NotServingDetail)
		}
	}
	st := v.e.Stats()
	if !st.NotServing || st.NotReadyStops != 1 || st.NotReadyClosed != 3 {
		t.Fatalf("stats after stopping: %+v", st)
	}
	// New connections are refused before the handshake, on both transports.
	for _, kind := range []string{"ws", "wt"} {
		c := &client{t: t, key: newKey(t)}
		var err error
		switch kind {
		case "ws":
			c.ws = v.dialWSRaw()
			err = c.handshake(v, wsClientConn{c.ws}, nil)
		case "wt":
			sess, str := v.dialWTRaw()
			c.wt = sess
			if str == nil { // refused before the stream opened
				if code := wtCode(t, sess); code != pb.ErrorCode_ERROR_CODE_UNAVAILABLE {
					t.Fatalf("wt: refused with %v, want UNAVAILABLE", code)
				}
				continue
			}
			err = c.handshake(v, wtClientConn{sess, str}, nil)
		}
		if err == nil {
			t.Fatalf("%s: handshake succeeded while the edge does not serve", kind)
		}
		if code := c.closeCode(err); code != pb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("%s: refused with %v (%v), want UNAVAILABLE", kind, code, err)
		}
	}
	if got := v.e.Stats().NotReadyRefused; got != 2 {
		t.Fatalf("NotReadyRefused = %d, want 2", got)
	}

	// Ready again: the edge serves; the devices reconnect.
	rf.down.Store(false)
	waitUntil(t, 5*time.Second, "the edge serves again", func() bool { return !v.e.Stats().NotServing })
	again := v.connect("ws", ws.key, nil)
	again.ping()
	if st := v.e.Stats(); st.NotReadyStops != 1 || st.NotReadyClosed != 3 || st.NotReadyRefused != 2 {
		t.Fatalf("stats after serving again: %+v", st)
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
