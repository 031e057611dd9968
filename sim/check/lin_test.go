package check

import "testing"

// The directory model, one conversation at a time: each case is a
// sequential history (no overlap) unless noted.
func TestDirModel(t *testing.T) {
	read := func(ms int, home string, epoch uint64) DirOp {
		return DirOp{Kind: DirRead, Conv: "c", Call: at(ms), Return: at(ms + 1), Home: home, Epoch: epoch}
	}
	move := func(ms int, expect uint64, to string) DirOp {
		return DirOp{Kind: DirMove, Conv: "c", Call: at(ms), Return: at(ms + 1), Expect: expect, To: to}
	}
	ok := func(op DirOp) DirOp { op.OK, op.Home, op.Epoch = true, op.To, op.Expect+1; return op }
	fenced := func(op DirOp, home string, epoch uint64) DirOp { op.Home, op.Epoch = home, epoch; return op }
	unknown := func(op DirOp) DirOp { op.Unknown = true; return op }
	cases := []struct {
		name string
		ops  []DirOp
		want string
	}{
		{"absent, claimed, failed over by itself", []DirOp{read(0, "", 0), read(10, "fra", 1), read(20, "nyc", 2), read(30, "nyc", 2)}, LinOK},
		{"a jump of several epochs", []DirOp{read(0, "fra", 1), read(10, "sgp", 5)}, LinOK},
		{"epoch goes back", []DirOp{read(0, "nyc", 2), read(10, "fra", 1)}, LinIllegal},
		{"two homes at one epoch", []DirOp{read(0, "nyc", 2), read(10, "sgp", 2)}, LinIllegal},
		{"move applies", []DirOp{read(0, "fra", 1), ok(move(10, 1, "nyc")), read(20, "nyc", 2)}, LinOK},
		{"move applied then a stale read", []DirOp{ok(move(10, 1, "nyc")), read(20, "fra", 1)}, LinIllegal},
		{"move applied to another home than asked", []DirOp{func() DirOp { o := ok(move(10, 1, "nyc")); o.Home = "sgp"; return o }()}, LinIllegal},
		{"move on a stale epoch cannot apply", []DirOp{read(0, "nyc", 2), ok(move(10, 1, "sgp"))}, LinIllegal},
		{"fenced move reports the stored record", []DirOp{read(0, "nyc", 2), fenced(move(10, 1, "sgp"), "nyc", 2), read(20, "nyc", 2)}, LinOK},
		{"fenced although the epoch matched", []DirOp{read(0, "nyc", 2), fenced(move(10, 2, "sgp"), "nyc", 2)}, LinIllegal},
		{"fenced without a home, then a read", []DirOp{read(0, "fra", 1), fenced(move(10, 1, "sgp"), "", 3), read(20, "nyc", 3)}, LinOK},
		{"refused for another reason", []DirOp{read(0, "fra", 1), fenced(move(10, 1, "sgp"), "", 0), read(20, "fra", 1)}, LinOK},
		{"unknown move that applied", []DirOp{read(0, "fra", 1), unknown(move(10, 1, "sgp")), read(20, "sgp", 2)}, LinOK},
		{"unknown move that did not apply", []DirOp{read(0, "fra", 1), unknown(move(10, 1, "sgp")), read(20, "fra", 1)}, LinOK},
		{"unknown move applied late, after a read", []DirOp{read(0, "fra", 1), unknown(move(10, 1, "sgp")), read(20, "fra", 1), read(30, "sgp", 2)}, LinOK},
		{"unknown move cannot make a second home", []DirOp{read(0, "fra", 1), unknown(move(10, 1, "sgp")), read(20, "nyc", 2), read(30, "sgp", 2)}, LinIllegal},
		// Concurrent reads may be ordered either way.
		{"overlapping reads", []DirOp{read(0, "fra", 1), {Kind: DirRead, Conv: "c", Call: at(10), Return: at(50), Home: "nyc", Epoch: 2}, read(20, "fra", 1)}, LinOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(&History{Dir: tc.ops})
			if r.Linearizability != tc.want {
				t.Fatalf("linearizability %q, want %q", r.Linearizability, tc.want)
			}
			if (tc.want == LinOK) != r.OK() {
				t.Fatalf("OK %v for %q", r.OK(), r.Linearizability)
			}
		})
	}
}
