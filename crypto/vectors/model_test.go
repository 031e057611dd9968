package vectors

// An independent model of E2E.md's formulas, written from the
// specification with primitives only (SHA-256, HMAC, HKDF, X25519,
// ChaCha20-Poly1305, Ed25519): no code of the crypto tree and no Noise
// library. The generator runs it beside the tree and requires equal bytes,
// so the specification, the model and the code agree; it also yields the
// intermediate values the vector file records.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

func x25519(priv, pub []byte) []byte {
	out, err := curve25519.X25519(priv, pub)
	if err != nil {
		panic(err)
	}
	return out
}

func x25519Public(priv []byte) []byte { return x25519(priv, curve25519.Basepoint) }

func hkdfSHA256(ikm, salt []byte, info string, n int) []byte {
	out, err := hkdf.Key(sha256.New, ikm, salt, info, n)
	if err != nil {
		panic(err)
	}
	return out
}

func hmacSHA256(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// ---- Noise (revision 34), only what Noise_Xpsk1_25519_ChaChaPoly_SHA256 needs.

type noiseState struct {
	ck, h, k []byte // k nil: no key yet
	n        uint64
}

// noiseHKDF is Noise's HKDF(chaining_key, input_key_material, num_outputs).
func noiseHKDF(ck, ikm []byte, num int) [][]byte {
	temp := hmacSHA256(ck, ikm)
	o1 := hmacSHA256(temp, []byte{1})
	o2 := hmacSHA256(temp, o1, []byte{2})
	if num == 2 {
		return [][]byte{o1, o2}
	}
	return [][]byte{o1, o2, hmacSHA256(temp, o2, []byte{3})}
}

func newNoise(protocolName string) *noiseState {
	var h []byte
	if len(protocolName) <= 32 {
		h = make([]byte, 32)
		copy(h, protocolName)
	} else {
		s := sha256.Sum256([]byte(protocolName))
		h = s[:]
	}
	return &noiseState{ck: bytes.Clone(h), h: h}
}

func (s *noiseState) mixHash(data []byte) {
	d := sha256.Sum256(cat(s.h, data))
	s.h = d[:]
}

func (s *noiseState) mixKey(ikm []byte) {
	o := noiseHKDF(s.ck, ikm, 2)
	s.ck, s.k, s.n = o[0], o[1], 0
}

func (s *noiseState) mixKeyAndHash(ikm []byte) {
	o := noiseHKDF(s.ck, ikm, 3)
	s.ck = o[0]
	s.mixHash(o[1])
	s.k, s.n = o[2], 0
}

func noiseNonce(n uint64) []byte {
	nonce := make([]byte, 12)
	binary.LittleEndian.PutUint64(nonce[4:], n)
	return nonce
}

func (s *noiseState) encryptAndHash(pt []byte) []byte {
	aead, err := chacha20poly1305.New(s.k)
	if err != nil {
		panic(err)
	}
	ct := aead.Seal(nil, noiseNonce(s.n), pt, s.h)
	s.n++
	s.mixHash(ct)
	return ct
}

func (s *noiseState) split() (k1, k2 []byte) {
	o := noiseHKDF(s.ck, nil, 2)
	return o[0], o[1]
}

// modelSetup is the initiator's computation of E2E.md §6.
type modelSetup struct {
	dhEI, dhEO, dhES, dhSS, psk   []byte
	header, prologue, noiseMsg, h []byte
	k1, k2, sk                    []byte
}

func modelInitiate(ikPriv, ikPayload, bobIdentity, spkPub, ikbDH, opkPub, ephPriv, kemSS, kemCT []byte, spkID, kemID, opkID uint32) modelSetup {
	var m modelSetup
	ephPub := x25519Public(ephPriv)
	m.dhEI = x25519(ephPriv, ikbDH)
	flags := byte(0)
	if opkPub != nil {
		m.dhEO = x25519(ephPriv, opkPub)
		flags = 1
	}
	m.dhES = x25519(ephPriv, spkPub)
	m.dhSS = x25519(ikPriv, spkPub)
	m.psk = hkdfSHA256(cat(m.dhEI, m.dhEO, kemSS), nil, "chatmesh-pqxdh-v1 psk", 32)
	m.header = cat([]byte{0x50, flags}, be32(spkID), be32(kemID), be32(opkID), kemCT)
	m.prologue = cat([]byte("chatmesh-pqxdh-v1"), []byte{0}, bobIdentity, m.header)

	s := newNoise("Noise_Xpsk1_25519_ChaChaPoly_SHA256")
	s.mixHash(m.prologue)
	s.mixHash(spkPub) // pre-message <- s
	// -> e
	s.mixHash(ephPub)
	s.mixKey(ephPub) // PSK handshakes mix e into the key too
	// es
	s.mixKey(m.dhES)
	// s
	encS := s.encryptAndHash(x25519Public(ikPriv))
	// ss
	s.mixKey(m.dhSS)
	// psk
	s.mixKeyAndHash(m.psk)
	encPayload := s.encryptAndHash(ikPayload)
	m.noiseMsg = cat(ephPub, encS, encPayload)
	m.h = s.h
	m.k1, m.k2 = s.split()
	m.sk = hkdfSHA256(cat(m.k1, m.k2), m.h, "chatmesh-pqxdh-v1 root", 32)
	return m
}

// ---- Double Ratchet (E2E.md §7).

func kdfRK(rk, dh []byte) (newRK, ck []byte) {
	o := hkdfSHA256(dh, rk, "chatmesh-ratchet-rk-v1", 64)
	return o[:32], o[32:]
}

func kdfCK(ck []byte) (next, mk []byte) {
	return hmacSHA256(ck, []byte{2}), hmacSHA256(ck, []byte{1})
}

func messageKeys(mk []byte, info string) (key, nonce []byte) {
	o := hkdfSHA256(mk, make([]byte, 32), info, 44)
	return o[:32], o[32:]
}

type sentRecord struct {
	ratchetPub []byte
	pn, n      uint32
	ck, mk     []byte
	key, nonce []byte
	fullAD     []byte
	wire       []byte
}

type modelRatchet struct {
	ad                []byte
	rk, cks, ckr      []byte
	dhsPriv, dhr      []byte
	ns, nr, pn        uint32
	skipped           map[string][]byte
	nextKey           func() []byte // the party's ratchet key stream
	hasCKr, hasRemote bool
}

func modelInitiator(sk, ad, spkPub []byte, nextKey func() []byte) *modelRatchet {
	r := &modelRatchet{ad: ad, dhr: spkPub, hasRemote: true, skipped: map[string][]byte{}, nextKey: nextKey}
	r.dhsPriv = nextKey()
	r.rk, r.cks = kdfRK(sk, x25519(r.dhsPriv, spkPub))
	return r
}

func modelResponder(sk, ad, spkPriv []byte, nextKey func() []byte) *modelRatchet {
	return &modelRatchet{ad: ad, rk: sk, dhsPriv: spkPriv, skipped: map[string][]byte{}, nextKey: nextKey}
}

func (r *modelRatchet) encrypt(pt, ad []byte) sentRecord {
	var rec sentRecord
	rec.ck = r.cks
	r.cks, rec.mk = kdfCK(r.cks)
	rec.ratchetPub, rec.pn, rec.n = x25519Public(r.dhsPriv), r.pn, r.ns
	header := cat([]byte{1}, rec.ratchetPub, be32(r.pn), be32(r.ns))
	r.ns++
	rec.key, rec.nonce = messageKeys(rec.mk, "chatmesh-ratchet-msg-v1")
	rec.fullAD = cat(r.ad, header, ad)
	aead, _ := chacha20poly1305.New(rec.key)
	rec.wire = aead.Seal(header, rec.nonce, pt, rec.fullAD)
	return rec
}

func skipID(dh []byte, n uint32) string { return string(dh) + string(be32(n)) }

func (r *modelRatchet) skipTo(until uint32) {
	for r.hasCKr && r.nr < until {
		var mk []byte
		r.ckr, mk = kdfCK(r.ckr)
		r.skipped[skipID(r.dhr, r.nr)] = mk
		r.nr++
	}
}

func (r *modelRatchet) decrypt(wire, ad []byte) ([]byte, error) {
	header, body := wire[:41], wire[41:]
	dh, pn, n := header[1:33], binary.BigEndian.Uint32(header[33:37]), binary.BigEndian.Uint32(header[37:41])
	full := cat(r.ad, header, ad)
	open := func(mk []byte) ([]byte, error) {
		key, nonce := messageKeys(mk, "chatmesh-ratchet-msg-v1")
		aead, _ := chacha20poly1305.New(key)
		return aead.Open(nil, nonce, body, full)
	}
	if mk, ok := r.skipped[skipID(dh, n)]; ok {
		delete(r.skipped, skipID(dh, n))
		return open(mk)
	}
	if !r.hasRemote || !bytes.Equal(dh, r.dhr) {
		r.skipTo(pn)
		r.pn, r.ns, r.nr = r.ns, 0, 0
		r.dhr, r.hasRemote = bytes.Clone(dh), true
		r.rk, r.ckr = kdfRK(r.rk, x25519(r.dhsPriv, dh))
		r.hasCKr = true
		r.dhsPriv = r.nextKey()
		r.rk, r.cks = kdfRK(r.rk, x25519(r.dhsPriv, dh))
	}
	r.skipTo(n)
	var mk []byte
	r.ckr, mk = kdfCK(r.ckr)
	r.nr++
	return open(mk)
}

// ---- Sender Keys (E2E.md §8).

type groupRecord struct {
	ck, mk, key, nonce, signed, wire []byte
}

func modelGroupEncrypt(chain []byte, keyID, iteration uint32, sign ed25519.PrivateKey, pt, ad []byte) (next []byte, rec groupRecord) {
	rec.ck = chain
	next, rec.mk = kdfCK(chain)
	header := cat([]byte{1}, be32(keyID), be32(iteration))
	rec.key, rec.nonce = messageKeys(rec.mk, "chatmesh-senderkey-msg-v1")
	aead, _ := chacha20poly1305.New(rec.key)
	body := aead.Seal(bytes.Clone(header), rec.nonce, pt, cat(ad, header))
	rec.signed = cat([]byte("chatmesh-senderkey-v1"), be32(uint32(len(ad))), ad, body)
	rec.wire = cat(body, ed25519.Sign(sign, rec.signed))
	return next, rec
}

// ---- Safety numbers (E2E.md §10).

func modelFingerprint(user string, key []byte) []byte {
	buf := cat([]byte{0, 0}, key, []byte(user))
	for range 5200 {
		s := sha512.Sum512(cat(buf, key))
		buf = s[:]
	}
	return buf
}

func modelDigits(fp []byte) string {
	out := ""
	for i := range 6 {
		c := fp[i*5 : i*5+5]
		v := uint64(c[0])<<32 | uint64(c[1])<<24 | uint64(c[2])<<16 | uint64(c[3])<<8 | uint64(c[4])
		out += fmt.Sprintf("%05d", v%100000)
	}
	return out
}
