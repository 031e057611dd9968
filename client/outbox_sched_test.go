package client

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/client/e2ee"
	"github.com/chatmesh/chatmesh/core/pb"
)

// sendableRef is the scheduler as it was before the per-conversation
// index: one pass over every entry in order. It is the specification the
// indexed sendable must match.
func (ob *Outbox) sendableRef(now time.Time, window, limit int) (pick []*pb.SendRequest, wake time.Time) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	inflight := map[string]int{}
	blocked := map[string]bool{}
	prev := map[string]string{}
	oldest := map[string]uint64{}
	var live []*outboxEntry
	for _, e := range ob.entries {
		if !e.removed {
			live = append(live, e)
		}
	}
	for _, e := range live {
		if e.inflight {
			inflight[e.req.GetConvId()]++
		}
	}
	for _, e := range live {
		conv := e.req.GetConvId()
		after := prev[conv]
		prev[conv] = e.req.GetClientMsgId()
		barrier := isKeyDistribution(e.req)
		if e.inflight {
			if o, ok := oldest[conv]; !ok || e.pick < o {
				oldest[conv] = e.pick
			}
			if barrier {
				blocked[conv] = true
			}
			continue
		}
		if blocked[conv] {
			continue
		}
		if e.notBefore.After(now) {
			blocked[conv] = true
			if wake.IsZero() || e.notBefore.Before(wake) {
				wake = e.notBefore
			}
			continue
		}
		if o, ok := oldest[conv]; ok && e.waitPicks > 0 && o <= e.waitPicks {
			blocked[conv] = true
			continue
		}
		if len(pick) >= limit {
			break
		}
		w := window
		if c, ok := ob.cwnd[conv]; ok && c < w {
			w = c
		}
		if inflight[conv] >= w || (barrier && inflight[conv] > 0) {
			blocked[conv] = true
			continue
		}
		if barrier {
			blocked[conv] = true
		}
		inflight[conv]++
		ob.picks++
		ob.setInflight(e, true)
		e.pick, e.waitPicks = ob.picks, 0
		if _, ok := oldest[conv]; !ok {
			oldest[conv] = e.pick
		}
		e.attempts++
		pick = append(pick, &pb.SendRequest{
			ConvId: conv, ClientMsgId: e.req.GetClientMsgId(), Envelope: e.req.GetEnvelope(), AfterClientMsgId: after,
		})
	}
	return pick, wake
}

func picksOf(rs []*pb.SendRequest) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetClientMsgId()+"<"+r.GetAfterClientMsgId())
	}
	return out
}

// TestOutboxSchedulerMatchesReference: random sequences of adds (key
// distributions among them), picks with varied windows and limits, acks,
// transient refusals with and without a backoff, OUT_OF_ORDER refusals,
// congestion, entries settled while not in flight, session resets and
// the passing of time, applied to two outboxes: the indexed scheduler
// picks exactly what the one-pass reference picks, with the same
// predecessor names, attempt counts and wake-up times.
func TestOutboxSchedulerMatchesReference(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			a, err := OpenOutbox(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, err := OpenOutbox(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			convs := []string{"A", "B", "C", "D", "E"}[:1+rng.IntN(5)]
			now := time.Unix(1000, 0)
			var inflight []*pb.SendRequest
			next, picked, acked := 0, 0, 0
			add := func(ob *Outbox, req *pb.SendRequest) {
				ob.mu.Lock()
				e := &outboxEntry{n: ob.next, req: req}
				ob.next++
				ob.mu.Unlock()
				ob.insert(e)
			}
			for step := range 600 {
				var what string
				switch op := rng.IntN(20); {
				case op < 6:
					conv := convs[rng.IntN(len(convs))]
					req := sreq(conv, fmt.Sprintf("m%d", next))
					if rng.IntN(12) == 0 {
						req.Envelope = &pb.Envelope{ContentHint: e2ee.ContentKeys, PerDevice: []*pb.DeviceCiphertext{{Ciphertext: []byte("k")}}}
					}
					next++
					what = "add " + req.GetClientMsgId()
					add(a, req)
					add(b, proto.Clone(req).(*pb.SendRequest))
				case op < 11:
					window, limit := []int{1, 2, 4, 8}[rng.IntN(4)], rng.IntN(7)
					what = fmt.Sprintf("pick window %d limit %d", window, limit)
					pa, wa := a.sendable(now, window, limit)
					pb_, wb := b.sendableRef(now, window, limit)
					if !slices.Equal(picksOf(pa), picksOf(pb_)) {
						t.Fatalf("step %d %s: picked %v, reference %v", step, what, picksOf(pa), picksOf(pb_))
					}
					if limit > 0 && len(pa) < limit && !wa.Equal(wb) {
						t.Fatalf("step %d %s: wake %v, reference %v", step, what, wa, wb)
					}
					inflight = append(inflight, pa...)
					picked += len(pa)
				case op < 14 && len(inflight) > 0:
					i := rng.IntN(min(len(inflight), 3)) // mostly the oldest
					r := inflight[i]
					inflight = slices.Delete(inflight, i, i+1)
					what = "ack " + r.GetClientMsgId()
					acked++
					for _, ob := range []*Outbox{a, b} {
						ob.acked(r.GetConvId(), 8)
						if _, err := ob.Remove(r.GetClientMsgId()); err != nil {
							t.Fatal(err)
						}
					}
				case op < 16 && len(inflight) > 0:
					i := rng.IntN(len(inflight))
					r := inflight[i]
					inflight = slices.Delete(inflight, i, i+1)
					switch rng.IntN(3) {
					case 0:
						what = "out of order " + r.GetClientMsgId()
						a.releaseOutOfOrder(r.GetClientMsgId())
						b.releaseOutOfOrder(r.GetClientMsgId())
					default:
						nb := now.Add(time.Duration(rng.IntN(3)) * time.Second)
						what = fmt.Sprintf("refused %s until %v", r.GetClientMsgId(), nb)
						for _, ob := range []*Outbox{a, b} {
							ob.congested(r.GetConvId())
							ob.release(r.GetClientMsgId(), nb)
						}
					}
				case op < 17:
					// Settled by its stored entry, in flight or not.
					pend := a.Pending()
					if len(pend) == 0 {
						continue
					}
					id := pend[rng.IntN(len(pend))].ClientMsgID
					what = "settle " + id
					inflight = slices.DeleteFunc(inflight, func(r *pb.SendRequest) bool { return r.GetClientMsgId() == id })
					a.Remove(id)
					b.Remove(id)
				case op < 18:
					what = "session reset"
					inflight = nil
					a.resetInflight()
					b.resetInflight()
				default:
					what = "time passes"
					now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
				}
				if pa, pb_ := a.Pending(), b.Pending(); !slices.Equal(pa, pb_) {
					t.Fatalf("step %d %s: pending %v, reference %v", step, what, pa, pb_)
				}
			}
			// Not vacuous: the history did send and settle messages.
			if picked < 50 || acked < 20 {
				t.Fatalf("only %d picks and %d acks in 600 steps", picked, acked)
			}
		})
	}
}
