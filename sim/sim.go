package sim

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/internal/loadgen"
)

// Config describes a simulation. Zero values get small defaults.
type Config struct {
	// Binary is the chatmesh executable that runs the region
	// (`chatmesh dev`). Default: this process's own executable.
	Binary string
	// DataDir keeps the region's data across its restarts. Default: a
	// temporary directory, removed afterwards.
	DataDir string
	// CrashEvery SIGKILLs the region process at this interval while
	// traffic runs (0: no faults). Downtime is how long it stays down
	// before the restart (default 300ms).
	CrashEvery, Downtime time.Duration
	// Load is the traffic (clients, groups, rates, duration); its Edges are
	// filled in by Run.
	Load   loadgen.Config
	Logger *slog.Logger
}

// Report is what a simulation did and saw.
type Report struct {
	Crashes int            `json:"crashes"`
	Load    loadgen.Result `json:"load"`
}

// region is the child process.
type region struct {
	bin  string
	args []string
	log  *slog.Logger

	mu  sync.Mutex
	cmd *exec.Cmd
	ws  string
}

func (r *region) start(ctx context.Context) error {
	cmd := exec.Command(r.bin, r.args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sim: start region: %w", err)
	}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "ENDPOINTS "); ok {
				var e struct {
					WS string `json:"ws"`
				}
				if json.Unmarshal([]byte(rest), &e) == nil {
					found <- e.WS
				}
			}
		}
	}()
	select {
	case ws := <-found:
		r.mu.Lock()
		r.cmd, r.ws = cmd, ws
		r.mu.Unlock()
		return nil
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		cmd.Wait()
		return errors.New("sim: region did not start within 2 minutes")
	case <-ctx.Done():
		cmd.Process.Kill()
		cmd.Wait()
		return ctx.Err()
	}
}

// kill SIGKILLs the region and reaps it.
func (r *region) kill() {
	r.mu.Lock()
	cmd := r.cmd
	r.cmd = nil
	r.mu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

// stop asks the region to shut down gracefully.
func (r *region) stop() {
	r.mu.Lock()
	cmd := r.cmd
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	grace := 20 * time.Second
	if !terminate(cmd.Process) {
		grace = 0 // no SIGTERM here (windows): kill at once
	}
	select {
	case <-done:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Run runs the simulation and checks its invariants. It returns an error
// when anything acknowledged was lost, duplicated or reordered, or when
// the region could not be (re)started.
func Run(ctx context.Context, cfg Config) (Report, error) {
	var rep Report
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return rep, fmt.Errorf("sim: %w", err)
		}
		cfg.Binary = exe
	}
	if cfg.Downtime <= 0 {
		cfg.Downtime = 300 * time.Millisecond
	}
	if cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "chatmesh-sim-")
		if err != nil {
			return rep, err
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
	}
	ws, err := freeAddr()
	if err != nil {
		return rep, err
	}
	users := cfg.Load.Users
	if users <= 0 {
		users = 20
	}
	// Every simulated user registers from this host: they use a token.
	token := "sim-" + rand.Text()
	r := &region{bin: cfg.Binary, log: cfg.Logger, args: []string{"dev", "--regions", "1", "--data", cfg.DataDir, "--ws", ws, "--wt", "-",
		"--log", "warn", "--max-conns-per-ip", fmt.Sprint(users + 16), "--registration-token", token}}
	if err := r.start(ctx); err != nil {
		return rep, err
	}
	defer r.stop()

	load := cfg.Load
	load.Edges = []string{r.ws}
	if load.RegistrationToken == "" {
		load.RegistrationToken = token
	}
	load.Logger = cfg.Logger
	faultsDone := make(chan struct{})
	stopFaults := make(chan struct{})
	var faultErr error
	load.OnSending = func() {
		go func() {
			defer close(faultsDone)
			if cfg.CrashEvery <= 0 {
				return
			}
			t := time.NewTicker(cfg.CrashEvery)
			defer t.Stop()
			for {
				select {
				case <-stopFaults:
					return
				case <-ctx.Done():
					return
				case <-t.C:
				}
				r.kill()
				rep.Crashes++
				cfg.Logger.Info("sim: region killed", "crash", rep.Crashes)
				time.Sleep(cfg.Downtime)
				if err := r.start(ctx); err != nil {
					faultErr = err
					return
				}
			}
		}()
	}
	// Faults stop when sending stops, so the drain sees a live region.
	duration := load.Duration
	if duration <= 0 {
		duration = 10 * time.Second
	}
	go func() {
		select {
		case <-time.After(duration):
		case <-ctx.Done():
		}
		close(stopFaults)
	}()
	res, err := loadgen.Run(ctx, load)
	rep.Load = res
	<-faultsDone
	if faultErr != nil {
		return rep, faultErr
	}
	return rep, err
}
