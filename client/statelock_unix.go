//go:build unix

package client

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// stateLock is an exclusive advisory lock (flock) on StateDir/lock, held
// from Open to Close: two processes (or two Clients) appending to the
// same outbox, conversation logs and end-to-end state would interleave
// records and could reuse ratchet keys.
type stateLock struct{ f *os.File }

func lockStateDir(dir string) (*stateLock, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: lock: %w", ErrStore, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrStateInUse, dir)
		}
		return nil, fmt.Errorf("%w: lock: %w", ErrStore, err)
	}
	return &stateLock{f: f}, nil
}

// release drops the lock (the kernel drops it too when the process ends).
func (l *stateLock) release() {
	if l != nil && l.f != nil {
		_ = l.f.Close()
		l.f = nil
	}
}
