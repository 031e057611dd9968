package edge_test

import (
	"github.com/chatmesh/chatmesh/edge"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// BenchmarkPingRoundTrip measures one encrypted request/response through a
// real edge (decrypt, decode, rate limit, encode, queue, writer, encrypt).
func BenchmarkPingRoundTrip(b *testing.B) {
	v := newEnv(b, func(c *edge.Config) { c.MessagesPerSecond, c.Burst = 1e9, 1e9 })
	for _, kind := range []string{"ws", "wt"} {
		b.Run(kind, func(b *testing.B) {
			v.t = b
			c := v.connect(kind, newKey(b), nil)
			f := &pb.ClientFrame{Body: &pb.ClientFrame_Ping{Ping: &pb.Ping{ClientTimeMs: 42}}}
			for b.Loop() {
				c.call(f)
			}
		})
	}
}

// BenchmarkSendToIngress measures a send from the client until its ingress
// record has been consumed back from the (embedded) bus.
func BenchmarkSendToIngress(b *testing.B) {
	v := newEnv(b, func(c *edge.Config) { c.MessagesPerSecond, c.Burst = 1e9, 1e9 })
	ingress := v.tail("ingress")
	c, _ := v.registered("ws", "bench")
	env := &pb.Envelope{Ciphertext: make([]byte, 200)}
	i := 0
	for b.Loop() {
		i++
		c.send(&pb.ClientFrame{ReqId: uint64(i), Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{
			ConvId: "g:bench", ClientMsgId: "m", Envelope: env}}})
		<-ingress
	}
}
