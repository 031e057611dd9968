package region

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// fanIntent is an output addressed to users: a delivery of m (then also
// push notifications for their offline devices) or frame; counter counts
// its records. at is its position in the batch's out.
type fanIntent struct {
	at      int
	m       *pb.Message
	frame   *pb.ServerFrame
	users   []string
	counter *atomic.Uint64
}

// fanDelivery queues the delivery of m to users' online devices.
func (b *batch) fanDelivery(m *pb.Message, users []string) {
	b.fan = append(b.fan, fanIntent{at: len(b.out), m: m, frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: m}}, users: users})
}

// fanFrame queues frame to users' online devices.
func (b *batch) fanFrame(users []string, frame *pb.ServerFrame, counter *atomic.Uint64) {
	if len(users) == 0 {
		return
	}
	b.fan = append(b.fan, fanIntent{at: len(b.out), frame: frame, users: users, counter: counter})
}

// routesChunk bounds the users of one Routes read.
const routesChunk = 1000

// resolveFan reads the routes of every user the batch's intents address
// (a long or shared list once, the other users once each), after the
// batch's entries are committed, and returns the
// batch's outputs with the intents' records (one per edge hosting an
// online device) in their places.
//
// After the commit, not before: a device's session records its route and
// then reads its first sync. If the routes were read before the commit,
// a device could record its route after that read and sync before the
// commit, and miss the entry both ways. Read after, either the read sees
// the route (the entry is pushed) or the route came later, and so did the
// sync, which finds the entry.
func (r *Region) resolveFan(ctx context.Context, b *batch) ([]core.BusRecord, error) {
	if len(b.fan) == 0 {
		return b.out, nil
	}
	// A list that is sorted, unique, and either long (a group's members)
	// or addressed by every intent of the batch (a small group's messages
	// share the state's sorted member list, ConvState.MembersAt, by
	// identity) is read on its own: its routes, in user order, are its
	// intents', with no set or per-user index over its users — also when
	// the batch mixes a group's message with its members' receipts and
	// answers. The other intents' users (receipts to a few senders, 1:1
	// pairs) are read together and indexed by user.
	allShare := sortedUnique(b.fan[0].users)
	for _, f := range b.fan[1:] {
		if !allShare {
			break
		}
		allShare = sameList(f.users, b.fan[0].users)
	}
	type listRoutes struct {
		users  []string
		routes []core.Route
	}
	var lists []listRoutes
	which := make([]int, len(b.fan)) // index in lists, or -1: read with the rest
	var rest []string
	var inRest map[string]bool
	for i, f := range b.fan {
		which[i] = -1
		if len(f.users) == 0 {
			continue
		}
		if allShare || len(f.users) >= ownReadUsers {
			j := slices.IndexFunc(lists, func(l listRoutes) bool { return sameList(l.users, f.users) })
			if j < 0 && sortedUnique(f.users) {
				j = len(lists)
				lists = append(lists, listRoutes{users: f.users})
			}
			if which[i] = j; j >= 0 {
				continue
			}
		}
		if inRest == nil {
			inRest = map[string]bool{}
		}
		for _, u := range f.users {
			if !inRest[u] {
				inRest[u] = true
				rest = append(rest, u)
			}
		}
	}
	for j := range lists {
		routes, err := r.readRoutes(ctx, lists[j].users)
		if err != nil {
			return nil, err
		}
		lists[j].routes = uniqueDevices(routes) // once for every intent of the list
	}
	var byUser map[string][]core.Route
	if len(rest) > 0 {
		slices.Sort(rest)
		all, err := r.readRoutes(ctx, rest)
		if err != nil {
			return nil, err
		}
		byUser = make(map[string][]core.Route)
		for _, rt := range all {
			byUser[rt.Device.User] = append(byUser[rt.Device.User], rt)
		}
	}
	out := make([]core.BusRecord, 0, len(b.out)+len(b.fan))
	next := 0
	for i, f := range b.fan {
		out = append(out, b.out[next:f.at]...)
		next = f.at
		var routes []core.Route
		if j := which[i]; j >= 0 {
			routes = lists[j].routes
		} else {
			for _, u := range f.users {
				routes = append(routes, byUser[u]...)
			}
			routes = uniqueDevices(routes) // f.users may repeat a user
		}
		recs, err := r.perEdge(routes, f.frame)
		if err != nil {
			return nil, err
		}
		if f.counter != nil {
			f.counter.Add(uint64(len(recs)))
		}
		out = append(out, recs...)
		if f.m != nil {
			r.notifyOffline(ctx, f.m, f.users, routes)
		}
	}
	return append(out, b.out[next:]...), nil
}

// ownReadUsers is the length from which a sorted list is read on its own
// in a batch whose intents address different lists (resolveFan).
const ownReadUsers = 32

// sameList reports whether a and b are the same slice (not merely equal).
func sameList(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// readRoutes reads the routes of users, routesChunk users at a time.
func (r *Region) readRoutes(ctx context.Context, users []string) ([]core.Route, error) {
	var all []core.Route
	for len(users) > 0 {
		n := min(len(users), routesChunk)
		routes, err := r.store.Routes(ctx, users[:n])
		if err != nil {
			return nil, fmt.Errorf("fanout: routes: %w", err)
		}
		if all == nil && n == len(users) {
			return routes, nil // one chunk: the store's slice as it is
		}
		all = append(all, routes...)
		users = users[n:]
	}
	return all, nil
}

// sortedUnique reports whether users is strictly increasing.
func sortedUnique(users []string) bool {
	for i := 1; i < len(users); i++ {
		if users[i-1] >= users[i] {
			return false
		}
	}
	return true
}

// notifyOffline queues push notifications of a user entry for the offline
// devices of users (all but the sender's).
func (r *Region) notifyOffline(ctx context.Context, m *pb.Message, users []string, routes []core.Route) {
	if r.cfg.Notifier == nil || m.GetKind() != pb.MessageKind_MESSAGE_KIND_USER {
		return
	}
	online := make(map[core.DeviceKey]bool, len(routes))
	for _, rt := range routes {
		online[rt.Device] = true
	}
	sender := core.KeyOf(m.GetSender())
	for _, u := range users {
		if u == sender.User {
			continue
		}
		devs, err := r.devices.devices(ctx, r.store, u)
		if err != nil {
			r.log.Warn("push: device list", "user", u, "err", err)
			continue
		}
		for _, d := range devs {
			if !online[d.Key] {
				r.queueNotify(core.PushNotification{
					Device: d.Key, Conv: m.GetConvId(), Seq: m.GetSeq(), MsgID: m.GetMsgId(), SentAtMs: m.GetSentAtMs(),
				})
			}
		}
	}
}

// perEdge addresses frame to the devices of routes, which name each
// device once (uniqueDevices): one EdgeRecord per edge hosting one of
// them, in edge order. The
// frame is encoded once for every edge, and the records are written from
// the route keys (core.AppendEdgeRecord): a group's fan-out does this for
// every message, with a target per online member device.
func (r *Region) perEdge(routes []core.Route, frame *pb.ServerFrame) ([]core.BusRecord, error) {
	if len(routes) == 0 {
		return nil, nil
	}
	fb, err := proto.Marshal(frame)
	if err != nil {
		return nil, fmt.Errorf("region: encode edge record: %w", err)
	}
	type edgeTargets struct {
		edge, region string
		devs         []core.DeviceKey
	}
	var edges []edgeTargets
	at := map[string]int{}
	last := -1
	for _, rt := range routes {
		if last < 0 || edges[last].edge != rt.Edge {
			i, ok := at[rt.Edge]
			if !ok {
				i = len(edges)
				at[rt.Edge] = i
				edges = append(edges, edgeTargets{edge: rt.Edge, region: rt.Region})
			}
			last = i
		}
		edges[last].devs = append(edges[last].devs, rt.Device)
	}
	slices.SortFunc(edges, func(a, b edgeTargets) int { return strings.Compare(a.edge, b.edge) })
	recs := make([]core.BusRecord, 0, len(edges))
	for _, e := range edges {
		recs = append(recs, r.edgeOut(e.region, e.edge, core.AppendEdgeRecord(nil, e.devs, fb)))
	}
	return recs, nil
}

// Bounds of one bundle (pb.EdgeRecord.bundle). A bundle stays far below
// the bus's 1 MiB per record (core.TestEdgeRecordAtTheGroupLimit); a
// record that alone is larger than maxBundleBytes goes alone, as before.
const (
	maxBundleRecords = 256
	maxBundleBytes   = 256 << 10
)

// bundleEdgeRecords puts the records of out that go to the same local
// edge topic into bundles, each in the place of its first record: what a
// batch has for one edge (answers, deliveries, receipts) becomes one bus
// record, decoded by the edge record by record. The records of one topic
// keep their order: a record that does not fit the open bundle starts the
// next one, and nothing joins a bundle across it. Records for other
// topics (links, presence) are left as they are. In a 500-member group
// with acks at 100 msg/s, a batch's answers, deliveries and receipt
// frames (23 on average: 88,663 edge records came in 3,842 bus records) were
// each a record of their own, which the bus encoded, the broker stored
// and the edge's consumer read one by one.
func bundleEdgeRecords(out []core.BusRecord) []core.BusRecord {
	if len(out) < 2 {
		return out
	}
	type group struct {
		first, n, size int
	}
	var groups []group
	open := map[string]int{} // topic -> its open group
	at := make([]int, len(out))
	bundled := false
	for i, rec := range out {
		at[i] = -1
		if !isLocalEdgeRecord(rec) {
			continue
		}
		sz := core.BundledSize(len(rec.Value))
		if g, ok := open[rec.Topic]; ok && groups[g].n < maxBundleRecords && groups[g].size+sz <= maxBundleBytes {
			groups[g].n++
			groups[g].size += sz
			at[i] = g
			bundled = true
			continue
		}
		open[rec.Topic] = len(groups)
		at[i] = len(groups)
		groups = append(groups, group{first: i, n: 1, size: sz})
	}
	if !bundled {
		return out
	}
	res := make([]core.BusRecord, 0, len(out))
	values := make([][]byte, len(groups))
	for i, rec := range out {
		g := at[i]
		if g < 0 || groups[g].n == 1 {
			res = append(res, rec)
			continue
		}
		if values[g] == nil {
			values[g] = make([]byte, 0, groups[g].size)
			res = append(res, core.BusRecord{Topic: rec.Topic, Key: rec.Key})
			groups[g].first = len(res) - 1
		}
		values[g] = core.AppendBundled(values[g], rec.Value)
	}
	for g, v := range values {
		if v != nil {
			res[groups[g].first].Value = v
		}
	}
	return res
}

// isLocalEdgeRecord tells a record for one of this region's edges (edgeOut:
// topic EdgeTopic(edge), key edge) from the others, whatever their topic
// names are (a link's, whose key may be an edge id too, or an ingress
// topic under a namespace that happens to start like an edge topic).
func isLocalEdgeRecord(rec core.BusRecord) bool {
	t := rec.Topic
	return len(t) == len(EdgeTopicPrefix)+len(rec.Key) && strings.HasPrefix(t, EdgeTopicPrefix) && t[len(EdgeTopicPrefix):] == string(rec.Key)
}

// uniqueDevices returns routes with each device's first route only. The
// fan-out's routes come sorted by device (the users sorted, each user's
// routes sorted), where a duplicate is next to its first; other orders
// take a set.
func uniqueDevices(routes []core.Route) []core.Route {
	if slices.IsSortedFunc(routes, func(a, b core.Route) int { return a.Device.Compare(b.Device) }) {
		for i := 1; i < len(routes); i++ {
			if routes[i].Device == routes[i-1].Device {
				return slices.CompactFunc(slices.Clone(routes), func(a, b core.Route) bool { return a.Device == b.Device })
			}
		}
		return routes
	}
	seen := make(map[core.DeviceKey]bool, len(routes))
	out := make([]core.Route, 0, len(routes))
	for _, rt := range routes {
		if !seen[rt.Device] {
			seen[rt.Device] = true
			out = append(out, rt)
		}
	}
	return out
}

// replyRecord addresses a response to the session a request came from.
func (r *Region) replyRecord(o *pb.Origin, resp *pb.Response) core.BusRecord {
	resp.ReqId = o.GetReqId()
	b, err := proto.Marshal(&pb.EdgeRecord{
		Targets:   []*pb.DeviceAddr{o.GetDevice()},
		SessionId: o.GetSessionId(),
		Frame:     &pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: resp}},
	})
	if err != nil {
		// Marshal of a well-formed message cannot fail; keep the record empty
		// rather than crash the sequencer.
		r.log.Error("encode reply", "err", err)
	}
	return r.edgeOut(o.GetRegion(), o.GetEdgeId(), b)
}

// produceNow sends records to Kafka, dropping those whose topic is gone.
func (r *Region) produceNow(ctx context.Context, recs ...core.BusRecord) error {
	if len(recs) == 0 {
		return nil
	}
	if err := r.ensureLinks(ctx, recs); err != nil {
		return err
	}
	err := r.bus.Produce(ctx, recs...)
	if errors.Is(err, core.ErrUnknownTopic) && len(recs) > 1 {
		// Some edge's topic is gone (a decommissioned edge, a stale route or
		// origin). Send the records one by one and drop only those.
		for _, rec := range recs {
			if err := r.produceNow(ctx, rec); err != nil {
				return err
			}
		}
		return nil
	}
	if errors.Is(err, core.ErrUnknownTopic) && strings.HasPrefix(recs[0].Topic, r.cfg.LinkPrefix) {
		// An outbound link topic is never dropped from: it carries
		// forwarded requests and replies. Create it again and retry.
		r.linkTopics.Delete(recs[0].Topic)
		return fmt.Errorf("region: link topic %s missing: %w", recs[0].Topic, err)
	}
	if errors.Is(err, core.ErrUnknownTopic) {
		// Undeliverable: nobody consumes a missing topic. The devices
		// behind it resync when they reconnect; retrying would stall the
		// partition forever.
		r.stats.undeliverable.Add(1)
		r.log.Warn("dropping record for a missing topic", "topic", recs[0].Topic)
		return nil
	}
	if err != nil {
		return fmt.Errorf("region: produce %d records: %w", len(recs), err)
	}
	r.stats.edgeRecords.Add(uint64(len(recs)))
	return nil
}

func (r *Region) queueNotify(n core.PushNotification) {
	select {
	case r.notifyCh <- n:
	default:
		r.stats.notifyDropped.Add(1)
	}
}

func (r *Region) runNotifier(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case n := <-r.notifyCh:
			if err := r.cfg.Notifier.Notify(ctx, n); err != nil {
				r.stats.notifyFailed.Add(1)
				r.log.Warn("push notification failed", "device", n.Device.String(), "err", err)
				continue
			}
			r.stats.notified.Add(1)
		}
	}
}
