#!/usr/bin/env bash
# cluster.sh — a local Apache Kafka (KRaft) cluster on loopback for chatmesh
# integration and crash tests.
#
#   cluster.sh start      [--brokers N] [--dir DIR]   format (first time) and start N nodes, wait, print env
#   cluster.sh stop       [--dir DIR] [--index I] [--kill]   stop all nodes (or node I); --kill = SIGKILL
#   cluster.sh start-one  I [--dir DIR]               (re)start node I of an existing cluster and wait for it
#   cluster.sh stop-one   I [--dir DIR] [--kill]      same as stop --index I
#   cluster.sh status     [--dir DIR]                 which nodes run; exit 0 only when all are up
#   cluster.sh env        [--dir DIR]                 print CHATMESH_KAFKA_BROKERS=...
#   cluster.sh destroy    [--dir DIR]                 stop (SIGKILL) and delete DIR
#
# Every node is a combined broker+controller (process.roles=broker,controller)
# with a static controller quorum (controller.quorum.voters); all nodes are
# formatted with one cluster id. Node i (1-based) listens on 127.0.0.1:
#   client     $CHATMESH_KAFKA_PORT_BASE + 2*(i-1)       (default 19092, 19094, 19096)
#   controller $CHATMESH_KAFKA_PORT_BASE + 2*(i-1) + 1   (default 19093, 19095, 19097)
# Replication factor min(3,N), min.insync.replicas min(2,N), automatic topic
# creation off, heap -Xmx512m per node (CHATMESH_KAFKA_HEAP overrides).
#
# Jars: deploy/kafka/pom.xml is resolved with Maven into
# $CHATMESH_KAFKA_LIB (default $HOME/.cache/chatmesh/kafka/lib) once; the folder
# is reused until pom.xml changes. Broker logs go to DIR/node-I/logs/server.log.
# Needs: bash, Java 17+, mvn (first run only), coreutils. Nothing but loopback.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIB="${CHATMESH_KAFKA_LIB:-$HOME/.cache/chatmesh/kafka/lib}"
BASE_ENV="${CHATMESH_KAFKA_PORT_BASE:-}"
HEAP="${CHATMESH_KAFKA_HEAP:-512m}"
DIR="${CHATMESH_KAFKA_DIR:-/tmp/chatmesh-kafka}"
BROKERS=3
INDEX=""
KILL=0
START_TIMEOUT="${CHATMESH_KAFKA_START_TIMEOUT:-120}"

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

cmd="${1:-}"; [ -n "$cmd" ] || die "usage: cluster.sh start|stop|start-one|stop-one|status|env|destroy [--brokers N] [--dir DIR] [--index I] [--kill]"
shift
if [ "$cmd" = start-one ] || [ "$cmd" = stop-one ]; then
	INDEX="${1:-}"; [ -n "$INDEX" ] || die "$cmd needs a node index"; shift
fi
while [ $# -gt 0 ]; do
	case "$1" in
	--brokers) BROKERS="$2"; shift 2 ;;
	--dir) DIR="$2"; shift 2 ;;
	--index) INDEX="$2"; shift 2 ;;
	--kill) KILL=1; shift ;;
	*) die "unknown argument $1" ;;
	esac
done
# The port base: start takes $CHATMESH_KAFKA_PORT_BASE (else the one DIR
# recorded, else 19092) and records it in DIR/port_base; every other command
# uses the recorded one, so start-one and status need no environment.
if [ "$cmd" != start ] && [ -f "$DIR/port_base" ]; then
	BASE="$(cat "$DIR/port_base")"
elif [ -n "$BASE_ENV" ]; then
	BASE="$BASE_ENV"
elif [ -f "$DIR/port_base" ]; then
	BASE="$(cat "$DIR/port_base")"
else
	BASE=19092
fi
case "$BASE" in ''|*[!0-9]*) die "port base must be a number (got '$BASE')" ;; esac
case "$BROKERS" in ''|*[!0-9]*) die "--brokers must be a number" ;; esac
[ "$BROKERS" -ge 1 ] || die "--brokers must be >= 1"

client_port() { echo $((BASE + 2 * ($1 - 1))); }
ctrl_port() { echo $((BASE + 2 * ($1 - 1) + 1)); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# nodes_in_dir prints the node count recorded by start (falls back to --brokers).
nodes_in_dir() {
	if [ -f "$DIR/brokers" ]; then cat "$DIR/brokers"; else echo "$BROKERS"; fi
}

brokers_env() {
	local n i out=""
	n="$(nodes_in_dir)"
	for i in $(seq 1 "$n"); do out="${out:+$out,}127.0.0.1:$(client_port "$i")"; done
	echo "CHATMESH_KAFKA_BROKERS=$out"
}

# ensure_lib resolves the broker jars with Maven unless the cache matches pom.xml.
ensure_lib() {
	local sum
	sum="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
	if [ -f "$LIB/.pom.sha256" ] && [ "$(cat "$LIB/.pom.sha256")" = "$sum" ]; then
		return
	fi
	command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
	log "resolving Kafka jars into $LIB (first run)"
	local tmp="$LIB.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DoutputDirectory="$tmp" >&2 ||
		{ rm -rf "$tmp"; die "mvn dependency:copy-dependencies failed"; }
	echo "$sum" >"$tmp/.pom.sha256"
	rm -rf "$LIB"
	mkdir -p "$(dirname "$LIB")"
	mv "$tmp" "$LIB"
}

pid_of() { # prints the pid of node $1 if it runs
	local f="$DIR/node-$1/pid" p
	[ -f "$f" ] || return 1
	p="$(cat "$f")"
	[ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
	# guard against pid reuse: the process must be our broker.
	tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "node-$1/server.properties" || return 1
	echo "$p"
}

write_config() { # node index, node count
	local i="$1" n="$2" voters="" j rf isr nd="$DIR/node-$1"
	for j in $(seq 1 "$n"); do voters="${voters:+$voters,}$j@127.0.0.1:$(ctrl_port "$j")"; done
	rf="$(min 3 "$n")"
	isr="$(min 2 "$n")"
	mkdir -p "$nd/data" "$nd/logs"
	cat >"$nd/server.properties" <<EOF
# generated by deploy/kafka/cluster.sh
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(client_port "$i"),CONTROLLER://127.0.0.1:$(ctrl_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$nd/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
auto.create.topics.enable=false
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
# Fence a dead broker after 4s instead of 9s, so partitions it led move sooner
# (the crash tests SIGKILL brokers).
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
num.network.threads=2
num.io.threads=4
log.segment.bytes=67108864
log.retention.hours=24
EOF
	cat >"$nd/log4j2.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $nd/logs/server.log
appender.file.filePattern = $nd/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

format_node() { # node index
	local nd="$DIR/node-$1"
	[ -f "$nd/data/meta.properties" ] && return 0
	# A short-lived tool: C1 only and the serial GC start faster.
	java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx256m -cp "$LIB/*" \
		-Dlog4j2.configurationFile="$nd/log4j2.properties" kafka.tools.StorageTool format \
		-t "$(cat "$DIR/cluster.id")" -c "$nd/server.properties" >"$nd/logs/format.log" 2>&1 ||
		{ cat "$nd/logs/format.log" >&2; die "formatting node $1 failed"; }
}

launch_node() { # node index
	local i="$1" nd="$DIR/node-$1"
	if pid_of "$i" >/dev/null; then return 0; fi
	# setsid: the broker outlives this script and is not in the caller's process group.
	setsid java -Xmx"$HEAP" -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-Djava.awt.headless=true -Dlog4j2.configurationFile="$nd/log4j2.properties" \
		-cp "$LIB/*" kafka.Kafka "$nd/server.properties" \
		</dev/null >"$nd/logs/stdout.log" 2>&1 &
	echo $! >"$nd/pid"
}

# metadata_brokers asks 127.0.0.1:$1 for Metadata (v0, no topics) over bash's
# /dev/tcp and prints how many brokers the answer lists (or nothing).
metadata_brokers() {
	local port="$1" hex
	hex="$(timeout 3 bash -c '
		exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
		# size=24: api_key=3 api_version=0 correlation_id=7 client_id="cluster.sh"(10) topics=[] (0)
		printf "\x00\x00\x00\x18\x00\x03\x00\x00\x00\x00\x00\x07\x00\x0acluster.sh\x00\x00\x00\x00" >&3
		head -c 12 <&3 | od -An -tx1 | tr -d " \n"
	' "$port" 2>/dev/null)" || return 0
	# bytes: size(4) correlation_id(4) broker_count(4)
	[ "${#hex}" -eq 24 ] || return 0
	[ "${hex:8:8}" = "00000007" ] || return 0
	echo $((16#${hex:16:8}))
}

wait_ready() { # node indices...; waits until each answers metadata listing all nodes
	local n deadline i got
	n="$(nodes_in_dir)"
	deadline=$((SECONDS + START_TIMEOUT))
	for i in "$@"; do
		while :; do
			got="$(metadata_brokers "$(client_port "$i")")"
			[ "${got:-0}" -ge "$n" ] && break
			if ! pid_of "$i" >/dev/null; then
				tail -n 30 "$DIR/node-$i/logs/stdout.log" "$DIR/node-$i/logs/server.log" >&2 2>/dev/null || true
				die "node $i exited during start (logs in $DIR/node-$i/logs)"
			fi
			[ $SECONDS -lt $deadline ] || die "node $i not ready after ${START_TIMEOUT}s (logs in $DIR/node-$i/logs)"
			sleep 0.3
		done
	done
}

stop_node() { # node index, signal
	local i="$1" sig="$2" p t
	p="$(pid_of "$i")" || return 0
	kill -s "$sig" "$p" 2>/dev/null || true
	for t in $(seq 1 300); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$p" 2>/dev/null; then
		log "node $i ignored SIG$sig for 30s; SIGKILL"
		kill -s KILL "$p" 2>/dev/null || true
		while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
	fi
	rm -f "$DIR/node-$i/pid"
}

case "$cmd" in
start)
	ensure_lib
	mkdir -p "$DIR"
	if [ -f "$DIR/brokers" ] && [ "$(cat "$DIR/brokers")" != "$BROKERS" ]; then
		die "$DIR holds a $(cat "$DIR/brokers")-node cluster; use that count or another --dir"
	fi
	echo "$BROKERS" >"$DIR/brokers"
	echo "$BASE" >"$DIR/port_base"
	# A cluster id is 16 random bytes in unpadded base64url (what
	# `StorageTool random-uuid` prints), made here to spare a JVM start. As
	# Kafka's own generator does, never one that starts with "-": the format
	# tool would read it as an option and fail (1 start in 64). A file
	# holding such an id can only come from a failed format: replaced.
	for _ in 1 2 3 4 5 6 7 8; do
		if [ -s "$DIR/cluster.id" ] && [ "$(head -c 1 "$DIR/cluster.id")" != "-" ]; then break; fi
		head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$DIR/cluster.id"
	done
	[ -s "$DIR/cluster.id" ] && [ "$(head -c 1 "$DIR/cluster.id")" != "-" ] || die "could not generate a cluster id"
	for i in $(seq 1 "$BROKERS"); do write_config "$i" "$BROKERS"; done
	# Formatting runs in parallel: each is a JVM start (~1-2 s).
	pids=()
	for i in $(seq 1 "$BROKERS"); do format_node "$i" & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p"; done
	for i in $(seq 1 "$BROKERS"); do launch_node "$i"; done
	wait_ready $(seq 1 "$BROKERS")
	brokers_env
	;;
start-one)
	[ -f "$DIR/brokers" ] || die "no cluster in $DIR (run start first)"
	n="$(nodes_in_dir)"
	[ "$INDEX" -ge 1 ] && [ "$INDEX" -le "$n" ] || die "index must be 1..$n"
	ensure_lib
	launch_node "$INDEX"
	wait_ready "$INDEX"
	brokers_env
	;;
stop | stop-one)
	[ -f "$DIR/brokers" ] || exit 0
	sig=TERM
	[ "$KILL" = 1 ] && sig=KILL
	if [ -n "$INDEX" ]; then
		stop_node "$INDEX" "$sig"
	else
		n="$(nodes_in_dir)"
		for i in $(seq 1 "$n"); do stop_node "$i" "$sig" & done
		wait
	fi
	;;
status)
	[ -f "$DIR/brokers" ] || { echo "no cluster in $DIR"; exit 1; }
	n="$(nodes_in_dir)"
	up=0
	for i in $(seq 1 "$n"); do
		if p="$(pid_of "$i")"; then
			rss="$(awk '/VmRSS/ {print $2 " " $3}' "/proc/$p/status" 2>/dev/null)"
			echo "node $i: running pid $p port $(client_port "$i") rss $rss brokers-in-metadata $(metadata_brokers "$(client_port "$i")")"
			up=$((up + 1))
		else
			echo "node $i: stopped"
		fi
	done
	brokers_env
	[ "$up" -eq "$n" ]
	;;
env)
	brokers_env
	;;
destroy)
	if [ -f "$DIR/brokers" ]; then
		n="$(nodes_in_dir)"
		for i in $(seq 1 "$n"); do stop_node "$i" KILL; done
	fi
	rm -rf "$DIR"
	;;
*)
	die "unknown command $cmd"
	;;
esac
