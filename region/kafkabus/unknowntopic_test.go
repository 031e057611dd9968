package kafkabus

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

// Concurrent callers share one write (group commit). A caller writing to a
// topic that does not exist must not make the others' records look
// undeliverable: each caller gets the outcome of its own records, so only
// the records for the missing topic are answered ErrUnknownTopic.
func TestUnknownTopicBlamesOnlyItsCaller(t *testing.T) {
	ctx := context.Background()
	emb, err := StartEmbedded(ctx, EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	b, err := New(Config{Brokers: emb.Addrs(), MaxInFlight: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.EnsureTopic(ctx, "there", 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Produce(ctx, core.BusRecord{Topic: "there", Value: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var good, missing, wrong int
	for round := range 40 {
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				topic := "there"
				if i%2 == 0 {
					topic = "gone"
				}
				err := b.Produce(ctx, core.BusRecord{Topic: topic, Key: []byte{byte(round), byte(i)}, Value: []byte("x")})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case topic == "there" && err == nil:
					good++
				case topic == "gone" && errors.Is(err, core.ErrUnknownTopic):
					missing++
				default:
					wrong++
					t.Errorf("produce to %q: %v", topic, err)
				}
			}()
		}
		wg.Wait()
	}
	if wrong != 0 || good != 120 || missing != 120 {
		t.Fatalf("good %d, missing %d, wrong %d", good, missing, wrong)
	}
}
