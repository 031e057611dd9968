package e2ee

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/pqxdh"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/ratchet"
	"github.com/chatmesh/chatmesh/crypto/safety"
	"github.com/chatmesh/chatmesh/crypto/senderkey"
)

// Errors.
var (
	ErrNotRegistered = errors.New("e2ee: device not registered")
	// ErrIdentityChanged: a peer's identity (device list) changed in a way
	// that needs the user's approval (TrustIdentity); sending to the user
	// is blocked until then.
	ErrIdentityChanged = errors.New("e2ee: identity changed; verify the safety number and trust it to send")
	// ErrNoDeviceList: the user has published no device list.
	ErrNoDeviceList = errors.New("e2ee: user has no device list")
	// ErrBadBundle: the server's bundle does not verify or belongs to
	// another identity than the device list says (a swapped bundle).
	ErrBadBundle = errors.New("e2ee: prekey bundle rejected")
	// ErrNotForDevice: the envelope has no ciphertext for this device.
	ErrNotForDevice = errors.New("e2ee: no ciphertext for this device")
	// ErrNoLocalCopy: an own message whose plaintext this device does not keep.
	ErrNoLocalCopy = errors.New("e2ee: own message without local copy")
	// ErrUntrustedSender: the sender's identity is not in its verified device list.
	ErrUntrustedSender = errors.New("e2ee: sender identity not trusted")
	// ErrNoSession: no session can decrypt the message (replayed or injected).
	ErrNoSession = errors.New("e2ee: no session for message")
	// ErrNoSenderKey: a group message whose sender key this device never received.
	ErrNoSenderKey = errors.New("e2ee: no sender key for group message")
	// ErrNotMember: the conversation does not include this device's user.
	ErrNotMember = errors.New("e2ee: not a member")
	// ErrMalformed: the envelope or inner payload does not parse.
	ErrMalformed = errors.New("e2ee: malformed message")
	// ErrTooLarge: the envelope would exceed MaxEnvelope (SealMessage of a
	// group message whose key distribution needs more than one envelope;
	// use SealMessages).
	ErrTooLarge = errors.New("e2ee: envelope too large")
	// ErrControlMessage: Open of a key-distribution envelope (content hint
	// ContentKeys): it carries no body for the app; the client skips it.
	ErrControlMessage = errors.New("e2ee: key distribution message (no body)")
)

// ContentText is the envelope content hint the sealer sets on every
// message (it matches client.ContentText). It is not authenticated, and
// nothing but the body travels encrypted: there is no inner content type
// (E2E.md §9.2).
const ContentText = 1

// ContentKeys is the content hint of a key-distribution envelope that
// precedes a group message whose sender-key distributions do not fit into
// the message's own envelope.
const ContentKeys = 2

// linkRetry spaces the attempts of sends to publish pending linked devices.
const linkRetry = 5 * time.Second

// listRefreshWait bounds a device-list refresh when a trusted list is at hand.
const listRefreshWait = 3 * time.Second

// MaxEnvelope bounds a sealed envelope; a frame must stay below the Noise
// transport's 64 KiB limit.
const MaxEnvelope = 60 << 10

// Config configures a Sealer. Dir, Identity, Self and Directory are required.
type Config struct {
	Dir      string            // state directory (created 0700)
	Identity *identity.Private // this device's long-term identity
	// Self returns the device's registration (false before Register).
	Self      func() (core.DeviceKey, bool)
	Directory Directory
	Logger    *slog.Logger // default: discard
	Rand      io.Reader    // default crypto/rand
	// OneTimeBatch is the number of one-time prekeys per upload. Default 50.
	OneTimeBatch int
	// LowWater: below this many one-time prekeys on the server, upload a
	// new batch. Default 20.
	LowWater int
	// RotateEvery is the signed/KEM prekey lifetime. Default 7 days.
	RotateEvery time.Duration
	// ListTTL is how long a fetched device list is used before it is
	// fetched again before a send. Default 30 s; negative: every send.
	ListTTL time.Duration
	// OnIdentityChange is called (without locks held) when a peer's
	// identity changed and needs TrustIdentity.
	OnIdentityChange func(user string)
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Sealer is the end-to-end encryption of one device: Signal-style
// pairwise sessions (PQXDH + Double Ratchet) for direct messages and key
// distribution, Sender Keys for groups. See the package doc.
type Sealer struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	kv       *kv
	keys     *keyStore
	fetched  map[string]time.Time            // user → last device-list fetch
	override Directory                       // set during Setup
	lists    map[string]*identity.DeviceList // parsed trusted lists (cache of kv "list/")
	// linkTried is when a send last tried to publish pending links.
	linkTried    time.Time
	pendingLinks int // number of kv "link/" entries
	// preLists and preBundles hold device lists and bundles fetched
	// concurrently ahead of a seal (prefetch); each is used at most once.
	preLists   map[string]fetchedList
	preBundles map[core.DeviceKey][]byte
	// deferCommit, set by SealMessages while it verifies device lists,
	// leaves their commit to SealMessages' own single commit, which
	// happens before any envelope is returned: one fsync per seal instead
	// of one per newly trusted list.
	deferCommit bool
}

type fetchedList struct {
	raw []byte
	err error
}

// New opens (or creates) the sealer state in cfg.Dir.
func New(cfg Config) (*Sealer, error) {
	if cfg.Dir == "" || cfg.Identity == nil || cfg.Self == nil || cfg.Directory == nil {
		return nil, errors.New("e2ee: Dir, Identity, Self and Directory are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.OneTimeBatch <= 0 {
		cfg.OneTimeBatch = 50
	}
	cfg.OneTimeBatch = min(cfg.OneTimeBatch, prekey.MaxOneTimePerUpload)
	if cfg.LowWater <= 0 {
		cfg.LowWater = 20
	}
	if cfg.RotateEvery <= 0 {
		cfg.RotateEvery = 7 * 24 * time.Hour
	}
	if cfg.ListTTL == 0 {
		cfg.ListTTL = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sealer{cfg: cfg, log: cfg.Logger, fetched: map[string]time.Time{}, lists: map[string]*identity.DeviceList{}}
	var err error
	if s.kv, err = openKV(cfg.Dir); err != nil {
		return nil, err
	}
	if s.keys, err = loadKeys(s.kv); err != nil {
		_ = s.kv.close()
		return nil, err
	}
	s.pendingLinks = len(s.kv.keys("link/"))
	return s, nil
}

// Close releases the state file.
func (s *Sealer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kv.close()
}

// Identity returns the device's public identity.
func (s *Sealer) Identity() identity.Public { return s.cfg.Identity.Public() }

func (s *Sealer) self() (core.DeviceKey, error) {
	k, ok := s.cfg.Self()
	if !ok {
		return core.DeviceKey{}, ErrNotRegistered
	}
	return k, nil
}

// ---------------------------------------------------------------- inner payloads

const (
	innerBody         byte = 1 // 1:1 body
	innerDistribution byte = 2 // sender key distribution for a group
)

func lp(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// pairAD is the per-message associated data of a pairwise ciphertext: it
// binds the conversation, the sending device and the recipient device.
func pairAD(conv string, from, to core.DeviceKey) []byte {
	b := []byte("chatmesh-e2ee-pair-v1")
	b = lp(b, conv)
	b = lp(b, from.String())
	return lp(b, to.String())
}

// groupAD binds a group message to its conversation and sending device.
func groupAD(conv string, from core.DeviceKey) []byte {
	b := []byte("chatmesh-e2ee-group-v1")
	b = lp(b, conv)
	return lp(b, from.String())
}

func devKey(d core.DeviceKey) string { return d.User + "." + strconv.FormatUint(uint64(d.Device), 10) }

func parseDevKey(s string) (core.DeviceKey, bool) {
	i := strings.LastIndexByte(s, '.')
	if i <= 0 {
		return core.DeviceKey{}, false
	}
	n, err := strconv.ParseUint(s[i+1:], 10, 32)
	if err != nil {
		return core.DeviceKey{}, false
	}
	return core.DeviceKey{User: s[:i], Device: uint32(n)}, true
}

// ---------------------------------------------------------------- Seal

// Seal implements client.Sealer without keeping a local copy (own
// messages then open with ErrNoLocalCopy); the client uses SealMessage.
func (s *Sealer) Seal(ctx context.Context, conv string, body []byte) (*pb.Envelope, error) {
	return s.SealMessage(ctx, conv, "", body)
}

// SealMessage encrypts body for conv into one envelope and, when
// clientMsgID is set, keeps the plaintext as the local copy the device
// shows for its own message. Every state change (sessions, sender keys,
// the copy) is fsync'd before it returns. A group message whose key
// distribution does not fit one envelope fails with ErrTooLarge (after
// the state was updated: use SealMessages).
func (s *Sealer) SealMessage(ctx context.Context, conv, clientMsgID string, body []byte) (*pb.Envelope, error) {
	envs, err := s.SealMessages(ctx, conv, clientMsgID, body)
	if err != nil {
		return nil, err
	}
	if len(envs) != 1 {
		return nil, fmt.Errorf("%w: needs %d envelopes", ErrTooLarge, len(envs))
	}
	return envs[0], nil
}

// SealMessages is SealMessage for messages that may need several
// envelopes: the last is the message; any before it are key-distribution
// envelopes (ContentKeys) that must be sent first, in order, to the same
// conversation (a group message sent to many devices that lack the sender
// key). Each is at most MaxEnvelope bytes.
func (s *Sealer) SealMessages(ctx context.Context, conv, clientMsgID string, body []byte) ([]*pb.Envelope, error) {
	me, err := s.self()
	if err != nil {
		return nil, err
	}
	var users []string
	switch core.KindOf(conv) {
	case pb.ConversationKind_CONVERSATION_KIND_DIRECT:
		a, b, _ := core.ParseDirect(conv)
		if a != me.User && b != me.User {
			return nil, fmt.Errorf("%w: %s", ErrNotMember, conv)
		}
		users = []string{a, b}
	case pb.ConversationKind_CONVERSATION_KIND_GROUP:
		if users, err = s.cfg.Directory.GroupMembers(ctx, conv); err != nil {
			return nil, err
		}
		if !slices.Contains(users, me.User) {
			users = append(users, me.User)
		}
	default:
		return nil, fmt.Errorf("%w: conversation id %q", ErrMalformed, conv)
	}
	slices.Sort(users)
	users = slices.Compact(users)
	s.prefetchLists(ctx, users)

	s.mu.Lock()
	defer s.mu.Unlock()
	defer clear(s.preLists) // lists not used by this seal are not kept
	if now := s.cfg.Now(); s.pendingLinks > 0 && now.Sub(s.linkTried) > linkRetry {
		s.linkTried = now
		if err := s.publishLinksLocked(ctx, me); err != nil {
			s.log.Warn("e2ee: publishing linked devices failed", "err", err)
		}
	}
	var targets []core.DeviceKey
	var changed []string
	s.deferCommit = true
	defer func() { s.deferCommit = false }()
	for _, u := range users {
		l, err := s.trustedListLocked(ctx, u, &changed)
		if err != nil {
			_ = s.kv.commit() // keep the lists verified so far
			s.mu.Unlock()
			s.announce(changed)
			s.mu.Lock()
			return nil, fmt.Errorf("e2ee: %s: %w", u, err)
		}
		if l == nil {
			continue // own user before its list exists: no other devices
		}
		for _, d := range l.Devices {
			k := core.DeviceKey{User: u, Device: d.ID}
			if k != me {
				targets = append(targets, k)
			}
		}
	}
	s.prefetchBundlesLocked(ctx, targets)
	defer clear(s.preBundles) // a bundle not used now is not kept for later
	var envs []*pb.Envelope
	if core.KindOf(conv) == pb.ConversationKind_CONVERSATION_KIND_DIRECT {
		var env *pb.Envelope
		env, err = s.sealDirectLocked(ctx, me, conv, body, targets)
		envs = []*pb.Envelope{env}
	} else {
		envs, err = s.sealGroupLocked(ctx, me, conv, body, targets)
	}
	if err != nil {
		return nil, err
	}
	if clientMsgID != "" {
		s.kv.put("sent/"+clientMsgID, body)
	}
	if err := s.kv.commit(); err != nil {
		return nil, err
	}
	return envs, nil
}

func (s *Sealer) announce(users []string) {
	if s.cfg.OnIdentityChange == nil {
		return
	}
	for _, u := range users {
		s.cfg.OnIdentityChange(u)
	}
}

func (s *Sealer) sealDirectLocked(ctx context.Context, me core.DeviceKey, conv string, body []byte, targets []core.DeviceKey) (*pb.Envelope, error) {
	env := &pb.Envelope{ContentHint: ContentText}
	inner := append([]byte{innerBody}, body...)
	size := 0
	for _, t := range targets {
		ct, err := s.pairSealLocked(ctx, me, t, pairAD(conv, me, t), inner)
		if err != nil {
			return nil, err
		}
		size += len(ct) + 32
		if size > MaxEnvelope {
			return nil, fmt.Errorf("%w: %d recipient devices", ErrTooLarge, len(targets))
		}
		env.PerDevice = append(env.PerDevice, &pb.DeviceCiphertext{Device: t.Addr(), Ciphertext: ct})
	}
	return env, nil
}

// pairSealLocked encrypts inner for device t over the pairwise session,
// starting one from a fetched bundle when there is none.
func (s *Sealer) pairSealLocked(ctx context.Context, me, t core.DeviceKey, ad, inner []byte) ([]byte, error) {
	sess, hs, err := s.sessionLocked(t)
	if err != nil {
		return nil, err
	}
	if sess == nil || !sess.CanSend() {
		sess, hs, err = s.startSessionLocked(ctx, t)
		if err != nil {
			return nil, err
		}
	}
	var ct []byte
	if hs != nil && !sess.HasReceived() {
		ct, err = (&pqxdh.Outgoing{Session: sess, Handshake: hs}).Seal(inner, ad)
	} else {
		ct, err = sess.Encrypt(inner, ad)
	}
	if err != nil {
		return nil, fmt.Errorf("e2ee: encrypt for %s: %w", t, err)
	}
	if err := s.putSessionLocked(t, sess, hs); err != nil {
		return nil, err
	}
	return ct, nil
}

// pqxdhConfig draws every key of a new session (the ephemeral key and the
// ratchet keys) from Config.Rand, as the stored sessions do after a reload.
func (s *Sealer) pqxdhConfig() pqxdh.Config {
	return pqxdh.Config{Rand: s.cfg.Rand, Ratchet: ratchet.Config{Rand: s.cfg.Rand}}
}

func (s *Sealer) startSessionLocked(ctx context.Context, t core.DeviceKey) (*ratchet.Session, []byte, error) {
	l, err := s.listLocked(t.User)
	if err != nil || l == nil {
		return nil, nil, fmt.Errorf("e2ee: %s: %w", t, ErrNoDeviceList)
	}
	d, err := l.Device(t.Device)
	if err != nil {
		return nil, nil, err
	}
	raw, ok := s.preBundles[t]
	delete(s.preBundles, t)
	if !ok {
		if raw, err = s.dir().FetchBundle(ctx, t); err != nil {
			return nil, nil, err
		}
	}
	b, err := prekey.ParseBundle(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrBadBundle, t, err)
	}
	out, err := pqxdh.Initiate(s.cfg.Identity, d.Identity, b, s.pqxdhConfig())
	if err != nil {
		s.log.Warn("e2ee: bundle rejected", "device", t.String(), "err", err)
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrBadBundle, t, err)
	}
	return out.Session, out.Handshake, nil
}

// prefetchWorkers bounds concurrent directory requests of one seal.
const prefetchWorkers = 16

// fetchAll runs f for every item with at most prefetchWorkers at a time.
func fetchAll[T any](items []T, f func(T)) {
	sem := make(chan struct{}, prefetchWorkers)
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(it)
		}()
	}
	wg.Wait()
}

// prefetchLists fetches, concurrently and without holding mu, the device
// lists of the users whose trusted list is missing or older than ListTTL,
// for trustedListLocked to verify one by one. Only a latency optimisation:
// the verification is unchanged. With many users (a 500-member group)
// the fetches would otherwise run one round trip after another.
func (s *Sealer) prefetchLists(ctx context.Context, users []string) {
	s.mu.Lock()
	now := s.cfg.Now()
	var need []string
	var trusted []bool
	for _, u := range users {
		if _, pending := s.kv.get("pending/" + u); pending {
			continue
		}
		l, _ := s.listLocked(u)
		if l != nil && s.cfg.ListTTL > 0 && now.Sub(s.fetched[u]) < s.cfg.ListTTL {
			continue
		}
		need = append(need, u)
		trusted = append(trusted, l != nil)
	}
	s.mu.Unlock()
	if len(need) < 2 {
		return // one fetch gains nothing from running ahead
	}
	got := make([]fetchedList, len(need))
	idx := make([]int, len(need))
	for i := range idx {
		idx[i] = i
	}
	fetchAll(idx, func(i int) {
		fctx := ctx
		if trusted[i] {
			// As in trustedListLocked: with a trusted list, do not wait long.
			var cancel context.CancelFunc
			fctx, cancel = context.WithTimeout(ctx, listRefreshWait)
			defer cancel()
		}
		got[i].raw, got[i].err = s.dir().FetchDeviceList(fctx, need[i])
	})
	s.mu.Lock()
	if s.preLists == nil {
		s.preLists = map[string]fetchedList{}
	}
	for i, u := range need {
		s.preLists[u] = got[i]
	}
	s.mu.Unlock()
}

// prefetchBundlesLocked fetches concurrently the bundles of the targets
// that have no usable session yet. It releases mu while the requests run;
// whatever another seal did meanwhile is re-read from the state afterwards
// (pairSealLocked loads sessions again), and bundles left unused are
// dropped when the seal ends.
func (s *Sealer) prefetchBundlesLocked(ctx context.Context, targets []core.DeviceKey) {
	var need []core.DeviceKey
	for _, t := range targets {
		if sess, _, err := s.sessionLocked(t); err == nil && (sess == nil || !sess.CanSend()) {
			need = append(need, t)
		}
	}
	if len(need) < 2 {
		return
	}
	got := make([][]byte, len(need))
	idx := make([]int, len(need))
	for i := range idx {
		idx[i] = i
	}
	s.mu.Unlock()
	fetchAll(idx, func(i int) {
		if b, err := s.dir().FetchBundle(ctx, need[i]); err == nil {
			got[i] = b
		}
	})
	s.mu.Lock()
	if s.preBundles == nil {
		s.preBundles = map[core.DeviceKey][]byte{}
	}
	for i, t := range need {
		if got[i] != nil {
			s.preBundles[t] = got[i]
		}
	}
}

// sessionLocked loads the current session with t and, for an initiator
// that has not heard back yet, its handshake.
func (s *Sealer) sessionLocked(t core.DeviceKey) (*ratchet.Session, []byte, error) {
	return s.loadSession("sess/" + devKey(t))
}

func (s *Sealer) loadSession(key string) (*ratchet.Session, []byte, error) {
	b, ok := s.kv.get(key)
	if !ok {
		return nil, nil, nil
	}
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("e2ee: %s: %w", key, ErrMalformed)
	}
	n := int(binary.BigEndian.Uint32(b))
	if len(b) < 4+n {
		return nil, nil, fmt.Errorf("e2ee: %s: %w", key, ErrMalformed)
	}
	var hs []byte
	if n > 0 {
		hs = b[4 : 4+n]
	}
	sess, err := ratchet.Unmarshal(b[4+n:], ratchet.Config{Rand: s.cfg.Rand})
	if err != nil {
		return nil, nil, fmt.Errorf("e2ee: %s: %w", key, err)
	}
	return sess, hs, nil
}

func (s *Sealer) storeSession(key string, sess *ratchet.Session, hs []byte) error {
	st, err := sess.MarshalBinary()
	if err != nil {
		return err
	}
	if sess.HasReceived() {
		hs = nil
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(len(hs)))
	b = append(b, hs...)
	s.kv.put(key, append(b, st...))
	return nil
}

func (s *Sealer) putSessionLocked(t core.DeviceKey, sess *ratchet.Session, hs []byte) error {
	return s.storeSession("sess/"+devKey(t), sess, hs)
}

// ---------------------------------------------------------------- groups

func (s *Sealer) sealGroupLocked(ctx context.Context, me core.DeviceKey, conv string, body []byte, targets []core.DeviceKey) ([]*pb.Envelope, error) {
	var sender *senderkey.Sender
	if b, ok := s.kv.get("sk/" + conv); ok {
		sk, err := senderkey.ParseSender(b)
		if err != nil {
			return nil, fmt.Errorf("e2ee: sender key of %s: %w", conv, err)
		}
		sender = sk
	}
	have := map[core.DeviceKey]bool{}
	if b, ok := s.kv.get("skto/" + conv); ok && len(b) > 0 {
		for _, k := range strings.Split(string(b), "\n") {
			if d, ok := parseDevKey(k); ok {
				have[d] = true
			}
		}
	}
	// Rotate when a device that holds the key is no longer a member device.
	for d := range have {
		if !slices.Contains(targets, d) {
			s.log.Info("e2ee: member device left; rotating sender key", "conv", conv)
			sender = nil
			break
		}
	}
	if sender == nil {
		sk, err := senderkey.NewSender(s.cfg.Rand)
		if err != nil {
			return nil, err
		}
		sender, have = sk, map[core.DeviceKey]bool{}
	}
	dist, err := sender.Distribution().MarshalBinary()
	if err != nil {
		return nil, err
	}
	inner := append([]byte{innerDistribution}, dist...)
	var entries []*pb.DeviceCiphertext
	for _, t := range targets {
		if have[t] {
			continue
		}
		ct, err := s.pairSealLocked(ctx, me, t, pairAD(conv, me, t), inner)
		if err != nil {
			return nil, err
		}
		entries = append(entries, &pb.DeviceCiphertext{Device: t.Addr(), Ciphertext: ct})
		have[t] = true
	}
	msg := &pb.Envelope{ContentHint: ContentText}
	if msg.Ciphertext, err = sender.Encrypt(body, groupAD(conv, me)); err != nil {
		return nil, fmt.Errorf("e2ee: group encrypt: %w", err)
	}
	// Pack: as many distributions as fit go with the message, the rest
	// into key-distribution envelopes sent before it.
	var envs []*pb.Envelope
	cur, size := msg, len(msg.Ciphertext)+64
	for i := len(entries) - 1; i >= 0; i-- {
		n := len(entries[i].GetCiphertext()) + len(entries[i].GetDevice().GetUserId()) + 32
		if size+n > MaxEnvelope && len(cur.PerDevice) > 0 {
			envs = append(envs, cur)
			cur, size = &pb.Envelope{ContentHint: ContentKeys}, 64
		}
		cur.PerDevice = append(cur.PerDevice, entries[i])
		size += n
	}
	envs = append(envs, cur)
	slices.Reverse(envs) // the message last
	for _, e := range envs {
		slices.SortFunc(e.PerDevice, func(a, b *pb.DeviceCiphertext) int {
			return strings.Compare(devKey(core.KeyOf(a.GetDevice())), devKey(core.KeyOf(b.GetDevice())))
		})
	}
	sb, err := sender.MarshalBinary()
	if err != nil {
		return nil, err
	}
	s.kv.put("sk/"+conv, sb)
	var ks []string
	for d := range have {
		ks = append(ks, devKey(d))
	}
	slices.Sort(ks)
	s.kv.put("skto/"+conv, []byte(strings.Join(ks, "\n")))
	return envs, nil
}

// ---------------------------------------------------------------- Open

// Open implements client.Sealer: it returns the body of a received user
// message. Own messages come from the local copy; others are decrypted
// (each at most once: the plaintext is kept by (conversation, seq, msg id),
// so a message handed again after a restart opens again, while a replay
// of its ciphertext under another seq fails). Failures never change a
// session.
func (s *Sealer) Open(ctx context.Context, m *pb.Message) ([]byte, error) {
	me, err := s.self()
	if err != nil {
		return nil, err
	}
	from := core.KeyOf(m.GetSender())
	conv := m.GetConvId()
	// A key-distribution envelope: group, hint ContentKeys and no shared
	// ciphertext (the hint is not authenticated; a message with ciphertext
	// is always opened as a message).
	control := core.IsGroupID(conv) && m.GetEnvelope().GetContentHint() == ContentKeys && len(m.GetEnvelope().GetCiphertext()) == 0
	s.mu.Lock()
	defer s.mu.Unlock()
	if from == me && control {
		return nil, ErrControlMessage
	}
	if from == me {
		if m.GetClientMsgId() == "" {
			return nil, ErrNoLocalCopy
		}
		b, ok := s.kv.get("sent/" + m.GetClientMsgId())
		if !ok {
			return nil, ErrNoLocalCopy
		}
		return bytes.Clone(b), nil
	}
	ptKey := "pt/" + conv + "/" + strconv.FormatUint(m.GetSeq(), 10)
	if b, ok := s.kv.get(ptKey); ok {
		id, body, ok := cutLP(b)
		if ok && id == m.GetMsgId() {
			if control {
				return nil, ErrControlMessage
			}
			return bytes.Clone(body), nil
		}
	}
	var body []byte
	var changed []string
	switch core.KindOf(conv) {
	case pb.ConversationKind_CONVERSATION_KIND_DIRECT:
		a, b, _ := core.ParseDirect(conv)
		if (from.User != a && from.User != b) || (me.User != a && me.User != b) {
			return nil, fmt.Errorf("%w: sender %s in %s", ErrNotMember, from, conv)
		}
		inner, err := s.pairOpenLocked(ctx, me, from, conv, m.GetEnvelope(), &changed)
		if err != nil {
			s.announceLocked(changed)
			return nil, err
		}
		if len(inner) == 0 || inner[0] != innerBody {
			return nil, fmt.Errorf("%w: unexpected inner type", ErrMalformed)
		}
		body = inner[1:]
	case pb.ConversationKind_CONVERSATION_KIND_GROUP:
		body, err = s.openGroupLocked(ctx, me, from, conv, m.GetEnvelope(), control, &changed)
		if err != nil {
			s.announceLocked(changed)
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: conversation id %q", ErrMalformed, conv)
	}
	s.kv.put(ptKey, append(lp(nil, m.GetMsgId()), body...))
	if err := s.kv.commit(); err != nil {
		return nil, err
	}
	s.announceLocked(changed)
	if control {
		return nil, ErrControlMessage
	}
	return bytes.Clone(body), nil
}

// announceLocked calls OnIdentityChange with the lock released.
func (s *Sealer) announceLocked(users []string) {
	if len(users) == 0 {
		return
	}
	s.mu.Unlock()
	s.announce(users)
	s.mu.Lock()
}

func cutLP(b []byte) (string, []byte, bool) {
	if len(b) < 2 {
		return "", nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, false
	}
	return string(b[2 : 2+n]), b[2+n:], true
}

func ownEntry(env *pb.Envelope, me core.DeviceKey) []byte {
	for _, pd := range env.GetPerDevice() {
		if core.KeyOf(pd.GetDevice()) == me {
			return pd.GetCiphertext()
		}
	}
	return nil
}

// pairOpenLocked decrypts this device's per-device entry from sender from.
func (s *Sealer) pairOpenLocked(ctx context.Context, me, from core.DeviceKey, conv string, env *pb.Envelope, changed *[]string) ([]byte, error) {
	ct := ownEntry(env, me)
	if ct == nil {
		return nil, ErrNotForDevice
	}
	ad := pairAD(conv, from, me)
	if !pqxdh.IsInitial(ct) {
		return s.decryptExistingLocked(from, ct, ad)
	}
	in, err := pqxdh.ParseInitial(ct)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	tok := in.Token()
	if owner, ok := s.kv.get("init/" + hex.EncodeToString(tok[:])); ok {
		if string(owner) != devKey(from) {
			return nil, fmt.Errorf("%w: handshake of another device", ErrNoSession)
		}
		return s.decryptExistingLocked(from, in.Ratchet, ad)
	}
	acc, err := pqxdh.Accept(s.cfg.Identity, s.keys, ct, ad, s.pqxdhConfig())
	if err != nil {
		return nil, fmt.Errorf("e2ee: accept from %s: %w", from, err)
	}
	// The sender's identity must be the one its verified device list names.
	if err := s.checkSenderLocked(ctx, from, acc.Peer, changed); err != nil {
		return nil, err
	}
	key := "sess/" + devKey(from)
	if old, ok := s.kv.get(key); ok {
		s.kv.put("sold/"+devKey(from), old)
	}
	if err := s.storeSession(key, acc.Session, nil); err != nil {
		return nil, err
	}
	s.kv.put("init/"+hex.EncodeToString(acc.Token[:]), []byte(devKey(from)))
	s.keys.persistConsumed(s.kv, in, acc.Token)
	return acc.Plaintext, nil
}

func (s *Sealer) checkSenderLocked(ctx context.Context, from core.DeviceKey, peer identity.Public, changed *[]string) error {
	for attempt := 0; attempt < 2; attempt++ {
		l, err := s.listLocked(from.User)
		if err != nil {
			return err
		}
		if l != nil {
			if d, err := l.Device(from.Device); err == nil {
				if d.Identity.Equal(peer) {
					return nil
				}
				return fmt.Errorf("%w: %s presented another identity than its device list", ErrUntrustedSender, from)
			}
		}
		if attempt == 0 {
			s.fetched[from.User] = time.Time{}
			if _, err := s.trustedListLocked(ctx, from.User, changed); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("%w: %s is not in its user's device list", ErrUntrustedSender, from)
}

// decryptExistingLocked decrypts with the current, else the previous
// session with from, and stores the one that worked.
func (s *Sealer) decryptExistingLocked(from core.DeviceKey, ct, ad []byte) ([]byte, error) {
	var firstErr error
	for _, key := range []string{"sess/" + devKey(from), "sold/" + devKey(from)} {
		sess, hs, err := s.loadSession(key)
		if err != nil {
			return nil, err
		}
		if sess == nil {
			continue
		}
		pt, err := sess.Decrypt(ct, ad)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if err := s.storeSession(key, sess, hs); err != nil {
			return nil, err
		}
		return pt, nil
	}
	if firstErr == nil {
		firstErr = ErrNoSession
	}
	return nil, fmt.Errorf("e2ee: decrypt from %s: %w", from, firstErr)
}

func (s *Sealer) openGroupLocked(ctx context.Context, me, from core.DeviceKey, conv string, env *pb.Envelope, control bool, changed *[]string) ([]byte, error) {
	rkey := "skr/" + conv + "/" + devKey(from)
	if ownEntry(env, me) != nil {
		inner, err := s.pairOpenLocked(ctx, me, from, conv, env, changed)
		if err != nil {
			return nil, err
		}
		if len(inner) == 0 || inner[0] != innerDistribution {
			return nil, fmt.Errorf("%w: unexpected inner type", ErrMalformed)
		}
		d, err := senderkey.ParseDistribution(inner[1:])
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		install := true
		if b, ok := s.kv.get(rkey); ok {
			if r, err := senderkey.ParseReceiver(b, senderkey.Config{}); err == nil && r.KeyID() == d.KeyID {
				install = false // already have this key, maybe further along
			}
		}
		if install {
			r, err := senderkey.NewReceiver(d, senderkey.Config{})
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
			}
			rb, err := r.MarshalBinary()
			if err != nil {
				return nil, err
			}
			s.kv.put(rkey, rb)
		}
	}
	if control {
		return nil, nil
	}
	b, ok := s.kv.get(rkey)
	if !ok {
		return nil, fmt.Errorf("%w: from %s", ErrNoSenderKey, from)
	}
	r, err := senderkey.ParseReceiver(b, senderkey.Config{})
	if err != nil {
		return nil, err
	}
	pt, err := r.Decrypt(env.GetCiphertext(), groupAD(conv, from))
	if err != nil {
		return nil, fmt.Errorf("e2ee: group message from %s: %w", from, err)
	}
	rb, err := r.MarshalBinary()
	if err != nil {
		return nil, err
	}
	s.kv.put(rkey, rb)
	return pt, nil
}

// ---------------------------------------------------------------- device lists

// listLocked returns the trusted device list of user (nil if none). Parsed
// lists are cached: parsing verifies every device's identity binding.
func (s *Sealer) listLocked(user string) (*identity.DeviceList, error) {
	if l, ok := s.lists[user]; ok {
		return l, nil
	}
	b, ok := s.kv.get("list/" + user)
	if !ok {
		return nil, nil
	}
	l, err := identity.ParseDeviceList(b)
	if err != nil {
		return nil, err
	}
	s.lists[user] = l
	return l, nil
}

// putListLocked stages raw as user's trusted list.
func (s *Sealer) putListLocked(user string, raw []byte) {
	delete(s.lists, user)
	s.kv.put("list/"+user, raw)
}

// trustedListLocked returns user's device list after fetching (at most
// every ListTTL) and verifying it against the trusted one: first contact
// is trust on first use; a newer list must be signed by a trusted device;
// a list that fails that, or that changes the identity of a known device,
// is an identity change: kept aside (pending), announced, and sending to
// the user fails with ErrIdentityChanged until TrustIdentity.
func (s *Sealer) trustedListLocked(ctx context.Context, user string, changed *[]string) (*identity.DeviceList, error) {
	if _, ok := s.kv.get("pending/" + user); ok {
		return nil, ErrIdentityChanged
	}
	trusted, err := s.listLocked(user)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	if trusted != nil && s.cfg.ListTTL > 0 && now.Sub(s.fetched[user]) < s.cfg.ListTTL {
		return trusted, nil
	}
	fctx := ctx
	if trusted != nil {
		// Offline with a trusted list: do not wait long for a fresh one.
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(ctx, listRefreshWait)
		defer cancel()
	}
	var raw []byte
	if f, ok := s.preLists[user]; ok {
		delete(s.preLists, user)
		raw, err = f.raw, f.err
	} else {
		raw, err = s.dir().FetchDeviceList(fctx, user)
	}
	if err != nil {
		if trusted != nil && ctx.Err() == nil {
			s.log.Debug("e2ee: device list refresh failed; using the trusted one", "user", user, "err", err)
			return trusted, nil
		}
		return nil, err
	}
	if len(raw) == 0 {
		if trusted != nil {
			return trusted, nil
		}
		if me, err := s.self(); err == nil && me.User == user {
			return nil, nil
		}
		return nil, ErrNoDeviceList
	}
	l, err := identity.ParseDeviceList(raw)
	if err != nil || l.UserID != user {
		return nil, fmt.Errorf("e2ee: device list of %q from the server: %w %v", user, ErrMalformed, err)
	}
	err = l.VerifyUpdate(trusted)
	switch {
	case err == nil:
	case errors.Is(err, identity.ErrRollback) && trusted != nil:
		s.log.Warn("e2ee: server served an old device list; keeping the trusted one", "user", user)
		s.fetched[user] = now
		return trusted, nil
	case trusted != nil && (errors.Is(err, identity.ErrUntrustedSigner) || errors.Is(err, identity.ErrBadSignature) || errors.Is(err, identity.ErrUnknownDevice)):
		s.markChangedLocked(user, raw, changed)
		return nil, ErrIdentityChanged
	default:
		return nil, fmt.Errorf("e2ee: device list of %q: %w", user, err)
	}
	if trusted != nil {
		for _, d := range l.Devices {
			if old, err := trusted.Device(d.ID); err == nil && !old.Identity.Equal(d.Identity) {
				s.markChangedLocked(user, raw, changed)
				return nil, ErrIdentityChanged
			}
		}
	}
	s.fetched[user] = now
	if old, ok := s.kv.get("list/" + user); ok && bytes.Equal(old, raw) {
		return trusted, nil // unchanged
	}
	s.putListLocked(user, raw)
	if !s.deferCommit {
		if err := s.kv.commit(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (s *Sealer) markChangedLocked(user string, raw []byte, changed *[]string) {
	s.log.Warn("e2ee: identity of a peer changed; sending blocked until trusted", "user", user)
	s.kv.put("pending/"+user, raw)
	if err := s.kv.commit(); err != nil {
		s.log.Error("e2ee: persist identity change", "err", err)
	}
	*changed = append(*changed, user)
}

// IdentityChanged reports whether user has an identity change waiting
// for TrustIdentity.
func (s *Sealer) IdentityChanged(user string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.kv.get("pending/" + user)
	return ok
}

// TrustIdentity accepts user's changed identity: the new device list
// becomes the trusted one and the sessions with devices whose identity
// changed are dropped (new ones start from fresh bundles).
func (s *Sealer) TrustIdentity(user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, ok := s.kv.get("pending/" + user)
	if !ok {
		return nil
	}
	l, err := identity.ParseDeviceList(raw)
	if err != nil {
		return err
	}
	old, _ := s.listLocked(user)
	changedDev := map[string]bool{}
	for _, k := range s.kv.keys("sess/" + user + ".") {
		d, ok := parseDevKey(strings.TrimPrefix(k, "sess/"))
		if !ok || d.User != user {
			continue
		}
		nd, err := l.Device(d.Device)
		var od identity.Device
		if old != nil {
			od, _ = old.Device(d.Device)
		}
		if err != nil || old == nil || !nd.Identity.Equal(od.Identity) {
			s.kv.del(k)
			s.kv.del("sold/" + devKey(d))
			changedDev[devKey(d)] = true
		}
	}
	// Group sender keys held by a replaced device: rotate (the new device
	// gets a fresh distribution; the old one must not read on).
	for _, k := range s.kv.keys("skto/") {
		b, _ := s.kv.get(k)
		for _, dk := range strings.Split(string(b), "\n") {
			if changedDev[dk] {
				conv := strings.TrimPrefix(k, "skto/")
				s.kv.del("sk/" + conv)
				s.kv.del(k)
				break
			}
		}
	}
	s.putListLocked(user, raw)
	s.kv.del("pending/" + user)
	s.fetched[user] = s.cfg.Now()
	return s.kv.commit()
}

// SafetyNumber returns the safety number between this device's user and
// user: 60 digits in 12 groups of 5. Each side's identity key is the
// concatenation of the encoded identities of its devices (by device id)
// from the trusted device list (the pending one after an identity
// change, so the user can verify the new number before trusting it).
func (s *Sealer) SafetyNumber(ctx context.Context, user string) (string, error) {
	me, err := s.self()
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var changed []string
	keyOf := func(u string) ([]byte, error) {
		raw, ok := s.kv.get("pending/" + u)
		if !ok {
			if _, err := s.trustedListLocked(ctx, u, &changed); err != nil && !errors.Is(err, ErrIdentityChanged) {
				return nil, err
			}
			raw, ok = s.kv.get("pending/" + u)
			if !ok {
				raw, ok = s.kv.get("list/" + u)
			}
		}
		if !ok {
			if u == me.User {
				return s.cfg.Identity.Public().MarshalBinary()
			}
			return nil, ErrNoDeviceList
		}
		l, err := identity.ParseDeviceList(raw)
		if err != nil {
			return nil, err
		}
		var out []byte
		for _, d := range l.Devices {
			if out, err = d.Identity.AppendBinary(out); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	mine, err := keyOf(me.User)
	if err != nil {
		return "", err
	}
	theirs, err := keyOf(user)
	if err != nil {
		return "", err
	}
	s.announceLocked(changed)
	return safety.Compute(safety.Party{UserID: me.User, IdentityKey: mine}, safety.Party{UserID: user, IdentityKey: theirs}).String(), nil
}
