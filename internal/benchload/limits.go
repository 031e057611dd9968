package benchload

import "github.com/chatmesh/chatmesh/edge"

// LiftLimits configures an edge for load from one host: every load
// client comes from the same address and sends far above one person's
// rate, which the per-IP and per-session budgets exist to refuse. It
// accepts registrations with token (no per-IP registration limit), and
// lifts the per-IP message and read budgets, the per-session (per-device)
// rates and the per-IP connection limits. It keeps the edge's total
// connection limit (edge.Config.MaxConns, default 10,000), its ingress
// admission (AdmissionConfig.MaxIngressInFlight: a write beyond it is
// answered RATE_LIMITED, which the bench reports as rejected) and its
// send queues. Use it for benchmarks only (`chatmesh dev --bench`).
func LiftLimits(c *edge.Config, token string) {
	if token != "" {
		c.Admission.RegistrationTokens = append(c.Admission.RegistrationTokens, token)
	}
	c.Admission.IPMessagesPerSecond, c.Admission.IPMessageBurst = 1e9, 1e9
	c.Admission.IPReadsPerSecond, c.Admission.IPReadBurst = 1e9, 1e9
	c.MessagesPerSecond, c.Burst = 1e9, 1e9
	c.ReadsPerSecond, c.ReadBurst = 1e9, 1e9
	c.MaxConnsPerIP = 1 << 20
	c.MaxAcceptPerIP = 1 << 20
}
