package benchload

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

func body(sender, conv uint32, counter uint64, round uint32) []byte {
	b := make([]byte, minBodySize)
	putHeader(b, time.Now(), sender, conv, counter, round)
	return b
}

// TestCheckerFindings feeds the checker a stream with a gap, a duplicate,
// a late (reordered) message, a duplicate seq, a stale round and a
// self-delivery, and checks that each is counted where it belongs.
func TestCheckerFindings(t *testing.T) {
	// Conversation 0: devices 0 and 1; device 0 sends.
	c := newChecker(1, 2, [][]int{{0, 1}})
	for range 5 {
		n := c.next(0, 0)
		c.acked(0, 0, n, time.Now(), nil)
	}
	n := c.next(0, 0) // 6: rejected, never delivered: not missing
	c.acked(0, 0, n, time.Now(), errors.Join(ErrRejected))
	push := func(counter, seq uint64, round uint32) {
		c.onPush(1, Push{Dest: "d", Seq: seq, Body: body(0, 0, counter, round), At: time.Now()})
	}
	push(1, 1, 1)
	push(3, 3, 1) // 2 late
	push(2, 2, 1) // reorder by body and by seq
	push(3, 3, 1) // duplicate by body and by seq
	push(9, 0, 7) // another round's straggler
	c.onPush(0, Push{Dest: "d", Seq: 4, Body: body(0, 0, 1, 1), At: time.Now()})
	// 4 and 5 never arrive.
	tr := c.result(time.Second)
	want := Checks{Missing: 2, Duplicates: 1, Reorders: 1, SeqDuplicates: 1, SeqReorders: 1, Stale: 1}
	if tr.Checks != want {
		t.Errorf("checks = %+v, want %+v", tr.Checks, want)
	}
	if tr.Sent != 6 || tr.Acked != 5 || tr.Rejected != 1 || tr.Deliveries != 3 || tr.ExpectedDeliveries != 5 || tr.SelfDeliveries != 1 {
		t.Errorf("traffic = %+v", tr)
	}
	if ok, _ := verdict(&Config{MaxP99: time.Second}, 1, tr); ok {
		t.Error("a round with missing messages passed")
	}
}

// TestCentrifugoToken checks the connection token is an HS256 JWT with
// the user as sub, signed with the secret.
func TestCentrifugoToken(t *testing.T) {
	tok := (&Centrifugo{HMACSecret: "s3cret"}).token("alice")
	p := strings.Split(tok, ".")
	if len(p) != 3 {
		t.Fatalf("token %q", tok)
	}
	m := hmac.New(sha256.New, []byte("s3cret"))
	m.Write([]byte(p[0] + "." + p[1]))
	if got := base64.RawURLEncoding.EncodeToString(m.Sum(nil)); got != p[2] {
		t.Errorf("signature %s, want %s", p[2], got)
	}
	claims, _ := base64.RawURLEncoding.DecodeString(p[1])
	if string(claims) != `{"sub":"alice"}` {
		t.Errorf("claims %s", claims)
	}
}

// TestCentrifugoReplyDecoding decodes a Reply carrying a push and one
// carrying an error, as the server's protobuf encoder lays them out.
func TestCentrifugoReplyDecoding(t *testing.T) {
	var got []Push
	c := &cfConn{onPush: func(p Push) { got = append(got, p) }, pending: map[uint32]func(cfReply){}}
	var pub, push, reply []byte
	pub = protowire.AppendTag(pub, pubData, protowire.BytesType)
	pub = protowire.AppendBytes(pub, []byte("hello"))
	pub = protowire.AppendTag(pub, pubOffset, protowire.VarintType)
	pub = protowire.AppendVarint(pub, 7)
	push = protowire.AppendTag(push, pushChannel, protowire.BytesType)
	push = protowire.AppendString(push, "u.bob")
	push = protowire.AppendTag(push, pushPub, protowire.BytesType)
	push = protowire.AppendBytes(push, pub)
	reply = protowire.AppendTag(reply, replyPush, protowire.BytesType)
	reply = protowire.AppendBytes(reply, push)
	if err := c.handle(reply); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Dest != "u.bob" || string(got[0].Body) != "hello" || got[0].Seq != 7 {
		t.Errorf("pushes = %+v", got)
	}
	var answer cfReply
	c.pending[3] = func(r cfReply) { answer = r }
	var e, r []byte
	e = protowire.AppendTag(e, errorCode, protowire.VarintType)
	e = protowire.AppendVarint(e, cfTooManyRequests)
	e = protowire.AppendTag(e, errorMessage, protowire.BytesType)
	e = protowire.AppendString(e, "too many requests")
	r = protowire.AppendTag(r, replyID, protowire.VarintType)
	r = protowire.AppendVarint(r, 3)
	r = protowire.AppendTag(r, replyError, protowire.BytesType)
	r = protowire.AppendBytes(r, e)
	if err := c.handle(r); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(answer.error(), ErrRejected) {
		t.Errorf("reply error = %v, want ErrRejected", answer.error())
	}
	if err := c.handle([]byte{0xff}); err == nil {
		t.Error("a malformed reply decoded")
	}
}
