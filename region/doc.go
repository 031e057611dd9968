// Package region holds a region's services: the sequencer that consumes the
// ingress topic, the fan-out to edges, delivered/read cursors turned into
// receipts, presence, typing, conversation membership, device registration,
// sync and history. Storage and transport come in through core.Store and
// core.Bus; region/pebblestore, region/pgstore and region/kafkabus implement
// them.
//
// # Write path
//
// Edges produce pb.IngressRecord to the ingress topic keyed by conversation
// id. The sequencer (consumer group "sequencer") handles one record at a
// time per partition: it validates membership, calls Store.Append (which
// de-duplicates on conversation + sender device + client message id and
// assigns the next gapless seq in one transaction), then produces the ack to
// the origin session and one pb.EdgeRecord per edge hosting an online member
// device (fan-out per edge, not per member), and only then returns so the
// bus commits the offset. With a bus that batches (core.BatchConsumer) the
// sequencer takes up to MaxBatch records a partition already holds, stores
// them one by one in order, and produces all their outputs in one call:
// one Kafka round trip per batch instead of per record under load, and no
// waiting when idle. A replay after a crash finds the idempotency key,
// gets the stored entry back and re-emits the ack and deliveries; clients
// drop duplicates by (conversation, seq).
//
// Membership changes, delivery acks and read markers travel the same
// partition as the conversation's messages, so they are ordered with them.
// Typing indicators are fanned out and never stored.
//
// # Read path
//
// API implements the edge's Backend: device authentication by Noise static
// key, registration (with a required proof of possession of the identity
// key and at most core.MaxDevicesPerUser devices), session open/close
// (routes and presence), and queries (sync, history, conversation list,
// user lookup, presence snapshots) and
// the end-to-end key material (prekey uploads and bundles, each one-time
// prekey handed out at most once and at a limited rate per requester and
// per target, PrekeyFetchLimits; signed device lists — see prekeys.go),
// verifying every signature it can and storing public keys only. A
// session's route is stored before the session serves requests, and the
// fan-out reads routes after the append, so every entry is either in the
// session's first sync or pushed to it live.
//
// # Concurrency
//
// Region and API are safe for concurrent use. Region.Start launches the
// sequencer and the notifier goroutines; Shutdown stops and awaits them.
package region
