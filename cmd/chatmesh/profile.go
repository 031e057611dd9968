package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// startCPUProfile writes a CPU profile of this process to path until the
// returned stop is called; an empty path profiles nothing (stop is a
// no-op). op prefixes errors.
func startCPUProfile(op, path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: cpu profile: %w", op, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
