package core

import (
	"net"
	"net/netip"

	"github.com/chatmesh/chatmesh/core/pb"
)

// IngressConv is the conversation an ingress record is about: its Kafka
// key at the edge, and what a region places (home region, epoch) before
// sequencing it. "" for a record without an op.
func IngressConv(rec *pb.IngressRecord) string {
	switch op := rec.GetOp().(type) {
	case *pb.IngressRecord_Send:
		return op.Send.GetConvId()
	case *pb.IngressRecord_Ack:
		return op.Ack.GetConvId()
	case *pb.IngressRecord_Read:
		return op.Read.GetConvId()
	case *pb.IngressRecord_CreateGroup:
		return op.CreateGroup.GetConvId()
	case *pb.IngressRecord_ModifyMembers:
		return op.ModifyMembers.GetConvId()
	case *pb.IngressRecord_Typing:
		return op.Typing.GetConvId()
	}
	return ""
}

// LoopbackOnly reports whether a listen address (host:port, or a bare
// host) is reachable from this host only: "localhost" or a loopback IP.
// An empty host, an unspecified address (0.0.0.0, ::) or any other name
// or address is not. Internal endpoints that may run without a token
// (the region API, the directory) check it.
func LoopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
