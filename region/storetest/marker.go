package storetest

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// RunMarker checks core.StoreMarker on stores from open (each call a new,
// empty store): a new store is not initialized; MarkInitialized makes it
// so and is idempotent; a store holding a conversation counts as
// initialized without the mark (stores made before the mark existed).
func RunMarker(t *testing.T, open func(t *testing.T) core.Store) {
	ctx := t.Context()
	marker := func(t *testing.T) (core.Store, core.StoreMarker) {
		s := open(t)
		t.Cleanup(func() { _ = s.Close() })
		m, ok := s.(core.StoreMarker)
		if !ok {
			t.Fatalf("%T does not implement core.StoreMarker", s)
		}
		return s, m
	}
	t.Run("NewThenMarked", func(t *testing.T) {
		_, m := marker(t)
		if ok, err := m.Initialized(ctx); ok || err != nil {
			t.Fatalf("new store: Initialized = %v, %v", ok, err)
		}
		for i := 0; i < 2; i++ {
			if err := m.MarkInitialized(ctx); err != nil {
				t.Fatalf("MarkInitialized #%d: %v", i+1, err)
			}
		}
		if ok, err := m.Initialized(ctx); !ok || err != nil {
			t.Fatalf("marked store: Initialized = %v, %v", ok, err)
		}
	})
	t.Run("DataCountsAsInitialized", func(t *testing.T) {
		s, m := marker(t)
		_, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Create: &core.Conversation{ID: "g:marker"},
			Message: &pb.Message{ConvId: "g:marker", ClientMsgId: "k", Sender: &pb.DeviceAddr{UserId: "a", DeviceId: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := m.Initialized(ctx); !ok || err != nil {
			t.Fatalf("store with a conversation: Initialized = %v, %v", ok, err)
		}
	})
}
