#!/usr/bin/env bash
# ensure.sh — make a local PostgreSQL 15 usable by chatmesh's tests.
#
# Idempotent; run as root on Debian 12 (CI, a fresh developer machine, or a
# machine where PostgreSQL is installed but stopped). It:
#   1. installs the Debian `postgresql` package when pg_ctlcluster is missing;
#   2. creates the 15/main cluster when it does not exist;
#   3. starts the cluster when it is down (pg_ctlcluster, no systemd needed);
#   4. waits until it accepts connections;
#   5. creates role `chatmesh` (password `chatmesh`, LOGIN CREATEDB) and
#      database `chatmesh` owned by it, when absent;
#   6. prints the DSN on stdout (the only thing it prints there), so that
#        export CHATMESH_PG_DSN="$(deploy/postgres/ensure.sh)"
#      works. Progress goes to stderr.
#
# Environment: CHATMESH_PG_VERSION (default 15), CHATMESH_PG_CLUSTER (default main),
# CHATMESH_PG_PORT (default 5432; used in the printed DSN, the wait loop and psql).
set -euo pipefail

PG_VERSION="${CHATMESH_PG_VERSION:-15}"
PG_CLUSTER="${CHATMESH_PG_CLUSTER:-main}"
PG_PORT="${CHATMESH_PG_PORT:-5432}"
ROLE=chatmesh
PASSWORD=chatmesh
DB=chatmesh

log() { echo "ensure-postgres: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "must run as root"
	exit 1
fi

# 1. Install.
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -x "/usr/lib/postgresql/${PG_VERSION}/bin/postgres" ]; then
	log "installing postgresql"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q postgresql >&2
fi

# 2. Create the cluster if the package did not (e.g. create_main_cluster=false).
if ! pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | grep -q .; then
	log "creating cluster ${PG_VERSION}/${PG_CLUSTER}"
	pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PG_PORT" >&2
fi

# 3. Start.
status="$(pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" | awk '{print $4}')"
if [ "$status" != "online" ]; then
	log "starting cluster ${PG_VERSION}/${PG_CLUSTER} (was ${status:-unknown})"
	pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start >&2
fi

# 4. Wait for connections (bounded: 60 tries, 0.5 s apart).
ready=0
for _ in $(seq 1 60); do
	if pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
		ready=1
		break
	fi
	sleep 0.5
done
if [ "$ready" -ne 1 ]; then
	log "postgres did not become ready on 127.0.0.1:${PG_PORT}"
	exit 1
fi

# 5. Role and database. psql runs as the postgres superuser over the local socket.
psql_su() { (cd / && runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtAX "$@"); }

if [ "$(psql_su -c "SELECT 1 FROM pg_roles WHERE rolname = '${ROLE}'")" != "1" ]; then
	log "creating role ${ROLE}"
	psql_su -c "CREATE ROLE ${ROLE} LOGIN CREATEDB PASSWORD '${PASSWORD}'" >&2
else
	# Keep an existing role usable by the tests (idempotent).
	psql_su -c "ALTER ROLE ${ROLE} LOGIN CREATEDB PASSWORD '${PASSWORD}'" >&2
fi
if [ "$(psql_su -c "SELECT 1 FROM pg_database WHERE datname = '${DB}'")" != "1" ]; then
	log "creating database ${DB}"
	psql_su -c "CREATE DATABASE ${DB} OWNER ${ROLE}" >&2
fi

# 6. The DSN. Debian's default pg_hba.conf allows scram/md5 password auth on 127.0.0.1.
echo "postgres://${ROLE}:${PASSWORD}@127.0.0.1:${PG_PORT}/${DB}?sslmode=disable"
