// Package directory is chatmesh's global directory: a hashicorp/raft group
// with one voter per region that holds the slowly changing placement of the
// mesh (../shared/DESIGN.md §4). It is not on the per-message path: every
// region reads its local applied copy and watches it for changes.
//
// # What it holds
//
//   - regions: name, lat/long, public edge URLs, Noise static key (hex),
//     link endpoint, healthy flag, and the region's edges (Region, Edge:
//     id, WebSocket and WebTransport URLs, certificate hash, Noise key,
//     healthy flag);
//   - users → home region;
//   - conversations → (home region, owner epoch) (ConvHome).
//
// # Writes
//
// Every write is a Command, applied deterministically by the FSM:
//
//   - PutRegion: create or replace a region (unconditional, but an
//     existing region keeps its stored health: see failover). A region
//     whose Edges is nil keeps the edges stored for it (regions announce
//     themselves at every start, edges separately); an empty, non-nil list
//     removes them. Edges given here are validated like PutEdge's.
//   - PutEdge(region, edge): create or replace an edge by ID inside an
//     existing region. Edge IDs are unique across the directory: an ID
//     held by another region moves (it is removed there, and both regions
//     emit a ChangeRegion). An edge needs an ID (at most 128 bytes), a WS
//     or WT URL, and hex CertHash / NoiseKeyHex (either may be empty); a
//     region holds at most MaxEdgesPerRegion (256) edges.
//   - SetEdgeHealth(region, id, healthy): ErrUnknownEdge when the region
//     does not hold that edge.
//   - SetRegionHealth(region, healthy).
//   - SetUserHome(user, region, ifAbsent): with ifAbsent an already homed
//     user is left alone and ErrExists is returned with the stored home
//     ("a user's home is the region they first register in").
//   - SetConvHome(conv, region, expectEpoch): compare-and-set on the owner
//     epoch. If the stored epoch (0 when the conversation is absent, so
//     expectEpoch 0 means create-if-absent) equals expectEpoch, the home is
//     set and the epoch becomes expectEpoch+1; otherwise nothing changes and
//     an *EpochError carrying the stored epoch is returned, which matches
//     core.ErrFenced under errors.Is.
//   - FailRegion(name) (fail_region): marks the region unhealthy and
//     moves every user and every conversation homed there to the nearest
//     other healthy region, each conversation at its epoch + 1 (owner
//     kept), in one replicated step; see "Heartbeats, failure detection
//     and failover". Without another healthy region it is refused with
//     ErrNoHealthyRegion and changes nothing. On a region already
//     unhealthy it only moves what is still (or again) homed there, so
//     repeating it is harmless. Result: Home = where they went, Moved =
//     conversations, MovedUsers = users.
//   - RestoreRegion(name) (restore_region): marks it healthy again. Homes
//     stay where failover put them: moving back is a planned move
//     (MoveUser, MoveConversation).
//
// Writes naming a region that was never put fail with ErrUnknownRegion. A
// refused command changes nothing (only the applied index advances).
//
// Writes may be issued on any voter: the leader applies them with
// raft.Apply (Config.ApplyTimeout); a follower forwards the encoded command
// to the leader's forwarding endpoint (POST /directory/v1/apply on
// Peer.HTTPAddr) and retries, with backoff, while it certainly was not
// applied (no leader known, connection refused, "not leader" reply, raft
// ErrNotLeader/ErrEnqueueTimeout). When the outcome is unknown (leadership
// lost after the entry was appended, the leader shut down or the reply was
// lost) the write returns ErrUncertain; because writes are conditional the
// caller re-reads (Sync) and retries. A forwarded request carries the
// header X-Chatmesh-Directory-Forwarded; a voter that receives one and does
// not lead answers 421 rather than forwarding again.
//
// # HTTP endpoints, authentication, operators
//
// Every voter serves, on Peer.HTTPAddr:
//
//	POST /directory/v1/apply      an encoded Command. From a voter (marked
//	                              forwarded): applied if this voter leads,
//	                              else 421. From anyone else (AdminClient):
//	                              applied through the leader wherever it is,
//	                              like a local write. 200 with the Result
//	                              JSON (its code carries a refusal).
//	POST /directory/v1/barrier    the leader's read index (voters only)
//	POST /directory/v1/heartbeat  {"region": name}: a region's heartbeat,
//	                              answered by the leader (forwarded like
//	                              apply) with HeartbeatReply JSON; 404
//	                              unknown_region for a region never put
//	GET  /directory/v1/status     Status: id, leader, is_leader,
//	                              applied_index, voters, state {regions with
//	                              their edges, users: count, convs: count};
//	                              on the leader with DetectFailures also
//	                              heartbeat_age_ms {region: ms since its
//	                              last heartbeat, -1 none since it leads}
//	GET  /directory/v1/conv?id=   {conv, region, epoch, applied_index}
//	GET  /directory/v1/user?id=   {user, home, applied_index}
//	GET  /directory/v1/convs?after=&limit=
//	                              {convs: [{conv, region, epoch}], next,
//	                              applied_index}: conversations in id order
//	                              after `after`, limit 1..1000 (default
//	                              100); pass next as after for the next
//	                              page ("" at the end)
//	GET  /directory/v1/regions    {regions: [Region with its edges], applied_index}:
//	                              every region by name, edges by id (what
//	                              an edge's locator reads, geo.CachedEdges)
//
// The GETs answer from the voter's applied copy; with linearizable=1 the
// voter runs Sync first. Status never lists users or conversations (there
// may be millions): it counts them; the regions reply (and Status's
// regions) is bounded because regions are few (one per data-centre area, a
// handful) and each holds at most MaxEdgesPerRegion (256) edges of at most
// a few hundred bytes (each field at most 2 KiB): about 100 KiB for a
// region with 256 typical edges, within the 16 MiB an AdminClient reads
// of a reply; ConvsAfter pages scan the map under the
// read lock (O(n log limit)), an operator's tool. Errors of everything but
// the voter-to-voter path are JSON {"code", "error"}: 400 bad_request or
// bad_command, 401 unauthorized, 404 not_found, 503 uncertain or closed,
// 504 no_leader (no leader answered within 3×ApplyTimeout).
//
// Authentication: with Config.Token set, every request must carry
// "Authorization: Bearer <token>" (compared in constant time), and voters
// send it when they forward, so all voters share one token; a voter whose
// token differs gets ErrUnauthorized on forwarded writes rather than
// retrying forever. Without a token Open refuses a non-loopback HTTPAddr
// (CheckListen, ErrOpenEndpoint): off loopback a token is required. The
// token covers HTTP only: the raft TCP transport (Peer.RaftAddr) is not
// authenticated and must stay on a private network.
//
// Config.Dial, when set, opens every connection a voter makes to another
// (raft's stream layer and the forwarding client): the region simulator
// routes each ordered pair of voters through its own fault proxy with it
// (`chatmesh region --directory-via ADDR=VIA`). The raft listener and the
// advertised peer addresses are unchanged.
//
// AdminClient is the client of these endpoints (`chatmesh directory`):
// Status, Regions, Conv, UserHome, Convs, Apply, PutEdge, SetEdgeHealth,
// SetRegionHealth, FailRegion, RestoreRegion, Heartbeat (for a region
// process that is not a voter), and the two moves. MoveConversation reads the epoch
// linearizably, then compare-and-sets the new home on it; a concurrent
// change (EpochError) or an uncertain outcome makes it re-read and retry,
// up to 5 times; moving to the current home is a no-op that reports it.
// MoveUser (OpMoveUser) sets the user's home and moves every conversation
// the user owns — ConvHome.Owner, recorded when the conversation was
// claimed: a group's creator, a 1:1's initiator — to it, each at its epoch
// + 1, in one replicated step. Conversations the user is only a member of
// stay where they are (move them with MoveConversation). The step scans
// every conversation of the applied copy: an operator action, not a
// per-message one.
//
// # Heartbeats, failure detection and failover
//
// Every region heartbeats: Directory.Heartbeat(ctx, region, echo) on its
// own voter, or AdminClient.Heartbeat (POST /directory/v1/heartbeat,
// {"region", "echo"}) from a process that is not one. A heartbeat goes to
// the leader wherever it is (forwarded like a write, retried while no
// leader answers) and is never written to the raft log. Before answering,
// the leader confirms with a quorum that it still leads (raft
// VerifyLeader) and lets its FSM catch up with the log it holds, then
// replies with HeartbeatReply: the region's health in its applied copy,
// its applied index, its id and term, the lease (LeaseMS) and FailAfterMS,
// the regions it has not heard from for three heartbeat intervals
// (Silent: likely lost; others stop forwarding to them), and a Token (its
// term and its clock when it answered). The region echoes the token of
// the last reply it acted on in its next heartbeat, and the leader keeps,
// in memory, the time of the newest echoed reply of its own term as when
// it last heard from the region: a request alone proves nothing, since a
// region whose replies are lost (a one-way partition) cannot renew its
// lease either, and must be failed like a silent one.

// With Config.DetectFailures, the voter that leads runs the failure
// detector every Config.DetectInterval (default FailAfter/10): a healthy
// region it has not heard from for Config.FailAfter (default 5 s) is
// failed with fail_region through raft, in one deterministic step. Silence
// is counted from the latest of: the region's last heartbeat, the moment
// this voter was first seen leading in its current term, and the moment
// the detector first saw the region healthy (just put, or restored). So a
// new leader, which has no history, judges nobody before FailAfter has
// passed since it took over (the grace period): killing the leader does
// not fail every region at once. A refused or uncertain attempt is not
// repeated for that region before another FailAfter. Times come from
// Config.Now (default time.Now). DetectFailures is off by default: turn it
// on only once every region heartbeats, or silent regions are failed.
//
// The nearest healthy region is the one at the smallest great-circle
// distance (haversine, mean Earth radius) from the failed region's
// lat/long, compared in whole metres, ties broken by the smaller name.
// Rounding to metres keeps voters built for different CPUs (where Go may
// fuse a multiply and an add) in agreement unless a distance falls within
// an ulp of a half metre; the voters of one directory should run one
// build.
//
// A failed region that heartbeats again is told Healthy=false and stays
// failed: it learns it was deposed (its homes moved, at higher epochs),
// forwards what it still holds to the current homes and, after RejoinAfter
// of answered heartbeats, rejoins with restore_region By "rejoin" — which
// the FSM grants only when the failure detector failed the region
// (Region.FailedBy "detector"). A region an operator failed (fail_region
// or set_region_health down by anyone but the detector, also after the
// detector) is held until an operator restores it (ErrHeldByOperator).
// Restoring moves no home back, so a flapping region cannot bounce its
// homes. put_region of a region that exists keeps its stored health and
// FailedBy (a region re-announcing itself at start does not restore
// itself), and nothing is homed in a failed region: set_user_home,
// set_conv_home (claims and moves) and move_user naming one are refused
// with ErrRegionUnhealthy (code region_unhealthy), so a deposed region that
// has not yet learnt it cannot claim new conversations.
//
// The lease contract (the region side is region.Lease). A region sequences
// only while it holds its lease. A reply renews it to the SEND time of its
// heartbeat plus Config.Lease (default 2 s, or 2/5 of FailAfter if
// shorter; Open refuses a lease above 2/5 of FailAfter), and only when
// (a) the reply came within a lease of that send and the region's copy
// has applied the reply's index (it sees every failover the leader had
// applied), and (b) the heartbeat was sent within FailAfter - 2 x Lease of
// receiving the reply whose token it echoed. Why that is enough: the
// leader fails a region no sooner than FailAfter after the newest echoed
// reply it answered at T. The region received that reply within a lease
// of T, sent its next heartbeat within FailAfter - 2 x Lease of that, and
// renews to that send plus a lease: before T + FailAfter. A leader that
// took over later judges nobody before FailAfter after its takeover, which
// came after every answer of the old leader (each confirmed its leadership
// with a quorum first). So a region cut off from the directory majority,
// or from its replies, stops before the directory can have failed it.
// This holds with clocks that run at about the same rate (the region
// measures on its monotonic clock, the leader on its own); it needs no
// synchronised clocks. A reply with Healthy=false keeps the lease: the
// region's copy shows every home moved away, so it only forwards. Where
// the contract does not hold (a paused process, a step that outlives the
// lease), the store's per-conversation epoch fence still keeps two
// sequencers from both writing one conversation: the fence, not the
// lease, is what guarantees one writer; the lease is what keeps a
// cut-off region from wasting the time until the fence refuses it.

// # Command and snapshot encoding
//
// A command in the raft log (and a forwarded request body) is one version
// byte (1) followed by the JSON of Command ({"op":"set_conv_home",
// "conv":…, "home":…, "expect_epoch":…}); unknown versions, ops or fields
// are refused with ErrBadCommand, deterministically on every voter. At most
// 64 KiB. The FSM's result (Result: code, stored home and epoch) is also the
// body of a forwarded reply. A snapshot is one version byte (1) followed by
// the JSON of State (all three maps plus the index of the last applied
// command), written by FSM.Snapshot/Persist and read by FSM.Restore.
//
// # Bootstrap and storage
//
// Config.Peers is the full, identical voter set on every voter. When
// Config.Dir holds no raft state (raft.HasExistingState), the voter calls
// raft.BootstrapCluster with all peers as voters; every voter doing so with
// the same configuration is one bootstrap, and the first election decides
// the leader. A voter with existing state just restarts and catches up from
// the leader's log or an installed snapshot. Membership changes are not
// supported yet. Dir holds raft.db (raft-boltdb/v2: log and stable store)
// and snapshots/ (file snapshot store, 2 retained). The raft transport is
// TCP bound to Peer.RaftAddr, which must be a concrete host:port.
//
// # Reads
//
// Region, Regions, UserHome, Conv and State read the local applied copy:
// possibly stale, but monotonic on one voter (the copy only moves forward,
// also across a restart since the voter replays its own log). Sync is the
// linearizable read barrier (a read index): the leader commits a
// raft.Barrier and reports its applied index, the caller waits until its
// local copy has applied at least that far; reads made after Sync returns
// observe every write that completed before Sync was called.
// ConvLinearizable and UserHomeLinearizable are Sync plus the read. Sync is
// forwarded like writes and retried on any failure (it changes nothing).
//
// # Watch
//
// Watch(ctx) returns a bounded channel (Config.WatchBuffer, default 256) of
// Changes applied on this voter after the call, in log order. A watcher that
// falls behind loses its buffered changes and gets one ChangeResync instead
// (never blocking raft); a snapshot restore also sends ChangeResync. On
// ChangeResync re-read what you cache (Regions/State). The channel closes
// when ctx ends or the Directory closes.
//
// # Life cycle
//
// Open starts a voter (raft, its transport, the forwarding server); Close
// stops them all, closes the stores and every watch channel and waits for
// the goroutines it started; it is idempotent. Writes and barriers in
// flight at Close end with ErrUncertain/ErrClosed: waiting on a raft
// future also ends at Close or when the caller's context does, because
// raft (v1.7.3) leaves the futures of committed entries still queued for
// the FSM unanswered when it shuts down. The HTTP server gets up to 5 s for
// requests in flight; connections that never sent a request are closed
// (http.Server.Shutdown alone would wait 5 s for each). raft's hclog output is routed
// to the injected slog logger at warn and above; info is discarded.
//
// # Not done yet
//
// (Edges announce themselves with PutEdge and mark themselves unhealthy
// on a clean stop — in `dev` and `chatmesh edge --directory-addr` — and
// their locators read DirectoryEdges or, out of process, GET
// /directory/v1/regions through geo.CachedEdges.)
//
// (The region side of failover is region.Lease: heartbeats, the lease
// gating the sequencer, a deposed region forwarding and rejoining; `dev`
// and `chatmesh region` turn DetectFailures on unless --manual-failover.)
//
// Edge failure detection, membership changes, TLS on the HTTP endpoints
// (the bearer token travels in clear: keep them on a private network),
// and authentication of the raft transport.
package directory
