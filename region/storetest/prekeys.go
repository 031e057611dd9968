package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

// RunPrekeys runs the core.PrekeyStore contract suite. open returns a new,
// empty store for one subtest (see the package documentation); it must
// implement core.PrekeyStore.
func RunPrekeys(t *testing.T, open func(t *testing.T) core.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s core.PrekeyStore)
	}{
		{"NotFoundBeforeUpload", testPrekeysNotFound},
		{"UploadTakeCount", testPrekeysUploadTake},
		{"IncompleteBundle", testPrekeysIncomplete},
		{"Replace", testPrekeysReplace},
		{"DuplicateAndConsumedIDs", testPrekeysDuplicateIDs},
		{"DevicesAreSeparate", testPrekeysSeparate},
		{"ConcurrentTake", testPrekeysConcurrentTake},
		{"DeviceListVersions", testDeviceListVersions},
		{"ConcurrentDeviceList", testDeviceListConcurrent},
		{"PeekBundle", testPrekeysPeek},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			ps, ok := s.(core.PrekeyStore)
			if !ok {
				t.Fatalf("%T does not implement core.PrekeyStore", s)
			}
			tc.fn(t, ps)
		})
	}
}

// The store treats key material as opaque bytes; these are shaped like the
// crypto/prekey encodings (sizes) but are not valid keys.
func fakeBytes(tag string, n int) []byte {
	b := bytes.Repeat([]byte{0}, n)
	copy(b, tag)
	return b
}

func fakeIdentity(tag string) []byte { return fakeBytes("id-"+tag, 129) }
func fakeSPK(tag string) []byte      { return fakeBytes("spk-"+tag, 100) }
func fakeKEM(tag string) []byte      { return fakeBytes("kem-"+tag, 1252) }

func oneTimes(tag string, ids ...uint32) []core.OneTimeKey {
	out := make([]core.OneTimeKey, 0, len(ids))
	for _, id := range ids {
		out = append(out, core.OneTimeKey{ID: id, Key: fakeBytes(fmt.Sprintf("otk-%s-%d", tag, id), 36)})
	}
	return out
}

func fullUpload(tag string, ids ...uint32) core.PrekeyUpload {
	return core.PrekeyUpload{Identity: fakeIdentity(tag), SignedPrekey: fakeSPK(tag), KEMPrekey: fakeKEM(tag), OneTime: oneTimes(tag, ids...)}
}

func put(t *testing.T, s core.PrekeyStore, dev core.DeviceKey, up core.PrekeyUpload) {
	t.Helper()
	if err := s.PutPrekeys(t.Context(), dev, up); err != nil {
		t.Fatalf("PutPrekeys(%s): %v", dev, err)
	}
}

func take(t *testing.T, s core.PrekeyStore, dev core.DeviceKey) core.PrekeyBundle {
	t.Helper()
	b, err := s.TakeBundle(t.Context(), dev)
	if err != nil {
		t.Fatalf("TakeBundle(%s): %v", dev, err)
	}
	return b
}

func count(t *testing.T, s core.PrekeyStore, dev core.DeviceKey) int {
	t.Helper()
	n, err := s.OneTimeCount(t.Context(), dev)
	if err != nil {
		t.Fatalf("OneTimeCount(%s): %v", dev, err)
	}
	return n
}

// takeID takes a bundle and returns its one-time id (-1 when none).
func takeID(t *testing.T, s core.PrekeyStore, dev core.DeviceKey) int64 {
	t.Helper()
	b := take(t, s, dev)
	if b.OneTime == nil {
		return -1
	}
	return int64(b.OneTime.ID)
}

func testPrekeysNotFound(t *testing.T, s core.PrekeyStore) {
	ctx := t.Context()
	dev := core.DeviceKey{User: "nobody", Device: 1}
	_, err := s.TakeBundle(ctx, dev)
	wantErr(t, "TakeBundle before any upload", err, core.ErrNotFound)
	equal(t, "OneTimeCount before any upload", count(t, s, dev), 0)
	_, _, err = s.DeviceList(ctx, "nobody")
	wantErr(t, "DeviceList before any publish", err, core.ErrNotFound)
	// Without an identity stored, an upload must carry one.
	err = s.PutPrekeys(ctx, dev, core.PrekeyUpload{SignedPrekey: fakeSPK("x"), KEMPrekey: fakeKEM("x"), OneTime: oneTimes("x", 1)})
	wantErr(t, "PutPrekeys without identity on first upload", err, core.ErrNotFound)
	equal(t, "one-time keys stored by the refused upload", count(t, s, dev), 0)
	_, err = s.TakeBundle(ctx, dev)
	wantErr(t, "TakeBundle after the refused upload", err, core.ErrNotFound)
}

func testPrekeysUploadTake(t *testing.T, s core.PrekeyStore) {
	dev := core.DeviceKey{User: "alice", Device: 2}
	up := fullUpload("a", 9, 3, 5) // out of order on purpose
	put(t, s, dev, up)
	equal(t, "count after upload", count(t, s, dev), 3)
	byID := map[uint32][]byte{}
	for _, o := range up.OneTime {
		byID[o.ID] = o.Key
	}
	for i, want := range []uint32{3, 5, 9} { // lowest id first
		b := take(t, s, dev)
		if !bytes.Equal(b.Identity, up.Identity) || !bytes.Equal(b.SignedPrekey, up.SignedPrekey) || !bytes.Equal(b.KEMPrekey, up.KEMPrekey) {
			t.Fatalf("take %d: bundle parts differ from the upload", i)
		}
		if b.OneTime == nil || b.OneTime.ID != want || !bytes.Equal(b.OneTime.Key, byID[want]) {
			t.Fatalf("take %d: one-time %+v, want id %d with its key", i, b.OneTime, want)
		}
		equal(t, fmt.Sprintf("take %d remaining", i), b.Remaining, 2-i)
		equal(t, fmt.Sprintf("count after take %d", i), count(t, s, dev), 2-i)
	}
	// Exhausted: still a bundle, without a one-time key.
	for i := 0; i < 2; i++ {
		b := take(t, s, dev)
		if b.OneTime != nil || b.Remaining != 0 || !bytes.Equal(b.SignedPrekey, up.SignedPrekey) || !bytes.Equal(b.KEMPrekey, up.KEMPrekey) {
			t.Fatalf("exhausted take %d: one-time %+v remaining %d", i, b.OneTime, b.Remaining)
		}
	}
	// Replenish: only new ids come back.
	put(t, s, dev, core.PrekeyUpload{OneTime: oneTimes("a", 10, 11)})
	equal(t, "count after replenish", count(t, s, dev), 2)
	equal(t, "first id after replenish", takeID(t, s, dev), int64(10))
}

// testPrekeysIncomplete: a bundle needs the identity, the signed prekey and
// the KEM prekey; until all three are stored TakeBundle is ErrNotFound and
// consumes nothing.
func testPrekeysIncomplete(t *testing.T, s core.PrekeyStore) {
	ctx := t.Context()
	dev := core.DeviceKey{User: "bob", Device: 1}
	put(t, s, dev, core.PrekeyUpload{Identity: fakeIdentity("b"), OneTime: oneTimes("b", 1, 2)})
	_, err := s.TakeBundle(ctx, dev)
	wantErr(t, "TakeBundle with identity only", err, core.ErrNotFound)
	put(t, s, dev, core.PrekeyUpload{SignedPrekey: fakeSPK("b")})
	_, err = s.TakeBundle(ctx, dev)
	wantErr(t, "TakeBundle without KEM prekey", err, core.ErrNotFound)
	equal(t, "one-time keys consumed by refused takes", count(t, s, dev), 2)
	put(t, s, dev, core.PrekeyUpload{KEMPrekey: fakeKEM("b")})
	equal(t, "first complete take", takeID(t, s, dev), int64(1))
}

func testPrekeysReplace(t *testing.T, s core.PrekeyStore) {
	dev := core.DeviceKey{User: "carol", Device: 1}
	put(t, s, dev, fullUpload("c1", 1, 2, 3))
	// A new signed prekey alone keeps identity and KEM prekey.
	put(t, s, dev, core.PrekeyUpload{SignedPrekey: fakeSPK("c2")})
	b := take(t, s, dev)
	if !bytes.Equal(b.SignedPrekey, fakeSPK("c2")) || !bytes.Equal(b.KEMPrekey, fakeKEM("c1")) || !bytes.Equal(b.Identity, fakeIdentity("c1")) {
		t.Fatal("signed prekey not replaced, or identity/KEM prekey lost")
	}
	// A new KEM prekey alone keeps the rest.
	put(t, s, dev, core.PrekeyUpload{KEMPrekey: fakeKEM("c3")})
	b = take(t, s, dev)
	if !bytes.Equal(b.SignedPrekey, fakeSPK("c2")) || !bytes.Equal(b.KEMPrekey, fakeKEM("c3")) || !bytes.Equal(b.Identity, fakeIdentity("c1")) {
		t.Fatal("KEM prekey not replaced, or identity/signed prekey lost")
	}
	// A new identity replaces the stored one; the one-time keys stay.
	put(t, s, dev, core.PrekeyUpload{Identity: fakeIdentity("c4")})
	b = take(t, s, dev)
	if !bytes.Equal(b.Identity, fakeIdentity("c4")) || b.OneTime == nil || b.OneTime.ID != 3 || b.Remaining != 0 {
		t.Fatalf("after identity replacement: one-time %+v remaining %d", b.OneTime, b.Remaining)
	}
}

// testPrekeysDuplicateIDs: an id already stored, or already handed out, is
// ignored — also within a single upload (first occurrence wins).
func testPrekeysDuplicateIDs(t *testing.T, s core.PrekeyStore) {
	dev := core.DeviceKey{User: "dave", Device: 7}
	put(t, s, dev, fullUpload("d", 1, 2))
	dup := oneTimes("other", 2, 3, 3)
	dup[2].Key = fakeBytes("second-3", 36)
	put(t, s, dev, core.PrekeyUpload{OneTime: dup})
	equal(t, "count after duplicate upload", count(t, s, dev), 3)
	b := take(t, s, dev)
	equal(t, "first take id", b.OneTime.ID, uint32(1))
	b = take(t, s, dev)
	if b.OneTime.ID != 2 || !bytes.Equal(b.OneTime.Key, oneTimes("d", 2)[0].Key) {
		t.Fatalf("id 2 was overwritten by a duplicate upload: %+v", b.OneTime)
	}
	// Ids 1 and 2 were handed out: uploading them again is ignored.
	put(t, s, dev, core.PrekeyUpload{OneTime: oneTimes("again", 1, 2, 4)})
	equal(t, "count after re-upload of consumed ids", count(t, s, dev), 2)
	b = take(t, s, dev)
	if b.OneTime.ID != 3 || !bytes.Equal(b.OneTime.Key, oneTimes("other", 3)[0].Key) {
		t.Fatalf("id 3: %+v, want the first occurrence's key", b.OneTime)
	}
	equal(t, "last id", takeID(t, s, dev), int64(4))
	equal(t, "exhausted", takeID(t, s, dev), int64(-1))
}

// testPrekeysSeparate: devices (and users whose ids are prefixes of each
// other) have separate supplies.
func testPrekeysSeparate(t *testing.T, s core.PrekeyStore) {
	a1 := core.DeviceKey{User: "eve", Device: 1}
	a2 := core.DeviceKey{User: "eve", Device: 2}
	b1 := core.DeviceKey{User: "eve2", Device: 1}
	big := core.DeviceKey{User: "eve", Device: math.MaxUint32}
	put(t, s, a1, fullUpload("a1", 1, 2))
	put(t, s, a2, fullUpload("a2", 1))
	put(t, s, b1, fullUpload("b1", 5))
	put(t, s, big, fullUpload("big", math.MaxUint32))
	equal(t, "a1 count", count(t, s, a1), 2)
	equal(t, "a2 count", count(t, s, a2), 1)
	equal(t, "b1 count", count(t, s, b1), 1)
	b := take(t, s, a2)
	if b.OneTime.ID != 1 || !bytes.Equal(b.SignedPrekey, fakeSPK("a2")) {
		t.Fatalf("a2 got %+v", b.OneTime)
	}
	equal(t, "a1 count after a2 take", count(t, s, a1), 2)
	equal(t, "big id", takeID(t, s, big), int64(math.MaxUint32))
	equal(t, "b1 id", takeID(t, s, b1), int64(5))
	equal(t, "a1 first id", takeID(t, s, a1), int64(1))
}

// testPrekeysConcurrentTake: 16 goroutines take bundles from one device with
// 50 one-time keys until each gets one without a key. Every key is handed
// out exactly once, and the remaining counts the takers saw are exactly
// 49..0 (takes are serialized).
func testPrekeysConcurrentTake(t *testing.T, s core.PrekeyStore) {
	for r := 0; r < concurrencyRounds; r++ {
		concurrentTakeRound(t, s, core.DeviceKey{User: fmt.Sprintf("frank%d", r), Device: 1})
	}
}

func concurrentTakeRound(t *testing.T, s core.PrekeyStore, dev core.DeviceKey) {
	const keys, workers = 50, 16
	ids := make([]uint32, keys)
	for i := range ids {
		ids[i] = uint32(100 + i)
	}
	put(t, s, dev, fullUpload("f", ids...))
	type result struct {
		id        uint32
		key       []byte
		remaining int
	}
	got := make(chan result, keys+workers)
	errs := make(chan error, workers)
	nils := make(chan int, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i <= keys; i++ { // bounded: at most keys+1 calls
				b, err := s.TakeBundle(t.Context(), dev)
				if err != nil {
					errs <- err
					return
				}
				if b.OneTime == nil {
					nils <- b.Remaining
					return
				}
				got <- result{b.OneTime.ID, b.OneTime.Key, b.Remaining}
			}
			errs <- errors.New("worker never saw an exhausted bundle")
		}()
	}
	close(start)
	wg.Wait()
	close(got)
	close(errs)
	close(nils)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	var remaining []int
	for r := range got {
		if seen[r.id] {
			t.Fatalf("one-time key %d handed out twice", r.id)
		}
		seen[r.id] = true
		if want := fakeBytes(fmt.Sprintf("otk-f-%d", r.id), 36); !bytes.Equal(r.key, want) {
			t.Fatalf("one-time key %d came with another key's bytes", r.id)
		}
		remaining = append(remaining, r.remaining)
	}
	equal(t, "distinct keys handed out", len(seen), keys)
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("one-time key %d never handed out", id)
		}
	}
	slices.Sort(remaining)
	for i, r := range remaining {
		if r != i {
			t.Fatalf("remaining counts seen by takers %v, want 0..%d each once", remaining, keys-1)
		}
	}
	n := 0
	for r := range nils {
		if r != 0 {
			t.Fatalf("exhausted bundle with remaining %d", r)
		}
		n++
	}
	equal(t, "workers that saw exhaustion", n, workers)
	equal(t, "count after the storm", count(t, s, dev), 0)
}

func deviceList(t *testing.T, s core.PrekeyStore, user string) (uint64, []byte) {
	t.Helper()
	v, l, err := s.DeviceList(t.Context(), user)
	if err != nil {
		t.Fatalf("DeviceList(%s): %v", user, err)
	}
	return v, l
}

func testDeviceListVersions(t *testing.T, s core.PrekeyStore) {
	ctx := t.Context()
	list := func(v uint64) []byte { return fakeBytes(fmt.Sprintf("list-v%d", v), 300) }
	if err := s.PutDeviceList(ctx, "gina", 1, list(1)); err != nil {
		t.Fatal(err)
	}
	v, l := deviceList(t, s, "gina")
	if v != 1 || !bytes.Equal(l, list(1)) {
		t.Fatalf("stored v%d", v)
	}
	wantErr(t, "replay of v1", s.PutDeviceList(ctx, "gina", 1, list(1)), core.ErrAlreadyExists)
	wantErr(t, "other list with v1", s.PutDeviceList(ctx, "gina", 1, list(99)), core.ErrAlreadyExists)
	if err := s.PutDeviceList(ctx, "gina", 3, list(3)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "stale v2 after v3", s.PutDeviceList(ctx, "gina", 2, list(2)), core.ErrAlreadyExists)
	if v, l := deviceList(t, s, "gina"); v != 3 || !bytes.Equal(l, list(3)) {
		t.Fatalf("after stale publish: v%d", v)
	}
	// Other users are separate; versions are unsigned 64-bit.
	_, _, err := s.DeviceList(ctx, "gin")
	wantErr(t, "DeviceList of a prefix user", err, core.ErrNotFound)
	const high = uint64(1) << 63
	if err := s.PutDeviceList(ctx, "hank", high, list(high)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "version below 2^63 after 2^63", s.PutDeviceList(ctx, "hank", high-1, list(high-1)), core.ErrAlreadyExists)
	if err := s.PutDeviceList(ctx, "hank", math.MaxUint64, list(math.MaxUint64)); err != nil {
		t.Fatal(err)
	}
	if v, _ := deviceList(t, s, "hank"); v != math.MaxUint64 {
		t.Fatalf("hank at v%d, want max uint64", v)
	}
}

// testDeviceListConcurrent: concurrent publishers of versions 1..n leave the
// highest version stored, and every version is accepted at most once.
func testDeviceListConcurrent(t *testing.T, s core.PrekeyStore) {
	const n = 12
	start := make(chan struct{})
	accepted := make(chan uint64, 2*n)
	errs := make(chan error, 2*n)
	var wg sync.WaitGroup
	for i := 0; i < 2*n; i++ {
		v := uint64(i%n + 1) // every version published twice
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := s.PutDeviceList(t.Context(), "ida", v, fakeBytes(fmt.Sprintf("list-%d", v), 200))
			switch {
			case err == nil:
				accepted <- v
			case !errors.Is(err, core.ErrAlreadyExists):
				errs <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(accepted)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	once := map[uint64]bool{}
	for v := range accepted {
		if once[v] {
			t.Fatalf("version %d accepted twice", v)
		}
		once[v] = true
	}
	if !once[n] {
		t.Fatalf("the highest version %d was refused", n)
	}
	v, l := deviceList(t, s, "ida")
	if v != n || !bytes.Equal(l, fakeBytes(fmt.Sprintf("list-%d", n), 200)) {
		t.Fatalf("stored v%d, want v%d", v, n)
	}
}

// testPrekeysPeek: PeekBundle (the optional capability the region uses
// over its fetch limits) returns the bundle parts and the one-time count
// without taking a one-time key; ErrNotFound before a complete upload.
func testPrekeysPeek(t *testing.T, s core.PrekeyStore) {
	peek, ok := s.(interface {
		PeekBundle(context.Context, core.DeviceKey) (core.PrekeyBundle, error)
	})
	if !ok {
		t.Fatalf("%T does not implement PeekBundle", s)
	}
	ctx := t.Context()
	dev := core.DeviceKey{User: "peeked", Device: 1}
	_, err := peek.PeekBundle(ctx, dev)
	wantErr(t, "PeekBundle before any upload", err, core.ErrNotFound)
	up := fullUpload("p", 1, 2)
	put(t, s, dev, up)
	for i := 0; i < 3; i++ {
		b, err := peek.PeekBundle(ctx, dev)
		if err != nil {
			t.Fatalf("PeekBundle: %v", err)
		}
		if b.OneTime != nil || b.Remaining != 2 || !bytes.Equal(b.Identity, up.Identity) ||
			!bytes.Equal(b.SignedPrekey, up.SignedPrekey) || !bytes.Equal(b.KEMPrekey, up.KEMPrekey) {
			t.Fatalf("peek %d: one-time %+v remaining %d, parts equal %v", i, b.OneTime, b.Remaining, bytes.Equal(b.KEMPrekey, up.KEMPrekey))
		}
	}
	equal(t, "count after peeks", count(t, s, dev), 2)
	equal(t, "first take after peeks", takeID(t, s, dev), int64(1))
}
