// Package sim is the region simulator: it runs a whole chatmesh region as
// a child process (`chatmesh dev`, embedded Kafka broker and Pebble store),
// drives it with many real clients over the real protocol
// (internal/loadgen), injects faults — SIGKILL of the region process at a
// fixed interval, then a restart on the same data — and proves from what
// the clients saw that nothing acknowledged was lost, duplicated or
// reordered: every member device received every acknowledged message
// exactly once, and all devices agree on each conversation's order.
//
// `chatmesh sim` is its command-line front end; `make soak` runs a long
// simulation. Today it simulates one region and one fault kind; the
// multi-region mesh (directory, home regions, region failover, network
// partitions via nftables on per-node loopback addresses) is future work
// built on the same loop.
//
// Run owns the child process and every goroutine it starts; it returns
// when traffic has drained or ctx ends, with the child stopped.
package sim
