package control

import (
	"net/netip"

	"github.com/pion/stun/v3"
)

// handleChannelBind implements RFC 8656 section 11.2 ("Receiving a
// ChannelBind Request").
func (s *Server) handleChannelBind(r *reqCtx) {
	a := r.ownAllocation()
	if a == nil {
		return
	}
	// A TCP allocation (RFC 6062) relays on connections, not channels
	// (coturn answers the same).
	if s.tcpRelayOf(a) != nil {
		r.fail(stun.CodeForbidden)
		return
	}
	// "The request contains both a CHANNEL-NUMBER and an XOR-PEER-ADDRESS
	// attribute" — otherwise 400.
	num, ok, err := getChannelNumber(r.msg)
	if err != nil || !ok {
		r.fail(stun.CodeBadRequest)
		return
	}
	peers, err := getXORAddrs(r.msg, stun.AttrXORPeerAddress)
	if err != nil || len(peers) != 1 {
		r.fail(stun.CodeBadRequest)
		return
	}
	peer := peers[0]
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	// "The channel number is in the range 0x4000 through 0x4FFF
	// (inclusive)." — otherwise 400 (0x7FFF for RFC 5766 clients unless
	// StrictChannelNumbers, see attrs.go).
	if num < minChannel || num > s.maxChannelNumber() {
		r.fail(stun.CodeBadRequest)
		return
	}
	if code := a.peerError(peer); code != 0 {
		if code == stun.CodeForbidden {
			s.stats.dropPolicy.Add(1)
		}
		r.fail(code)
		return
	}
	a.mu.Lock()
	if a.dead {
		a.mu.Unlock()
		r.fail(stun.CodeAllocMismatch)
		return
	}
	// "The channel number is not currently bound to a different transport
	// address (same transport address is OK); the transport address is
	// not currently bound to a different channel number." — otherwise 400.
	// A binding in its 5-minute cool-down still counts (section 12).
	if ch, ok := a.chans[num]; ok && ch.peer != peer {
		a.mu.Unlock()
		r.fail(stun.CodeBadRequest)
		return
	}
	if ch, ok := a.chanByPeer[peer]; ok && ch.num != num {
		a.mu.Unlock()
		r.fail(stun.CodeBadRequest)
		return
	}
	// "If the request is valid, the server creates or refreshes the channel
	// binding using the channel number in the CHANNEL-NUMBER attribute and
	// the transport address in the XOR-PEER-ADDRESS attribute. The server
	// also installs or refreshes a permission for the IP address in the
	// XOR-PEER-ADDRESS attribute as described in Section 9."
	ch := a.chans[num]
	if ch == nil {
		ch = &channel{num: num, peer: peer, ownPeer: s.isOwnAddr(peer.Addr())}
		a.chans[num] = ch
		a.chanByPeer[peer] = ch
	}
	ch.expires = r.now.Add(s.cfg.ChannelLifetime)
	ch.cooling = false
	if pe := r.now.Add(s.cfg.PermissionLifetime); a.perms[peer.Addr()].Before(pe) {
		a.perms[peer.Addr()] = pe
	}
	// docs/design.md "Kernel-path invariants" 3: the kernel entry exists before
	// the success response leaves, so the first ChannelData cannot race
	// the map insert. Permission and allocation lifetimes may have moved
	// for other channels too.
	a.syncAllOffloadLocked(r.now)
	a.mu.Unlock()
	s.state.markDirty()
	r.success()
}
