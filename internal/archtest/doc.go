// Package archtest holds the test that enforces chatmesh's import rules
// (DESIGN.md §2): core and crypto import nothing else of the module; edge
// and region import core and crypto's transport and prekey parts, never the
// ratchet, and never each other (region may not import edge either); client
// imports core and crypto; only cmd imports sim. It has no non-test code.
package archtest
