package check

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
)

// dirState is one conversation's directory record as the model knows it:
// its home and epoch. known is false when only the epoch is known (a
// refused move reports the stored epoch but not the home).
type dirState struct {
	home  string
	epoch uint64
	known bool
}

type dirInput struct {
	kind   DirOpKind
	conv   string
	expect uint64
	to     string
}

type dirOutput struct {
	home    string
	epoch   uint64
	ok      bool
	unknown bool
}

// observe is the model's answer to "the record is (home, epoch) now"
// from state s: the epoch may have grown by itself since (the failure
// detector's fail_region, a move_user, a claim — none recorded in Dir),
// but it never shrinks and one epoch never has two homes.
func observe(s dirState, home string, epoch uint64, homeKnown bool) []any {
	switch {
	case epoch < s.epoch:
		return nil
	case epoch > s.epoch:
		return []any{dirState{home: home, epoch: epoch, known: homeKnown}}
	case !homeKnown:
		return []any{s}
	case !s.known:
		return []any{dirState{home: home, epoch: epoch, known: true}}
	case s.home != home:
		return nil
	default:
		return []any{s}
	}
}

// DirModel is the porcupine model of the directory's conversation
// records, partitioned per conversation (see the package documentation).
var DirModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(dirInput).conv
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
	Init: func() []any { return []any{dirState{known: true}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(dirState), input.(dirInput), output.(dirOutput)
		if in.kind == DirRead {
			return observe(s, out.home, out.epoch, true)
		}
		// A move: CAS on the expected epoch. It can apply if the epoch is
		// (or has grown by itself to) the expected one.
		canApply := s.epoch <= in.expect
		next := dirState{home: in.to, epoch: in.expect + 1, known: true}
		switch {
		case out.unknown:
			if canApply {
				return []any{s, next}
			}
			return []any{s}
		case out.ok:
			if !canApply || (out.epoch != 0 && out.epoch != in.expect+1) || (out.home != "" && out.home != in.to) {
				return nil
			}
			return []any{next}
		case out.epoch == 0: // refused for a reason that says nothing
			return []any{s}
		case out.epoch == in.expect: // refused although the epoch matched
			return nil
		default: // fenced: the stored record is out's
			return observe(s, out.home, out.epoch, out.home != "")
		}
	},
	Equal: func(a, b any) bool { return a.(dirState) == b.(dirState) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(dirInput), output.(dirOutput)
		if in.kind == DirRead {
			return fmt.Sprintf("read(%s) → %s@%d", in.conv, out.home, out.epoch)
		}
		res := "refused"
		switch {
		case out.unknown:
			res = "unknown"
		case out.ok:
			res = "ok"
		}
		return fmt.Sprintf("move(%s, expect %d, to %s) → %s %s@%d", in.conv, in.expect, in.to, res, out.home, out.epoch)
	},
	DescribeState: func(state any) string {
		s := state.(dirState)
		if !s.known {
			return fmt.Sprintf("?@%d", s.epoch)
		}
		return fmt.Sprintf("%s@%d", s.home, s.epoch)
	},
}

// dirOperations turns Dir into porcupine operations. An operation with an
// unknown outcome may take effect at any later time: it returns at +∞.
// Client ids are lanes: per conversation, operations that do not overlap
// in time share one (porcupine's visualization draws one row per id).
func dirOperations(dir []DirOp) []porcupine.Operation {
	ops := make([]porcupine.Operation, 0, len(dir))
	for _, d := range dir {
		call, ret := d.Call.UnixNano(), d.Return.UnixNano()
		if ret < call {
			ret = call
		}
		if d.Kind == DirMove && d.Unknown {
			ret = math.MaxInt64
		}
		ops = append(ops, porcupine.Operation{
			Input:  dirInput{kind: d.Kind, conv: d.Conv, expect: d.Expect, to: d.To},
			Output: dirOutput{home: d.Home, epoch: d.Epoch, ok: d.OK, unknown: d.Unknown},
			Call:   call, Return: ret,
		})
	}
	slices.SortStableFunc(ops, func(a, b porcupine.Operation) int {
		ca, cb := a.Input.(dirInput).conv, b.Input.(dirInput).conv
		if ca != cb {
			if ca < cb {
				return -1
			}
			return 1
		}
		switch {
		case a.Call < b.Call:
			return -1
		case a.Call > b.Call:
			return 1
		}
		return 0
	})
	var lanes []int64 // per lane, the return time of its last operation
	conv := ""
	for i := range ops {
		if c := ops[i].Input.(dirInput).conv; c != conv {
			conv, lanes = c, lanes[:0]
		}
		lane := -1
		for j, last := range lanes {
			if last < ops[i].Call {
				lane = j
				break
			}
		}
		if lane < 0 {
			lane = len(lanes)
			lanes = append(lanes, 0)
		}
		lanes[lane] = ops[i].Return
		ops[i].ClientId = lane
	}
	return ops
}

func (c *Checker) checkDir(r *Result, add func(Kind, string, ...any)) {
	r.DirOps = len(c.dir)
	r.Linearizability = LinOK
	if len(c.dir) == 0 {
		return
	}
	model := DirModel.ToModel()
	ops := dirOperations(c.dir)
	// One check per conversation (ops are sorted by conversation), so a
	// violation names its conversation; all share one time budget.
	deadline := time.Now().Add(c.opts.LinTimeout)
	for i := 0; i < len(ops); {
		conv := ops[i].Input.(dirInput).conv
		j := i
		for j < len(ops) && ops[j].Input.(dirInput).conv == conv {
			j++
		}
		left := time.Until(deadline)
		if left <= 0 {
			r.Linearizability = LinUnknown
			break
		}
		switch porcupine.CheckOperationsTimeout(model, ops[i:j], left) {
		case porcupine.Ok:
		case porcupine.Illegal:
			r.Linearizability = LinIllegal
			add(NonLinearizable, "conv %s: its %d directory operations have no linearization (one home per epoch, epochs only grow, moves CAS on the epoch)", conv, j-i)
		default:
			if r.Linearizability == LinOK {
				r.Linearizability = LinUnknown
			}
		}
		i = j
	}
	if c.opts.VisualizePath != "" {
		_, info := porcupine.CheckOperationsVerbose(model, ops, c.opts.LinTimeout)
		if err := porcupine.VisualizePath(model, info, c.opts.VisualizePath); err == nil {
			r.Visualization = c.opts.VisualizePath
		}
	}
}
