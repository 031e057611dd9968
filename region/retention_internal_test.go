package region

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

type nopStore struct{ core.Store }
type nopBus struct{ core.Bus }

// TestIngressExpiredCounted: a committed offset below the log start
// (retention deleted records the sequencer never read) is counted once per
// partition and offset; a group without a commit, or at the log start, is
// not.
func TestIngressExpiredCounted(t *testing.T) {
	r, err := New(Config{}, nopStore{}, nopBus{})
	if err != nil {
		t.Fatal(err)
	}
	offs := []core.PartitionOffsets{
		{Partition: 0, Committed: 5, Start: 9, End: 12},
		{Partition: 1, Committed: -1, Start: 3, End: 3},
		{Partition: 2, Committed: 4, Start: 4, End: 7},
	}
	r.noteExpired(offs)
	r.noteExpired(offs)
	if got := r.Stats().IngressExpired; got != 4 {
		t.Fatalf("IngressExpired = %d, want 4", got)
	}
	if r.Retention() != nil {
		t.Fatal("retention worker on a store that cannot delete")
	}
}

// TestRetentionConfigValidate: contradictory policies are refused.
func TestRetentionConfigValidate(t *testing.T) {
	for _, c := range []RetentionConfig{
		{History: DefaultRetentionMaxAge + 1},
		{ResendWindow: DefaultRetentionMaxAge + 1},
		{MaxAge: DefaultResendWindow / 2},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := (RetentionConfig{}).Validate(); err != nil {
		t.Errorf("default policy: %v", err)
	}
}
