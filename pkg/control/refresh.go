package control

import (
	"time"

	"github.com/pion/stun/v3"
)

// ownAllocation returns the allocation of the request's 5-tuple, answering
// 437 when there is none and 441 when it belongs to another user (RFC 8656
// sections 8.2, 9.2, 11.2: "If the request ... does not match an existing
// allocation → 437"; section 5: requests on an allocation must use the same
// username → 441).
func (r *reqCtx) ownAllocation() *allocation {
	a := r.s.lookup(r.tuple)
	if a == nil {
		r.fail(stun.CodeAllocMismatch)
		return nil
	}
	if a.username != r.username {
		r.fail(stun.CodeWrongCredentials)
		return nil
	}
	return a
}

// handleRefresh implements RFC 8656 section 8.2 ("Receiving a Refresh
// Request").
func (s *Server) handleRefresh(r *reqCtx) {
	a := r.ownAllocation()
	if a == nil {
		return
	}
	req, hasLife, err := getLifetime(r.msg)
	if err != nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	fam, hasFam, err := getFamilyAttr(r.msg, stun.AttrRequestedAddressFamily)
	if err != nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	// "If the request contains a REQUESTED-ADDRESS-FAMILY attribute, ...
	// and the allocation has no relayed address of that family, the server
	// MUST reply with a 443 (Peer Address Family Mismatch)."
	if hasFam && (fam != familyIPv4 && fam != familyIPv6 || a.relay(fam) == nil) {
		r.fail(stun.CodePeerAddrFamilyMismatch)
		return
	}
	life := s.cfg.DefaultLifetime
	if hasLife {
		if req == 0 {
			life = 0
		} else {
			life = clampLifetime(req, s.cfg.DefaultLifetime, s.cfg.MaxLifetime)
		}
	}
	if life == 0 {
		// "If the requested lifetime is zero, ... the server ... deletes
		// the allocation" — for a dual allocation with
		// REQUESTED-ADDRESS-FAMILY only that family's relayed address.
		if hasFam && a.dropFamily(fam) {
			r.success(lifetimeSetter(a.expiry().Sub(r.now)))
			return
		}
		a.delete("refresh lifetime 0")
		r.success(lifetimeSetter(0))
		return
	}
	a.mu.Lock()
	a.expires = r.now.Add(life)
	a.syncAllOffloadLocked(r.now)
	a.mu.Unlock()
	s.state.markDirty()
	r.success(lifetimeSetter(life))
}

// dropFamily removes one relayed address of a dual allocation and reports
// whether another one remains.
func (a *allocation) dropFamily(fam byte) bool {
	a.mu.Lock()
	other := a.relays[1-famIndex(fam)]
	rs := a.relays[famIndex(fam)]
	if other == nil || rs == nil {
		a.mu.Unlock()
		return false
	}
	a.relays[famIndex(fam)] = nil
	a.syncAllOffloadLocked(time.Now())
	a.mu.Unlock()
	a.s.releaseRelay(rs)
	a.s.state.markDirty()
	return true
}

func lifetimeSetter(d time.Duration) stun.Setter {
	return setterFunc(func(m *stun.Message) error {
		addLifetime(m, d)
		return nil
	})
}
