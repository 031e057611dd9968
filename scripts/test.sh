#!/usr/bin/env bash
# make test: starts the real servers the tests need (PostgreSQL 15 from
# Debian, a 3-broker KRaft Kafka from Maven Central jars), runs the whole
# test suite against them with the real-server tests required, then runs
# every fuzz target briefly. Idempotent; safe on a fresh machine (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

echo "== PostgreSQL"
pg_dsn=$(./deploy/postgres/ensure.sh | tail -1)
echo "   $pg_dsn"

echo "== Kafka (3 brokers, KRaft)"
kafka_dir=${CHATMESH_KAFKA_DIR:-/tmp/chatmesh-kafka-test}
./deploy/kafka/cluster.sh stop --dir "$kafka_dir" >/dev/null 2>&1 || true
brokers_line=$(./deploy/kafka/cluster.sh start --brokers 3 --dir "$kafka_dir" | grep '^CHATMESH_KAFKA_BROKERS=' | tail -1)
brokers=${brokers_line#CHATMESH_KAFKA_BROKERS=}
echo "   $brokers"
cleanup() { ./deploy/kafka/cluster.sh stop --dir "$kafka_dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT

export CHATMESH_PG_DSN="$pg_dsn"
export CHATMESH_KAFKA_BROKERS="$brokers"
export CHATMESH_KAFKA_DIR="$kafka_dir"
export CHATMESH_REQUIRE_PG=1
export CHATMESH_REQUIRE_KAFKA=1

echo "== go vet"
go vet ./...
echo "== go test"
go test -count=1 -timeout 25m -p 2 ./... 2>&1 | tee /tmp/chatmesh-test.log
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || { echo "go test failed"; exit "$status"; }

echo "== fuzz (short)"
FUZZTIME=${FUZZTIME:-8s} ./scripts/fuzz.sh
