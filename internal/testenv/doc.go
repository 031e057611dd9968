// Package testenv is how chatmesh's tests find the real servers they need,
// and the one place that decides between skipping and failing when one is
// missing.
//
//   - PostgresDSN: CHATMESH_PG_DSN; required when CHATMESH_REQUIRE_PG=1.
//   - KafkaBrokers: CHATMESH_KAFKA_BROKERS; required when
//     CHATMESH_REQUIRE_KAFKA=1.
//   - MeshKafka: CHATMESH_MESH_KAFKA, one cluster per region of a
//     multi-region test ("a1,a2;b1;c1"); required when
//     CHATMESH_REQUIRE_KAFKA=1.
//   - RealKafkaCluster: the brokers plus CHATMESH_KAFKA_DIR (the
//     deploy/kafka/cluster.sh --dir), for tests that stop and restart a
//     broker; it serializes such tests across test processes with a file
//     lock in that directory and restarts every node the test stopped.
//   - SkipShort: skips a slow in-process test under -short, and fails
//     instead when a real server is required (make test never passes -short).
//
// Without the variables a test skips with a printed reason that names the
// variable and how to set it; with the CHATMESH_REQUIRE_* variable set (as
// scripts/test.sh does) it fails. scripts/test.sh also fails the run on any
// skipped test at all (see internal/testreport), so a skip can never hide a
// real-server or end-to-end test under make test.
//
// The package imports nothing of the module (internal/archtest checks it),
// so the tests of every package may use it.
package testenv
