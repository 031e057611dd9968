package pqxdh

import (
	"crypto/ecdh"
	"crypto/mlkem"
	"errors"
	"fmt"
	"sync"

	"github.com/chatmesh/chatmesh/crypto/prekey"
)

// DefaultMaxTokensPerSignedPrekey bounds the replay cache of one signed
// prekey (sessions started without a one-time prekey).
const DefaultMaxTokensPerSignedPrekey = 1 << 16

// ErrReplayCacheFull: the signed prekey has accepted its maximum number of
// sessions without one-time prekeys; the device must rotate it.
var ErrReplayCacheFull = errors.New("pqxdh: replay cache of signed prekey full, rotate it")

// MemoryKeys is an in-memory KeyStore, safe for concurrent use. A client
// persists its contents by its own means (the prekey pair types marshal).
//
// Replay protection: a one-time prekey is deleted on first Consume, so a
// replay finds it gone. Without a one-time prekey, the token of every
// accepted handshake is kept with its signed prekey and forgotten only when
// that signed prekey is removed (RemoveSignedPrekey, after rotation and a
// grace period), after which the replay fails for lack of the prekey.
type MemoryKeys struct {
	// MaxTokensPerSignedPrekey: 0 means DefaultMaxTokensPerSignedPrekey.
	MaxTokensPerSignedPrekey int

	mu      sync.Mutex
	spks    map[uint32]*prekey.SignedPrekeyPair
	kems    map[uint32]*prekey.KEMPrekeyPair
	otps    map[uint32]*prekey.OneTimePrekeyPair
	tokens  map[uint32]map[[32]byte]struct{} // per signed prekey
	removed map[uint32]bool                  // one-time ids consumed
}

func (m *MemoryKeys) init() {
	if m.spks == nil {
		m.spks = map[uint32]*prekey.SignedPrekeyPair{}
		m.kems = map[uint32]*prekey.KEMPrekeyPair{}
		m.otps = map[uint32]*prekey.OneTimePrekeyPair{}
		m.tokens = map[uint32]map[[32]byte]struct{}{}
		m.removed = map[uint32]bool{}
	}
}

// AddSignedPrekey stores a signed prekey pair.
func (m *MemoryKeys) AddSignedPrekey(p *prekey.SignedPrekeyPair) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	m.spks[p.ID] = p
}

// RemoveSignedPrekey deletes a retired signed prekey and its replay tokens.
func (m *MemoryKeys) RemoveSignedPrekey(id uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	delete(m.spks, id)
	delete(m.tokens, id)
}

// AddKEMPrekey stores a KEM prekey pair.
func (m *MemoryKeys) AddKEMPrekey(p *prekey.KEMPrekeyPair) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	m.kems[p.ID] = p
}

// AddOneTimePrekeys stores one-time prekey pairs. An id that was consumed
// before is refused (ids are never reused).
func (m *MemoryKeys) AddOneTimePrekeys(ps []prekey.OneTimePrekeyPair) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	for i := range ps {
		if m.removed[ps[i].ID] {
			return fmt.Errorf("pqxdh: one-time prekey id %d was already used", ps[i].ID)
		}
	}
	for i := range ps {
		p := ps[i]
		m.otps[p.ID] = &p
	}
	return nil
}

// OneTimeCount reports how many unconsumed one-time prekeys are held.
func (m *MemoryKeys) OneTimeCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.otps)
}

// SignedPrekey implements KeyStore.
func (m *MemoryKeys) SignedPrekey(id uint32) (*ecdh.PrivateKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.spks[id]; ok {
		return p.Private, nil
	}
	return nil, ErrUnknownPrekey
}

// KEMPrekey implements KeyStore.
func (m *MemoryKeys) KEMPrekey(id uint32) (*mlkem.DecapsulationKey768, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.kems[id]; ok {
		return p.Private, nil
	}
	return nil, ErrUnknownPrekey
}

// OneTimePrekey implements KeyStore.
func (m *MemoryKeys) OneTimePrekey(id uint32) (*ecdh.PrivateKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.otps[id]; ok {
		return p.Private, nil
	}
	if m.removed[id] {
		return nil, fmt.Errorf("%w: %w: one-time prekey %d already consumed", ErrReplay, ErrUnknownPrekey, id)
	}
	return nil, ErrUnknownPrekey
}

// Consume implements KeyStore.
func (m *MemoryKeys) Consume(u Use) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	if u.HasOneTime {
		if _, ok := m.otps[u.OneTimeID]; !ok {
			return fmt.Errorf("%w: one-time prekey %d already consumed", ErrReplay, u.OneTimeID)
		}
		delete(m.otps, u.OneTimeID)
		m.removed[u.OneTimeID] = true
		return nil
	}
	if _, ok := m.spks[u.SignedPrekeyID]; !ok {
		return ErrUnknownPrekey
	}
	set := m.tokens[u.SignedPrekeyID]
	if set == nil {
		set = map[[32]byte]struct{}{}
		m.tokens[u.SignedPrekeyID] = set
	}
	if _, seen := set[u.Token]; seen {
		return fmt.Errorf("%w: signed prekey %d", ErrReplay, u.SignedPrekeyID)
	}
	limit := m.MaxTokensPerSignedPrekey
	if limit <= 0 {
		limit = DefaultMaxTokensPerSignedPrekey
	}
	if len(set) >= limit {
		return ErrReplayCacheFull
	}
	set[u.Token] = struct{}{}
	return nil
}
