// Command chatmesh is the only binary of chatmesh. Subcommands:
//
//	chatmesh dev      the whole region in one process: edge (WebSocket and
//	                  WebTransport), region services, an embedded Kafka
//	                  broker (or --kafka) and a Pebble store (or --pg);
//	                  --bench lifts the per-IP and per-device limits for
//	                  load from one host (benchmarks only)
//	chatmesh region   the region services alone: sequencer (consumer-group
//	                  member) and the HTTP API edges call; needs --kafka.
//	                  With --directory-peers a mesh member: the region's
//	                  directory voter and a link worker per --link
//	                  (deploy/mesh/README.md); --directory-via and
//	                  --link-via ADDR=VIA send a path through a proxy
//	chatmesh edge     one edge alone: --kafka for writes and pushes,
//	                  --region-url for reads and sessions. With
//	                  --directory-addr a mesh edge: it announces itself in
//	                  the directory (PutEdge, retried with backoff; marked
//	                  unhealthy on a clean stop) with --public-ws/--public-wt,
//	                  and with --geoip-db serves GET /v1/locate from a cached
//	                  copy of the directory's edges (deploy/mesh/README.md)
//	chatmesh broker   the embedded Kafka broker as a process of its own
//	                  (--listen, --data; prints BROKER {json}): the region
//	                  simulator's per-region Kafka, which it SIGKILLs
//	chatmesh chat     the command-line client, interactive or scriptable:
//	                  receive --json writes every client event as JSON
//	                  lines, send --stdin sends a message per line; the
//	                  schema and the exit statuses (exitcodes.go) are in
//	                  CLI.md
//	chatmesh bench    the load generator: N clients over the real protocol.
//	                  --mode e2e (default): end-to-end encrypting SDK clients
//	                  (internal/loadgen); --mode pairs|group|idle|reconnect:
//	                  cheap clients that measure the server (internal/benchload),
//	                  against --edge (chatmesh dev --bench, or --target
//	                  centrifugo) or an in-process region; --mode ratio: the
//	                  table of make bench-compare
//	chatmesh sim      the region simulator: traffic while the region process
//	                  is SIGKILLed and restarted; checks the invariants
//	chatmesh directory  operator commands for the region directory (status,
//	                  conv, user, convs, move-conversation, move-user,
//	                  edge-health, region-health, put-edge, fail-region, restore-region); exits 0 done,
//	                  1 failed, 2 usage error
//	chatmesh version  print the version
//
// Every server command (dev, region, edge, and broker when asked) serves
// an admin address (--admin; defaults dev 127.0.0.1:7479, edge
// 127.0.0.1:7481, region 127.0.0.1:7493, broker off; - disables; off
// loopback it needs --admin-token) with /metrics, /healthz, /readyz and
// /debug/pprof/ (internal/admin), and prints "ADMIN http://host:port". A
// default address already taken is a warning, an explicit one an error.
// CHATMESH_LOG_FORMAT=json makes every server command log JSON lines.
// bench and sim print a progress line to stderr every --progress (5 s).
//
// Run any subcommand with -h for its flags.
package main
