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
//
// # The mesh harness (StartMesh)
//
// StartMesh runs a multi-region mesh as separate OS processes of one
// chatmesh binary (MeshConfig.Binary). Per region (MeshConfig.Regions,
// default DefaultMeshRegions(3)):
//
//   - `chatmesh broker`: the embedded Kafka broker, its data under
//     DataDir/<region>/broker (on 127.0.0.1: kfake binds nothing else);
//     or, with MeshConfig.Kafka, a real cluster per region and no broker
//     process;
//   - `chatmesh region`: sequencer, directory voter and a link worker per
//     other region, on PostgreSQL (MeshConfig.PostgresDSN, one schema
//     MeshConfig.PGSchema shared by every region, topics namespaced by
//     region name), its API and voter on the region's own loopback address
//     (MeshRegion.Host, 127.0.N.1);
//   - `chatmesh edge`: WebSocket only, announced in the directory through
//     its region's voter.
//
// Every path between regions crosses an internal/netproxy proxy of its
// own, per ordered pair (a, b): a's link worker to each of b's brokers
// (`region --link-via`), a's voter to b's raft and HTTP addresses
// (`region --directory-via`); and each region reaches PostgreSQL through
// its own proxy (its --pg DSN names it). A fault can therefore cut exactly
// one path. Ports are fixed at the start, so a restarted process is found
// where it was, on the same data. Every process's stderr is appended to
// DataDir/logs/<region>-<broker|region|edge>.log (LogTail for tests).
//
// Endpoints(region) gives the edge's WebSocket URL and Noise key (what
// client.Config.Edges and ServerKey take), the voter's HTTP address and
// the region API; DirectoryToken and DirectoryAddrs the directory's;
// Leader asks the voters who leads; PathStats the proxies' counters. Stop
// heals, stops edges, regions and brokers (SIGTERM, then SIGKILL after
// StopGrace) and closes the proxies; it is idempotent.
//
// # Faults
//
// Each primitive records a check.Fault (Faults returns them; End is zero
// while one lasts):
//
//   - KillRegion(r): SIGKILL r's region and edge processes;
//     RestartRegion(ctx, r) starts them again and ends the fault.
//   - KillLeader(ctx): SIGKILL the directory leader's region process (its
//     edge stays); RestartRegion ends it.
//   - KillBroker(r) / RestartBroker(ctx, r): r's broker process.
//   - PartitionDirectory(r): r's voter cut from every other, both ways.
//   - PartitionStore(r): r cut from PostgreSQL.
//   - PartitionLinks(r): every link from and to r cut.
//   - OneWayPartition(a, b): every byte a sends to b on the link and
//     directory paths dropped (a's requests on a's connections, a's replies
//     on b's), b's bytes to a flow (netproxy Drop); connections that lost
//     bytes are reset when it ends.
//   - LinkLatency(a, b, d): d more one-way latency on bytes a sends to b
//     over the links.
//
// The network faults return a FaultID; HealFault(id) ends one, Heal all.
// The proxies' state is derived from the set of faults in force, so
// overlapping faults compose. A partition resets open connections and
// refuses new ones at once (a fast failure, not a black hole).
//
// NewSchedule(ScheduleConfig) turns a seed, a duration and the regions
// into a deterministic list of ScheduledFault (at, kind, target, for how
// long): the run cut into slots, one fault per slot, every kind of
// FaultKinds at least once; the same seed gives the same schedule.
// RunSchedule applies one to a Mesh in real time and heals (restarts)
// every fault before it returns, also when ctx ends.
package sim
