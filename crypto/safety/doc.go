// Package safety computes safety numbers: a fingerprint over both parties'
// identities that people compare by reading 60 digits or by scanning a code.
//
// The algorithm is Signal's NumericFingerprintGenerator (5200 iterations of
// SHA-512 over version || identity key || user id, 30 digits per party from
// six 5-byte chunks mod 100000, the halves sorted and concatenated), and it
// reproduces libsignal's published test vector. Both parties compute the
// same digits (Compute(a, b) and Compute(b, a) agree). The scannable form is
// version(1) || own fingerprint(32) || peer fingerprint(32); VerifyScanned
// checks a code from the other device crosswise and returns ErrMismatch on
// a substituted key.
//
// For chatmesh the identity key is the encoded crypto/identity.Public (both
// halves). A changed identity changes the number; announcing that to the
// user and blocking sending until accepted is the client's job.
//
// Compute costs about 2 × 5200 SHA-512 blocks (see BenchmarkCompute); cache
// the result per pair of identities. Everything here is safe for concurrent
// use. No I/O.
package safety
