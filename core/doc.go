// Package core is chatmesh's pure domain: identifiers, limits, the typed
// errors that cross the wire, the sequencing and delivery rules, and the
// ports (interfaces) that regions and edges are built on: Store, Bus and
// Notifier.
//
// core does no I/O and never reads the clock: time enters as a parameter.
// It imports nothing else of this module except its generated wire types in
// core/pb. Everything here is safe for concurrent use unless a type's
// documentation says otherwise.
//
// # Conversations
//
// A direct (1:1) conversation has the deterministic id "d:<a>:<b>" where a < b
// are the two user ids; it comes into existence with its first message. A
// group has the id "g:<ULID>" chosen by its creator, so creation is
// idempotent. Every conversation has a home region and an owner epoch: only
// the owner at the current epoch may append (see Store.Append).
//
// # Sequencing
//
// Every entry of a conversation — user messages and membership changes —
// gets the next gapless sequence number (starting at 1) from the sequencer
// in one store transaction that also records the sender's idempotency key
// (conversation, sender device, client message id). Exactly-once, in-order
// delivery is a property of (stored seq + device cursor + client dedupe).
package core
