package main

import (
	"bytes"
	"context"
	"errors"
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
