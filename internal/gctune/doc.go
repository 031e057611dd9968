// Package gctune gives the Go garbage collector a heap floor: while the
// live heap is small, the collector may let a fixed amount of garbage
// (the headroom) pile up between collections instead of only as much as
// the live heap (GOGC=100).
//
// Why: a chatmesh server allocates per message (Kafka client and broker
// requests, protobuf, contexts), and with a small live heap GOGC=100
// collects many times a second under load; the collector's assists and
// its share of the two cores show up in the latency tail. A fixed
// headroom of a few tens of MiB is cheap for a server and cuts the number
// of collections several-fold while the heap is small, and changes
// nothing once the live heap is larger than the headroom (GOGC stays at
// its base, so memory per connection at scale is what it was).
//
// How: one tuner per process; after every collection (a cleanup attached to a sentinel object,
// re-armed each cycle) the tuner reads the live heap from runtime/metrics
// and sets GOGC to max(base, headroom/live×100), capped. An explicit GOGC
// in the environment wins: the tuner then does not run.
package gctune
