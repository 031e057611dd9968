// Package storetest is the contract test suite for core.Store.
//
// Every Store implementation (region/pebblestore, region/pgstore) runs the
// same suite from its own tests:
//
//	func TestContract(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) core.Store { return openFresh(t) })
//	}
//
// and the same Append benchmark:
//
//	func BenchmarkAppend(b *testing.B) {
//		storetest.Bench(b, func(b *testing.B) core.Store { return openFresh(b) })
//	}
//
// # What the suite checks
//
// Each sentence of the core.Store documentation in core/ports.go is a
// subtest: registration (create user, idempotent re-registration of the same
// Noise static key, next device number, static key owned by another user,
// missing user, DeviceByStatic), Append (create-on-append, gapless seqs,
// idempotency-key replay returning the first stored entry with Duplicate set
// and nothing changed — also after later appends and after fencing, epoch
// fencing, missing conversation, membership effects with JoinedSeq; roles:
// the creator promoted on CREATE, promote/demote, the last admin's leave
// with a promotion in the same entry, a re-added admin as a plain member;
// invitations: invite on CREATE and later, invitee listed by
// UserConversations, accept as AddMembers of an invited user, decline and
// cancel as RemoveMembers, re-invitation; the title replaced by Title;
// replays and fenced appends changing none of them),
// Messages paging (by count and by bytes, exactly at the bound, up with
// Messages and down with MessagesBefore, over many near-maximum entries),
// Append's size limit (an entry of exactly MaxMessageBytes stored, one
// byte more refused with MESSAGE_TOO_LARGE and no trace), a protobuf round trip of every Message field, cursors,
// routes and last-seen, and concurrency: many goroutines appending to one
// conversation with distinct and duplicate keys (gapless seqs 1..N, exactly
// one non-duplicate result per key, the same seq for every replay of a key),
// concurrent cursor advances (the moves form one chain from 0 to the maximum),
// and concurrent device registration. Each concurrency scenario runs three
// rounds with all goroutines released at once; a race in an implementation
// shows up as a failure with high probability, not certainty (removing
// Pebble's per-conversation lock failed 7 runs of 10).
//
// # Retention
//
// Run also checks core.Retainer (both stores implement it) and, through
// region.Retention, the retention policy on the store (retention.go):
// Trim deletes a prefix of entries with their idempotency keys (Messages,
// MessagesBefore and Lookup no longer see them; a resend of a deleted key
// is a new entry), ForgetKeys deletes keys and keeps entries, no-ops and
// bounds (beyond the head: ErrInvalidArgument; missing conversation:
// ErrNotFound), paging of RetentionMarks; a device that never acks keeps
// every entry until MaxAge while keys go after the resend window (the
// sender's own device, a device linked after the entries and an invited
// user do not hold entries back; acks release them; MaxAge removes the
// rest and counts them as expired); history mode keeps acked entries for
// History; and a steady stream of 40 rounds with a pass per round keeps
// the stored entries (counted through Messages, equal to Head - Trimmed)
// within the traffic of the resend window when everyone acks and of
// MaxAge when a device never does, and the stored keys within the window.
//
// # Prekey suite
//
// Stores that implement core.PrekeyStore (both do) also run
//
//	func TestPrekeyContract(t *testing.T) {
//		storetest.RunPrekeys(t, func(t *testing.T) core.Store { return openFresh(t) })
//	}
//
// which checks: ErrNotFound before any upload, upload/take/count with the
// lowest id first and exact bytes, exhaustion (OneTime nil, Remaining 0, the
// rest of the bundle still served), replacement of identity, signed and KEM
// prekeys independently, duplicate ids ignored (also within one upload, and
// ids already handed out), separate supplies per device (and for users whose
// ids are prefixes of each other), 16 goroutines draining 50 one-time keys
// (each key exactly once, the remaining counts seen are exactly 49..0, every
// goroutine then sees exhaustion; three rounds), and device-list versioning
// (replay, same version with other bytes, stale, unsigned 64-bit versions,
// concurrent publishers).
//
// # Semantics the suite pins down where core/ports.go is silent
//
//   - A writer with a higher epoch than the stored conversation raises the
//     conversation's epoch, so the previous owner is fenced from then on.
//   - Append with an empty ClientMsgId, a nil Message or an empty ConvId is
//     ErrInvalidArgument (an entry without an idempotency key could not be
//     de-duplicated); a Create whose ID differs from Message.ConvId too.
//   - Messages of a missing conversation is ErrNotFound; limit <= 0 means
//     core.DefaultPageSize and limits above core.MaxPageSize are clamped
//     (the clamp is not exercised: it would need more than 1000 appends).
//   - The membership fields apply as core.MemberChanges defines (adds, then
//     invitations, then removes, then promotions, then demotions): a user
//     added or invited and removed by one entry ends up removed, a user
//     promoted and demoted by one entry ends up not admin, Invite of a
//     member or invited user and Promote of an invited user or non-member
//     are no-ops. Members lists invitations (Invited set) with members.
//   - Title "" clears the title; Title on a creating append wins over
//     Create.Title.
//   - Cursors of the two kinds are independent; an unknown kind is
//     ErrInvalidArgument. AdvanceCursor does not require the conversation to
//     exist.
//   - ClearRoute and ClearEdgeRoutes set last-seen only for routes they
//     actually removed, and last-seen never moves back in time.
//   - PutPrekeys with a nil Identity when the device has none stored is
//     ErrNotFound and stores nothing (the region answers that the first
//     upload must carry the identity).
//   - TakeBundle needs the identity, the signed prekey and the KEM prekey
//     (a bundle without its KEM part is rejected by every client, so no
//     one-time key is burnt on it); until then it is ErrNotFound and
//     consumes nothing. OneTimeCount of an unknown device is 0, not an error.
//   - Within one upload the first occurrence of a one-time id wins.
//   - RegisterDevice takes the user from u.ID (d.Key.User may be empty or
//     equal to it; a different value is ErrInvalidArgument); an empty
//     NoiseStatic is ErrInvalidArgument.
//
// # Contract for open
//
// open must return a new, empty store that belongs to the calling (sub)test.
// The suite closes it with t.Cleanup; anything else the store needs removed
// (a directory, a database schema) open registers with t.Cleanup itself,
// before returning, so that it runs after Close. Subtests call t.Parallel,
// so open must tolerate concurrent calls.
//
// The suite sends no traffic anywhere; it only calls the store. Load loops
// are bounded in count.
package storetest
