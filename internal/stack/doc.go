// Package stack assembles a whole region in one process — bus, store,
// region services and one edge — the way `chatmesh dev` runs it and the
// way end-to-end tests start it. With no broker and no DSN it runs the
// embedded default (a kfake Kafka broker and a Pebble store under
// DataDir); given Kafka brokers and a PostgreSQL DSN it runs the
// production code path against them. The two differ only in which broker
// and which store are started.
//
// The edge's Noise static key and its self-signed WebTransport
// certificate are kept in DataDir, so clients that pinned them keep
// working across restarts.
//
// Start checks before it changes anything in DataDir: the embedded
// broker's data (kafkabus.CheckEmbeddedData), then the store, whose Open
// verifies before writing; then it starts the broker and the region, whose
// Start checks the store against the bus. A damaged or mismatched data
// directory is an error from Start that says how to recover.
//
// Start returns a running Stack; Shutdown stops the edge first (sessions
// get a SHUTTING_DOWN disconnect), then the region, then the bus and the
// store. Shutdown is idempotent.
package stack
