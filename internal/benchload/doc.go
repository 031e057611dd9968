// Package benchload measures a chat server, not its clients: many cheap
// load clients per process drive an external server (chatmesh's edge, or
// a Centrifugo v6 server for comparison) open loop, and the package
// reports what the server achieved — acknowledged and delivered messages
// per second, ack and delivery latency percentiles, the server process's
// CPU seconds per 1,000 messages and its RSS (from /proc/PID) — and
// checks exactly-once, in-order delivery. `chatmesh bench --mode
// pairs|group|idle|reconnect` is its front end and scripts/bench-compare.sh
// (make bench-compare) runs it against both servers.
//
// # Cheap clients
//
// A chatmesh device here (Chatmesh) does the server's real transport
// work: WebSocket, the Noise XX handshake, registration with an identity
// proof (and a registration token: every client shares one address),
// protobuf frames each in its own Noise transport message, sends whose
// responses it matches by req_id, deliveries, and a DeliveryAck per
// delivery (Chatmesh.Acks). It sends opaque random bytes as the envelope
// (no end-to-end encryption), keeps nothing on disk and owns one
// goroutine (its reader). internal/loadgen, by contrast, drives the real
// SDK with end-to-end encryption and fsynced client state
// (`chatmesh bench --mode e2e`, the default).
//
// A Centrifugo device (Centrifugo) speaks Centrifugo's bidirectional
// client protocol in its protobuf format, written here from the
// protocol's definition with protowire (no Centrifugo module in go.mod):
// connect with an HS256 token, subscribe to its personal channel,
// publish, answer pings.
//
// # Scenarios
//
//   - Pairs / Sweep: N 1:1 pairs, both sides sending, at a fixed total
//     rate, or rate after rate on the same connections until a round
//     fails (ack p99 above Config.MaxP99, anything missing, rejected,
//     failed or unanswered, or the generator falling behind its schedule).
//   - Group: one group (up to 500 members), Senders of them sending.
//   - Idle: connection set-up rate and server RSS per idle connection.
//   - Reconnect: every device drops, then reconnects, re-handshakes and
//     syncs at once; time until all caught up (chatmesh only).
//
// Open loop: each pacing goroutine (Config.Workers) sends on a fixed
// schedule, and every body carries its scheduled time, so latencies
// include any time the generator fell behind (reported as send_lag) and
// are not hidden by coordinated omission. Sender and receivers are in one
// process and share its clock.
//
// # Checks
//
// Every body starts with (scheduled time, sender, conversation, counter,
// round) (check.go). Each receiving device counts, per (conversation,
// sender), duplicates and reorders of the counter, and per (conversation)
// duplicates and reorders of the server's seq (chatmesh; Centrifugo has
// none without history). At the end, every acknowledged message missing
// at a member device other than its sender is Missing. A chatmesh sender
// also receives its own messages (the region fans out to every member
// device); those are counted as self_deliveries, not deliveries.
//
// # Life cycle
//
// Every scenario is bounded by Config.Duration and Config.Drain (and by
// ctx); dials by Chatmesh.DialTimeout. Connections are closed before a
// scenario returns. The package has no global state but the random
// filler the bodies copy.
package benchload
