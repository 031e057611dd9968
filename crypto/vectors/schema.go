package vectors

import (
	"encoding/hex"
	"encoding/json"
)

// Hex is a byte string written as lowercase hex in JSON.
type Hex []byte

// MarshalJSON implements json.Marshaler.
func (h Hex) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

// UnmarshalJSON implements json.Unmarshaler.
func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	*h = v
	return nil
}

// Vectors is the schema of testdata/e2e-vectors.json (E2E.md §11 explains
// every field). Byte strings are hex; integers are JSON numbers.
type Vectors struct {
	Comment []string `json:"comment"`
	// Schema is the version of this layout (1).
	Schema int `json:"schema"`
	// RandomnessLabel: every random input is SHA-256(RandomnessLabel ||
	// label), for the labels named next to each value.
	RandomnessLabel string `json:"randomness_label"`

	Alice Party `json:"alice"`
	Bob   Party `json:"bob"`

	// DirectConv and GroupConv are the conversation ids the associated
	// data names.
	DirectConv string `json:"direct_conv"`
	GroupConv  string `json:"group_conv"`

	Bundle Hex   `json:"bundle"` // Bob's bundle as fetch_bundle serves it to Alice
	Setup  Setup `json:"setup"`

	// NoOneTime is a second, independent session setup from a bundle
	// without a one-time prekey (the region ran out or rate-limited the
	// fetch): flags 0, opk_id 0, a 64-byte PSK input, replay protection
	// by the token.
	NoOneTime NoOneTime `json:"without_one_time_prekey"`

	// Messages are the pairwise (Double Ratchet) messages in the order they
	// were sent; Deliveries the order in which they are received.
	Messages   []Message  `json:"messages"`
	Deliveries []Delivery `json:"deliveries"`

	Group  Group  `json:"group"`
	Safety Safety `json:"safety"`
}

// Party is one device with its keys. Private values are given so that a
// second implementation can replay both sides.
type Party struct {
	UserID   string `json:"user_id"`
	DeviceID uint32 `json:"device_id"`
	// IdentitySeed is the Ed25519 private key seed (RFC 8032), label
	// "<user> identity ed25519"; IdentityDH the X25519 private key, label
	// "<user> identity x25519".
	IdentitySeed Hex `json:"identity_ed25519_seed"`
	IdentityDH   Hex `json:"identity_x25519_private"`
	// IdentityPublic is the encoded identity.Public (129 bytes).
	IdentityPublic Hex `json:"identity_public"`
	// NoiseStatic is the device's transport static public key (label
	// "<user> noise static" is its private key), as listed in the device
	// list.
	NoiseStatic Hex `json:"noise_static_public"`
	// DeviceList is the user's signed device list, version 1, signed by
	// this (its only) device.
	DeviceList Hex `json:"device_list"`

	// Prekeys (Bob only).
	SignedPrekey  *SignedPrekey `json:"signed_prekey,omitempty"`
	KEMPrekey     *KEMPrekey    `json:"kem_prekey,omitempty"`
	OneTimePrekey *OneTime      `json:"one_time_prekey,omitempty"`

	// RatchetKeys are the X25519 private keys the party's ratchet draws,
	// in order (labels "<user> ratchet key 1", "... 2", ...).
	RatchetKeys []Hex `json:"ratchet_keys"`
}

// SignedPrekey is an X25519 prekey with its signature.
type SignedPrekey struct {
	ID      uint32 `json:"id"`
	Private Hex    `json:"private"` // label "bob signed prekey"
	Public  Hex    `json:"public"`
	// Signed is the exact message the Ed25519 signature covers.
	Signed    Hex `json:"signed_message"`
	Signature Hex `json:"signature"`
	Encoded   Hex `json:"encoded"` // as inside a bundle or upload (100 bytes)
}

// KEMPrekey is an ML-KEM-768 prekey with its signature.
type KEMPrekey struct {
	ID uint32 `json:"id"`
	// Seed is the 64-byte FIPS 203 seed d || z (labels "bob kem prekey d",
	// "bob kem prekey z").
	Seed      Hex `json:"seed"`
	Public    Hex `json:"public"` // encapsulation key, 1184 bytes
	Signed    Hex `json:"signed_message"`
	Signature Hex `json:"signature"`
	Encoded   Hex `json:"encoded"` // 1252 bytes
}

// OneTime is a one-time X25519 prekey.
type OneTime struct {
	ID      uint32 `json:"id"`
	Private Hex    `json:"private"` // label "bob one-time prekey"
	Public  Hex    `json:"public"`
	Encoded Hex    `json:"encoded"` // 36 bytes
}

// Setup is the session setup Alice runs against Bob's bundle, with every
// intermediate value of E2E.md §6.
type Setup struct {
	EphemeralPrivate Hex `json:"ephemeral_private"` // label "alice ephemeral"
	EphemeralPublic  Hex `json:"ephemeral_public"`
	// KEMRandom is the 32-byte ML-KEM.Encaps_internal randomness m (label
	// "alice kem encapsulation").
	KEMRandom       Hex `json:"kem_encapsulation_random"`
	KEMCiphertext   Hex `json:"kem_ciphertext"`
	KEMSharedSecret Hex `json:"kem_shared_secret"`
	DHEphIdentity   Hex `json:"dh_ephemeral_identity"` // DH(EK_A, IK_B)
	DHEphOneTime    Hex `json:"dh_ephemeral_one_time"` // DH(EK_A, OPK_B)
	DHEphSigned     Hex `json:"dh_ephemeral_signed"`   // DH(EK_A, SPK_B), Noise es
	DHIdentSigned   Hex `json:"dh_identity_signed"`    // DH(IK_A, SPK_B), Noise ss
	PSK             Hex `json:"psk"`
	Header          Hex `json:"header"` // the cleartext header (1102 bytes)
	Prologue        Hex `json:"prologue"`
	NoiseMessage    Hex `json:"noise_message"` // 225 bytes
	Handshake       Hex `json:"handshake"`     // header || noise message (1327 bytes)
	HandshakeHash   Hex `json:"handshake_hash"`
	SplitKey1       Hex `json:"split_k1"`
	SplitKey2       Hex `json:"split_k2"`
	RootKey         Hex `json:"root_key"` // SK
	Token           Hex `json:"token"`    // SHA-256(handshake)
}

// NoOneTime is a session set up without a one-time prekey, with its
// first message. Randomness labels: "alice ephemeral (no one-time)",
// "alice kem encapsulation (no one-time)", and the ratchet keys
// "alice ratchet key (no one-time) N", "bob ratchet key (no one-time) N".
type NoOneTime struct {
	Bundle           Hex     `json:"bundle"`
	Setup            Setup   `json:"setup"`
	AliceRatchetKeys []Hex   `json:"alice_ratchet_keys"`
	BobRatchetKeys   []Hex   `json:"bob_ratchet_keys"`
	Message          Message `json:"message"`
}

// Message is one pairwise message with its intermediate values.
type Message struct {
	Index int    `json:"index"`
	From  string `json:"from"` // user id of the sender
	// SentAfter is how many Deliveries had happened when it was sent (its
	// sender's state depends on what it had received).
	SentAfter int `json:"sent_after_deliveries"`
	// Plaintext is the inner payload (type byte || content, E2E.md §9.2).
	Plaintext Hex `json:"plaintext"`
	// AD is the per-message associated data (E2E.md §9.1).
	AD Hex `json:"ad"`
	// Initial: the message is handshake || ratchet message.
	Initial bool `json:"initial"`
	// Header fields of the ratchet message.
	RatchetKey Hex    `json:"ratchet_public_key"`
	PN         uint32 `json:"pn"`
	N          uint32 `json:"n"`
	// ChainKey is the sending chain key the message key came from;
	// MessageKey = HMAC(ChainKey, 0x01); AEADKey, Nonce from HKDF.
	ChainKey   Hex `json:"chain_key"`
	MessageKey Hex `json:"message_key"`
	AEADKey    Hex `json:"aead_key"`
	Nonce      Hex `json:"aead_nonce"`
	// FullAD is the AEAD associated data: session AD || header || AD.
	FullAD Hex `json:"aead_associated_data"`
	// Wire is the exact per-device ciphertext (Envelope.per_device entry).
	Wire Hex `json:"wire"`
}

// Delivery is one receive step: message Index arrives at its recipient.
type Delivery struct {
	Index int    `json:"index"`
	To    string `json:"to"`
	// Skipped is the number of skipped message keys the receiver holds
	// afterwards.
	Skipped int    `json:"skipped_keys_after"`
	Note    string `json:"note,omitempty"`
}

// Group is a Sender Keys exchange: Alice's sender key, its distribution
// (carried to Bob by pairwise message DistributionMessage) and group
// messages.
type Group struct {
	// SenderRandom is what NewSender reads: key id(4) || chain key(32) ||
	// Ed25519 signing seed(32) (labels "alice sender key id", "alice
	// sender chain key", "alice sender signing seed").
	SenderRandom        Hex            `json:"sender_random"`
	Distribution        Hex            `json:"distribution"`
	DistributionMessage int            `json:"distribution_message_index"`
	AD                  Hex            `json:"ad"`
	Messages            []GroupMessage `json:"messages"`
	DeliveryOrder       []int          `json:"delivery_order"`
}

// GroupMessage is one Sender Keys message.
type GroupMessage struct {
	Iteration  uint32 `json:"iteration"`
	Plaintext  Hex    `json:"plaintext"`
	ChainKey   Hex    `json:"chain_key"`
	MessageKey Hex    `json:"message_key"`
	AEADKey    Hex    `json:"aead_key"`
	Nonce      Hex    `json:"aead_nonce"`
	Signed     Hex    `json:"signed_message"` // what the Ed25519 signature covers
	Wire       Hex    `json:"wire"`           // Envelope.ciphertext
}

// Safety is the safety number of Alice and Bob.
type Safety struct {
	AliceKey  Hex    `json:"alice_identity_key"` // concatenated identities of Alice's devices
	BobKey    Hex    `json:"bob_identity_key"`
	Digits    string `json:"digits"`
	Scannable Hex    `json:"alice_scannable"` // as shown on Alice's screen
}
