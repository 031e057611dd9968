//go:build unix

package sim

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcGroup gives cmd its own process group: a test's Ctrl-C reaches
// the harness, which stops its children itself.
func setProcGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// terminate sends SIGTERM; it reports true: a clean exit may follow.
func terminate(p *os.Process) bool {
	_ = p.Signal(syscall.SIGTERM)
	return true
}
