//go:build !unix

package sim

import (
	"os"
	"os/exec"
)

// setProcGroup does nothing where there are no Unix process groups: the
// children share the harness's console, so a Ctrl-C may stop them before
// the harness does (they are killed and reaped either way).
func setProcGroup(*exec.Cmd) {}

// terminate reports false: os.Process.Signal delivers only os.Kill here
// (no SIGTERM, so no controlled shutdown), and stop kills the process at
// once instead of waiting out its grace period for an exit that will not
// come.
func terminate(*os.Process) bool { return false }
