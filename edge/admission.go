package edge

// Admission control: what a client may make the edge and its region do,
// beyond the per-session token buckets of ratelimit.go.
//
//   - Registration: a register from a session that is not yet a device is
//     refused FORBIDDEN with an unknown registration_token or, when
//     AdmissionConfig.RegisterPowBits > 0 (advertised in
//     ServerHello.register_pow_bits), without a valid proof of work
//     (core.CheckPow); then it is charged to its client IP's registration
//     bucket (RATE_LIMITED with retry_after_ms over it). A configured token
//     skips both. Attempts are charged, not successes: a refused attempt
//     costs the region a lookup too.
//   - Cost: every frame is charged by frameCost, the one cost table, to
//     one of its session's two buckets (messages or reads) and to the same
//     budget of its client IP, shared by every session from that IP.
//   - Ingress in flight (ingress.go): a write holds a slot of its
//     session (MaxSessionInFlight) and of the edge (MaxIngressInFlight)
//     from its produce until the region's answer comes back on the edge
//     topic (a write that gets no answer — typing, ack and read with
//     req_id 0 — only while it is produced). A write beyond either bound
//     is answered RATE_LIMITED with retry_after_ms at once instead of
//     queueing: overload shows as typed backpressure, not latency.
//
// Per-IP state is core.KeyedLimiter: at most MaxTrackedIPs entries each,
// least recently used evicted (an evicted IP starts with full buckets).
// IPv6 clients are keyed by their /64, which one host usually holds whole.

import (
	"crypto/subtle"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// AdmissionConfig configures registration limits, per-IP budgets and
// process-wide ingress admission. Zero values get the defaults named.
type AdmissionConfig struct {
	// RegisterBurst registration attempts per client IP, refilled at
	// RegisterPerHour (defaults 10 and 20 per hour).
	RegisterBurst   int
	RegisterPerHour float64
	// RegisterPowBits is the proof of work asked of registrations without
	// a token (ServerHello.register_pow_bits; 0, the default, asks none;
	// at most core.MaxPowBits). 20 bits is about a second of one core.
	RegisterPowBits uint32
	// RegistrationTokens are operator-issued tokens; a registration that
	// carries one skips the proof of work and the per-IP limit.
	RegistrationTokens []string
	// IPMessagesPerSecond and IPMessageBurst bound the message budget
	// (writes, key uploads, register, ping: see frameCost) of all sessions
	// from one client IP together (defaults 100/s, burst 400), so that
	// many accounts of one client cannot multiply their per-session budget.
	IPMessagesPerSecond float64
	IPMessageBurst      int
	// IPReadsPerSecond and IPReadBurst do the same for the read budget
	// (defaults 1000/s, burst 10,000).
	IPReadsPerSecond float64
	IPReadBurst      int
	// LocatePerSecond and LocateBurst bound the GET /v1/locate requests
	// of one client (Config.LocateClientAddr, else the TCP peer; defaults
	// 2/s, burst 20): a client locates once per answer TTL or after all
	// its edges failed, so this is far above honest use.
	LocatePerSecond float64
	LocateBurst     int
	// MaxTrackedIPs bounds each per-IP limiter (default 100,000).
	MaxTrackedIPs int
	// MaxIngressInFlight bounds the writes in flight in the edge (default
	// 4096) and MaxSessionInFlight those of one session (default 512:
	// twice the Go client's default MaxInflight of sends, leaving room for
	// its acks and read markers): produced to the ingress topic and not
	// yet answered by the region. A write over either is refused at
	// once, RATE_LIMITED with retry_after_ms (IngressRetryAfter, default
	// 50 ms). A write whose answer does not come within IngressAnswerTimeout
	// (default 30 s; the answer was lost or the region is stuck) frees its
	// slots then.
	MaxIngressInFlight   int
	MaxSessionInFlight   int
	IngressRetryAfter    time.Duration
	IngressAnswerTimeout time.Duration
}

func (c *AdmissionConfig) defaults() error {
	if c.RegisterBurst <= 0 {
		c.RegisterBurst = 10
	}
	if c.RegisterPerHour <= 0 {
		c.RegisterPerHour = 20
	}
	if c.RegisterPowBits > core.MaxPowBits {
		return fmt.Errorf("%w: RegisterPowBits %d above %d", ErrConfig, c.RegisterPowBits, core.MaxPowBits)
	}
	if c.IPMessagesPerSecond <= 0 {
		c.IPMessagesPerSecond = 100
	}
	if c.IPMessageBurst <= 0 {
		c.IPMessageBurst = 400
	}
	if c.IPReadsPerSecond <= 0 {
		c.IPReadsPerSecond = 1000
	}
	if c.IPReadBurst <= 0 {
		c.IPReadBurst = 10_000
	}
	if c.LocatePerSecond <= 0 {
		c.LocatePerSecond = 2
	}
	if c.LocateBurst <= 0 {
		c.LocateBurst = 20
	}
	if c.MaxTrackedIPs <= 0 {
		c.MaxTrackedIPs = 100_000
	}
	if c.MaxIngressInFlight <= 0 {
		c.MaxIngressInFlight = 4096
	}
	if c.MaxSessionInFlight <= 0 {
		c.MaxSessionInFlight = 512
	}
	if c.IngressRetryAfter <= 0 {
		c.IngressRetryAfter = 50 * time.Millisecond
	}
	if c.IngressAnswerTimeout <= 0 {
		c.IngressAnswerTimeout = 30 * time.Second
	}
	for _, t := range c.RegistrationTokens {
		if t == "" {
			return fmt.Errorf("%w: empty registration token", ErrConfig)
		}
	}
	return nil
}

// AdmissionStats counts admission refusals (cumulative).
type AdmissionStats struct {
	RegisterLimited  uint64 // registrations refused by the per-IP limit
	RegisterPowFail  uint64 // registrations refused for a missing or wrong proof of work
	RegisterBadToken uint64 // registrations refused for an unknown token
	RegisterTokens   uint64 // registrations admitted by a token
	IPLimited        uint64 // frames refused by a per-IP budget
	IngressFull      uint64 // writes refused because MaxIngressInFlight were in flight
	SessionFull      uint64 // writes refused because their session had MaxSessionInFlight in flight
	AnswerTimeouts   uint64 // writes whose answer did not come within IngressAnswerTimeout
	InFlight         int64  // writes in flight now (gauge)
}

type admission struct {
	cfg             AdmissionConfig
	register        *core.KeyedLimiter
	ipMsgs, ipReads *core.KeyedLimiter
	locate          *core.KeyedLimiter // GET /v1/locate per client
	inFlight        atomic.Int64       // writes in flight in the edge (ingress.go)

	regLimited, powFail, badToken, tokens, ipLimited, ingressFull atomic.Uint64
	sessionFull, answerTimeouts                                   atomic.Uint64
}

func newAdmission(c AdmissionConfig) *admission {
	return &admission{
		cfg:      c,
		register: core.NewKeyedLimiter(c.RegisterPerHour/3600, c.RegisterBurst, c.MaxTrackedIPs),
		ipMsgs:   core.NewKeyedLimiter(c.IPMessagesPerSecond, c.IPMessageBurst, c.MaxTrackedIPs),
		ipReads:  core.NewKeyedLimiter(c.IPReadsPerSecond, c.IPReadBurst, c.MaxTrackedIPs),
		locate:   core.NewKeyedLimiter(c.LocatePerSecond, c.LocateBurst, c.MaxTrackedIPs),
	}
}

// AdmissionStats returns the admission counters.
func (e *Edge) AdmissionStats() AdmissionStats {
	a := e.adm
	return AdmissionStats{
		RegisterLimited: a.regLimited.Load(), RegisterPowFail: a.powFail.Load(), RegisterBadToken: a.badToken.Load(),
		RegisterTokens: a.tokens.Load(), IPLimited: a.ipLimited.Load(), IngressFull: a.ingressFull.Load(),
		SessionFull: a.sessionFull.Load(), AnswerTimeouts: a.answerTimeouts.Load(), InFlight: a.inFlight.Load(),
	}
}

// ipKey is the per-IP limiter key of a client address: the address for
// IPv4, the /64 for IPv6, the string itself if it does not parse.
func ipKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// budget names which of a session's buckets (and of its IP's) a frame is charged to.
type budget int

const (
	budgetMessages budget = iota
	budgetReads
)

// cost is what a frame is charged: tokens of one budget.
type cost struct {
	budget budget
	tokens float64
}

// Cost table units. A token of the read budget is about one store lookup
// or one page-sized read; of the message budget, one write.
const (
	// usersPerToken: membership changes are charged one token per this
	// many users named (plus one).
	usersPerToken = 50
	// entriesPerReadToken: sync and history are charged one read token per
	// this many entries asked for (plus one).
	entriesPerReadToken = 100
	// uploadBytesPerToken: upload_prekeys is charged one token per this
	// many bytes (plus one); a full upload of 200 one-time prekeys is ~3.
	uploadBytesPerToken = 4096
)

// frameCost is the cost table: the one place that says what each frame
// costs. Reads (answered by Backend.Query, concurrently) are charged to
// the read budget, everything else to the message budget.
//
//	send, ack, read, typing, ping,
//	register, publish_device_list, set_privacy  messages  1
//	create_group, modify_members               messages  1 + users/50
//	upload_prekeys                             messages  1 + bytes/4096
//	sync, history                              reads     1 + limit/100 (limit 0: the default page)
//	list_conversations                         reads     2
//	lookup_user, fetch_bundle,
//	fetch_device_list                          reads     1
//	presence_subscribe                         reads     1 per user (min 1): each is a route
//	                                                     and a last-seen lookup, every time
//	                                                     the set is replaced
func frameCost(f *pb.ClientFrame) cost {
	msgs := func(n float64) cost { return cost{budgetMessages, n} }
	reads := func(n float64) cost { return cost{budgetReads, n} }
	pages := func(limit uint32) float64 {
		switch {
		case limit == 0:
			limit = core.DefaultPageSize
		case limit > core.MaxPageSize:
			limit = core.MaxPageSize
		}
		return 1 + float64(limit/entriesPerReadToken)
	}
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_CreateGroup:
		return msgs(1 + float64(len(b.CreateGroup.GetMembers())/usersPerToken))
	case *pb.ClientFrame_ModifyMembers:
		return msgs(1 + float64(len(b.ModifyMembers.GetUsers())/usersPerToken))
	case *pb.ClientFrame_UploadPrekeys:
		n := len(b.UploadPrekeys.GetUpload()) + len(b.UploadPrekeys.GetIdentity())
		return msgs(1 + float64(n/uploadBytesPerToken))
	case *pb.ClientFrame_Sync:
		return reads(pages(b.Sync.GetLimit()))
	case *pb.ClientFrame_History:
		return reads(pages(b.History.GetLimit()))
	case *pb.ClientFrame_ListConversations:
		return reads(2)
	case *pb.ClientFrame_LookupUser, *pb.ClientFrame_FetchBundle, *pb.ClientFrame_FetchDeviceList:
		return reads(1)
	case *pb.ClientFrame_PresenceSubscribe:
		return reads(float64(max(1, len(b.PresenceSubscribe.GetUsers()))))
	default:
		return msgs(1)
	}
}

// charge charges f's cost to the session's bucket and to its IP's budget.
// When either is short it takes nothing and returns how long until it
// would pass.
func (s *session) charge(f *pb.ClientFrame) (bool, time.Duration) {
	e := s.e
	c := frameCost(f)
	now := e.cfg.Now()
	b, ipl := s.bucket.Load(), e.adm.ipMsgs
	if c.budget == budgetReads {
		if rb := s.readBucket.Load(); rb != nil {
			b = rb
		}
		ipl = e.adm.ipReads
	}
	tokens := min(c.tokens, b.burst) // a cost above the burst is charged as the burst
	if ok, wait := b.takeN(now, tokens); !ok {
		return false, wait
	}
	if ok, wait := ipl.Allow(s.ip, now, tokens); !ok {
		b.refund(tokens)
		e.adm.ipLimited.Add(1)
		return false, wait
	}
	return true, 0
}

// admitRegistration applies the registration rules above to a register
// from a session that is not a device yet; nil admits it.
func (s *session) admitRegistration(req *pb.RegisterRequest) *pb.Error {
	a := s.e.adm
	if tok := req.GetRegistrationToken(); tok != "" {
		for _, t := range a.cfg.RegistrationTokens {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(t)) == 1 {
				a.tokens.Add(1)
				return nil
			}
		}
		a.badToken.Add(1)
		return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_FORBIDDEN, Detail: "unknown registration token"}
	}
	if bits := a.cfg.RegisterPowBits; bits > 0 && !core.CheckPow(bits, s.static, req.GetUserId(), req.GetPowNonce()) {
		a.powFail.Add(1)
		return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_FORBIDDEN,
			Detail: fmt.Sprintf("registration needs a proof of work of %d bits (ServerHello.register_pow_bits)", bits)}
	}
	if ok, wait := a.register.Allow(s.ip, s.e.cfg.Now(), 1); !ok {
		a.regLimited.Add(1)
		return rateLimited("too many registrations from this address", wait)
	}
	return nil
}

// rateLimited is a RATE_LIMITED error with retry_after_ms: wait rounded
// up to a millisecond, 0 when unknown.
func rateLimited(detail string, wait time.Duration) *pb.Error {
	ms := int64(0)
	if wait > 0 {
		ms = int64((wait + time.Millisecond - 1) / time.Millisecond)
	}
	return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, Detail: detail, RetryAfterMs: uint32(min(ms, int64(^uint32(0))))}
}

// shapeError refuses, before anything is charged, a frame whose user list
// is over its limit: the cost table charges by list length, so without
// this an oversized list would be answered RATE_LIMITED instead of with
// its real, permanent error.
func shapeError(f *pb.ClientFrame) error {
	switch b := f.GetBody().(type) {
	case *pb.ClientFrame_PresenceSubscribe:
		if n := len(b.PresenceSubscribe.GetUsers()); n > MaxPresenceSubscriptions {
			return core.Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "presence_subscribe: %d users, at most %d", n, MaxPresenceSubscriptions)
		}
	case *pb.ClientFrame_CreateGroup:
		if n := len(b.CreateGroup.GetMembers()) + 1; n > core.MaxGroupMembers {
			return fmt.Errorf("create_group: %d members, more than %d: %w", n, core.MaxGroupMembers, core.ErrGroupFull)
		}
	case *pb.ClientFrame_ModifyMembers:
		if n := len(b.ModifyMembers.GetUsers()); n > core.MaxGroupMembers {
			return fmt.Errorf("modify_members: %d users, more than %d: %w", n, core.MaxGroupMembers, core.ErrGroupFull)
		}
	}
	return nil
}
