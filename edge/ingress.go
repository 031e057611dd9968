package edge

// Writes in flight: admission control between a session and the region.
//
// A write (send, create_group, modify_members; ack and read with req_id ≠
// 0) is answered by the region with a Response on the edge topic, routed
// to the session by session_id. From its produce until that answer it
// holds one slot of its session (AdmissionConfig.MaxSessionInFlight) and
// one of the edge (MaxIngressInFlight); a write that gets no answer
// (typing; ack and read with req_id 0) holds the edge slot only while it
// is produced. Over either bound a write is refused at once with
// RATE_LIMITED and retry_after_ms, and nothing is produced — so that an
// overloaded region shows as typed backpressure the client retries, not
// as requests queueing for seconds. A slot is freed by the answer (any
// Response with the write's req_id), by a failed produce, when the
// session ends, or after IngressAnswerTimeout (a lost answer; checked by
// the edge's sweeper and when the session is at its bound).

import (
	"time"

	"github.com/chatmesh/chatmesh/core/pb"
)

// inflightEntry counts a session's unanswered writes with one req_id
// (normally one; a client may reuse an id, or send with req_id 0).
type inflightEntry struct {
	n        int
	deadline int64 // unix nanos: freed then if still unanswered
}

// answered reports whether the region answers the write f with a Response.
func answered(f *pb.ClientFrame) bool {
	switch f.GetBody().(type) {
	case *pb.ClientFrame_Send, *pb.ClientFrame_CreateGroup, *pb.ClientFrame_ModifyMembers:
		return true
	case *pb.ClientFrame_Ack, *pb.ClientFrame_Read:
		return f.GetReqId() != 0
	}
	return false
}

// enterWrite admits a write about to be produced, or returns the
// RATE_LIMITED error to answer. An admitted write must be followed by
// leaveWrite(reqID, answered, produced).
func (s *session) enterWrite(reqID uint64, ans bool) *pb.Error {
	a := s.e.adm
	retry := a.cfg.IngressRetryAfter
	if ans {
		s.ifMu.Lock()
		defer s.ifMu.Unlock()
		if s.ifCount >= a.cfg.MaxSessionInFlight {
			s.expireLocked(s.e.cfg.Now())
		}
		if s.ifCount >= a.cfg.MaxSessionInFlight {
			a.sessionFull.Add(1)
			return rateLimited("too many writes of this session awaiting the region's answer; retry", retry)
		}
	}
	if a.inFlight.Add(1) > int64(a.cfg.MaxIngressInFlight) {
		a.inFlight.Add(-1)
		a.ingressFull.Add(1)
		return rateLimited("edge busy: too many writes awaiting the region's answer; retry", retry)
	}
	if ans {
		if s.inflight == nil {
			s.inflight = map[uint64]inflightEntry{}
		}
		en := s.inflight[reqID]
		en.n++
		en.deadline = s.e.cfg.Now().Add(a.cfg.IngressAnswerTimeout).UnixNano()
		s.inflight[reqID] = en
		s.ifCount++
	}
	return nil
}

// leaveWrite ends what enterWrite began once the produce returned: a
// write without an answer, or one whose produce failed, frees its slots
// now; otherwise the answer will (settle).
func (s *session) leaveWrite(reqID uint64, ans, produced bool) {
	if !ans {
		s.e.adm.inFlight.Add(-1)
		return
	}
	if !produced {
		s.settle(reqID)
	}
}

// settle frees the slots of one unanswered write with reqID, if any: the
// region answered it. It returns when that write was admitted (zero: none
// was waiting).
func (s *session) settle(reqID uint64) time.Time {
	s.ifMu.Lock()
	defer s.ifMu.Unlock()
	en, ok := s.inflight[reqID]
	if !ok {
		return time.Time{}
	}
	if en.n--; en.n == 0 {
		delete(s.inflight, reqID)
	} else {
		s.inflight[reqID] = en
	}
	s.ifCount--
	s.e.adm.inFlight.Add(-1)
	if len(s.inflight) == 0 {
		s.inflight = nil // an idle session holds no map
	}
	return time.Unix(0, en.deadline-int64(s.e.adm.cfg.IngressAnswerTimeout))
}

// expireLocked frees the slots of writes unanswered past their deadline.
func (s *session) expireLocked(now time.Time) {
	t := now.UnixNano()
	for id, en := range s.inflight {
		if en.deadline <= t {
			delete(s.inflight, id)
			s.ifCount -= en.n
			s.e.adm.inFlight.Add(-int64(en.n))
			s.e.adm.answerTimeouts.Add(uint64(en.n))
		}
	}
	if len(s.inflight) == 0 {
		s.inflight = nil
	}
}

// expireInflight is expireLocked for the edge's sweeper.
func (s *session) expireInflight(now time.Time) {
	s.ifMu.Lock()
	defer s.ifMu.Unlock()
	if s.ifCount > 0 {
		s.expireLocked(now)
	}
}

// releaseInflight frees every slot of the session; it has ended (answers
// that still come are dropped with it).
func (s *session) releaseInflight() {
	s.ifMu.Lock()
	defer s.ifMu.Unlock()
	s.e.adm.inFlight.Add(-int64(s.ifCount))
	s.inflight, s.ifCount = nil, 0
}
