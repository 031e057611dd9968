package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminEndpoints(t *testing.T) {
	reg := NewRegistry("test")
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "chatmesh_test_total", Help: "x"})
	reg.MustRegister(c)
	c.Add(3)
	var failing atomic.Bool
	srv, err := Listen(Config{Addr: "127.0.0.1:0", Gatherer: reg, Checks: []Check{
		{Name: "always", Fn: func(context.Context) error { return nil }},
		{Name: "sequencer", Fn: func(context.Context) error {
			if failing.Load() {
				return errors.New("sequencer not consuming")
			}
			return nil
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())

	if code, body := get(t, srv.URL()+MetricsPath, ""); code != 200 || !strings.Contains(body, "chatmesh_test_total 3") ||
		!strings.Contains(body, `chatmesh_build_info{go_version=`) || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics: %d %.300s", code, body)
	}
	if code, body := get(t, srv.URL()+HealthPath, ""); code != 200 || !strings.Contains(body, `"alive":true`) {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	code, body := get(t, srv.URL()+ReadyPath, "")
	var rd Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil || code != 200 || !rd.Ready || len(rd.Checks) != 2 {
		t.Fatalf("/readyz: %d %s (%v)", code, body, err)
	}
	failing.Store(true)
	code, body = get(t, srv.URL()+ReadyPath, "")
	rd = Readiness{}
	if err := json.Unmarshal([]byte(body), &rd); err != nil || code != http.StatusServiceUnavailable || rd.Ready ||
		rd.Checks[1].OK || rd.Checks[1].Reason != "sequencer not consuming" || !rd.Checks[0].OK {
		t.Fatalf("/readyz while failing: %d %s (%v)", code, body, err)
	}
	failing.Store(false)
	if code, _ := get(t, srv.URL()+ReadyPath, ""); code != 200 {
		t.Fatalf("/readyz after recovery: %d", code)
	}
	if code, body := get(t, srv.URL()+PprofPath, ""); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof index: %d %.200s", code, body)
	}
	if code, body := get(t, srv.URL()+PprofPath+"goroutine?debug=1", ""); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("pprof goroutine: %d %.200s", code, body)
	}
}

// A slow check is cut off by the timeout and reported, not waited for.
func TestAdminReadyCheckTimeout(t *testing.T) {
	srv, err := Listen(Config{Addr: "127.0.0.1:0", CheckTimeout: 50 * time.Millisecond, Checks: []Check{{Name: "slow", Fn: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())
	code, body := get(t, srv.URL()+ReadyPath, "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "deadline exceeded") {
		t.Fatalf("/readyz: %d %s", code, body)
	}
}

func TestAdminToken(t *testing.T) {
	srv, err := Listen(Config{Addr: "127.0.0.1:0", Token: "s3cret", Gatherer: NewRegistry("test")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())
	for _, p := range []string{MetricsPath, PprofPath} {
		if code, _ := get(t, srv.URL()+p, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without token: %d", p, code)
		}
		if code, _ := get(t, srv.URL()+p, "wrong"); code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d", p, code)
		}
		if code, _ := get(t, srv.URL()+p, "s3cret"); code != 200 {
			t.Errorf("%s with the token: %d", p, code)
		}
	}
	// Probes need no token.
	for _, p := range []string{HealthPath, ReadyPath} {
		if code, _ := get(t, srv.URL()+p, ""); code != 200 {
			t.Errorf("%s: %d", p, code)
		}
	}
}

func TestAdminCheckListen(t *testing.T) {
	for _, c := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:7479", "", true},
		{"localhost:7479", "", true},
		{"[::1]:7479", "", true},
		{"0.0.0.0:7479", "", false},
		{":7479", "", false},
		{"10.0.0.5:7479", "", false},
		{"10.0.0.5:7479", "t", true},
	} {
		err := CheckListen(c.addr, c.token)
		if (err == nil) != c.ok || (!c.ok && !errors.Is(err, ErrOpenAdmin)) {
			t.Errorf("CheckListen(%q, %q) = %v", c.addr, c.token, err)
		}
	}
	if _, err := Listen(Config{Addr: "0.0.0.0:0"}); !errors.Is(err, ErrOpenAdmin) {
		t.Errorf("Listen on every interface without a token: %v", err)
	}
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"127.0.0.1:7480", "127.0.0.1:7480", true},
		{"0.0.0.0:7480", "127.0.0.1:7480", true},
		{":7480", "10.0.0.1:7480", true},
		{"127.0.0.1:7479", "127.0.0.1:7480", false},
		{"127.0.0.1:7480", "127.0.1.1:7480", false},
		{"127.0.0.1:0", "127.0.0.1:0", false},
	} {
		if got := SameListener(c.a, c.b); got != c.same {
			t.Errorf("SameListener(%q, %q) = %v", c.a, c.b, got)
		}
	}
}
