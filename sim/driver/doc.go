// Package driver is the region simulator's traffic driver: it drives real
// clients (package client, over the real protocol) against a
// multi-region mesh and records everything they see into a
// check.History for the checker (package sim/check).
//
// # Use
//
//	d, err := driver.New(driver.Config{Regions: regions, StateDir: dir, Seed: 7})
//	err = d.Start(ctx)      // register, link, connect, create groups; traffic starts
//	i := d.AddFault(check.Fault{Kind: "kill-region", Target: "us-east", Start: time.Now()})
//	h := d.Snapshot()       // a copy for continuous checks while it runs
//	d.EndFault(i, time.Now())
//	st, err := d.Wait()     // Duration of sending, the drain, every client closed
//	h = d.History()
//
// Run(ctx, cfg) is New, Start and Wait in one call. Stop ends a run early.
// Start's ctx bounds the setup and the whole run. For continuous checks,
// set Config.Checker (a check.NewChecker): the driver feeds it every
// event as it records it, and the harness calls its Snapshot while the
// run goes on (Snapshot of the driver gives the raw History instead).
// Connected tells where each device is connected now.
//
// # What it does
//
// Config.Seed decides everything random, through Plan (NewPlan computes it
// without connecting): each user's home region (users are spread evenly),
// which users have a second device and in which other region, the 1:1
// pairs (alternately within one region and across regions), the groups
// (up to core.MaxGroupMembers members; a group at least as large as the
// number of regions has a member in each), the moves (times, devices,
// target regions), and the send schedule (Schedule: 1:1 sends every
// 1/DirectRate and group sends every 1/GroupRate, each to a seeded
// conversation from a seeded member device). Same seed, same plan and
// same schedule order; the schedule draws from its own stream, so
// changing a rate does not change the plan.
//
// Every device's edge list is its region's edges, then the following
// regions' edges in Config.Regions order, so a client whose edge or
// region is gone fails over to the next edge, then the next region
// (client.Config.Edges rotation). A user's first device registers
// through that list (so the user is homed in its region unless the
// region's edges all fail); a second device is linked by the first
// (client.Link / RegisterLinked, the QR-code flow) and registers through
// its own region's list. A move closes a device's client and reopens it
// from the same state dir with another region's edges first; its durable
// outbox survives and is resent.
//
// Sends go through client.Send: the message is written to the device's
// durable outbox and sent, and resent, by the client until acked —
// an unreachable edge never fails a send. Each device sends its scheduled
// messages in order from a bounded queue (Config.SendQueue; a full queue
// drops the send and counts "queue-full"). After Duration the driver stops
// sending and waits, at most Drain, until every sent message is acked and
// every member device has it (or it was rejected for good), then closes
// every client.
//
// # What it records
//
// Devices are named "user/N" (N the device number the server assigned).
// History.Members is every conversation's member devices (second devices
// included), set before the traffic starts. Sent is recorded when the
// outbox accepted the message (At is taken just before the Send call, so
// Sent.At <= Acked.At); Acked for every SendAckedEvent; Delivered for
// every MessageEvent on every device — user messages and group membership
// entries — with the seq, the sender's client message id and device,
// and the writer's epoch and region (pb.Message.epoch, region). Entries
// are appended as they happen from many goroutines: the Sent of a message
// may come after its Acked or a Delivered in the slices.
//
// Exactly-once bookkeeping across moves: clients run with ManualCommit,
// and a move stops the device's receiver, commits (client.Commit) every
// conversation up to the last seq recorded, then closes the client. Events
// the receiver had not recorded are handed again by the reopened client,
// so nothing is recorded twice or missed by the driver itself. An ack
// that arrived between the receiver stopping and the close is lost with
// the client's in-memory notices, but its message has left the outbox:
// the driver then records the ack with the seq of the message's first
// delivery (Stats.AcksInferred counts these). The same is done at the
// final close.
//
// Stats has the counts (sent, acked, failed, delivered, unacked and
// missing deliveries at the end), a per-second timeline and errors by
// kind.
//
// # What it does not do
//
// Bodies are not end-to-end encrypted (client.InsecurePlaintextSealer):
// the simulator checks delivery, and the end-to-end sealer's
// key-distribution entries would show as gaps in what devices are handed.
// A device's edge list can pin one Noise key and one certificate hash
// (client.Config.ServerKey, CertHash), so Edge.NoiseKey and CertHash are
// pinned only when every edge of the list has the same one; on a mesh
// whose edges have their own keys nothing is pinned. Devices join no
// conversation after setup (no membership changes during traffic).
//
// # Concurrency
//
// The driver owns its goroutines: per device a receiver (recording the
// client's events) and a sender (its queue), one scheduler and one mover;
// all end before Wait returns. Snapshot, History, AddFault, EndFault,
// AddDirOp and Plan are safe for concurrent use at any time. Snapshot
// copies slice headers cut to their length, so the copy is stable while
// the driver appends.
package driver
