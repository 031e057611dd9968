// Package e2e holds chatmesh's end-to-end tests: real clients over the
// real protocol against a whole region, on the embedded default (kfake +
// Pebble) and — when CHATMESH_KAFKA_BROKERS and CHATMESH_PG_DSN are set, as
// `make test` does — on real Apache Kafka and PostgreSQL. With
// CHATMESH_REQUIRE_KAFKA=1 / CHATMESH_REQUIRE_PG=1 a missing server fails
// the tests instead of skipping them.
//
// The crash tests build the chatmesh binary, SIGKILL the running region
// process (or a Kafka broker) in the middle of a stream of sends, restart
// it, and check that every acknowledged message reaches every member
// exactly once and in order.
//
// The mesh tests run three regions in one process: on the embedded
// default, and (TestMeshRealServers) on a Kafka cluster per region
// (CHATMESH_MESH_KAFKA) with PostgreSQL as the shared store and every link
// through an internal/netproxy proxy adding 40 ms one way; that test also
// reports in-region vs cross-region delivery latency.
package e2e
