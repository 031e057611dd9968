package edge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/edge"
)

// event is one thing a watched client saw: a frame, or the end of the
// connection (closed, with the WebSocket close status minus 4000).
type event struct {
	frame  *pb.ServerFrame
	closed bool
	code   pb.ErrorCode
	err    error
}

// watch reads c's frames on a goroutine until the connection ends; the
// last event is the close. c must not be read by anyone else afterwards.
func watch(c *client) <-chan event {
	ch := make(chan event, 64)
	go func() {
		defer close(ch)
		for {
			b, err := c.nc.Recv(context.Background())
			if err != nil {
				ch <- event{closed: true, code: pb.ErrorCode(int(websocket.CloseStatus(err)) - edge.CloseCodeBase), err: err}
				return
			}
			f := new(pb.ServerFrame)
			if err := proto.Unmarshal(b, f); err != nil {
				ch <- event{closed: true, code: -1, err: err}
				return
			}
			ch <- event{frame: f}
		}
	}()
	return ch
}

// next returns the next event or fails after 10 s.
func next(t *testing.T, ch <-chan event, who string) event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("%s: no more events", who)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing within 10 s", who)
	}
	return event{}
}

// expectReplaced reads ch to its end: a Disconnect{REPLACED, no reconnect}
// then the close with REPLACED.
func expectReplaced(t *testing.T, ch <-chan event, who string) {
	t.Helper()
	var disc *pb.Disconnect
	for {
		ev := next(t, ch, who)
		if ev.closed {
			if disc.GetCode() != pb.ErrorCode_ERROR_CODE_REPLACED || disc.GetReconnect() || ev.code != pb.ErrorCode_ERROR_CODE_REPLACED {
				t.Fatalf("%s: want Disconnect REPLACED and close REPLACED, got %v and %v (%v)", who, disc, ev.code, ev.err)
			}
			return
		}
		if d := ev.frame.GetDisconnect(); d != nil {
			disc = d
		}
	}
}

// TestDoubleSessionNewestWins opens two sessions of one device at once,
// 200 times, against a backend whose route calls take a variable time.
// Every time, exactly one of the two is REPLACED, the older session from
// the round before is REPLACED, and the survivor is the session the route
// names once every loser's SessionClosed has been reported: replies
// addressed to the route's session and pushes to the device reach it, and
// the device is online.
func TestDoubleSessionNewestWins(t *testing.T) {
	v := newEnv(t, nil)
	first, dev := v.registered("ws", "twin")
	v.be.mu.Lock()
	v.be.jitter = 2 * time.Millisecond
	v.be.mu.Unlock()
	prev := watch(first)
	topic := edge.EdgeTopic("e1")
	const rounds = 200
	for i := range rounds {
		var cs [2]*client
		var errs [2]error
		done := make(chan int, 2)
		for j := range 2 {
			go func() { cs[j], errs[j] = v.connectWS(first.key, dev.Addr()); done <- j }()
		}
		<-done
		<-done
		for j := range 2 {
			if errs[j] != nil {
				t.Fatalf("round %d: connect %d: %v", i, j, errs[j])
			}
		}
		evs := [2]<-chan event{watch(cs[0]), watch(cs[1])}
		expectReplaced(t, prev, fmt.Sprintf("round %d: previous survivor", i))

		// Exactly one of the two is replaced; the other stays.
		loser := -1
		for loser < 0 {
			select {
			// Nothing is pushed yet: the first event is the loser's end.
			case ev := <-evs[0]:
				loser, evs[0] = 0, prepend(ev, evs[0])
			case ev := <-evs[1]:
				loser, evs[1] = 1, prepend(ev, evs[1])
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: neither session was replaced", i)
			}
		}
		expectReplaced(t, evs[loser], fmt.Sprintf("round %d: loser", i))
		won, wonEvents := cs[1-loser], evs[1-loser]

		// Once every other session has ended (and reported SessionClosed),
		// the device is online and its route names the survivor.
		waitFor(t, func() bool { return v.e.Stats().Sessions == 1 })
		rt, online := v.be.route(dev)
		if !online {
			t.Fatalf("round %d: device offline although a session survived", i)
		}
		marker := func(n int) *pb.ServerFrame {
			return &pb.ServerFrame{Body: &pb.ServerFrame_Typing{Typing: &pb.TypingEvent{ConvId: fmt.Sprintf("g:r%d-%d", i, n), Typing: true}}}
		}
		v.produce(topic, "k", &pb.EdgeRecord{SessionId: rt.Session, Frame: marker(1)})
		v.produce(topic, "k", &pb.EdgeRecord{Targets: []*pb.DeviceAddr{dev.Addr()}, Frame: marker(2)})
		won.send(&pb.ClientFrame{ReqId: uint64(1000 + i), Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{}}})
		got := map[string]bool{}
		for len(got) < 3 {
			ev := next(t, wonEvents, fmt.Sprintf("round %d: survivor", i))
			switch {
			case ev.closed:
				t.Fatalf("round %d: the survivor was closed: %v (%v)", i, ev.code, ev.err)
			case ev.frame.GetTyping() != nil:
				got[ev.frame.GetTyping().GetConvId()] = true
			case ev.frame.GetResponse().GetReqId() == uint64(1000+i):
				got["pong"] = true
			default:
				t.Fatalf("round %d: survivor got %v", i, ev.frame)
			}
		}
		if !got[fmt.Sprintf("g:r%d-1", i)] || !got[fmt.Sprintf("g:r%d-2", i)] {
			t.Fatalf("round %d: survivor got %v", i, got)
		}
		prev = wonEvents
	}
	if st := v.e.Stats(); st.Replaced != 2*rounds {
		t.Fatalf("Replaced = %d, want %d", st.Replaced, 2*rounds)
	}
}

// prepend returns a channel that yields ev and then everything from ch.
func prepend(ev event, ch <-chan event) <-chan event {
	out := make(chan event, 64)
	go func() {
		defer close(out)
		out <- ev
		for e := range ch {
			out <- e
		}
	}()
	return out
}
