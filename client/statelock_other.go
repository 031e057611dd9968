//go:build !unix

package client

// stateLock is a no-op where flock is not available.
type stateLock struct{}

func lockStateDir(string) (*stateLock, error) { return &stateLock{}, nil }

func (*stateLock) release() {}
