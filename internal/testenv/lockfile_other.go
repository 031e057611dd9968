//go:build !unix && !windows

package testenv

import (
	"errors"
	"os"
)

// tryLock fails where there is neither flock nor LockFileEx (plan9, js,
// wasip1): a lock file created with O_EXCL would outlive a test killed
// while holding it and block every later run, and the tests that take the
// lock drive deploy/kafka/cluster.sh through bash, which these platforms
// do not run anyway.
func tryLock(*os.File) (bool, error) {
	return false, errors.New("file locks are only implemented on unix and windows")
}

func unlockFile(*os.File) {}
