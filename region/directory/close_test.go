package directory

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestCloseWithCommittedEntriesQueued: hashicorp/raft (v1.7.3) leaves the
// futures of committed entries still queued for the FSM unanswered when it
// shuts down (runFSM returns without draining its queue). Writers waiting
// on such a future, locally or in a forwarding handler, must still get an
// answer at Close, and Close must not be held up by those handlers (it
// reported "context deadline exceeded" after 5 s).
//
// The FSM goroutine is held inside Apply (broadcast needs d.wmu, which the
// test holds) while writes commit and queue behind it; Close then shuts
// raft down and the FSM is released: runFSM returns at its next select,
// leaving the rest of the queue unanswered.
func TestCloseWithCommittedEntriesQueued(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			c := newCluster(t, 3)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l := c.leader()
			ld, fd := c.node(l), c.node((l+1)%3)
			if err := ld.PutRegion(ctx, Region{Name: "fra", Healthy: true}); err != nil {
				t.Fatal(err)
			}
			commit := func() uint64 {
				n, _ := strconv.ParseUint(ld.raft.Stats()["commit_index"], 10, 64)
				return n
			}
			base := commit()
			ld.wmu.Lock()
			unlocked := false
			unlock := func() {
				if !unlocked {
					unlocked = true
					ld.wmu.Unlock()
				}
			}
			defer unlock()
			var wg sync.WaitGroup
			answered := make(chan error, 16)
			for w := range 16 {
				d := ld // half local on the leader, half forwarded to its handler
				if w%2 == 1 {
					d = fd
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := d.SetConvHome(ctx, fmt.Sprintf("w%d", w), "fra", 0)
					answered <- err
				}()
			}
			eventually(t, "writes committed behind the blocked FSM", func() bool { return commit() >= base+16 })
			closed := make(chan error, 1)
			go func() { closed <- ld.Close() }()
			eventually(t, "raft shutting down", func() bool { return ld.raft.State() == raft.Shutdown })
			unlock()

			select {
			case err := <-closed:
				if err != nil {
					t.Fatalf("close: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("close hangs")
			}
			for range 16 {
				select {
				case <-answered:
				case <-time.After(15 * time.Second):
					t.Fatal("a writer never got an answer")
				}
			}
			wg.Wait()
		})
	}
}

// stuckFuture is a raft future nobody answers.
type stuckFuture struct{ block chan struct{} }

func (f stuckFuture) Error() error  { <-f.block; return nil }
func (f stuckFuture) Index() uint64 { return 0 }

func TestWaitFutureGivesUp(t *testing.T) {
	d := &Directory{closed: make(chan struct{})}
	f := stuckFuture{block: make(chan struct{})}
	defer close(f.block)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.waitFuture(ctx, f); !errors.Is(err, context.Canceled) {
		t.Fatalf("ended ctx: %v", err)
	}
	close(d.closed)
	if err := d.waitFuture(context.Background(), f); !errors.Is(err, raft.ErrRaftShutdown) {
		t.Fatalf("closed directory: %v", err)
	}
}

// TestCloseWithIdleNewConnection: a client connection that never sent a
// request (Go's Transport keeps one when the request is cancelled while it
// dials) does not hold up Close; http.Server.Shutdown alone counts it as
// busy for 5 s and Close reported "context deadline exceeded".
func TestCloseWithIdleNewConnection(t *testing.T) {
	c := newCluster(t, 1)
	c.leader()
	conn, err := net.Dial("tcp", c.peers[0].HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The server has accepted it once a request on another connection is
	// served (accepts are sequential).
	if _, err := (&AdminClient{URL: "http://" + c.peers[0].HTTPAddr}).Status(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	d := c.node(0)
	if err := d.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
