package edge

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// queryRecorder is oneDevice whose Query answers with a PrekeyStatus whose
// count is the number of queries so far.
type queryRecorder struct {
	oneDevice
	n int
}

func (q *queryRecorder) Query(context.Context, core.DeviceKey, *pb.ClientFrame) (*pb.Response, error) {
	q.n++
	return &pb.Response{Body: &pb.Response_PrekeyStatus{PrekeyStatus: &pb.PrekeyStatus{OneTimeRemaining: uint32(q.n)}}}, nil
}

// TestPrekeyFramesAreQueries: the four key-material frames go to
// Backend.Query (answered with the backend's response and the frame's
// req_id), never to the ingress topic, and are charged to the token bucket.
func TestPrekeyFramesAreQueries(t *testing.T) {
	dev := core.DeviceKey{User: "a", Device: 1}
	frames := []*pb.ClientFrame{
		{ReqId: 11, Body: &pb.ClientFrame_UploadPrekeys{UploadPrekeys: &pb.UploadPrekeysRequest{Upload: []byte{1, 0, 0, 0}}}},
		{ReqId: 12, Body: &pb.ClientFrame_FetchBundle{FetchBundle: &pb.FetchBundleRequest{UserId: "b", DeviceId: 1}}},
		{ReqId: 13, Body: &pb.ClientFrame_PublishDeviceList{PublishDeviceList: &pb.PublishDeviceListRequest{DeviceList: []byte{1}}}},
		{ReqId: 14, Body: &pb.ClientFrame_FetchDeviceList{FetchDeviceList: &pb.FetchDeviceListRequest{UserId: "b"}}},
	}
	be := &queryRecorder{oneDevice: oneDevice{dev}}
	bus := &recordingBus{}
	e, err := New(Config{ID: "e1"}, be, bus)
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	defer e.cancel()
	now := time.Now()
	e.cfg.Now = func() time.Time { return now } // no refill during the test
	s := &session{e: e, id: 5, stop: make(chan struct{}), dev: dev, authed: true}
	s.bucket.Store(newBucket(1, len(frames), now))
	e.sessions[s.id] = s
	for i, f := range frames {
		b, _ := proto.Marshal(f)
		s.handle(b)
		var out pb.ServerFrame
		if err := proto.Unmarshal(mustPop(t, s), &out); err != nil {
			t.Fatal(err)
		}
		r := out.GetResponse()
		if r.GetReqId() != f.GetReqId() || r.GetPrekeyStatus().GetOneTimeRemaining() != uint32(i+1) {
			t.Fatalf("frame %d: response %v, want the backend's answer to query %d", f.GetReqId(), r, i+1)
		}
	}
	if len(bus.recs) != 0 {
		t.Fatalf("key-material frames produced %d bus records", len(bus.recs))
	}
	// The bucket is empty now: the next upload is refused at the edge.
	b, _ := proto.Marshal(frames[0])
	s.handle(b)
	var out pb.ServerFrame
	if err := proto.Unmarshal(mustPop(t, s), &out); err != nil {
		t.Fatal(err)
	}
	if c := out.GetResponse().GetError().GetCode(); c != pb.ErrorCode_ERROR_CODE_RATE_LIMITED || be.n != len(frames) {
		t.Fatalf("upload beyond the bucket: code %v, backend saw %d queries", c, be.n)
	}
}
