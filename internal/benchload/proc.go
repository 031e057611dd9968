package benchload

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// ProcSample is a server process's CPU time and resident memory at one
// moment, from /proc/PID/stat (utime + stime) and /proc/PID/status (VmRSS).
type ProcSample struct {
	At     time.Time
	CPU    time.Duration
	RSSKiB int64
}

// ReadProc samples process pid.
func ReadProc(pid int) (ProcSample, error) {
	s := ProcSample{At: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("benchload: %w", err)
	}
	// The command name (field 2) may hold spaces: fields after it start
	// past the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, errors.New("benchload: malformed /proc stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return s, errors.New("benchload: short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return s, fmt.Errorf("benchload: /proc stat: %w", err)
	}
	s.CPU = time.Duration(ut+st) * time.Second / clockTicks
	status, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("benchload: %w", err)
	}
	defer status.Close()
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			v := strings.Fields(rest)
			if len(v) > 0 {
				s.RSSKiB, _ = strconv.ParseInt(v[0], 10, 64)
			}
		}
	}
	return s, nil
}

// Server is what the server process spent during a measurement.
type Server struct {
	PID          int     `json:"pid"`
	CPUSeconds   float64 `json:"cpu_s"`
	CPUCores     float64 `json:"cpu_cores"` // average cores busy
	RSSBeforeMiB float64 `json:"rss_before_mib"`
	RSSAfterMiB  float64 `json:"rss_after_mib"`
	// CPUPer1kMsgs is CPU seconds per 1,000 acknowledged messages;
	// CPUPer1kDeliveries per 1,000 deliveries.
	CPUPer1kMsgs       float64 `json:"cpu_s_per_1k_msgs,omitempty"`
	CPUPer1kDeliveries float64 `json:"cpu_s_per_1k_deliveries,omitempty"`
	// RSSPerConnKiB is (after − before) / connections, for idle.
	RSSPerConnKiB float64 `json:"rss_per_conn_kib,omitempty"`
}

// serverDelta turns two samples into a Server; pid 0 gives nil.
func serverDelta(pid int, a, b ProcSample) *Server {
	if pid == 0 {
		return nil
	}
	s := &Server{PID: pid, CPUSeconds: (b.CPU - a.CPU).Seconds(),
		RSSBeforeMiB: float64(a.RSSKiB) / 1024, RSSAfterMiB: float64(b.RSSKiB) / 1024}
	if d := b.At.Sub(a.At).Seconds(); d > 0 {
		s.CPUCores = s.CPUSeconds / d
	}
	return s
}

func (s *Server) rssPerConn() float64 {
	if s == nil {
		return 0
	}
	return s.RSSPerConnKiB
}
