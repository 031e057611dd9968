// Package report turns a simulation's History and the checker's Result
// into what a person reads: a JSON Report and an SVG time line.
//
//	res := check.Check(h)
//	rep := report.Build(h, res, report.Options{})
//	rep.Seed = seed
//	json.NewEncoder(f).Encode(rep)
//	report.WriteSVG(svgFile, &rep)   // open it in a browser
//
// Pure code over a recorded history: no processes, no clock; the zero
// Options work. Times come from the history (the driver's clock).
//
// # What the report says
//
// Faults: the schedule as it ran. Invariants: check.Result as is.
//
// Ack latency: for each message the driver sent, its first Acked.At minus
// its Sent.At (matched by device, conversation and client message id;
// acks of entries the driver did not send are left out). Delivery
// latency: for each delivery of a sent message (the sender's own devices
// included), Delivered.At minus Sent.At. Each has p50, p99, p999 and max
// (nearest rank) over all messages, "during faults" and "outside faults":
// a message counts as during faults when its interval (send to ack, or
// send to delivery) overlaps any fault's [Start, End] (End zero: until the
// end of the run).
//
// Throughput: the run in buckets (Options.Bucket, default 1 s) from the
// earliest event: messages sent, first acks arriving, deliveries, and the
// p99 ack latency of the acks arriving in the bucket.
//
// RTO, per region-loss fault (a fault whose Kind is in
// Options.RegionLoss, default kill-region, partition-region,
// partition-directory; its Target is the region R):
//
//   - The conversations it hits are those whose writer just before the
//     fault was R: the Region of the highest seq of the conversation
//     delivered (to any device) before the fault's Start, at epoch E.
//   - A conversation has recovered at the first ack, at or after Start, of
//     a message whose first ack that is (so it was sent after Start or
//     still unacked at Start) and whose seq was written — per the
//     deliveries of that seq — by a region other than R, at an epoch
//     above E, or by R at E once the fault has ended (R came back before
//     the directory moved the conversation: a short kill, a partition
//     healed within the failure timeout). Its RTO is that ack's time
//     minus Start. Acks from R at E while the fault lasts (in flight at a
//     kill, or before R's lease ran out) show nothing.
//   - Conversations with nothing to write after Start (no message sent
//     after it and none pending at it), or whose only such messages R
//     wrote at E while the fault lasted, are counted as NoTraffic; those
//     with a message never acked (or acked by a writer the deliveries do
//     not name) and no recovering ack as NeverRecovered. In a run whose
//     traffic drained, NeverRecovered is therefore 0 unless a recovering
//     ack is missing from the history: it is a liveness failure.
//   - Per fault: how many conversations, recovered, never recovered, no
//     traffic, and the RTO percentiles (p50, p99, max) over the recovered
//     ones; RTOAll pools the RTOs of every region-loss fault.
//
// A partition-store fault is not a region loss by default: the directory
// does not move the region's conversations and their writer is not
// gone, only stalled; add it to Options.RegionLoss to measure it too.
//
// # The picture
//
// WriteSVG writes one SVG document with no scripts, fonts or external
// references: x is seconds since the start; each fault a translucent band
// labelled "kind target" (hover for its times and detail); the blue line
// acks per second (left axis); the red line the p99 ack latency per
// bucket in ms (right axis, broken where a bucket has no ack); a title
// with the seed and the invariants' verdict, and a legend.
package report
