package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chatmesh/chatmesh/region"
)

// TestRegionRefusesOpenInternalAPI: `chatmesh region` does not start with
// its internal API on a non-loopback address without a token.
func TestRegionRefusesOpenInternalAPI(t *testing.T) {
	t.Setenv("CHATMESH_REGION_TOKEN", "")
	var out, errb bytes.Buffer
	for _, listen := range []string{"0.0.0.0:0", ":0"} {
		err := runRegion(context.Background(), []string{"--kafka", "127.0.0.1:1", "--listen", listen, "--data", t.TempDir()}, &out, &errb)
		if !errors.Is(err, region.ErrOpenInternalAPI) {
			t.Fatalf("--listen %s without token: %v, want ErrOpenInternalAPI", listen, err)
		}
	}
	if out.Len() != 0 {
		t.Fatalf("region printed %q: it started", out.String())
	}
}

// TestEdgeRegionName: an edge takes its region's name from the region API,
// refuses an explicit --region that differs (its sessions' deliveries and
// acks would be routed to another region of the mesh), and keeps the flag
// when the region cannot say.
func TestEdgeRegionName(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != region.InfoPath || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(region.RegionInfo{Region: "us-east"})
	}))
	defer srv.Close()
	old := httptest.NewServer(http.NotFoundHandler())
	defer old.Close()
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	api := &region.RemoteAPI{URL: srv.URL}
	cases := []struct {
		api      *region.RemoteAPI
		flag     string
		explicit bool
		want     string
		wantErr  bool
	}{
		{api, "local", false, "us-east", false},
		{api, "us-east", true, "us-east", false},
		{api, "eu-central", true, "", true},
		{&region.RemoteAPI{URL: old.URL}, "eu-central", true, "eu-central", false},
	}
	for _, tc := range cases {
		got, err := edgeRegion(ctx, tc.api, tc.flag, tc.explicit, log)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("edgeRegion(%s, %q, explicit=%v) = %q, %v; want %q (error %v)", tc.api.URL, tc.flag, tc.explicit, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestRegionMeshFlags: mesh flags without --directory-peers are refused
// (they would be ignored); malformed peers and links are refused before
// anything starts.
func TestRegionMeshFlags(t *testing.T) {
	t.Setenv("CHATMESH_REGION_TOKEN", "")
	t.Setenv("CHATMESH_DIRECTORY_TOKEN", "")
	t.Setenv("CHATMESH_LINK_SASL_PASSWORD", "")
	base := []string{"--kafka", "127.0.0.1:1", "--data", t.TempDir(), "--listen", "127.0.0.1:0"}
	cases := map[string]struct {
		args []string
		want string
	}{
		"link without mesh":   {[]string{"--link", "us-east=k:9092"}, "add --directory-peers"},
		"lat without mesh":    {[]string{"--lat", "50"}, "add --directory-peers"},
		"mesh without pg":     {[]string{"--directory-peers", "a=127.0.0.1:1=127.0.0.1:2"}, "needs the shared store"},
		"sasl without secret": {[]string{"--directory-peers", "a=127.0.0.1:1=127.0.0.1:2", "--link-sasl-mechanism", "scram-sha-256", "--link-sasl-user", "u"}, "needs a password"},
		"bad link":            {[]string{"--link", "us-east"}, "want REGION=VALUE"},
		"twice":               {[]string{"--link", "a=k:1", "--link", "a=k:2"}, "given twice"},
		"off the globe":       {[]string{"--directory-peers", "a=127.0.0.1:1=127.0.0.1:2", "--lat", "91"}, "not a place on Earth"},
	}
	for name, tc := range cases {
		var out, errb bytes.Buffer
		err := runRegion(context.Background(), append(append([]string{}, base...), tc.args...), &out, &errb)
		if err == nil || !strings.Contains(err.Error()+errb.String(), tc.want) {
			t.Errorf("%s: %v (stderr %q), want %q", name, err, errb.String(), tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%s: printed %q: it started", name, out.String())
		}
	}
	for in, ok := range map[string]bool{
		"eu=127.0.0.1:7491=127.0.0.1:7492,us=10.0.0.2:7491=10.0.0.2:7492": true,
		"eu=127.0.0.1:7491":                     false,
		"eu=0.0.0.0:7491=127.0.0.1:7492":        false,
		"eu=127.0.0.1:0=127.0.0.1:7492":         false,
		"eu=127.0.0.1:1=127.0.0.1:2,eu=h:3=h:4": false,
		"=127.0.0.1:1=127.0.0.1:2":              false,
		"":                                      false,
	} {
		if _, err := parsePeers(in); (err == nil) != ok {
			t.Errorf("parsePeers(%q): %v, want ok=%v", in, err, ok)
		}
	}
}
