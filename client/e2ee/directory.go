package e2ee

import (
	"context"
	"fmt"
	"slices"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// Directory is what the sealer needs from the server: the region's public
// key directory (prekeys and device lists) and conversation membership.
// The server is not trusted: everything fetched is verified (signatures,
// device lists against the pinned ones, bundle identities against device
// lists). RequestDirectory implements it over a client connection.
type Directory interface {
	// UploadPrekeys sends a crypto/prekey Upload (and the encoded
	// identity) and returns how many one-time prekeys the region holds for
	// the device afterwards, or -1 when the server did not say.
	UploadPrekeys(ctx context.Context, identity, upload []byte) (remaining int, err error)
	// FetchBundle returns a crypto/prekey Bundle encoding for one device.
	FetchBundle(ctx context.Context, dev core.DeviceKey) ([]byte, error)
	// PublishDeviceList stores the user's signed device list.
	PublishDeviceList(ctx context.Context, list []byte) error
	// FetchDeviceList returns the user's signed device list (nil if none).
	FetchDeviceList(ctx context.Context, user string) ([]byte, error)
	// Devices returns the registered devices of a user (device id →
	// Ed25519 identity key), to find a linked device's number.
	Devices(ctx context.Context, user string) (map[uint32][]byte, error)
	// GroupMembers returns the current members of a group.
	GroupMembers(ctx context.Context, conv string) ([]string, error)
}

// Requester sends one request frame and returns its response; a server
// error is returned as an error wrapping *core.WireError. client.Client
// implements it.
type Requester interface {
	Request(ctx context.Context, f *pb.ClientFrame) (*pb.Response, error)
}

// RequestDirectory is the Directory of a chatmesh region, reached through
// a client connection.
type RequestDirectory struct{ R Requester }

// UploadPrekeys implements Directory.
func (d RequestDirectory) UploadPrekeys(ctx context.Context, identity, upload []byte) (int, error) {
	r, err := d.R.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_UploadPrekeys{UploadPrekeys: &pb.UploadPrekeysRequest{Identity: identity, Upload: upload}}})
	if err != nil {
		return 0, fmt.Errorf("e2ee: upload prekeys: %w", err)
	}
	if st := r.GetPrekeyStatus(); st != nil {
		return int(st.GetOneTimeRemaining()), nil
	}
	return -1, nil
}

// FetchBundle implements Directory.
func (d RequestDirectory) FetchBundle(ctx context.Context, dev core.DeviceKey) ([]byte, error) {
	r, err := d.R.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_FetchBundle{FetchBundle: &pb.FetchBundleRequest{UserId: dev.User, DeviceId: dev.Device}}})
	if err != nil {
		return nil, fmt.Errorf("e2ee: fetch bundle of %s: %w", dev, err)
	}
	return r.GetBundle().GetBundle(), nil
}

// PublishDeviceList implements Directory.
func (d RequestDirectory) PublishDeviceList(ctx context.Context, list []byte) error {
	_, err := d.R.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_PublishDeviceList{PublishDeviceList: &pb.PublishDeviceListRequest{DeviceList: list}}})
	if err != nil {
		return fmt.Errorf("e2ee: publish device list: %w", err)
	}
	return nil
}

// FetchDeviceList implements Directory.
func (d RequestDirectory) FetchDeviceList(ctx context.Context, user string) ([]byte, error) {
	r, err := d.R.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_FetchDeviceList{FetchDeviceList: &pb.FetchDeviceListRequest{UserId: user}}})
	if err != nil {
		if core.Code(err) == pb.ErrorCode_ERROR_CODE_NOT_FOUND {
			return nil, nil
		}
		return nil, fmt.Errorf("e2ee: fetch device list of %q: %w", user, err)
	}
	return r.GetDeviceList().GetDeviceList(), nil
}

// Devices implements Directory.
func (d RequestDirectory) Devices(ctx context.Context, user string) (map[uint32][]byte, error) {
	r, err := d.R.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_LookupUser{LookupUser: &pb.LookupUserRequest{UserId: user}}})
	if err != nil {
		return nil, fmt.Errorf("e2ee: lookup %q: %w", user, err)
	}
	out := map[uint32][]byte{}
	for _, dv := range r.GetUser().GetDevices() {
		out[dv.GetDeviceId()] = dv.GetIdentityKey()
	}
	return out, nil
}

// maxConvPages bounds the list_conversations pages GroupMembers reads.
const maxConvPages = 10000

// GroupMembers implements Directory: the group's members from the
// region's conversation list (paged by after_conv_id). Pending
// invitations are not members: an invited user is never given the
// group's sender key, even if a server listed them among the members too.
func (d RequestDirectory) GroupMembers(ctx context.Context, conv string) ([]string, error) {
	after := ""
	for range maxConvPages {
		r, err := d.R.Request(ctx, &pb.ClientFrame{Body: &pb.ClientFrame_ListConversations{ListConversations: &pb.ListConversationsRequest{AfterConvId: after}}})
		if err != nil {
			return nil, fmt.Errorf("e2ee: list conversations: %w", err)
		}
		list := r.GetConversations()
		for _, ci := range list.GetConversations() {
			if ci.GetConvId() == conv {
				return membersOnly(ci), nil
			}
		}
		cs := list.GetConversations()
		if !list.GetMore() || len(cs) == 0 || cs[len(cs)-1].GetConvId() <= after {
			break
		}
		after = cs[len(cs)-1].GetConvId()
	}
	return nil, fmt.Errorf("e2ee: group %s: %w", conv, ErrNotMember)
}

// membersOnly returns ci's members that are not listed as invited.
func membersOnly(ci *pb.ConversationInfo) []string {
	out := make([]string, 0, len(ci.GetMembers()))
	for _, u := range ci.GetMembers() {
		if !slices.Contains(ci.GetInvited(), u) {
			out = append(out, u)
		}
	}
	return out
}
