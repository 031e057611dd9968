package directory

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

type linInput struct {
	cas    bool
	conv   string
	expect uint64
}

type linOutput struct {
	epoch   uint64 // after a CAS or the stored one (a read, a refused CAS)
	ok      bool   // CAS applied
	unknown bool   // CAS outcome unknown
}

// convModel: a map conv → epoch, partitioned per conv; a CAS with an
// unknown outcome may or may not have happened.
var convModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(linInput).conv
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() []interface{} { return []interface{}{uint64(0)} },
	Step: func(state, input, output interface{}) []interface{} {
		s, in, out := state.(uint64), input.(linInput), output.(linOutput)
		switch {
		case !in.cas:
			if out.epoch == s {
				return []interface{}{s}
			}
		case out.unknown:
			if s == in.expect {
				return []interface{}{s, s + 1}
			}
			return []interface{}{s}
		case out.ok:
			if s == in.expect && out.epoch == s+1 {
				return []interface{}{s + 1}
			}
		default:
			if s != in.expect && out.epoch == s {
				return []interface{}{s}
			}
		}
		return nil
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(linInput), output.(linOutput)
		if !in.cas {
			return fmt.Sprintf("read(%s) -> %d", in.conv, out.epoch)
		}
		return fmt.Sprintf("cas(%s, %d) -> %+v", in.conv, in.expect, out)
	},
}

func TestModelRejectsStaleRead(t *testing.T) {
	// The checker must be able to fail: a read of epoch 0 after a CAS to 1 completed.
	h := []porcupine.Operation{
		{ClientId: 0, Input: linInput{cas: true, conv: "a"}, Output: linOutput{epoch: 1, ok: true}, Call: 0, Return: 10},
		{ClientId: 1, Input: linInput{conv: "a"}, Output: linOutput{epoch: 0}, Call: 20, Return: 30},
	}
	if porcupine.CheckOperations(convModel.ToModel(), h) {
		t.Fatal("stale read accepted")
	}
	h[1].Output = linOutput{epoch: 1}
	if !porcupine.CheckOperations(convModel.ToModel(), h) {
		t.Fatal("fresh read rejected")
	}
}

func TestLinearizableCASWithLeaderRestart(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	l := c.leader()
	if err := c.node(l).PutRegion(ctx, Region{Name: "fra", Healthy: true}); err != nil {
		t.Fatal(err)
	}

	const clients, opsPer = 4, 30
	convs := []string{"p0", "p1"}
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		done    atomic.Int64
		stats   struct{ casOK, casFenced, casUnknown, reads, readErrs int }
	)
	count := func(p *int) { mu.Lock(); *p++; mu.Unlock() }
	killed := make(chan int, 1)
	var wg sync.WaitGroup

	// The chaos: kill the leader after a third of the ops, restart it after two thirds.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for done.Load() < clients*opsPer/3 && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		victim := -1
		for i := range 3 {
			if d := c.node(i); d != nil && d.IsLeader() {
				victim = i
			}
		}
		if victim < 0 {
			victim = 0
		}
		c.kill(victim)
		killed <- victim
		for done.Load() < 2*clients*opsPer/3 && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		c.start(victim)
	}()

	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(cl), 7))
			seen := map[string]uint64{}
			for i := range opsPer {
				conv := convs[rng.IntN(len(convs))]
				var d *Directory
				for k := range 3 { // the client's own region, or the next live one
					if d = c.node((cl + i + k) % 3); d != nil {
						break
					}
				}
				octx, ocancel := context.WithTimeout(ctx, 8*time.Second)
				in := linInput{conv: conv, cas: rng.IntN(2) == 0, expect: seen[conv]}
				call := now()
				var out linOutput
				record := true
				if in.cas {
					e, err := d.SetConvHome(octx, conv, "fra", in.expect)
					var ee *EpochError
					switch {
					case err == nil:
						out = linOutput{epoch: e, ok: true}
						seen[conv] = e
						count(&stats.casOK)
					case errors.As(err, &ee):
						out = linOutput{epoch: ee.Stored}
						seen[conv] = ee.Stored
						count(&stats.casFenced)
					default: // may or may not have happened
						out = linOutput{unknown: true}
						count(&stats.casUnknown)
					}
				} else {
					h, _, err := d.ConvLinearizable(octx, conv)
					if err != nil { // a failed read has no effect: leave it out
						record = false
						count(&stats.readErrs)
					} else {
						out = linOutput{epoch: h.Epoch}
						seen[conv] = h.Epoch
						count(&stats.reads)
					}
				}
				ret := now()
				ocancel()
				if out.unknown {
					ret = math.MaxInt64 // may take effect at any later time
				}
				if record {
					mu.Lock()
					history = append(history, porcupine.Operation{ClientId: cl, Input: in, Call: call, Output: out, Return: ret})
					mu.Unlock()
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	victim := <-killed
	t.Logf("killed and restarted %s; history %d ops: %d cas ok, %d fenced, %d unknown, %d reads (%d failed reads dropped)",
		c.peers[victim].ID, len(history), stats.casOK, stats.casFenced, stats.casUnknown, stats.reads, stats.readErrs)
	if stats.casOK < 5 || stats.reads < 10 {
		t.Fatalf("history too thin to mean anything: %+v", stats)
	}

	res, info := porcupine.CheckOperationsVerbose(convModel.ToModel(), history, 30*time.Second)
	if res != porcupine.Ok {
		t.Errorf("linearizability: %s", res)
		if res == porcupine.Illegal {
			path := t.TempDir() + "/history.html"
			if err := porcupine.VisualizePath(convModel.ToModel(), info, path); err == nil {
				t.Logf("visualization: %s", path)
			}
		}
	}

	// The restarted voter catches up with the final state.
	want := map[string]ConvHome{}
	lead := c.node(c.leader())
	if err := lead.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, cv := range convs {
		want[cv], _ = lead.Conv(cv)
	}
	rv := c.node(victim)
	eventually(t, "restarted voter converges", func() bool {
		for _, cv := range convs {
			if h, _ := rv.Conv(cv); h != want[cv] {
				return false
			}
		}
		return true
	})
}
