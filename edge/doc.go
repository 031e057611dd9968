// Package edge terminates chatmesh client connections: WebSocket and
// WebTransport listeners, the Noise handshake (crypto/noiseconn), device
// authentication, per-device sessions, request validation, rate and
// connection limits, and the push path from the region back to the
// devices. PROTOCOL.md at the repository root is the client's view of
// everything here.
//
// # What it does
//
// A connection is accepted on /v1/ws (one binary WebSocket message per
// Noise message) or /v1/wt (one client-opened WebTransport stream, each
// Noise message prefixed with a 2-byte big-endian length). Every TCP and
// QUIC connection is counted at accept, before a byte is read, against a
// total and a per-IP cap (Config.MaxConns, MaxAcceptPerIP; excess is closed
// at once), and everything before a session exists is bounded by
// Config.HandshakeTimeout (HTTP request headers and body, an idle
// kept-alive HTTP connection, the QUIC and Noise handshakes). An Accept
// error (EMFILE, ...) never ends a listener: it is counted and retried
// after a backoff. A listener that stops anyway while the edge runs is
// logged at error, counted and reported on Edge.Failed; the process
// should then exit non-zero (chatmesh dev and chatmesh edge do). After
// the upgrade the per-IP session limit (MaxConnsPerIP) applies, then the
// XX handshake with a ServerHello payload; the client's proven static key is passed to
// Backend.Authenticate. A registered device's session is reported with
// Backend.SessionOpened (before it serves any request) and
// Backend.SessionClosed at the end; an unregistered key gets a session that
// accepts only register and ping until Register succeeds.
//
// Each ClientFrame is size-checked (Config.MaxFrameBytes, at most
// core.MaxClientFrameBytes, advertised as ServerHello.max_frame_bytes;
// a send's envelope at most core.MaxEnvelopeBytes, advertised as
// max_envelope_bytes), decoded, and charged by its cost (the
// cost table, frameCost in admission.go) to one of the session's two token
// buckets and to the same budget of its client IP, shared by all sessions
// from that IP: reads (sync, history, list_conversations, lookup_user,
// fetch_bundle, fetch_device_list, presence_subscribe) to the read
// budget — the pure reads are answered concurrently, up to 8 at a time —
// and every other frame to the message budget. A register from a session
// that is not a device yet passes the registration limits first (per-IP
// bucket, optional proof of work, operator tokens; AdmissionConfig), and
// writes awaiting the region's answer are bounded per session
// (AdmissionConfig.MaxSessionInFlight, default 512) and per edge
// (MaxIngressInFlight, default 4096) — admission control, ingress.go: a
// write is counted from its produce until its Response comes back on the
// edge topic, so an overloaded region shows as refusals, not as queueing;
// anything over a limit is RATE_LIMITED with retry_after_ms, at once and
// with nothing written. Reads and key-material calls (the
// reads plus presence_subscribe, upload_prekeys, publish_device_list,
// set_privacy) go
// to Backend.Query; ping is answered here; writes
// (send, ack, read, create_group, modify_members, typing) are validated and
// produced as pb.IngressRecord to Config.IngressTopic keyed by conversation
// id, with an Origin naming this edge, the session, the request id and the
// device. Their replies come back on the edge's own topic ("edge."+ID) as
// pb.EdgeRecord: with session_id to that session only, otherwise to every
// session of every target device, a delivery's per-device ciphertexts
// stripped to the receiving device's own. The frame is encoded once per
// record — its bytes are taken as they are from the EdgeRecord and shared
// by every target's queue — and only a delivery with per-device
// ciphertexts is encoded again per device. A record may be a bundle of
// records (what one region batch has for this edge): they are handled in
// order, each as a record of its own, a bad one skipped alone
// (chatmesh_edge_edge_record_bundles_total counts bundles). The edge topic has one
// partition, read by one consumer: per record it decodes once and appends
// to the targets' queues, while encryption and socket writes run on the
// sessions' drain goroutines, in parallel; so the one consumer keeps each
// device's frames in order without being the bottleneck. pb.PresenceRecord events on
// Config.PresenceTopic go to the sessions subscribed to the user; a
// session is subscribed only to the users its presence snapshot (the
// region's decision of who it may see) returned — events arriving while
// the snapshot is read are held, then delivered after it for those users
// and dropped for the rest (presence.go).
//
// With Config.Locate set (a region/geo Locator's Handler), the WebSocket
// listener also serves GET /v1/locate (LocatePath): the nearest healthy
// edges for the asking client. Such requests pass the same accept limits
// and timeouts, and each client (Config.LocateClientAddr, which believes
// X-Forwarded-For only from trusted proxies, else the TCP peer) is
// charged to a locate budget (AdmissionConfig.LocatePerSecond,
// LocateBurst); over it: 429 with Retry-After (locate.go).
//
// # What it does not do
//
// It never reads the database or the directory, never parses envelopes
// (they are E2E ciphertext), never waits for a write to be sequenced, and
// holds no E2E session state. It imports core, core/pb and crypto/noiseconn
// only — never region/ or sim/; Backend is the narrow interface it needs
// from its region (region.API implements it).
//
// # Sessions and REPLACED
//
// One session per device per edge, and the newest always wins: sessions
// are numbered (a generation) under the edge's lock when their Noise
// handshake completes, and of two sessions of one device the later
// handshake wins, whatever order their backend calls return in. A per-
// device lock orders SessionOpened, the switch of pushes to the new session
// and SessionClosed of the old one, so the route the region holds always
// names the session the edge pushes to. The older session receives
// Disconnect{REPLACED, reconnect=false} and is closed — after the new one
// has been reported with SessionOpened (so the route never disappears and
// presence does not flicker), or at once, without touching the route, if
// it completes authentication after a newer one is already in place. This
// matches the store's single route per device. Because of it the token bucket of a
// session is the device's rate limit on this edge; a replacing session
// inherits the old one's bucket, so reconnecting does not refill it.
//
// # Life cycle
//
// New checks the Config (zero values get documented defaults; ID is
// required) and makes a Noise key and a self-signed certificate when none
// are given. Start ensures the edge topic, starts the two tail consumers
// (no consumer group) and waits until both are positioned (OnReady), calls
// Backend.EdgeStarted to drop routes a previous process left behind, and
// then listens. A tail consumer that fails later is restarted after a
// pause; when the edge-topic consumer is positioned again every session is
// ended with Disconnect{UNAVAILABLE, reconnect=true}, because pushes
// produced in between were missed and a reconnecting client syncs them.
// With Config.Ready set (the region's readiness: a sequencer that consumes
// and, in a mesh, holds its directory lease), the edge polls it every
// ReadyInterval and stops serving once it has said "not ready" for
// NotReadyGrace in a row (default 1 s, so a blip does not churn
// sessions): a new connection is closed before the Noise handshake with
// UNAVAILABLE (close code 4012 / WebTransport 12, reason
// NotServingDetail), one that completes its handshake meanwhile gets
// Disconnect{UNAVAILABLE, NotServingDetail, reconnect=true}, and so does
// every open session — clients move to the next edge of their list,
// another region's. The first ready answer serves again. The stop and
// the return are logged once each and counted (Stats.NotServing,
// NotReadyStops, NotReadyRefused, NotReadyClosed) — ready.go.
// Shutdown is idempotent: it stops accepting, sends every
// session Disconnect{SHUTTING_DOWN, reconnect=true}, closes them (each
// reports SessionClosed), stops the consumers and waits for every
// goroutine the edge started.
//
// # Concurrency
//
// An idle session has one goroutine, owned by the edge's WaitGroup (the
// net/http handler that upgraded it returns at once): it opens the
// session and then reads, handling one frame at a time (so a client's
// requests are processed in order). Work that needs a deep stack but is
// rare — the handshake, authentication, session opening, registration,
// key uploads, presence subscriptions — runs on a short-lived goroutine
// the session waits for (onFreshStack), the set-up function returns
// before the read loop starts, and between frames a WebSocket session
// waits for its client's bytes in a shallow poll of the socket (MSG_PEEK,
// waitread_unix.go) rather than inside the WebSocket library: so the session's
// own stack stays at 4 KiB, the size the runtime keeps for a goroutine
// whose deepest call needed it. Pushes never block: they append the
// encoded frame to the session's bounded queue (Config.SendQueue frames,
// SendQueueBytes bytes, counted until written) and, if none runs, start a
// drain goroutine that writes what is queued in batches — each frame its
// own Noise transport message and WebSocket message, but one socket write
// per batch, framed by the edge itself rather than one library write per
// message (corkWriter in transport.go, which follows the library's own
// frames so that a batch never lands inside one) — and when the queue is empty waits up to a second to drain
// another session's before it exits, so a stream of pushes reuses
// goroutines whose stacks have already grown (outqueue.go). A full
// queue ends the session with Disconnect{UNAVAILABLE, reconnect=true},
// counted as Stats.DroppedSlowClient (drop reason "slow consumer"); the
// client repairs the gap with sync when it reconnects. Any goroutine may
// end a session (terminate); a drain then sends the final Disconnect
// ahead of anything still queued and closes the transport, which ends the
// reader. One sweeper goroutine per edge ends idle sessions (IdleTimeout)
// and frees in-flight slots whose answer is overdue. The session and
// subscription indexes are guarded by one mutex that is never held across
// I/O. Bus handlers run on the bus's goroutines and only enqueue.
//
// # Memory per connection
//
// An idle authenticated WebSocket session costs about 11 KB (2,000 and
// 5,000 sessions: 6.9–7.2 KB heap, 4.1 KB stack, one goroutine), down
// from 16 KB (8.2 KB stack: the handshake grew it) and before that about
// 68 KB (48 KB heap — of which 24 KiB
// a preallocated 1,024-slot queue, 8 KiB net/http's buffers and 2.5 KB
// the upgrade request net/http's handler kept alive — 19 KB stack, three
// goroutines). What is
// left: the reader's stack, the WebSocket library's state (~1.4 KiB), a
// 512-byte read buffer, the Noise cipher states, the token buckets and
// the indexes. The queue's backing array exists only while frames wait;
// a batch's write buffer is pooled. Measure with
//
//	go test ./edge/ -run '^$' -bench BenchmarkIdleConnections -benchtime=1x
//
// (clients in a child process, so the figure is the edge's alone).
//
// # Errors on the wire
//
// Before the handshake completes errors are close codes: WebSocket status
// 4000+ErrorCode, WebTransport session error code = ErrorCode
// (TOO_MANY_CONNECTIONS, HANDSHAKE_FAILED, SHUTTING_DOWN, and UNAVAILABLE
// while the region cannot sequence — see Config.Ready). Afterwards a
// failed request is a Response with an error code and the session goes on
// (MALFORMED_FRAME, FRAME_TOO_LARGE, MESSAGE_TOO_LARGE, RATE_LIMITED, INVALID_ARGUMENT,
// UNAUTHENTICATED, UNAVAILABLE when the ingress produce failed — the
// client retries with the same ids); a fatal condition is a Disconnect frame
// followed by the close code (a transport message that fails to decrypt,
// one above the 65535-byte Noise limit, idle timeout, replacement, slow
// consumer, shutdown).
//
// Every frame the edge sends fits one Noise transport message: the limits
// above leave room for the region's framing. A frame that still would not
// (a bug elsewhere) is never sent, because sending it would end the
// session: it is counted (Stats.TooLargeToSend) and logged at error, a
// Response becomes an INTERNAL error for the same req_id, and anything
// else is dropped (sync repairs a missed delivery). A failed write to the
// client ends the session, counted (Stats.WriteErrors) and logged.
//
// # Observability
//
// Stats returns counters (connections, rejections per reason, frames,
// produced records, drops); Collector exports the same numbers to
// Prometheus as chatmesh_edge_* metrics (labelled edge), plus three
// latency histograms: chatmesh_edge_ingress_produce_seconds (a write's
// admission → its ingress record acknowledged by Kafka),
// chatmesh_edge_write_answer_seconds (admission → the region's answer at
// the edge: the whole round trip through sequencing and commit, from the
// in-flight slot's own timestamp, no extra state) and
// chatmesh_edge_push_seconds (an edge record's Kafka timestamp → its
// frames queued to the sessions). Each is one atomic observation per
// write or per edge record. The process serves them on its admin address
// (internal/admin). Logs never contain frame contents or keys.
package edge
