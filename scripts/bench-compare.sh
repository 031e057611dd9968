#!/usr/bin/env bash
# bench-compare: chatmesh (`chatmesh dev --regions 1 --bench`: Pebble + embedded
# broker, every message fsynced) against Centrifugo v6.9.1 (memory engine:
# nothing durable), the same cheap load clients (`chatmesh bench`, a separate
# process) against each, one server at a time, a fresh server per scenario.
# Prints a ratio table (chatmesh / centrifugo); reports go to $OUT.
#
# Centrifugo is a benchmark tool only, never a dependency of chatmesh: it is
# built with `go install` into $BENCH_CACHE/bin (outside the module).
#
# Budgets (environment): PAIRS=100 RATE=2000 SWEEP=1000,1000,20000 DURATION=5s
# GROUP=500 GROUP_RATE=100 GROUP_SWEEP=50,50,500 GROUP_P99=150ms IDLE_CONNS=5000 RECONNECT_CONNS=2000 SCENARIOS="pairs sweep group group-noacks group-sweep group-noacks-sweep idle reconnect"
# (group-noacks and group-noacks-sweep reuse Centrifugo's group and group-sweep runs: list those first).
# A full run takes about 5-10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatmesh/bench}
OUT=${OUT:-.chatmesh/bench/$(date +%Y%m%d-%H%M%S)}
PAIRS=${PAIRS:-100}
RATE=${RATE:-2000}
SWEEP=${SWEEP:-1000,1000,20000}
DURATION=${DURATION:-5s}
GROUP=${GROUP:-500}
GROUP_RATE=${GROUP_RATE:-100}
GROUP_SWEEP=${GROUP_SWEEP:-50,50,500}
GROUP_P99=${GROUP_P99:-150ms}
IDLE_CONNS=${IDLE_CONNS:-5000}
RECONNECT_CONNS=${RECONNECT_CONNS:-2000}
SCENARIOS=${SCENARIOS:-pairs sweep group group-noacks group-sweep group-noacks-sweep idle reconnect}
CM_WS=127.0.0.1:7480
CF_PORT=${CF_PORT:-8100}
TOKEN=bench-$RANDOM$RANDOM
SECRET=bench-secret-$RANDOM$RANDOM

CF=$BENCH_CACHE/bin/centrifugo
if [[ ! -x $CF ]]; then
  echo "bench-compare: building Centrifugo v6.9.1 into $BENCH_CACHE/bin (several minutes, once)" >&2
  mkdir -p "$BENCH_CACHE/bin"
  (cd "$BENCH_CACHE" && GOBIN="$BENCH_CACHE/bin" GOFLAGS=-mod=mod go install github.com/centrifugal/centrifugo/v6@v6.9.1)
fi
go build -o bin/chatmesh ./cmd/chatmesh
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || true

cat >"$OUT/centrifugo.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $CF_PORT},
  "log": {"level": "error"},
  "engine": {"type": "memory"},
  "client": {"token": {"hmac_secret_key": "$SECRET"}, "allowed_origins": ["*"]},
  "channel": {"without_namespace": {"allow_subscribe_for_client": true, "allow_publish_for_client": true}}
}
EOF

SERVER_PID=
stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap stop_server EXIT

wait_port() { # host port
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench-compare: nothing listens on $1:$2" >&2
  return 1
}

start_server() { # chatmesh|centrifugo
  stop_server
  case $1 in
  chatmesh)
    rm -rf "$OUT/chatmesh-data"
    bin/chatmesh dev --regions 1 --bench --registration-token "$TOKEN" --data "$OUT/chatmesh-data" \
      --ws "$CM_WS" --wt - --log warn >"$OUT/chatmesh-server.log" 2>&1 &
    SERVER_PID=$!
    wait_port 127.0.0.1 "${CM_WS##*:}"
    ;;
  centrifugo)
    "$CF" --config "$OUT/centrifugo.json" >"$OUT/centrifugo-server.log" 2>&1 &
    SERVER_PID=$!
    wait_port 127.0.0.1 "$CF_PORT"
    ;;
  esac
  sleep 1
}

bench() { # target name args...
  local target=$1 name=$2
  shift 2
  local conn=(--target chatmesh --edge "ws://$CM_WS/v1/ws" --registration-token "$TOKEN")
  if [[ $target == centrifugo ]]; then
    conn=(--target centrifugo --edge "ws://127.0.0.1:$CF_PORT/connection/websocket" --hmac-secret "$SECRET")
  fi
  echo "== $name / $target" >&2
  start_server "$target"
  bin/chatmesh bench "${conn[@]}" --server-pid "$SERVER_PID" --out "$OUT/$name.$target.json" "$@" >/dev/null ||
    echo "bench-compare: $name / $target failed (see above)" >&2
}

for s in $SCENARIOS; do
  for target in chatmesh centrifugo; do
    case $s in
    pairs) bench $target "pairs-$RATE" --mode pairs --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" ;;
    sweep) bench $target sweep --mode pairs --pairs "$PAIRS" --sweep "$SWEEP" --duration "$DURATION" ;;
    group) bench $target group --mode group --members "$GROUP" --rate "$GROUP_RATE" --duration "$DURATION" ;;
    group-noacks)
      # Centrifugo has no delivery acks: its group run is the same as above.
      if [[ $target == chatmesh ]]; then
        bench $target group-noacks --mode group --members "$GROUP" --rate "$GROUP_RATE" --duration "$DURATION" --acks=false
      elif [[ -f $OUT/group.centrifugo.json ]]; then
        cp "$OUT/group.centrifugo.json" "$OUT/group-noacks.centrifugo.json"
      fi
      ;;
    group-sweep) bench $target group-sweep --mode group --members "$GROUP" --sweep "$GROUP_SWEEP" --max-p99 "$GROUP_P99" --duration "$DURATION" ;;
    group-noacks-sweep)
      # The like-for-like sweep: Centrifugo's members never ack, so its
      # group-sweep (run before this one) is its side.
      if [[ $target == chatmesh ]]; then
        bench $target group-noacks-sweep --mode group --members "$GROUP" --sweep "$GROUP_SWEEP" --max-p99 "$GROUP_P99" --duration "$DURATION" --acks=false
      elif [[ -f $OUT/group-sweep.centrifugo.json ]]; then
        cp "$OUT/group-sweep.centrifugo.json" "$OUT/group-noacks-sweep.centrifugo.json"
      fi
      ;;
    idle) bench $target idle --mode idle --conns "$IDLE_CONNS" ;;
    reconnect) if [[ $target == chatmesh ]]; then bench $target reconnect --mode reconnect --conns "$RECONNECT_CONNS"; fi ;;
    esac
  done
done
stop_server

echo
echo "chatmesh (Pebble + embedded broker, fsync per commit) vs Centrifugo v6.9.1 (memory engine, nothing durable); reports in $OUT"
bin/chatmesh bench --mode ratio --results "$OUT" | tee "$OUT/ratio.txt"
if [[ -f $OUT/reconnect.chatmesh.json ]]; then
  jq -r '"reconnect (chatmesh only): \(.devices) devices reconnect + handshake + sync in \(.catch_up_s) s, \(.failures) failures, \(.retries // 0) retries"' "$OUT/reconnect.chatmesh.json" | tee -a "$OUT/ratio.txt"
fi
