package client

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// FuzzConvLog feeds arbitrary bytes to the conversation log loader: it must
// not panic, must yield a gapless prefix, and loading twice must agree
// (the first load already cut any garbage tail).
func FuzzConvLog(f *testing.F) {
	good := appendRecord(nil, recMessage, mustMarshal(f, userMsg("d:a:b", 1, "x")))
	good = appendRecord(good, recSeen, []byte{0, 0, 0, 0, 0, 0, 0, 1})
	f.Add(good)
	f.Add(append(good, 1, 2, 3))
	joined := appendRecord(nil, recSkip, []byte{0, 0, 0, 0, 0, 0, 0, 4})
	f.Add(appendRecord(joined, recMessage, mustMarshal(f, userMsg("g:x", 5, "y"))))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "x.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := loadConvLog(path)
		if err != nil {
			t.Fatal(err)
		}
		if a.seen > a.head || a.acked > a.head || uint64(a.count()) > a.head {
			t.Fatalf("cursor past head: seen %d acked %d head %d stored %d", a.seen, a.acked, a.head, a.count())
		}
		b, err := loadConvLog(path)
		if err != nil {
			t.Fatal(err)
		}
		if a.head != b.head || a.count() != b.count() || a.size != b.size || a.seen != b.seen {
			t.Fatal("second load differs")
		}
	})
}

// FuzzOutboxLog feeds arbitrary bytes to the outbox replay.
func FuzzOutboxLog(f *testing.F) {
	body, _ := proto.Marshal(sreq("d:a:b", "m1"))
	rec := outboxAddRecord(nil, 1, body)
	f.Add(rec)
	f.Add(append(rec, appendRecord(nil, recOutboxDone, []byte("m1"))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "outbox.log"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		ob, err := OpenOutbox(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := ob.Len()
		ob.Close()
		ob2, err := OpenOutbox(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer ob2.Close()
		if ob2.Len() != n {
			t.Fatalf("reopen: %d entries, was %d", ob2.Len(), n)
		}
	})
}

func mustMarshal(f *testing.F, m *pb.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzDecodeLocate feeds arbitrary bodies to the locate answer decoder: it
// must not panic, and whatever it accepts keeps the documented limits.
func FuzzDecodeLocate(f *testing.F) {
	key := "abababababababababababababababababababababababababababababababab"
	f.Add([]byte(`{"edges":[{"region":"eu","ws":"ws://127.0.0.1:1/v1/ws","noise_key":"` + key + `"}],"ttl_s":60}`))
	f.Add([]byte(`{"edges":[{"wt":"https://h:443/v1/wt","noise_key":"` + key + `","cert_hash":"` + key + `"}],"ttl_s":0,"client":{}}`))
	f.Add([]byte(`{"edges":[],"ttl_s":60}`))
	f.Add([]byte(`{"edges":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		loc, err := decodeLocate(body)
		if err != nil {
			return
		}
		if len(loc.Edges) == 0 || len(loc.Edges) > MaxLocatedEdges || loc.TTL < 0 || loc.TTL > MaxLocateTTL {
			t.Fatalf("accepted %d edges, ttl %v", len(loc.Edges), loc.TTL)
		}
		for _, e := range loc.Edges {
			if len(e.NoiseKey) != 32 || (e.CertHash != nil && len(e.CertHash) != 32) || (e.WS == "" && e.WT == "") {
				t.Fatalf("accepted edge %+v", e)
			}
		}
	})
}
