package testenv

import (
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// outcome records how a helper ended a test, without ending this one.
type outcome struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (o *outcome) Helper() {}
func (o *outcome) Fatalf(format string, args ...any) {
	o.failed, o.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (o *outcome) Skipf(format string, args ...any) {
	o.skipped, o.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func run(t *testing.T, f func(tb testing.TB)) *outcome {
	o := &outcome{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(o)
	}()
	<-done
	return o
}

// A missing server skips with the variable to set, and fails when required.
func TestMissingServerSkipsOrFails(t *testing.T) {
	for _, tc := range []struct {
		name, require string
		get           func(testing.TB)
	}{
		{"postgres", EnvRequirePG, func(tb testing.TB) { PostgresDSN(tb) }},
		{"kafka", EnvRequireKafka, func(tb testing.TB) { KafkaBrokers(tb) }},
		{"mesh-kafka", EnvRequireKafka, func(tb testing.TB) { MeshKafka(tb, 3) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvPGDSN, "")
			t.Setenv(EnvKafkaBrokers, " , ")
			t.Setenv(EnvMeshKafka, "127.0.0.1:1; ,")
			t.Setenv(EnvRequirePG, "")
			t.Setenv(EnvRequireKafka, "")
			if o := run(t, tc.get); !o.skipped || o.failed {
				t.Fatalf("not required: skipped %v failed %v (%s), want a skip", o.skipped, o.failed, o.msg)
			}
			t.Setenv(tc.require, "1")
			if o := run(t, tc.get); !o.failed || o.skipped {
				t.Fatalf("%s=1: skipped %v failed %v (%s), want a failure", tc.require, o.skipped, o.failed, o.msg)
			}
		})
	}
	t.Setenv(EnvPGDSN, "postgres://x")
	t.Setenv(EnvKafkaBrokers, "a:1, b:2,")
	if d := PostgresDSN(t); d != "postgres://x" {
		t.Fatalf("dsn %q", d)
	}
	if b := KafkaBrokers(t); len(b) != 2 || b[0] != "a:1" || b[1] != "b:2" {
		t.Fatalf("brokers %q", b)
	}
	t.Setenv(EnvMeshKafka, " a:1,a:2 ; b:1;c:1;")
	if m := MeshKafka(t, 3); len(m) != 3 || len(m[0]) != 2 || m[0][1] != "a:2" || m[1][0] != "b:1" || m[2][0] != "c:1" {
		t.Fatalf("mesh clusters %q", m)
	}
}

// A cluster smaller than the test needs, or without its directory, fails
// under CHATMESH_REQUIRE_KAFKA=1.
func TestRealKafkaClusterRequired(t *testing.T) {
	t.Setenv(EnvRequireKafka, "1")
	t.Setenv(EnvKafkaBrokers, "a:1,b:2")
	t.Setenv(EnvKafkaDir, t.TempDir())
	if o := run(t, func(tb testing.TB) { RealKafkaCluster(tb, 3) }); !o.failed {
		t.Fatalf("2 brokers for a 3-node test: skipped %v (%s), want a failure", o.skipped, o.msg)
	}
	t.Setenv(EnvKafkaBrokers, "a:1,b:2,c:3")
	t.Setenv(EnvKafkaDir, "")
	if o := run(t, func(tb testing.TB) { RealKafkaCluster(tb, 3) }); !o.failed {
		t.Fatalf("no %s: skipped %v (%s), want a failure", EnvKafkaDir, o.skipped, o.msg)
	}
	t.Setenv(EnvRequireKafka, "")
	if o := run(t, func(tb testing.TB) { RealKafkaCluster(tb, 3) }); !o.skipped {
		t.Fatalf("no %s, not required: failed %v (%s), want a skip", EnvKafkaDir, o.failed, o.msg)
	}
}

// The restart lock excludes a second holder until the first releases it.
func TestLockFileExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	unlock, _, err := lockFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := lockFile(path, 300*time.Millisecond); err == nil {
		t.Fatal("second lock taken while the first is held")
	}
	unlock()
	unlock2, _, err := lockFile(path, time.Second)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	unlock2()
}
