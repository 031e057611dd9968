package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// TestMeshEdgeLeavesRegionWithoutLease: ap-southeast is cut off from the
// directory (its heartbeats stop; its edge, sequencer and voter keep
// running) while carol, whose edge list is [ap-southeast, eu-central],
// keeps sending in a 1:1 with alice of eu-central. ap-southeast's lease
// runs out and its sequencer stops; its edge then stops serving (after
// NotReadyGrace), closing carol's session, and refuses her reconnects,
// so she moves to eu-central's edge; the directory fails ap-southeast and
// moves the 1:1 to eu-central, and everything both sent is delivered to
// both exactly once, in order. Without the edge's readiness check carol
// would stay on ap-southeast's edge, producing into an ingress nobody
// sequences, for as long as the partition lasts.
func TestMeshEdgeLeavesRegionWithoutLease(t *testing.T) {
	m := startMesh(t, nil)
	eu, ap := m.Node("eu-central"), m.Node("ap-southeast")
	alice := newClient(t, []string{eu.Ends.WS}, uniq("alice"))
	carol := newClient(t, []string{ap.Ends.WS, eu.Ends.WS}, uniq("carol")) // registers in Singapore
	alice.start(t)
	carol.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conv := core.DirectConvID(alice.name, carol.name)
	send := func(c *tclient, body string) error {
		_, err := c.Send(ctx, conv, []byte(body))
		return err
	}
	if err := send(carol, "c 0"); err != nil { // carol starts it: homed in ap-southeast
		t.Fatal(err)
	}
	if err := carol.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if err := send(alice, "a 0"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*tclient{alice, carol} {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if h, ok, err := eu.Directory.ConvLinearizable(ctx, conv); err != nil || !ok || h.Region != "ap-southeast" || h.Epoch != 1 {
		t.Fatalf("home before the partition: %+v %v %v", h, ok, err)
	}
	routeEdge := func(c *tclient) string {
		rs, err := m.Store.Routes(ctx, []string{c.name})
		if err != nil || len(rs) != 1 {
			return ""
		}
		return rs[0].Edge
	}
	if e := routeEdge(carol); e != ap.Ends.EdgeID {
		t.Fatalf("carol connected through %q before the partition, want %q", e, ap.Ends.EdgeID)
	}

	// Both keep sending, before, during and after the failover.
	const n = 40
	errc := make(chan error, 2)
	for _, s := range []struct {
		c   *tclient
		tag string
	}{{carol, "c"}, {alice, "a"}} {
		go func() {
			for i := 1; i <= n; i++ {
				if err := send(s.c, fmt.Sprintf("%s %d", s.tag, i)); err != nil {
					errc <- fmt.Errorf("%s: %w", s.c.name, err)
					return
				}
				time.Sleep(150 * time.Millisecond)
			}
			errc <- nil
		}()
	}
	time.Sleep(300 * time.Millisecond)
	stopped := time.Now()
	ap.StopLease()

	// Milestones, from the stop: the edge stops serving, the directory
	// fails the region, carol's route names eu-central's edge, and her
	// first message acked after the edge stopped serving.
	var notServing, failed, moved, acked time.Duration
	acksThen := -1
	deadline := time.Now().Add(time.Minute)
	for notServing == 0 || failed == 0 || moved == 0 || acked == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute: edge stopped serving %v, region failed %v, carol moved %v, first ack %v (0: not yet); ap edge %+v",
				notServing, failed, moved, acked, ap.Edge.Stats())
		}
		since := time.Since(stopped)
		if notServing == 0 && ap.Edge.Stats().NotServing {
			notServing, acksThen = since, carol.ackCount()
		}
		if r, _ := eu.Directory.Region("ap-southeast"); failed == 0 && !r.Healthy {
			failed = since
		}
		if moved == 0 && routeEdge(carol) == eu.Ends.EdgeID {
			moved = since
		}
		if acked == 0 && acksThen >= 0 && carol.ackCount() > acksThen {
			acked = since
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("after the lease stopped: ap-southeast's edge stopped serving at %v, carol's route on eu-central's edge at %v, "+
		"ap-southeast failed at %v, carol's first ack after the edge stopped serving at %v",
		notServing.Round(time.Millisecond), moved.Round(time.Millisecond), failed.Round(time.Millisecond), acked.Round(time.Millisecond))

	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*tclient{alice, carol} {
		if err := c.WaitIdle(ctx); err != nil {
			t.Fatalf("%s: outbox did not drain: %v", c.name, err)
		}
	}
	total := uint64(2 + 2*n)
	for _, c := range []*tclient{alice, carol} {
		waitFor(t, time.Minute, c.name+" has every message", func() bool { return len(c.seqs(conv)) >= int(total) })
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range []*tclient{alice, carol} {
		checkExactlyOnceInOrder(t, c, conv, 1, total)
		next := map[byte]int{'a': 0, 'c': 0}
		for _, body := range c.bodies(conv) {
			var tag byte
			var i int
			if _, err := fmt.Sscanf(body, "%c %d", &tag, &i); err != nil || i != next[tag] {
				t.Fatalf("%s: body %q out of order (want %c %d)", c.name, body, tag, next[tag])
			}
			next[tag]++
		}
	}
	if h, ok, err := eu.Directory.ConvLinearizable(ctx, conv); err != nil || !ok || h.Region != "eu-central" || h.Epoch != 2 {
		t.Fatalf("home after the failover: %+v %v %v", h, ok, err)
	}
	if e := routeEdge(carol); e != eu.Ends.EdgeID {
		t.Fatalf("carol ends on %q, want eu-central's edge %q", e, eu.Ends.EdgeID)
	}
	st := ap.Edge.Stats()
	if !st.NotServing || st.NotReadyStops != 1 || st.NotReadyClosed == 0 {
		t.Fatalf("ap-southeast's edge: %+v; want not serving, stopped once, carol's session closed", st)
	}
	if es := eu.Edge.Stats(); es.NotServing || es.NotReadyStops != 0 {
		t.Fatalf("eu-central's edge stopped serving: %+v", es)
	}
}
