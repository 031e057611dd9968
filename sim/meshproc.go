package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrExited is returned when a child process exits before it is ready.
var ErrExited = errors.New("sim: process exited")

// childProc is one run of a chatmesh child process: its stdout lines are kept
// (the ready lines), its stderr appended to a log file that outlives
// restarts.
type childProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process exited and stdout is drained

	mu    sync.Mutex
	lines []string
	more  chan struct{}
	err   error // Wait's result, once done
}

// startChild starts bin with args; stderr goes to logPath (appended).
func startChild(name, bin, logPath string, args []string) (*childProc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sim: %s log: %w", name, err)
	}
	fmt.Fprintf(logf, "\n=== %s start %s: %s %s\n", time.Now().Format(time.RFC3339Nano), name, bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	setProcGroup(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("sim: %s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("sim: start %s: %w", name, err)
	}
	p := &childProc{name: name, cmd: cmd, done: make(chan struct{}), more: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// output returns the stdout lines so far.
func (p *childProc) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// exited reports whether the process has exited.
func (p *childProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLine returns the rest of the first stdout line that starts with
// prefix, or an error when the process exits or ctx ends first.
func (p *childProc) waitLine(ctx context.Context, prefix string) (string, error) {
	find := func() (string, bool) {
		for _, l := range p.output() {
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest, true
			}
		}
		return "", false
	}
	for {
		if rest, ok := find(); ok {
			return rest, nil
		}
		select {
		case <-p.more:
		case <-p.done:
			if rest, ok := find(); ok {
				return rest, nil
			}
			p.mu.Lock()
			err := p.err
			p.mu.Unlock()
			return "", fmt.Errorf("%w: %s before printing %q: %v", ErrExited, p.name, prefix, err)
		case <-ctx.Done():
			return "", fmt.Errorf("sim: %s printed no %q: %w", p.name, prefix, ctx.Err())
		}
	}
}

// kill sends SIGKILL and waits for the exit (idempotent).
func (p *childProc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to grace for a clean exit, then SIGKILL.
// Where there is no SIGTERM (meshproc_other.go) it kills at once.
func (p *childProc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	if !terminate(p.cmd.Process) {
		p.kill()
		return
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.kill()
	}
}
