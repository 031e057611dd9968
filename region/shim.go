package region

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// MERGE-SHIM: replaced by Store.Privacy and the byte-bounded Store.Messages.
func storePrivacy(ctx context.Context, st core.Store, user string) (core.Privacy, error) {
	if _, err := st.User(ctx, user); err != nil {
		return core.Privacy{}, err
	}
	return core.Privacy{}, nil
}

func storeMessages(ctx context.Context, st core.Store, conv string, after uint64, limit, maxBytes int) ([]*pb.Message, error) {
	ms, err := st.Messages(ctx, conv, after, limit)
	if err != nil {
		return nil, err
	}
	n := 0
	for i, m := range ms {
		n += proto.Size(m)
		if n > maxBytes {
			return ms[:i], nil
		}
	}
	return ms, nil
}
