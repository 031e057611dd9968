// Package dh25519 is Noise's "25519" DH function (RFC 7748 X25519) on
// crypto/ecdh keys with half the scalar multiplications of
// noise.DH25519: the same key pairs for the same random bytes and the same
// results. crypto/noiseconn (the client–edge transport) and crypto/pqxdh
// (the end-to-end session set-up) share it; it depends only on the
// standard library and flynn/noise, as the E2E packages must.
package dh25519
