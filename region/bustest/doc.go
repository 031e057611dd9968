// Package bustest is the contract suite for core.Bus implementations. One
// suite, run against every broker: region/kafkabus runs it against the
// embedded kfake broker (always) and against a real Kafka cluster when
// CHATMESH_KAFKA_BROKERS is set (comma-separated host:port list, as printed
// by deploy/kafka/cluster.sh start). Without it the real-Kafka run is
// skipped, unless CHATMESH_REQUIRE_KAFKA=1, which makes it fail (for CI that
// must not silently skip).
//
// Use:
//
//	func TestContract(t *testing.T) {
//		bustest.Run(t, func(t *testing.T) core.Bus { return myBus(t) })
//	}
//
// newBus must return a fresh, independent client of the same cluster and
// register its Close with t.Cleanup; tests call it several times to model
// separate processes (a restarted consumer is a new bus).
//
// What the suite proves (each a subtest):
//
//   - EnsureTopicIdempotent: creating a topic twice, from two clients, is
//     success; the topic is usable from the other client at once; zero
//     partitions is an error; consuming a missing topic fails instead of
//     hanging.
//   - PerKeyOrder: records of one key land in one partition and a single
//     group member handles each key's records exactly once, in produce
//     order; keys spread over several partitions.
//   - GroupConsumesAll: a group handles every record, including those
//     produced before the group first joined (new groups start at the
//     earliest offset), with concurrent producers on two clients.
//   - CommitThenRestartResumes: a consumer that stops cleanly commits what it
//     handled, and a new consumer of the group resumes after it (zero
//     duplicates required); a consumer stopped mid-stream loses nothing
//     (every record is handled by it or by its successor); duplicate counts
//     are logged.
//   - HandlerErrorRetriedSameRecord: a failing handler is called again with
//     the same record (same offset) until it succeeds, and the partition's
//     later records wait for it (the exact call sequence is checked).
//   - LiveTailSeesOnlyNew: a consumer without a group handles every record
//     produced after OnReady and none produced before it; two tails each see
//     everything.
//   - TwoMembersSharePartitions: two members of a group both receive
//     records, together handle all of them, and when one leaves the other
//     takes over its partitions.
//
// Every test uses its own topic and group names (Name), so the suite can run
// repeatedly against one long-lived cluster. Waits are bounded (60s) and
// detect hangs and losses; they measure nothing. Topics are not deleted.
package bustest
