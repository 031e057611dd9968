// Package check holds what the region simulator records (History) and
// the invariants it checks over it. It is pure code over a recorded
// history: no processes, no network, no clock.
//
// # Use
//
//	res := check.Check(h)              // after the run has drained
//	if err := res.Err(); err != nil {  // names each violated invariant
//		t.Fatalf("seed %d: %v", seed, err)
//	}
//
// For checking while the run goes on, feed a Checker as events happen
// (NewChecker; AddMembers, AddSpan, Sent, Acked, Delivered, DirOp) and
// call Snapshot every few seconds; Final at the end gives what Check
// gives. CheckWith takes Options (examples kept per kind, porcupine's time
// budget, where to write porcupine's HTML visualization).
//
// # What the history must hold
//
// Names are the driver's: a device is one string ("user/device") used
// alike in Members, Sent.Device, Acked.Device, Delivered.Device and
// Delivered.From; a message is (conversation, sending device, client
// message id).
//
//   - Members: every member device of every conversation, the sender's
//     own devices included. A device that joined or left during the run
//     is given a MemberSpan (Spans) instead: the seqs it must receive.
//   - Sent: every message the driver handed to a client's outbox.
//   - Acked: every SendAckedEvent (repeats included), also for outbox
//     entries the driver did not Send itself — the end-to-end sealer's
//     group key-distribution entries take seqs too, and an ack is the
//     only way the history learns of them (they are never handed to an
//     app). The driver must not lose acks (Client.Events drops notices
//     when its queue is full: size NoticeQueue, or fill gaps with
//     WaitSent results).
//   - Delivered: every MessageEvent of every device, in the order the
//     device received them, membership entries included (MsgID "" for an
//     entry without a client message id: a system entry, identified by
//     seq alone), with Epoch and Region from pb.Message. The driver must
//     run clients with ManualCommit and Commit after recording each event
//     (see below).
//   - Dir: the directory operations the harness made (reads with
//     linearizable=1, CAS moves), with call and return times.
//
// The final check assumes the run has drained: every fault healed, every
// outbox empty or given up, every device synced after that.
//
// # The invariants
//
// Lost — every message the driver sent that the system sequenced (it was
// acked, or delivered to any device) is delivered to every member device
// of its conversation whose span covers its seq. The sender's own device
// is a member like any other and must receive it: the client stores its
// own messages (they come back by push or sync, PROTOCOL.md §7.2) and
// hands them to the app as MessageEvents (client/events.go), and its
// store is gapless from its join point, so it cannot skip one. A message
// delivered to one device but never acked is in the log and is required
// everywhere too. Outbox entries the driver did not send (key
// distribution) are not required anywhere. Checked only at the end; a
// snapshot counts the missing deliveries as Result.Pending instead. A
// conversation with sent messages but no members is counted in
// Result.Unchecked (Lost is vacuous there; expect 0). Deliveries to a
// device that is not a member are not checked.
//
// Duplicated — no device receives one (conversation, seq) twice, and no
// message is sequenced twice: a message (conversation, sender, client
// message id) is at one seq only, whoever reports it (two acks with
// different seqs, or deliveries of it at two seqs). The client drops an
// entry at or below its stored head (recvState), so a sync after a
// reconnect never hands an entry again within one client's life; across
// a restart of the client it hands again what the app had not
// committed, which is why the driver must use ManualCommit and Commit
// after recording: any repeat is then a real duplicate.
//
// Reordered — one order per conversation: a (conversation, seq) is one
// entry for every device and every ack (a conflict is reported once per
// seq and entry, and the same disagreement is not also counted as a
// duplicate); and each device receives a conversation's seqs in strictly
// increasing order (not necessarily contiguous: key-distribution entries
// are not handed to apps, and a device that joined later starts at its
// join point).
//
// Gap — for each conversation, every seq from 1 to the highest seq
// known is known: some ack names it or some device received it. The
// count is the number of missing seqs. This is sound (no false alarm on a
// correct run) because every entry of a conversation log is seen by the
// history one way or another, given the history is complete as above:
// user messages and membership entries are handed to every member device
// (Delivered), and key-distribution entries are acked to their sender
// (Acked). It assumes no writer outside the driver and at least one
// device that received the conversation from its creation (a group
// creator's devices are). Checked only at the end.
//
// SecondWriter — one writer per (conversation, epoch): all deliveries of
// a conversation at one epoch name the same region; and one writer per
// (conversation, seq): every device sees the same epoch and region for
// one seq. Deliveries with neither epoch nor region are not checked.
//
// EpochRegress — along a conversation's seqs, epochs never decrease.
//
// NonLinearizable — the directory history (Dir) is linearizable under
// DirModel, per conversation: the state is (home, epoch), initially
// ("", 0). A read returns the state. A move CAS(expect, to) applies when
// the epoch is expect, making it (to, expect+1); a refused move reports
// the stored epoch (and home if known; epoch 0 when refused for another
// reason, which constrains nothing); a move with an unknown outcome may
// take effect at any time after its call, or never. Between operations the
// directory may change a record by itself — the failure detector's
// fail_region, move_user and claims are not in Dir — so the model lets the
// epoch grow spontaneously to anything with any home, but never shrink,
// and never lets one epoch have two homes. Porcupine (v1.3.1) decides it;
// past Options.LinTimeout the result is LinUnknown, which is not OK.
//
// # Cost
//
// Each fed event costs O(1) map work and allocates nothing for a
// delivery of a known message. Memory is about 450 bytes per distinct
// message (map overhead included) and one bit per delivery (a bitmap of
// seqs per device and conversation); the strings are the caller's, not
// copied. Snapshot and Final sort each conversation's seqs (O(n log n));
// Final also walks (message × member) once for Lost and runs porcupine
// over Dir. BenchmarkCheck: 20,000 messages and 200,000 deliveries check
// in about 0.15 s on one core, with 9 MB allocated.
package check
