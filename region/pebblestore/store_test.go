package pebblestore_test

import (
	"errors"
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/region/pebblestore"
	"github.com/chatmesh/chatmesh/region/storetest"
)

func open(tb testing.TB) core.Store {
	tb.Helper()
	s, err := pebblestore.Open(tb.TempDir(), pebblestore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) core.Store { return open(t) })
}

func BenchmarkAppend(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) core.Store { return open(b) })
}

// TestReopen: everything acknowledged before Close is there after Open.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	msg := &pb.Message{ConvId: "g:r", ClientMsgId: "k1", Sender: &pb.DeviceAddr{UserId: "a", DeviceId: 1}}
	first, err := s.Append(ctx, core.AppendRequest{Epoch: 4, Message: msg, Create: &core.Conversation{ID: "g:r"}, AddMembers: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RegisterDevice(ctx, core.User{ID: "a"}, core.Device{NoiseStatic: []byte("static-a")}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Conversation(ctx, "g:r"); !errors.Is(err, pebblestore.ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}

	s, err = pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := s.Append(ctx, core.AppendRequest{Epoch: 4, Message: msg})
	if err != nil || !res.Duplicate || res.Message.Seq != first.Message.Seq {
		t.Fatalf("replay after reopen: %+v %v", res, err)
	}
	res, err = s.Append(ctx, core.AppendRequest{Epoch: 4, Message: &pb.Message{ConvId: "g:r", ClientMsgId: "k2"}})
	if err != nil || res.Duplicate || res.Message.Seq != 2 {
		t.Fatalf("append after reopen: %+v %v", res, err)
	}
	if _, err := s.Append(ctx, core.AppendRequest{Epoch: 3, Message: &pb.Message{ConvId: "g:r", ClientMsgId: "k3"}}); !errors.Is(err, core.ErrFenced) {
		t.Fatalf("epoch after reopen: %v", err)
	}
	if d, err := s.DeviceByStatic(ctx, []byte("static-a")); err != nil || d.Key.Device != 1 {
		t.Fatalf("device after reopen: %+v %v", d, err)
	}
}

// TestOpenLocked: a second Open of the same directory fails instead of
// corrupting it (a Pebble store is owned by one process).
func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := pebblestore.Open(dir, pebblestore.Options{}); err == nil {
		s2.Close()
		t.Fatal("second Open of a directory in use succeeded")
	}
}

// TestRejectsNUL: ids containing the key separator are rejected.
func TestRejectsNUL(t *testing.T) {
	s := open(t)
	defer s.Close()
	ctx := t.Context()
	_, err := s.Append(ctx, core.AppendRequest{Epoch: 1, Create: &core.Conversation{ID: "g:a\x00b"}, Message: &pb.Message{ConvId: "g:a\x00b", ClientMsgId: "k"}})
	if !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("conversation id with NUL: %v", err)
	}
	if err := s.SetRoute(ctx, core.Route{Device: core.DeviceKey{User: "a\x00", Device: 1}, Edge: "e"}); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("user id with NUL: %v", err)
	}
}

func TestPrekeyContract(t *testing.T) {
	storetest.RunPrekeys(t, func(t *testing.T) core.Store { return open(t) })
}

func BenchmarkPrekeys(b *testing.B) {
	storetest.BenchPrekeys(b, func(b *testing.B) core.Store { return open(b) })
}

func TestMarkerContract(t *testing.T) {
	storetest.RunMarker(t, func(t *testing.T) core.Store { return open(t) })
}
