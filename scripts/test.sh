#!/usr/bin/env bash
# make test: starts the real servers the tests need (PostgreSQL 15 from
# Debian, a 3-broker KRaft Kafka from Maven Central jars, and three
# single-broker clusters, one per region of the multi-region test), runs the whole
# test suite against them with the real-server tests required, prints a
# summary (and fails on any skipped test), then runs every fuzz target
# briefly. Idempotent; safe on a fresh machine (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

echo "== PostgreSQL"
pg_dsn=$(./deploy/postgres/ensure.sh | tail -1)
echo "   $pg_dsn"

echo "== Kafka (3 brokers, KRaft)"
kafka_dir=${CHATMESH_KAFKA_DIR:-/tmp/chatmesh-kafka-test}
# The test clusters start empty every run (their own default directories
# only, never a CHATMESH_KAFKA_DIR you chose): every run creates topics
# with fresh names, and after a few dozen runs on one machine the brokers'
# 512 MiB heaps ran out (OutOfMemoryError) holding ~2,800 old partitions.
fresh_kafka=""
[ -z "${CHATMESH_KAFKA_DIR:-}" ] && fresh_kafka=1
./deploy/kafka/cluster.sh stop --dir "$kafka_dir" >/dev/null 2>&1 || true
if [ -n "$fresh_kafka" ]; then rm -rf "$kafka_dir"; fi
brokers_line=$(./deploy/kafka/cluster.sh start --brokers 3 --dir "$kafka_dir" | grep '^CHATMESH_KAFKA_BROKERS=' | tail -1)
brokers=${brokers_line#CHATMESH_KAFKA_BROKERS=}
echo "   $brokers"

# One single-broker cluster per region of the multi-region test
# (internal/e2e/mesh_real_test.go), started in the background while go vet
# runs (the Kafka jars are resolved by now, so the three starts do not race
# on the cache). Ports: client $base, controller $base+1.
mesh_bases=(19200 19210 19220)
mesh_dirs=()
mesh_pids=()
for i in 0 1 2; do
	d="$kafka_dir-mesh-$((i + 1))"
	mesh_dirs+=("$d")
	./deploy/kafka/cluster.sh stop --dir "$d" >/dev/null 2>&1 || true
	if [ -n "$fresh_kafka" ]; then rm -rf "$d"; fi
	CHATMESH_KAFKA_PORT_BASE=${mesh_bases[$i]} CHATMESH_KAFKA_HEAP=384m \
		./deploy/kafka/cluster.sh start --brokers 1 --dir "$d" >"$d.start.log" 2>&1 &
	mesh_pids+=($!)
done
cleanup() {
	./deploy/kafka/cluster.sh stop --dir "$kafka_dir" >/dev/null 2>&1 || true
	for d in "${mesh_dirs[@]}"; do ./deploy/kafka/cluster.sh stop --dir "$d" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

export CHATMESH_PG_DSN="$pg_dsn"
export CHATMESH_KAFKA_BROKERS="$brokers"
export CHATMESH_KAFKA_DIR="$kafka_dir"
export CHATMESH_REQUIRE_PG=1
export CHATMESH_REQUIRE_KAFKA=1

# Skips make test accepts, one "NAME=REASON" each (NAME: Test/sub or
# importpath.Test/sub). Empty: every test runs here, the real-server and
# end-to-end ones included, and any skip fails the run.
allow_skips=(
	# Not a test: the client process BenchmarkIdleConnections starts (it runs
	# only with CHATMESH_EDGE_IDLE_CHILD=1, from that benchmark).
	"github.com/chatmesh/chatmesh/edge.TestIdleClientsChild=the client process of BenchmarkIdleConnections, not a test"
)

echo "== go vet"
go vet ./...

# The chatmesh binary is also the client CLI: it must build for every
# desktop platform client developers use, not only this one.
echo "== cross-build: windows, darwin"
GOOS=windows GOARCH=amd64 go build -o /dev/null ./cmd/chatmesh
GOOS=darwin GOARCH=arm64 go build -o /dev/null ./cmd/chatmesh

echo "== Kafka (3 single-broker clusters, one per region)"
mesh=""
for i in 0 1 2; do
	if ! wait "${mesh_pids[$i]}"; then
		cat "${mesh_dirs[$i]}.start.log"
		echo "starting the region cluster in ${mesh_dirs[$i]} failed"
		exit 1
	fi
	line=$(grep '^CHATMESH_KAFKA_BROKERS=' "${mesh_dirs[$i]}.start.log" | tail -1)
	mesh="${mesh:+$mesh;}${line#CHATMESH_KAFKA_BROKERS=}"
done
echo "   $mesh"
export CHATMESH_MESH_KAFKA="$mesh"

echo "== go test"
report_bin=$(mktemp -d)/testreport
go build -o "$report_bin" ./internal/testreport
allow_args=()
for a in "${allow_skips[@]}"; do allow_args+=(-allow "$a"); done
# -json feeds the reporter, which prints what plain go test prints (a line
# per package, the whole output of each failed test) and then the summary:
# passed/failed/skipped, every skip with its reason, the slowest packages
# and tests. The full verbose output goes to /tmp/chatmesh-test.log, the
# raw events to /tmp/chatmesh-test.json.
set +e
# CHATMESH_TEST_PKGS narrows the run (default ./..., what make test runs).
# shellcheck disable=SC2086
go test -json -count=1 -timeout 25m -p 2 ${CHATMESH_TEST_PKGS:-./...} 2>&1 | tee /tmp/chatmesh-test.json |
	"$report_bin" -no-skips -log /tmp/chatmesh-test.log "${allow_args[@]}"
statuses=("${PIPESTATUS[@]}")
set -e
rm -rf "$(dirname "$report_bin")"
echo "   full output: /tmp/chatmesh-test.log, events: /tmp/chatmesh-test.json"
if [ "${statuses[0]}" -ne 0 ] || [ "${statuses[2]}" -ne 0 ]; then
	echo "go test failed (go test exit ${statuses[0]}, report exit ${statuses[2]})"
	exit 1
fi

echo "== fuzz (short)"
FUZZTIME=${FUZZTIME:-8s} ./scripts/fuzz.sh
