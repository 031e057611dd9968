package region_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

func embeddedBus(t *testing.T, ctx context.Context) (*kafkabus.Embedded, *kafkabus.Bus) {
	t.Helper()
	emb, err := kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	bus, err := kafkabus.New(kafkabus.Config{Brokers: emb.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	return emb, bus
}

// collect consumes topic on bus and returns the values seen so far.
func collect(t *testing.T, ctx context.Context, bus core.Bus, topic string) func() [][]byte {
	t.Helper()
	var mu sync.Mutex
	var got [][]byte
	ready := make(chan struct{})
	var once sync.Once
	go bus.Consume(ctx, core.ConsumeSpec{Topic: topic, OnReady: func() { once.Do(func() { close(ready) }) }},
		func(_ context.Context, rec core.BusRecord) error {
			mu.Lock()
			got = append(got, rec.Value)
			mu.Unlock()
			return nil
		})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("consumer of %s not ready", topic)
	}
	return func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return append([][]byte(nil), got...)
	}
}

// The link worker moves records from the local outbound topic to the
// remote cluster: ingress records to the remote ingress topic, presence to
// its presence topic, deliveries to the named edge's topic; a delivery for
// a remote edge that no longer exists is dropped and counted, a malformed
// record too, and the worker keeps going.
func TestLinkForwardsToTheRemoteCluster(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, local := embeddedBus(t, ctx)
	_, remote := embeddedBus(t, ctx)
	names := region.NamesFor("us")
	for _, tp := range []string{names.Ingress, names.Presence, region.EdgeTopic("e9")} {
		if err := remote.EnsureTopic(ctx, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	ingress := collect(t, ctx, remote, names.Ingress)
	presence := collect(t, ctx, remote, names.Presence)
	edgeRecs := collect(t, ctx, remote, region.EdgeTopic("e9"))
	// The remote edge's topic is live (known to producers) before the link
	// sends to it: a delivery for a topic the remote does not know is
	// dropped by design, which is what the "gone" edge below shows.
	if err := remote.Produce(ctx, core.BusRecord{Topic: region.EdgeTopic("e9"), Key: []byte("e9"), Value: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(20 * time.Second); len(edgeRecs()) == 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	topic := "eu.link.us"
	l, err := region.NewLink(region.LinkConfig{From: "eu", To: "us", Local: local, Topic: topic, Group: topic + ".worker",
		Remote: remote, RemoteNames: names})
	if err != nil {
		t.Fatal(err)
	}
	go l.Run(ctx)
	if err := local.EnsureTopic(ctx, topic, region.LinkPartitions); err != nil {
		t.Fatal(err)
	}
	rec := func(lr *pb.LinkRecord) core.BusRecord {
		b, _ := proto.Marshal(lr)
		return core.BusRecord{Topic: topic, Key: lr.GetKey(), Value: b}
	}
	if err := local.Produce(ctx,
		rec(&pb.LinkRecord{Dest: pb.LinkRecord_DEST_INGRESS, Key: []byte("d:a:b"), Value: []byte("ingress-1"), ProducedAtMs: time.Now().UnixMilli()}),
		rec(&pb.LinkRecord{Dest: pb.LinkRecord_DEST_EDGE, EdgeId: "gone", Key: []byte("gone"), Value: []byte("lost")}),
		core.BusRecord{Topic: topic, Key: []byte("x"), Value: []byte{0xff, 0xff, 0xff}},
		rec(&pb.LinkRecord{Dest: pb.LinkRecord_DEST_EDGE, EdgeId: "e9", Key: []byte("e9"), Value: []byte("delivery")}),
		rec(&pb.LinkRecord{Dest: pb.LinkRecord_DEST_PRESENCE, Key: []byte("a"), Value: []byte("online")}),
		rec(&pb.LinkRecord{Dest: pb.LinkRecord_DEST_INGRESS, Key: []byte("d:a:b"), Value: []byte("ingress-2")}),
	); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	// The drop is counted when the link's produce of the "gone" record
	// fails, which may be after the others arrived.
	for time.Now().Before(deadline) && (len(ingress()) < 2 || len(presence()) < 1 || len(edgeRecs()) < 2 || l.Stats().Dropped < 1) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := ingress(); len(got) != 2 || string(got[0]) != "ingress-1" || string(got[1]) != "ingress-2" {
		t.Fatalf("remote ingress = %q, want both records in order", got)
	}
	if got := presence(); len(got) != 1 || string(got[0]) != "online" {
		t.Fatalf("remote presence = %q", got)
	}
	if got := edgeRecs(); len(got) != 2 || string(got[1]) != "delivery" {
		t.Fatalf("remote edge e9 = %q", got)
	}
	st := l.Stats()
	if st.Forwarded != 4 || st.Dropped != 1 || st.Malformed < 1 {
		t.Fatalf("link stats = %+v, want 4 forwarded, 1 dropped, a malformed one", st)
	}
	if err := l.Health(); err != nil {
		t.Fatal(err)
	}
}

// A remote cluster that is down holds the link back: nothing is committed
// or lost, and once the remote is back every record arrives.
func TestLinkHoldsWhileTheRemoteIsDown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, local := embeddedBus(t, ctx)
	// The remote's ingress topic does not exist yet: every produce of an
	// ingress record fails, as with an unreachable cluster.
	_, remote := embeddedBus(t, ctx)
	names := region.NamesFor("")
	topic := "link.us"
	l, err := region.NewLink(region.LinkConfig{From: "eu", To: "us", Local: local, Topic: topic, Group: topic + ".worker",
		Remote: remote, RemoteNames: names})
	if err != nil {
		t.Fatal(err)
	}
	go l.Run(ctx)
	if err := local.EnsureTopic(ctx, topic, region.LinkPartitions); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		b, _ := proto.Marshal(&pb.LinkRecord{Dest: pb.LinkRecord_DEST_INGRESS, Key: []byte("c"), Value: []byte{byte('0' + i)}})
		if err := local.Produce(ctx, core.BusRecord{Topic: topic, Key: []byte("c"), Value: b}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if st := l.Stats(); st.Forwarded != 0 {
		t.Fatalf("forwarded %d records to a missing topic", st.Forwarded)
	}
	if err := remote.EnsureTopic(ctx, names.Ingress, 1); err != nil {
		t.Fatal(err)
	}
	got := collect(t, ctx, remote, names.Ingress)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && len(got()) < 5 {
		time.Sleep(50 * time.Millisecond)
	}
	var s string
	for _, v := range got() {
		s += string(v)
	}
	// At least once, in order: a retried batch may repeat a prefix.
	if len(got()) < 5 || s[len(s)-5:] != "01234" {
		t.Fatalf("remote ingress after recovery = %q, want every record in order", s)
	}
}
