// Package e2ee is the client's end-to-end encryption: the Sealer that the
// client SDK (package client) uses by default to turn message bodies into
// envelopes only the intended devices can read, built on the crypto tree
// (crypto/identity, prekey, pqxdh, ratchet, senderkey, safety; see
// crypto/doc.go for the protocols). No server component ever sees a body
// or a private key: the region stores public keys (prekey bundles, signed
// device lists) and ciphertext.
//
// # What it does
//
// Identity. The device's crypto/identity Private (Ed25519 + X25519) is made
// by the client at first Open and kept in device.json; its Ed25519 half is
// the identity_key sent at registration, so the key the region knows is
// the one that signs prekeys and device lists.
//
// Prekeys. EnsurePrekeys (the client calls it right after registration
// over a short session, and at the start of every session) uploads the
// identity, the current signed X25519 prekey and signed ML-KEM-768 prekey
// and — the first time, and whenever the region reports fewer than
// Config.LowWater (20) — a batch of Config.OneTimeBatch (50) one-time
// prekeys. Replenish uploads a batch (the client calls it when the region
// pushes prekey_status low). Private halves are fsync'd before the upload.
// Rotation: the signed and KEM prekeys are replaced when older than
// Config.RotateEvery (7 days) at the next EnsurePrekeys; the three newest
// generations are kept so that sessions started from a bundle fetched
// before a rotation still open; older ones are deleted with their replay
// tokens.
//
// Device lists. The first device makes version 1 of its user's signed
// crypto/identity DeviceList at registration (InitFirstDevice) and
// publishes it with its prekeys. Link (client) records the new device's
// identity (AddLinkedDevice); once the region lists the new device as
// registered (LookupUser), PublishLinks adds it as version+1, signed by
// this device (the client tries every second for 5 minutes after Link,
// then on every connect and, at most every 5 s, on a send). Before
// encrypting to a user, Seal fetches its list (at most every
// Config.ListTTL, 30 s) and verifies it with DeviceList.VerifyUpdate against the trusted one: the first list of
// a user is trusted on first use; later ones must be newer and signed by a
// trusted device. An older list from the server is ignored (the trusted
// one is used); a list that fails verification, or that changes the
// identity of a known device, is an identity change (below).
//
// 1:1 and multi-device. Seal encrypts the body once per device of the
// peer and once per other device of the sender, over pairwise Double
// Ratchet sessions (a new one from a fetched, verified bundle with
// pqxdh.Initiate; until the peer replies every message carries the
// handshake), into Envelope.per_device; Envelope.ciphertext stays empty.
// The associated data binds conversation, sending and receiving device.
// Open finds the device's own entry: pqxdh.Accept for an initial message
// (then the sender's identity must match its verified device list), else
// the stored session (or the previous one, which covers simultaneous
// session starts). Sessions, consumed one-time prekeys and the sender's
// plaintext copy are written with one fsync before Seal/Open return, so a
// crash cannot reuse a message key.
//
// Own messages. The server returns a sender's message to its own devices
// without an entry for the sending device; Open recognises sender ==
// self and returns the plaintext kept at Seal time by client message id
// (SealMessage/SealMessages; Seal without an id keeps no copy and such
// messages open with ErrNoLocalCopy).
//
// Groups (Sender Keys). Each device has one senderkey.Sender per group.
// SealMessages asks the region for the group's members (ListConversations),
// collects their verified devices (plus the sender's other devices) and
// sends the Sender's Distribution over the pairwise sessions to every
// device that does not have it yet, as per_device entries; the body is
// encrypted once into Envelope.ciphertext and signed. When a device that
// holds the key is no longer among the member devices (a member left or
// was removed, or a device left a list) the sender rotates: a new Sender,
// distributed to the remaining devices only, before its next message, so a
// removed member cannot read later messages even given their ciphertext.
// Distributions that do not fit one envelope (MaxEnvelope, below the 64
// KiB frame limit: about 40 new devices with a fresh handshake each) go
// into key-distribution envelopes (content hint ContentKeys, no shared
// ciphertext) returned before the message; the client sends them first
// and hands no event for them (Open returns ErrControlMessage). They take
// seqs of the conversation.
//
// Malicious server. A swapped bundle (other identity, bad signature,
// missing KEM prekey) fails Seal with ErrBadBundle. A replayed, reordered
// or injected envelope is rejected by the ratchet (or by a pqxdh replay
// check) without changing any session: Open returns an error, which the
// client puts into MessageEvent.OpenErr. A claimed sender that does not
// match the session fails authentication (associated data). An identity
// change is kept aside as pending, announced once through
// Config.OnIdentityChange (the client turns it into IdentityChangedEvent)
// and makes every Seal to that user fail with ErrIdentityChanged until
// TrustIdentity(user), which adopts the new list and drops the sessions of
// devices whose identity changed. SafetyNumber shows the number to compare
// (with the pending list while a change waits): crypto/safety over the
// user ids and, per side, the concatenated identities of the user's
// devices, so it changes when a device is added or replaced.
//
// Each received message is decrypted once: its plaintext is kept by
// (conversation, seq, msg id), so a message handed again after a restart
// opens again, while the same ciphertext under another seq (a replay)
// fails.
//
// # State
//
// Everything lives in one append-only log, <dir>/state.log (mode 0600,
// records with crc32c; a torn tail is cut on open, compacted on open when
// mostly garbage), replayed into memory: identity-bound prekey private
// keys, replay tokens, trusted and pending device lists, pairwise sessions
// (current and previous per peer device), sender keys and receivers per
// group, pending links, the plaintext copies of sent messages and the
// plaintexts of opened ones. The plaintexts are kept forever (as the
// client's message store keeps entries); the whole state is secret.
//
// # What it does not do
//
// No history for new devices (a linked device reads from its link on).
// Group membership comes from the server (ListConversations per group
// send); the server can add a member, as in Signal's server-side groups —
// the members see the membership entry. Header encryption is not used.
// Content hints are not authenticated (a server can only hide a message
// it could drop anyway). A session whose peer device disappears from its
// list stays stored. Sealing to a device for the first time needs the
// server (device list, bundle); later sends to known devices fall back to
// the trusted list when the server is not reachable within 3 s.
//
// # Concurrency
//
// A Sealer is safe for concurrent use; one mutex serialises all state
// changes (including the network requests a Seal makes), which is what
// the ratchet sessions need. OnIdentityChange is called with the mutex
// released. The Sealer starts no goroutines. Close releases the file.
package e2ee
