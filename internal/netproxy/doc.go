// Package netproxy is a small in-process TCP proxy that adds one-way
// latency between a client and an upstream, and can partition them. The
// multi-region tests put one in front of every remote region's broker so
// that a link worker's produce path crosses a 40 ms "ocean"; the region
// simulator of the next issue uses it for partitions.
//
// It stands in for Shopify's toxiproxy, which the module proxy here does
// not serve: only the two toxics chatmesh needs (latency, partition) are
// written (and a one-way drop), in a few hundred lines.
//
// # Latency
//
// Every accepted connection is dialed to the upstream and copied in two
// directions, up (client → upstream) and down (upstream → client). Each
// direction is a FIFO delay queue: a chunk read at time t is written at
// t + the direction's latency at the moment it was read. Reading goes on
// while earlier chunks wait, so the delay costs no throughput beyond the
// bandwidth-delay bound below: a stream of requests is pipelined, not
// serialized. Order within a direction is always kept: when the latency
// is lowered at run time, a chunk never overtakes an earlier one (it waits
// for it). A FIN (end of stream) is delayed like data and then forwarded as
// a half-close, so the peer sees it after the latency too.
//
// Each direction holds at most Config.MaxBuffered bytes (default 1 MiB)
// in its queue; when full, the proxy stops reading that direction, so a
// slow reader pushes back on the writer through TCP as it would without
// the proxy, and memory stays bounded (2 × MaxBuffered per connection).
// A direction's throughput is thus at most MaxBuffered / latency (25 MiB/s
// for the defaults at 40 ms).
//
// # Partition
//
// Partition(true) resets every open connection (close with SO_LINGER 0,
// so both peers see a connection reset at once) and refuses new ones: they
// are accepted and reset immediately, without dialing the upstream. This
// models a region that cannot be reached and whose clients notice quickly
// (their reconnects fail until Partition(false)); a black hole that stalls
// connections until the peers' own timeouts fire is not modelled.
//
// # One-way loss
//
// Drop(up, down) discards every byte read in a direction (its end of
// stream too) while the other direction flows, on open and new
// connections: a one-way partition. The region simulator drops a → b on
// both paths between two regions: the up direction of a's proxy towards
// b (a's requests) and the down direction of b's proxy towards a (a's
// replies to b's requests). A stream with a hole cannot resume, so when
// the drop ends every connection that lost bytes is reset (counted in
// Stats.Reset); the others go on. Stats.Dropped counts discarded bytes.
//
// # Routing Kafka
//
// A Kafka client learns broker addresses from metadata, so a proxy in
// front of the bootstrap address alone is bypassed. DialVia returns a dial
// function (for kafkabus.Config.Dial) that sends every connection to an
// upstream address through that upstream's proxy and refuses any address
// no proxy covers, so nothing reaches the cluster around the proxy.
//
// # Life cycle and concurrency
//
// Listen starts the accept loop; Close stops it, closes every connection
// and waits for all goroutines (idempotent). Every method is safe for
// concurrent use. Per connection there are four goroutines (a reader and
// a writer per direction), all owned and awaited by the Proxy.
package netproxy
