// Package senderkey implements Signal-style Sender Keys for group messages:
// each member device has, per group, a sending chain and an Ed25519 signing
// key; a message is encrypted once for the whole group and signed.
//
// Flow: the sending device makes a Sender (NewSender), sends its
// Distribution (DistributionSize bytes: version || key id || iteration ||
// chain key || signing public key) to every member device over the pairwise
// ratchet sessions, then Encrypts each group message once. Each member
// device keeps a Receiver per (group, sender device, key id), made from the
// distribution, and Decrypts. ad binds a message to its context (group id
// and sender address, for example); sender and receivers pass the same ad.
//
// Message: version(1) || key id(4) || iteration(4) || ciphertext || tag(16)
// || Ed25519 signature(64) over "chatmesh-senderkey-v1" || len(ad) || ad ||
// everything before the signature. Receivers verify the signature first:
// every member knows the chain key, so only the signature proves which
// member sent the message.
//
// Receivers accept out-of-order messages up to Config.MaxSkip (default
// 2000) ahead, keep at most Config.MaxSkipped skipped keys (oldest evicted),
// delete every key after use (a replay fails with ErrDuplicate) and never
// change state on a failed Decrypt. A receiver made from a distribution
// cannot read messages sent before it (iteration is a lower bound).
//
// Rotation is a new Sender with a new key id: the client rotates whenever a
// member or device leaves the group and distributes the new key to the
// remaining devices only; old receivers get ErrUnknownKey.
//
// Senders and receivers are not safe for concurrent use. No goroutines, no I/O.
package senderkey
