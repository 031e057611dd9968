package client

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// identityFile is the name of the device identity inside the state dir.
const identityFile = "device.json"

// LinkContext is the domain separator of a device-link signature.
const LinkContext = "chatmesh-link-v1"

// Identity is everything a device knows about itself: its X25519 Noise
// static key pair (its transport identity), its end-to-end identity (a
// crypto/identity Private: Ed25519 + X25519) and, once registered, its user
// and device number. IdentityPrivate is the Ed25519 half of E2EEIdentity
// (the key sent at registration, that signs links, prekeys and device
// lists). It is stored in the state dir with mode 0600. Never log it.
type Identity struct {
	NoisePrivate    []byte `json:"noise_private"`
	NoisePublic     []byte `json:"noise_public"`
	IdentityPrivate []byte `json:"identity_private"` // ed25519.PrivateKey (64 bytes)
	// E2EEIdentity is the crypto/identity Private encoding. Older state
	// dirs lack it; Open then derives it from IdentityPrivate's seed and a
	// fresh X25519 key, so the registered Ed25519 key stays the same.
	E2EEIdentity []byte `json:"e2ee_identity,omitempty"`
	User         string `json:"user,omitempty"`
	Device       uint32 `json:"device,omitempty"`

	e2ee *identity.Private
}

// E2EE returns the device's end-to-end identity.
func (id *Identity) E2EE() *identity.Private { return id.e2ee }

// unify makes E2EEIdentity and IdentityPrivate agree. It reports whether
// E2EEIdentity was created (the file must be rewritten).
func (id *Identity) unify(rand io.Reader) (bool, error) {
	created := false
	if len(id.E2EEIdentity) == 0 {
		scalar := make([]byte, 32)
		if _, err := io.ReadFull(rand, scalar); err != nil {
			return false, fmt.Errorf("client: identity key: %w", err)
		}
		enc := append([]byte{1}, ed25519.PrivateKey(id.IdentityPrivate).Seed()...)
		id.E2EEIdentity = append(enc, scalar...)
		created = true
	}
	p, err := identity.ParsePrivate(id.E2EEIdentity)
	if err != nil {
		return false, fmt.Errorf("client: identity key: %w", err)
	}
	id.e2ee = p
	id.IdentityPrivate = ed25519.NewKeyFromSeed(id.E2EEIdentity[1 : 1+ed25519.SeedSize])
	if !bytes.Equal(id.IdentityPublic(), p.Public().Sign) {
		return false, fmt.Errorf("client: identity key: Ed25519 halves disagree")
	}
	return created, nil
}

// RegisterProof is RegisterRequest.identity_proof for registering as a
// device of user: the identity key's signature over
// core.RegisterProofMessage(user, Noise static key), which proves to the
// region that this device holds the identity key it registers.
func (id *Identity) RegisterProof(user string) []byte {
	return ed25519.Sign(ed25519.PrivateKey(id.IdentityPrivate), core.RegisterProofMessage(user, id.NoisePublic))
}

// Registered reports whether the identity has a user and device number.
func (id *Identity) Registered() bool { return id.User != "" && id.Device != 0 }

// Key returns the device key (zero before registration).
func (id *Identity) Key() core.DeviceKey { return core.DeviceKey{User: id.User, Device: id.Device} }

// IdentityPublic returns the Ed25519 public identity key.
func (id *Identity) IdentityPublic() ed25519.PublicKey {
	return ed25519.PrivateKey(id.IdentityPrivate).Public().(ed25519.PublicKey)
}

func (id *Identity) noiseKeypair() noiseconn.Keypair {
	return noiseconn.Keypair{Private: id.NoisePrivate, Public: id.NoisePublic}
}

// newIdentity makes fresh device keys from rand.
func newIdentity(rand io.Reader) (*Identity, error) {
	kp, err := noiseconn.GenerateKeypair(rand)
	if err != nil {
		return nil, fmt.Errorf("client: noise key: %w", err)
	}
	p, err := identity.Generate(rand)
	if err != nil {
		return nil, fmt.Errorf("client: identity key: %w", err)
	}
	enc, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("client: identity key: %w", err)
	}
	id := &Identity{NoisePrivate: kp.Private, NoisePublic: kp.Public, E2EEIdentity: enc}
	if _, err := id.unify(rand); err != nil {
		return nil, err
	}
	return id, nil
}

// loadOrCreateIdentity reads dir/device.json, creating it when absent.
func loadOrCreateIdentity(dir string, rand io.Reader) (*Identity, error) {
	p := filepath.Join(dir, identityFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		var id Identity
		if err := json.Unmarshal(b, &id); err != nil {
			return nil, fmt.Errorf("client: %s: %w", p, err)
		}
		if len(id.NoisePrivate) != 32 || len(id.NoisePublic) != 32 || len(id.IdentityPrivate) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("client: %s: malformed keys", p)
		}
		created, err := id.unify(rand)
		if err != nil {
			return nil, fmt.Errorf("client: %s: %w", p, err)
		}
		if created {
			if err := saveIdentity(dir, &id); err != nil {
				return nil, err
			}
		}
		return &id, nil
	case errors.Is(err, os.ErrNotExist):
		id, err := newIdentity(rand)
		if err != nil {
			return nil, err
		}
		if err := saveIdentity(dir, id); err != nil {
			return nil, err
		}
		return id, nil
	default:
		return nil, fmt.Errorf("client: read identity: %w", err)
	}
}

// saveIdentity writes the identity atomically with mode 0600.
func saveIdentity(dir string, id *Identity) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("client: encode identity: %w", err)
	}
	return writeFileAtomic(dir, identityFile, b)
}

// LinkRequest is what a new, unregistered device shows an existing device
// of the same user (as a token, e.g. in a QR code): its public keys.
type LinkRequest struct {
	NoiseStatic []byte `json:"n"`
	IdentityKey []byte `json:"i"`
	// E2EEIdentity is the new device's full crypto/identity Public
	// encoding (Ed25519 + X25519 + binding), which the linking device puts
	// into the user's signed device list. Its Ed25519 key is IdentityKey.
	E2EEIdentity []byte `json:"e,omitempty"`
}

// Link is what the existing device answers: the user, its own device number
// and its Ed25519 signature over LinkMessage.
type Link struct {
	User      string `json:"u"`
	LinkedBy  uint32 `json:"d"`
	Signature []byte `json:"s"`
	// NoiseStatic and IdentityKey repeat the request, so the new device can
	// check that the link is for it.
	NoiseStatic []byte `json:"n"`
	IdentityKey []byte `json:"i"`
}

// LinkMessage is the byte string a link signature covers:
// "chatmesh-link-v1" || user_id || noise_static || identity_key.
func LinkMessage(user string, noiseStatic, identityKey []byte) []byte {
	m := make([]byte, 0, len(LinkContext)+len(user)+len(noiseStatic)+len(identityKey))
	m = append(m, LinkContext...)
	m = append(m, user...)
	m = append(m, noiseStatic...)
	return append(m, identityKey...)
}

// VerifyLink checks a link signature against the signing device's identity key.
func VerifyLink(signer ed25519.PublicKey, l Link) bool {
	return len(signer) == ed25519.PublicKeySize &&
		ed25519.Verify(signer, LinkMessage(l.User, l.NoiseStatic, l.IdentityKey), l.Signature)
}

// signLink produces a link for req, signed by the registered identity id.
func signLink(id *Identity, req LinkRequest) (Link, error) {
	if !id.Registered() {
		return Link{}, ErrNotRegistered
	}
	if len(req.NoiseStatic) != 32 || len(req.IdentityKey) != ed25519.PublicKeySize {
		return Link{}, fmt.Errorf("%w: link request keys have the wrong size", ErrBadToken)
	}
	sig := ed25519.Sign(ed25519.PrivateKey(id.IdentityPrivate), LinkMessage(id.User, req.NoiseStatic, req.IdentityKey))
	return Link{User: id.User, LinkedBy: id.Device, Signature: sig, NoiseStatic: req.NoiseStatic, IdentityKey: req.IdentityKey}, nil
}

// Token prefixes distinguish link requests from links.
const (
	linkRequestPrefix = "cmlr1."
	linkPrefix        = "cmlk1."
)

// EncodeLinkRequest renders a link request as a copy-pasteable token.
func EncodeLinkRequest(r LinkRequest) string { return encodeToken(linkRequestPrefix, r) }

// DecodeLinkRequest parses a token made by EncodeLinkRequest.
func DecodeLinkRequest(tok string) (LinkRequest, error) {
	var r LinkRequest
	err := decodeToken(linkRequestPrefix, tok, &r)
	return r, err
}

// EncodeLink renders a link as a copy-pasteable token.
func EncodeLink(l Link) string { return encodeToken(linkPrefix, l) }

// DecodeLink parses a token made by EncodeLink.
func DecodeLink(tok string) (Link, error) {
	var l Link
	err := decodeToken(linkPrefix, tok, &l)
	return l, err
}

func encodeToken(prefix string, v any) string {
	b, _ := json.Marshal(v) // plain structs of strings and bytes cannot fail
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

func decodeToken(prefix, tok string, v any) error {
	rest, ok := bytes.CutPrefix([]byte(tok), []byte(prefix))
	if !ok {
		return fmt.Errorf("%w: want prefix %q", ErrBadToken, prefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(string(rest))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	return nil
}

// writeFileAtomic writes dir/name via a temporary file, fsync and rename,
// then fsyncs dir, so a crash leaves either the old or the new content.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("client: write %s: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("client: write %s: %w", name, err)
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so that entries created or renamed in it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("client: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("client: sync dir %s: %w", dir, err)
	}
	return nil
}

func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("client: state dir: %w", err)
	}
	return nil
}
