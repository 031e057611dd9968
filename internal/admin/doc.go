// Package admin is the admin HTTP server every chatmesh process runs on
// its own address (never a client port): what an operator and a
// Prometheus server watch.
//
// Endpoints:
//
//   - GET /metrics: Prometheus text exposition of one per-process
//     registry (NewRegistry: Go runtime, process, chatmesh_build_info,
//     plus the collectors the process registers — edge.Collector,
//     region.Collector, region.Link.Collector, kafkabus.Bus.Collector).
//     Nothing goes to Prometheus's global registry.
//   - GET /healthz: 200 {"alive":true} while the process serves HTTP.
//   - GET /readyz: runs every Check at once, each bounded by
//     CheckTimeout; 200 when all pass, else 503; the body is Readiness
//     (JSON: ready, and each check's name, ok and reason).
//   - /debug/pprof/: net/http/pprof (index, profile, heap, goroutine,
//     trace, ...).
//
// Access: with Config.Token set, /metrics and /debug/pprof/ need
// "Authorization: Bearer <token>"; /healthz and /readyz never do (probes).
// Listen refuses a non-loopback address without a token (CheckListen):
// pprof shows heap contents and goroutine stacks.
//
// Life cycle: Listen binds and serves on a goroutine the Server owns;
// Close shuts it down and waits (idempotent). Checks run on the request's
// goroutine group and must be safe for concurrent use. The server logs
// nothing per request.
package admin
