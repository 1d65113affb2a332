package control

import (
	"net/netip"

	"github.com/pion/stun/v3"
)

// peerError returns the error code for a peer an allocation may not get a
// permission or channel for, 0 when it may: 443 when the allocation has no
// relayed address of the peer's family (RFC 8656 section 9.2), 403 when the
// peer policy forbids it (section 9.2: "the server MAY ... reject with 403
// Forbidden" — docs/design.md "Security defaults").
func (a *allocation) peerError(peer netip.AddrPort) stun.ErrorCode {
	ip := peer.Addr().Unmap()
	if !ip.IsValid() {
		return stun.CodeBadRequest
	}
	if a.relay(familyOf(ip)) == nil && !a.s.tcpHasFamily(a, familyOf(ip)) {
		return stun.CodePeerAddrFamilyMismatch
	}
	if a.s.policy.Load().check(ip) == peerDenied {
		return stun.CodeForbidden
	}
	return 0
}

// handleCreatePermission implements RFC 8656 section 9.2 ("Receiving a
// CreatePermission Request").
func (s *Server) handleCreatePermission(r *reqCtx) {
	a := r.ownAllocation()
	if a == nil {
		return
	}
	// "When the server receives the CreatePermission request, it processes
	// as per Section 5 plus the specific rules mentioned here. The message
	// is checked for validity. The CreatePermission request MUST contain
	// at least one XOR-PEER-ADDRESS attribute and MAY contain multiple such
	// attributes. If no such attribute exists, or if any of these
	// attributes are invalid, then a 400 (Bad Request) error is returned."
	peers, err := getXORAddrs(r.msg, stun.AttrXORPeerAddress)
	if err != nil || len(peers) == 0 {
		r.fail(stun.CodeBadRequest)
		return
	}
	// "If the request is valid, but the server is unable to satisfy the
	// request due to some capacity limit or similar, then a 508 ... or the
	// peer address is forbidden 403": all or nothing, checked first.
	for _, p := range peers {
		if code := a.peerError(p); code != 0 {
			if code == stun.CodeForbidden {
				s.stats.dropPolicy.Add(1)
			}
			r.fail(code)
			return
		}
	}
	// "The server MUST then install or refresh a permission for the IP
	// address contained in each XOR-PEER-ADDRESS attribute ... The port
	// portion of each attribute is ignored and may be any arbitrary value."
	exp := r.now.Add(s.cfg.PermissionLifetime)
	a.mu.Lock()
	if a.dead {
		a.mu.Unlock()
		r.fail(stun.CodeAllocMismatch)
		return
	}
	for _, p := range peers {
		a.perms[p.Addr().Unmap()] = exp
	}
	a.syncAllOffloadLocked(r.now)
	a.mu.Unlock()
	s.state.markDirty()
	r.success()
}
