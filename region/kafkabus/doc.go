// Package kafkabus implements core.Bus, the region's message bus, on Apache
// Kafka with github.com/segmentio/kafka-go, and runs an embedded
// Kafka-protocol broker (franz-go's kfake) for `chatmesh dev` and fast tests.
// The production code path and the embedded one are the same Bus; only the
// broker differs.
//
// # Producing
//
// One long-lived kafka.Writer serves every Produce call. Records are placed
// by kafka.Hash on their Key (FNV-1a of the key modulo the partition count:
// the key is the conversation id, so a conversation's records stay in one
// partition and in order) and written with acks from all in-sync replicas
// (RequiredAcks=RequireAll; the cluster's min.insync.replicas decides how
// many that must be).
//
// Concurrent Produce calls are group-committed: each call queues its
// records and waits; a flusher goroutine takes everything queued and writes
// it with one WriteMessages call, so whatever arrives while a write is in
// flight goes out together in the next one. This matters because kafka-go
// sends one batch per partition at a time and closes a batch BatchTimeout
// after its first record: with many callers and a round trip of tens of
// milliseconds it sends one tiny batch after another. Since the flusher
// already gathers the records, BatchTimeout defaults to 20µs (the records
// of one WriteMessages call for one partition always share a batch), so a
// lone record is not held back a millisecond on each of its two produces. Measured with 64
// concurrent single-record callers on the 3-node cluster (heavily loaded
// machine): 6.2 ms/record (1 record per batch) without group commit,
// 1.1-3.9 ms/record (4 per batch) with it, over several runs of
// go test -bench Produce ./region/kafkabus/ with CHATMESH_KAFKA_BROKERS set. One
// caller's records keep their order (a call returns only after its
// records are acknowledged); concurrent callers have no order between
// them. A caller whose ctx ends stops waiting, but its records stay queued
// or in flight and may still be written.
//
// kafka-go has no idempotent producer: after an error (or a timeout) some
// records may have been written, and a retry by the caller can duplicate
// them. Consumers de-duplicate (the sequencer by client_msg_id).
//
// The writer trusts its metadata cache for Config.MetadataTTL (2s). When a
// write finds its topic unknown, Produce re-reads the metadata and retries
// once, so a topic created by another process a moment ago is usable.
//
// # Topics
//
// EnsureTopic creates a topic through the cluster's controller
// (kafka.Conn.CreateTopics; "already exists" is success, whatever the
// existing partition count, which is then logged) with replication factor
// Config.ReplicationFactor or min(3, brokers in the cluster), then waits
// until every broker's metadata shows a leader for every partition. Topics
// are never created implicitly: Produce to or Consume of a missing topic
// fails with ErrUnknownTopic. Partitions added to a topic later are not
// picked up by running consumers.
//
// # Retention
//
// Every topic gets retention.ms and retention.bytes: EnsureTopic sets
// Config.TopicRetention (default DefaultTopicRetention: 7 days, no size
// limit), EnsureTopicRetention (core.TopicConfigurer) another, both at
// creation and, on a topic that exists, by DescribeConfigs and then
// IncrementalAlterConfigs SET where the values differ (a topic made by an
// older version or an operator). The region gives its topics: ingress 7
// days and no size limit; presence and edge topics (read live, without a
// group; a record missed is repaired by sync or the next snapshot) 10 minutes
// and 16 MiB per partition (core.LiveTopicRetention); dead letters 30 days
// and 256 MiB; link topics the bus default.
//
// Safety with the sequencer's commit points. Kafka deletes by age and size
// only, never looking at committed offsets, so on a real cluster the rule
// is: a topic a group must read completely (ingress by the sequencer,
// links by the receiving region) has no size limit and a time limit far
// beyond any lag the group may have (7 days against a sequencer that
// commits every 10 ms and whose readiness fails as soon as it stops). If
// it is ever exceeded the loss is not silent: the region compares the
// sequencer group's committed offsets with each ingress partition's log
// start at start-up and every minute, and logs ErrBusExpired with the
// number of records lost (region.Stats.IngressExpired).
//
// The embedded broker does better, since it sees the groups: kfake's own
// retention (which ignores commits) is switched off, and Embedded.Trim,
// every EmbeddedConfig.TrimInterval (30 s), deletes records of a topic on
// which some group committed only below the lowest committed offset of all
// those groups (a partition a group has not committed is not trimmed), so
// an unconsumed record is never deleted however old; topics without any
// group commit are trimmed by their retention.ms / retention.bytes. It
// always keeps each partition's last record: kfake restores a partition's
// high watermark from its newest segment file, and an emptied partition
// would restart at offset 0, below the committed offsets. Records leave
// the disk a segment at a time (EmbeddedConfig.SegmentBytes, 4 MiB), and
// a restart loads what is left, not the history (TestEmbeddedTrimBounded:
// 5 MB streamed through a consumed topic and a size-limited one, 397 KB
// left on disk after the last trim and at restart, the groups resuming
// exactly; a second group that stopped reading held its partitions' log
// start at its commit until it caught up).
//
// # Consuming
//
// Consume with a ConsumeSpec.Group joins that consumer group (kafka-go's
// ConsumerGroup; range assignment) and runs one goroutine per assigned
// partition, each with its own partition reader: the handler sees one
// partition's records one at a time, in offset order, and different
// partitions concurrently. A handler error is retried on the same record
// with exponential backoff from Config.RetryMin to Config.RetryMax, for as
// long as it takes (the handler must be idempotent and should not return a
// permanent error: a poison record stalls its partition, which is logged
// at each retry). The offset of a record is committed only after its
// handler returned nil: handled offsets are committed every
// Config.CommitInterval (250ms), and once more when the generation ends
// (rebalance, Consume returning), after the partition workers stopped.
// Delivery is at-least-once: records handled after the last successful
// commit are handled again by the partition's next owner. A group with no
// committed offset starts at the earliest record of each partition, so no
// record written before the group first joined is skipped.
//
// Consume without a group is a live tail: it lists the topic's partitions,
// reads each partition's current end offset (high watermark) from its
// leader, and reads every partition from there, one goroutine per
// partition, committing nothing.
//
// # OnReady
//
// Without a group, OnReady is called after the end offsets of all
// partitions were read: every record whose produce was acknowledged after
// OnReady was called has a larger offset and is handed to the handler.
//
// With a group, OnReady is called once, after this member's first join and
// sync completed and its assigned partitions and their start offsets
// (committed offsets, or the earliest offset for a new group) are known and
// their workers started. Every record that the group has not committed —
// in particular every record produced after OnReady — will be handled by
// some member of the group. It does not mean this member owns any
// particular partition (it may own none when the group has more members
// than partitions), and a later rebalance can move partitions.
//
// # Embedded broker
//
// StartEmbedded runs kfake (github.com/twmb/franz-go/pkg/kfake, pinned in
// go.mod) as one broker on 127.0.0.1 (a given port, or a random one). What
// kafka-go needs works against it and is covered by the bustest contract
// suite: topic creation, produce with acks, fetch, consumer groups with
// join/sync/heartbeat/leave and rebalancing, offset commit and fetch.
// kfake does not model replication (one broker, acks=all means "stored"),
// quotas, or the timing of a real cluster. Automatic topic creation is off.
//
// With EmbeddedConfig.DataDir kfake persists to that directory: segment
// files of record batches per partition, and append-only logs of topic,
// group and committed-offset state, reloaded on the next StartEmbedded with
// the same directory. It is written continuously, not only on Close, so a
// dev process killed with SIGKILL keeps every acknowledged record that
// reached the OS (the page cache survives a process kill); a torn last
// batch is dropped on load. Only a machine crash can lose records that were
// acknowledged but not fsynced; EmbeddedConfig.SyncWrites fsyncs every
// batch before acknowledging it, at the cost of produce throughput.
// TestEmbeddedPersists checks a clean restart and TestEmbeddedSurvivesSIGKILL
// a SIGKILLed broker process: acknowledged records and committed group
// offsets survive both.
//
// A damaged directory is refused: kfake, loading a segment file with bytes
// that are not a whole record batch, cuts them off (changing the file) with
// one warning and runs on, and the sequencer group's committed offset,
// now beyond the partition's end, stalled the partition's conversations
// (kafka-go waits for the log to grow back past it, skipping every record
// written meanwhile). CheckEmbeddedData, which StartEmbedded runs first,
// reads the directory without changing it and returns ErrDamaged, with
// the file, the offset and how to recover, when a segment holds a torn or
// corrupted batch (framing and CRC-32C of each v2 record batch), when a
// partition's records end below the high watermark its snapshot.json
// recorded at the last clean shutdown (a segment cut at a batch boundary
// or deleted), or when segments exist without meta.json. Damage the
// snapshot cannot see (after a SIGKILL it is stale) is caught by the
// region at start, from GroupOffsets: a committed offset beyond the log's
// end (region.ErrBusTruncated).
//
// kfake's accept loop returns on its first Accept error and never starts
// again; every client then hangs without an error. An error like EMFILE
// (the process ran out of file descriptors, e.g. under a connection flood)
// is transient, so StartEmbedded gives kfake (kfake.ListenFn) a listener
// that retries failed Accepts with backoff (5 ms doubling to 1 s, as
// net/http does), logs each streak of failures at error level and a
// recovery at warn level, and fails only once closed. Embedded.AcceptErrors
// counts the retried errors for health reporting.
// TestEmbeddedListenerSurvivesAcceptErrors injects EMFILE below it.
//
// # Offsets
//
// GroupOffsets (core.OffsetInspector) returns, per partition of a topic, a
// group's committed offset (-1 if none) and the log's first offset and
// high watermark, read fresh from the coordinator and the partition
// leaders; the region uses it to check its store against the bus at start.
//
// # Life cycle and concurrency
//
// New makes a Bus without contacting the brokers. Every method is safe for
// concurrent use. Consume blocks until its ctx ends or the Bus is closed; it
// owns its goroutines and waits for all of them before returning. Close
// ends running Consume calls (they return ErrClosed), waits for them,
// flushes and closes the writer; it is idempotent, and every method returns
// ErrClosed afterwards. Stopping a consumer takes up to Config.MaxWait
// (250ms) plus the running handler call. The Embedded broker runs until its
// Close.
//
// Logging: warnings (handler retries, fetch and join failures) go to
// Config.Logger with topic, partition, group and offset. Record keys and
// values are never logged.
//
// # TLS and SASL
//
// Config.TLS (encryption and broker certificate verification, TLS 1.2 at
// least) and Config.SASL (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with a user
// and password) apply to every connection the Bus makes: the producer's
// Transport, the Dialer of group consumers and controller connections, and
// the short-lived Transports of metadata and offset reads. A region's link
// workers use them to reach another region's cluster (deploy/README.md,
// "Three regions"). TestTLSAndSASLAgainstBroker runs every mechanism over
// TLS against kfake with a TLS listener and SASL users; Apache Kafka's
// SASL_SSL listener is configured as in deploy/mesh/ but not started by
// the tests.
//
// # Metrics
//
// Collector exports the bus's series, labelled client (Config.ClientID):
// chatmesh_bus_produce_seconds (one Produce call, acks=all),
// chatmesh_bus_produced_records_total, chatmesh_bus_produce_errors_total,
// chatmesh_bus_backpressure_total, and per consumed topic
// chatmesh_bus_consume_delay_seconds (the first record of a batch: its
// producer's timestamp → handled), chatmesh_bus_consumed_records_total and
// chatmesh_bus_handler_retries_total; per partition a consumer of this bus
// reads now, chatmesh_bus_consumer_lag_records (the partition's end minus
// the consumer's position at its last fetch) and
// chatmesh_bus_consumer_stalled (1 while the handler fails and is
// retried). Consumed records carry their Kafka timestamp
// (core.BusRecord.Time) for the stage histograms of region and edge.
//
// # Real Kafka
//
// deploy/kafka/cluster.sh starts a three-node KRaft cluster on loopback for
// the integration tests (CHATMESH_KAFKA_BROKERS=... go test ./region/kafkabus/
// runs the contract suite against it; with CHATMESH_KAFKA_DIR=<its --dir>
// too, TestRealKafkaBrokerKill SIGKILLs and restarts node 2 under load);
// see deploy/kafka/README.md. make test sets both and requires them.
package kafkabus
