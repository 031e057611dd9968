package core

import (
	"bytes"
	"context"
	"testing"
	"time"
)

func TestKeyedLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewKeyedLimiter(2, 3, 2) // 2/s, burst 3, two keys
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("a", now, 1); !ok {
			t.Fatalf("take %d refused within the burst", i)
		}
	}
	ok, wait := l.Allow("a", now, 1)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("over the burst: ok %v wait %v, want refused and 500ms", ok, wait)
	}
	if ok, _ := l.Allow("a", now.Add(500*time.Millisecond), 1); !ok {
		t.Fatal("refilled token refused")
	}
	// A cost above the burst is charged as the burst.
	if ok, _ := l.Allow("b", now, 10); !ok {
		t.Fatal("cost above burst refused on a full bucket")
	}
	if ok, _ := l.Allow("b", now, 1); ok {
		t.Fatal("b should be empty")
	}
	l.Refund("b", 1)
	if ok, _ := l.Allow("b", now, 1); !ok {
		t.Fatal("refunded token refused")
	}
	// Bounded: a third key evicts the least recently charged (a), which
	// starts again full.
	if ok, _ := l.Allow("c", now, 1); !ok || l.Len() != 2 {
		t.Fatalf("c: ok %v len %d", ok, l.Len())
	}
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow("a", now.Add(500*time.Millisecond), 1); !ok {
			t.Fatalf("evicted key a not fresh at take %d", i)
		}
	}
	if l.Len() != 2 {
		t.Fatalf("len %d, want 2", l.Len())
	}
}

func TestPow(t *testing.T) {
	static := bytes.Repeat([]byte{7}, 32)
	nonce, err := SolvePow(context.Background(), 12, static, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !CheckPow(12, static, "alice", nonce) {
		t.Fatal("solved nonce does not check")
	}
	if CheckPow(12, static, "bob", nonce) && CheckPow(12, bytes.Repeat([]byte{8}, 32), "alice", nonce) {
		t.Fatal("nonce checks for other inputs too (binding)")
	}
	if !CheckPow(0, static, "alice", nil) {
		t.Fatal("0 bits must accept anything")
	}
	d := PowDigest(static, "alice", nonce)
	if got := leadingZeroBits(d[:]); got < 12 {
		t.Fatalf("digest has %d leading zero bits", got)
	}
	if CheckPow(12, static, "alice", make([]byte, MaxPowNonceLen+1)) {
		t.Fatal("over-long nonce accepted")
	}
	if _, err := SolvePow(context.Background(), MaxPowBits+1, static, "alice"); err == nil {
		t.Fatal("SolvePow above MaxPowBits must refuse")
	}
	if leadingZeroBits([]byte{0, 0x10}) != 11 || leadingZeroBits([]byte{0x80}) != 0 {
		t.Fatal("leadingZeroBits")
	}
}
