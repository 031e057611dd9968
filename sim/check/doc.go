// Package check holds what the region simulator records (History) and
// the invariants it checks over it.
package check
