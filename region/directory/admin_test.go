package directory

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/chatmesh/chatmesh/core"
)

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr string
		open bool // allowed without a token
	}{
		{"127.0.0.1:7601", true}, {"127.0.9.3:1", true}, {"[::1]:7601", true}, {"localhost:7601", true},
		{"0.0.0.0:7601", false}, {":7601", false}, {"10.0.0.5:7601", false}, {"[::]:7601", false}, {"dir.internal:7601", false},
	} {
		err := CheckListen(tc.addr, "")
		if (err == nil) != tc.open {
			t.Errorf("%s without token: %v", tc.addr, err)
		}
		if !tc.open && !errors.Is(err, ErrOpenEndpoint) {
			t.Errorf("%s: %v does not wrap ErrOpenEndpoint", tc.addr, err)
		}
		if err := CheckListen(tc.addr, "s3cret"); err != nil {
			t.Errorf("%s with token: %v", tc.addr, err)
		}
	}
}

// TestOpenRefusesOpenEndpoint: a voter does not start with its HTTP
// endpoint off loopback and no token.
func TestOpenRefusesOpenEndpoint(t *testing.T) {
	p := Peer{ID: "a", RaftAddr: freeAddr(t), HTTPAddr: "0.0.0.0:" + strings.Split(freeAddr(t), ":")[1]}
	d, err := Open(context.Background(), Config{ID: "a", Dir: t.TempDir(), Peers: []Peer{p}})
	if err == nil {
		d.Close()
	}
	if !errors.Is(err, ErrOpenEndpoint) {
		t.Fatalf("Open: %v, want ErrOpenEndpoint", err)
	}
}

func TestConvsAfterPages(t *testing.T) {
	f := NewFSM(nil)
	f.Apply(&raft.Log{Index: 1, Data: mustEncode(t, Command{Op: OpPutRegion, Region: &Region{Name: "fra", Healthy: true}})})
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []string
	for i := range 500 {
		id := fmt.Sprintf("c%08x", rng.Uint32())
		if r := f.Apply(&raft.Log{Index: uint64(i + 2), Data: mustEncode(t, Command{Op: OpSetConvHome, Conv: id, Home: "fra"})}).(Result); r.Code == "" {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, limit := range []int{1, 2, 7, 100, 499, 500, 501, 1000} {
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > len(ids)+1 {
				t.Fatalf("limit %d: paging does not end", limit)
			}
			p := f.ConvsAfter(after, limit)
			if len(p.Convs) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(p.Convs))
			}
			for _, e := range p.Convs {
				got = append(got, e.Conv)
				if e.Region != "fra" || e.Epoch != 1 {
					t.Fatalf("entry %+v", e)
				}
			}
			if p.Next == "" {
				break
			}
			if p.Next != p.Convs[len(p.Convs)-1].Conv {
				t.Fatalf("next %q is not the last id of the page", p.Next)
			}
			after = p.Next
		}
		if !slices.Equal(got, ids) {
			t.Fatalf("limit %d: paged %d ids, want %d in order", limit, len(got), len(ids))
		}
	}
	if p := f.ConvsAfter(ids[len(ids)-1], 10); len(p.Convs) != 0 || p.Next != "" {
		t.Fatalf("after the last id: %+v", p)
	}
}

// rawGet issues a GET with an optional bearer token and returns the status.
func rawDo(t *testing.T, method, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(string(mustEncode(t, Command{Op: OpPutRegion, Region: &Region{Name: "evil", Healthy: true}}))))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAdminTokenRequired: with a token, every endpoint refuses a request
// without it, and voters still forward writes and barriers to the leader
// (they send the token).
func TestAdminTokenRequired(t *testing.T) {
	const token = "t0ken"
	c := newClusterWithToken(t, 3, token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := c.leader()
	f := c.node((l + 1) % 3)
	base := "http://" + c.peers[(l+1)%3].HTTPAddr
	for _, ep := range []struct{ method, path string }{
		{"GET", pathStatus}, {"GET", pathConv + "?id=x"}, {"GET", pathUser + "?id=x"}, {"GET", pathConvs}, {"GET", pathRegions},
		{"POST", pathApply}, {"POST", pathBarrier},
	} {
		for _, tok := range []string{"", "wrong", token + "x"} {
			if code := rawDo(t, ep.method, base+ep.path, tok); code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q: %d, want 401", ep.method, ep.path, tok, code)
			}
		}
	}
	if _, ok := f.Region("evil"); ok {
		t.Fatal("an unauthenticated apply was applied")
	}
	// Follower → leader forwarding carries the token.
	if err := f.PutRegion(ctx, Region{Name: "fra", Healthy: true}); err != nil {
		t.Fatalf("forwarded write: %v", err)
	}
	if _, ok, err := f.ConvLinearizable(ctx, "c"); err != nil || ok {
		t.Fatalf("forwarded barrier: %v %v", ok, err)
	}
	// The admin client with the token works; without it gets ErrUnauthorized.
	ac := &AdminClient{URL: base, Token: token}
	if st, err := ac.Status(ctx, true); err != nil || len(st.State.Regions) != 1 {
		t.Fatalf("status with token: %+v %v", st, err)
	}
	if _, err := (&AdminClient{URL: base}).Status(ctx, false); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("status without token: %v, want ErrUnauthorized", err)
	}
	if _, err := (&AdminClient{URL: base, Token: "wrong"}).Regions(ctx, false); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("regions with a wrong token: %v, want ErrUnauthorized", err)
	}

	// A voter whose token differs from the leader's gets ErrUnauthorized for
	// a forwarded write instead of retrying forever.
	odd := (l + 2) % 3
	c.kill(odd)
	c.tokens[odd] = "other"
	c.start(odd)
	l = c.leader()
	writer := c.node(odd)
	if l == odd {
		writer = c.node((odd + 1) % 3)
	}
	if err := writer.PutRegion(ctx, Region{Name: "iad", Healthy: true}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("write forwarded with a different token: %v, want ErrUnauthorized", err)
	}
}

// TestAdminClient drives every AdminClient method through a follower of a
// three-voter cluster.
func TestAdminClient(t *testing.T) {
	c := newClusterWithToken(t, 3, "tok")
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	l := c.leader()
	fi := (l + 1) % 3
	ac := &AdminClient{URL: "http://" + c.peers[fi].HTTPAddr, Token: "tok"}
	ld := c.node(l)

	// Writes through the follower's apply endpoint reach the leader.
	for _, r := range []string{"fra", "iad", "sin"} {
		if _, err := ac.Apply(ctx, Command{Op: OpPutRegion, Region: &Region{Name: r, Healthy: true}}); err != nil {
			t.Fatalf("put region %s: %v", r, err)
		}
	}
	if err := ac.PutEdge(ctx, "fra", edge("fra-1")); err != nil {
		t.Fatal(err)
	}
	if err := ac.SetEdgeHealth(ctx, "fra", "fra-1", false); err != nil {
		t.Fatal(err)
	}
	if err := ac.SetEdgeHealth(ctx, "fra", "nope", false); !errors.Is(err, ErrUnknownEdge) {
		t.Fatalf("unknown edge: %v", err)
	}
	if err := ac.SetRegionHealth(ctx, "sin", false); err != nil {
		t.Fatal(err)
	}
	if err := ac.PutEdge(ctx, "fra", Edge{ID: "x"}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("invalid edge: %v", err)
	}
	if err := ac.SetRegionHealth(ctx, "mars", false); !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("unknown region: %v", err)
	}
	if _, err := ld.SetUserHome(ctx, "alice", "fra", true); err != nil {
		t.Fatal(err)
	}
	for i := range 25 {
		if _, err := ld.SetConvHome(ctx, fmt.Sprintf("c%02d", i), "fra", 0); err != nil {
			t.Fatal(err)
		}
	}

	// Linearizable reads on the follower see the leader's writes at once.
	if h, err := ac.Conv(ctx, "c07", true); err != nil || h != (ConvHome{Region: "fra", Epoch: 1}) {
		t.Fatalf("conv: %+v %v", h, err)
	}
	if h, err := ac.UserHome(ctx, "alice", true); err != nil || h != "fra" {
		t.Fatalf("user: %q %v", h, err)
	}
	if _, err := ac.Conv(ctx, "nope", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent conv: %v", err)
	}
	if _, err := ac.UserHome(ctx, "nope", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent user: %v", err)
	}

	st, err := ac.Status(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != c.peers[fi].ID || st.IsLeader || st.Leader != c.peers[l].ID || len(st.Voters) != 3 ||
		st.State.Users != 1 || st.State.Convs != 25 || len(st.State.Regions) != 3 || st.AppliedIndex == 0 {
		t.Fatalf("status: %+v", st)
	}
	if r := st.State.Regions[0]; r.Name != "fra" || len(r.Edges) != 1 || r.Edges[0].Healthy || st.State.Regions[2].Healthy {
		t.Fatalf("status regions: %+v", st.State.Regions)
	}

	// Regions, with their edges, as the leader has them.
	rs, err := ac.Regions(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if want := ld.Regions(); !reflect.DeepEqual(rs, want) {
		t.Fatalf("regions:\n%+v\nwant\n%+v", rs, want)
	}
	fra1 := edge("fra-1")
	fra1.Healthy = false
	if len(rs) != 3 || rs[0].Name != "fra" || len(rs[0].Edges) != 1 || rs[0].Edges[0] != fra1 || !rs[1].Healthy || rs[2].Healthy {
		t.Fatalf("regions: %+v", rs)
	}
	if rs, err := ac.Regions(ctx, false); err != nil || len(rs) != 3 {
		t.Fatalf("regions from the applied copy: %+v %v", rs, err)
	}
	// A bad linearizable value is a bad request, as on the other GETs.
	if code := rawDo(t, "GET", ac.URL+pathRegions+"?linearizable=maybe", "tok"); code != http.StatusBadRequest {
		t.Fatalf("regions?linearizable=maybe: %d, want 400", code)
	}

	// Paging.
	var got []string
	for after := ""; ; {
		p, err := ac.Convs(ctx, after, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Convs {
			got = append(got, e.Conv)
		}
		if p.Next == "" {
			break
		}
		after = p.Next
	}
	if len(got) != 25 || got[0] != "c00" || got[24] != "c24" {
		t.Fatalf("paged %v", got)
	}
	for _, bad := range []int{0, MaxConvsPage + 1} {
		if _, err := ac.Convs(ctx, "", bad); !errors.Is(err, ErrBadCommand) {
			t.Fatalf("limit %d: %v", bad, err)
		}
	}

	// Moves.
	h, err := ac.MoveConversation(ctx, "c03", "iad")
	if err != nil || h != (ConvHome{Region: "iad", Epoch: 2}) {
		t.Fatalf("move: %+v %v", h, err)
	}
	if h, err := ac.MoveConversation(ctx, "c03", "iad"); err != nil || h != (ConvHome{Region: "iad", Epoch: 2}) {
		t.Fatalf("move to the current home: %+v %v", h, err)
	}
	if _, err := ac.MoveConversation(ctx, "c03", "mars"); !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("move to unknown region: %v", err)
	}
	if _, err := ac.MoveConversation(ctx, "nope", "iad"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("move unknown conv: %v", err)
	}
	if _, _, err := ac.MoveUser(ctx, "alice", "sin"); !errors.Is(err, ErrRegionUnhealthy) {
		t.Fatalf("move user to a failed region: %v", err)
	}
	if err := ac.SetRegionHealth(ctx, "sin", true); err != nil {
		t.Fatal(err)
	}
	if from, _, err := ac.MoveUser(ctx, "alice", "sin"); err != nil || from != "fra" {
		t.Fatalf("move user: %q %v", from, err)
	}
	if h, _ := ac.UserHome(ctx, "alice", true); h != "sin" {
		t.Fatalf("user home after move: %q", h)
	}
	if from, _, err := ac.MoveUser(ctx, "alice", "sin"); err != nil || from != "sin" {
		t.Fatalf("move user to current home: %q %v", from, err)
	}
	if _, _, err := ac.MoveUser(ctx, "nope", "sin"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("move unknown user: %v", err)
	}
	if _, _, err := ac.MoveUser(ctx, "alice", "mars"); !errors.Is(err, ErrUnknownRegion) {
		t.Fatalf("move user to unknown region: %v", err)
	}

	// A forwarded request to a non-leader is refused (421), not forwarded
	// again: no loops between voters.
	req, _ := http.NewRequest(http.MethodPost, ac.URL+pathApply, strings.NewReader(string(mustEncode(t, Command{Op: OpPutRegion, Region: &Region{Name: "x", Healthy: true}}))))
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set(hdrForwarded, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("forwarded to a follower: %d, want 421", resp.StatusCode)
	}
}

// TestMoveConversationRetriesOnEpochRace: when the epoch changes between
// MoveConversation's read and its compare-and-set, it re-reads and retries
// instead of failing or overwriting.
func TestMoveConversationRetriesOnEpochRace(t *testing.T) {
	c := newCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ld := c.node(c.leader())
	for _, r := range []string{"fra", "iad", "sin"} {
		if err := ld.PutRegion(ctx, Region{Name: r, Healthy: true}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ld.SetConvHome(ctx, "c1", "fra", 0); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse("http://" + c.peers[0].HTTPAddr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var applies atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == pathApply && applies.Add(1) == 1 {
			// Another operator moves it first: the client's epoch is stale.
			if _, err := ld.SetConvHome(ctx, "c1", "sin", 1); err != nil {
				t.Errorf("interloper: %v", err)
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ac := &AdminClient{URL: srv.URL}
	h, err := ac.MoveConversation(ctx, "c1", "iad")
	if err != nil || h != (ConvHome{Region: "iad", Epoch: 3}) {
		t.Fatalf("move: %+v %v, want iad at epoch 3", h, err)
	}
	if n := applies.Load(); n != 2 {
		t.Fatalf("%d applies, want 2 (one fenced, one after re-reading)", n)
	}
	var ee *EpochError
	if _, err := ac.Apply(ctx, Command{Op: OpSetConvHome, Conv: "c1", Home: "fra", ExpectEpoch: 1}); !errors.As(err, &ee) || !errors.Is(err, core.ErrFenced) || ee.Stored != 3 {
		t.Fatalf("stale CAS through the client: %v", err)
	}
}
