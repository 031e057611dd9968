// Package vectors holds the end-to-end test vectors of chatmesh: fixed keys
// and fixed randomness turned into the exact bytes of a full session setup
// (a prekey bundle, the PQXDH-style handshake and the first messages),
// Double Ratchet messages in both directions delivered out of order, a
// Sender Keys group message with its distribution, and a safety number.
// E2E.md (at the repository root) specifies every byte; the JSON file
// testdata/e2e-vectors.json is the vector set a second implementation
// proves itself against, and Vectors is its schema.
//
// Two tests guard the file. TestVectorsGolden regenerates the vectors with
// the crypto tree and an independent model of E2E.md's formulas (written
// from the specification with only the standard library, x/crypto and
// flynn/noise's primitives, not the tree's code) and requires the result
// to equal the committed file byte for byte; `go test ./crypto/vectors
// -run Golden -update` rewrites it. TestVectorsConsume reads only the
// committed JSON and replays both sides through the public APIs
// (identity, prekey, pqxdh, ratchet, senderkey, safety): every ciphertext
// must be reproduced exactly and every message must decrypt, in the
// recorded delivery order.
//
// The package has no code outside its tests but the schema: nothing in
// the module imports it. The generator uses crypto/mlkem/mlkemtest for
// derandomised ML-KEM encapsulation, which is only for known-answer tests
// and so appears in test files only.
package vectors
