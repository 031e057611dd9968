package core

import "context"

// StoreMarker is an optional Store capability that makes "a new store"
// well defined, so that a region can refuse to start on an empty store
// when the bus says a previous store existed (it was deleted, or the
// region points at the wrong one). Both stores implement it.
type StoreMarker interface {
	// Initialized reports whether the store was marked initialized or
	// already holds users or conversations (a store made before the mark
	// existed).
	Initialized(ctx context.Context) (bool, error)
	// MarkInitialized records, durably, that this store is in use. It is
	// idempotent. A region calls it only after its start-up checks passed,
	// so that a refused start leaves the store as unmarked as it was.
	MarkInitialized(ctx context.Context) error
}

// PartitionOffsets describes one partition of a topic as a consumer group
// sees it.
type PartitionOffsets struct {
	Partition int
	// Committed is the group's committed offset (the next record it will
	// read), or -1 if the group committed none for this partition.
	Committed int64
	// Start is the partition's first offset still in the log, End its high
	// watermark (one past the last record).
	Start, End int64
}

// OffsetInspector is an optional Bus capability: the committed offsets of
// a consumer group next to the log's bounds, so that a region can tell at
// start-up that a store is missing (the group committed records it has no
// trace of) or that the log lost records the group already consumed (a
// committed offset beyond the log's end).
type OffsetInspector interface {
	// GroupOffsets returns every partition of topic with group's committed
	// offset, in partition order. A topic that does not exist has no
	// partitions (nil, nil).
	GroupOffsets(ctx context.Context, topic, group string) ([]PartitionOffsets, error)
}
