// Package loadgen drives chatmesh with many real clients over the real
// protocol (client SDK → edge → Kafka → sequencer → store → fan-out) and
// measures what they see: throughput, sent-✓ latency and delivery latency
// percentiles. It also checks what it measures: every acknowledged message
// must reach every member device exactly once, and all devices must see a
// conversation in the same seq order. `chatmesh bench --mode e2e` (the
// default) is its command-line front end; internal/benchload measures the
// server with cheap clients instead; end-to-end tests use it as a traffic source.
//
// Message bodies carry the send time (unix nanoseconds) and the sender's
// counter; latencies are therefore measured with one clock, so sender and
// receivers must run in one process (they do).
//
// Every loop is bounded by Config.Duration and Config.Drain.
package loadgen
