// Package sim is the region simulator: it runs chatmesh as separate OS
// processes under faults, drives it with real clients over the real
// protocol, and proves from what the clients and the directory saw that
// nothing acknowledged was lost, duplicated or reordered.
//
// # The multi-region simulation (RunMeshSim, `chatmesh sim --regions 3`)
//
// RunMeshSim composes four parts, each documented on its own:
//
//   - the mesh as processes (StartMesh, below): per region a broker, a
//     region (sequencer, directory voter, link workers) and an edge, with
//     a fault proxy on every path between regions and from each region to
//     PostgreSQL, the global store;
//   - the traffic (sim/driver): users homed in every region with durable
//     outboxes, 1:1s within and across regions, groups spanning regions,
//     second devices in other regions, devices moving between regions;
//     every send, ack and delivery recorded in a check.History;
//   - the faults: a seeded schedule (NewSchedule) of every class at least
//     once — SIGKILL of a region's processes, of the directory leader, of
//     a broker; partitions of a region from the directory, from the store,
//     from the other regions' links; one-way partitions; link latency
//     spikes — applied in real time (RunSchedule), never overlapping, so
//     a quorum of voters stays up; and a directory prober (dirprobe.go)
//     that reads conversations' homes linearizably from random voters and
//     moves some by planned moves, recording each operation;
//   - the verdict (sim/check, sim/report): after the faults are healed and
//     the traffic drained (or Drain ran out), every acked message delivered to every member
//     device exactly once, one order per conversation on every device,
//     gapless seqs, one writer region per (conversation, epoch), epochs
//     that only grow, and porcupine over the directory history; then a
//     report (JSON: faults, invariants, RTO per region loss, latency
//     during and outside faults) and a timeline SVG.
//
// The verdict has two halves. Safety: a checker violation returns
// ErrInvariant. Liveness (LivenessProblems): the traffic must drain —
// every sent message acked and delivered to every member device — and
// every conversation a region loss hit must accept messages again
// (report.RTO: none NeverRecovered) within MeshSimConfig.MaxRTO (default
// DefaultMaxRTO, 10 s; negative: no bound); otherwise ErrNotLive, with
// its findings in MeshSimResult.NotLive. Once the traffic has started,
// the check runs and the report files are written however the run went
// (a fault that failed to inject, a traffic error, ctx ending); the error
// joins all of it, each part naming the seed.
//
// Same seed, same plan, schedule and send order (the timing of a real
// mesh still varies).
// `make test` runs TestMeshSimulation (96 s of traffic, every fault
// class); `make soak` runs seed after seed for 30 minutes and fails if
// any run was unsafe or not live; its RTO percentiles are over the
// recovered conversations, the never recovered and over-bound counted
// beside them.
//
// # The single-region simulation (Run, `chatmesh sim --regions 1`)
//
// Run runs one `chatmesh dev --regions 1` region as a child process
// (embedded broker, Pebble), drives it with internal/loadgen and SIGKILLs
// it at a fixed interval, restarting it on the same data. Run owns the
// child process and every goroutine it starts; it returns when traffic
// has drained or ctx ends, with the child stopped.
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
