package control

import (
	"encoding/binary"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/turnproto"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// bufPool holds scratch buffers for frames built per packet (ChannelData
// and Data indications towards the client). Tx.Send copies, so a buffer
// goes back right after the send.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 4+65535+48)
	return &b
}}

// handleSend implements RFC 8656 section 10.2 ("Receiving a Send
// Indication"). Indications are never answered: every failure is a silent
// drop.
func (s *Server) handleSend(r *reqCtx) {
	a := s.lookup(r.tuple)
	if a == nil {
		s.stats.dropNoAllocation.Add(1)
		s.stats.requests[mSend][resultIndex(-1)].Add(1)
		return
	}
	// "the server ... MUST check that the Send indication contains an
	// XOR-PEER-ADDRESS attribute and a DATA attribute; if not, the
	// indication is discarded."
	peers, err := getXORAddrs(r.msg, stun.AttrXORPeerAddress)
	data, derr := r.msg.Get(stun.AttrData)
	if err != nil || len(peers) != 1 || derr != nil {
		s.stats.dropMalformed.Add(1)
		s.stats.requests[mSend][resultIndex(-1)].Add(1)
		return
	}
	peer := peers[0]
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	// "If a permission does not exist for the peer IP address, the
	// indication is discarded."
	a.mu.RLock()
	ok := a.permittedLocked(peer.Addr(), r.now) && a.liveLocked(r.now)
	rs := a.relays[famIndex(familyOf(peer.Addr()))]
	a.mu.RUnlock()
	if !ok || rs == nil {
		s.stats.dropNoPermission.Add(1)
		s.stats.requests[mSend][resultIndex(-1)].Add(1)
		return
	}
	s.stats.requests[mSend][resultIndex(0)].Add(1)
	// "the server MUST ... set the DF bit ... if DONT-FRAGMENT": the DF
	// bit is the relay socket's policy, set from the allocation's
	// DONT-FRAGMENT (applyDontFragment). The datagram's payload is the
	// DATA value, sent from the relayed address.
	a.toPeer(r.tx, rs, peer, data, r.now, s.isOwnAddr(peer.Addr()))
}

// channelDataFromClient relays a ChannelData message from the client (RFC
// 8656 section 12.5): the channel must be bound and live, and the frame
// must hold the header plus the length field's bytes followed by at most 3
// bytes of padding (optional over UDP, always present on streams). More
// trailing bytes mean a corrupted length field and the datagram is dropped
// rather than truncated — the same rule as the XDP program's
// (bpf/relay.bpf.c, HR_MAX_PAD), so both paths treat a datagram alike.
func (s *Server) channelDataFromClient(tx dataplane.Tx, t fiveTuple, p []byte) {
	num := binary.BigEndian.Uint16(p[0:2])
	l, framed := turnproto.ChannelDataLen(p)
	if !framed || num > s.maxChannelNumber() {
		s.stats.dropMalformed.Add(1)
		return
	}
	a := s.lookup(t)
	if a == nil {
		s.stats.dropNoAllocation.Add(1)
		return
	}
	now := s.coarseNow()
	a.mu.RLock()
	ch := a.chans[num]
	var peer netip.AddrPort
	var rs *relaySock
	var own bool
	ok := ch != nil && !ch.cooling && now.Before(ch.expires) && a.liveLocked(now)
	if ok {
		ch.lastActivity.Store(now.UnixNano())
		peer, own = ch.peer, ch.ownPeer
		rs = a.relays[famIndex(familyOf(peer.Addr()))]
		ok = rs != nil && a.permittedLocked(peer.Addr(), now)
	}
	a.mu.RUnlock()
	if !ok {
		s.stats.dropNoChannel.Add(1)
		return
	}
	a.toPeer(tx, rs, peer, p[4:4+l], now, own)
}

// peerSendable is the send-time half of the peer policy: nothing relayed
// may reach one of our STUN listener ports, and one of our own addresses is
// reachable only on a live relay port (hairpin), unless the operator
// allow-listed it.
func (s *Server) peerSendable(peer netip.AddrPort) bool {
	pol := s.policy.Load()
	ip := peer.Addr()
	if !pol.relayIPs[ip] && !pol.listenerIPs[ip] {
		return true
	}
	if pol.listenerPorts[peer.Port()] {
		return false
	}
	if _, ok := s.relays.Load(peer); ok {
		return true
	}
	return pol.allowedExplicitly(ip)
}

// isOwnAddr reports whether ip is one of this server's relay or listener
// addresses, for which peerSendable must look at the port.
func (s *Server) isOwnAddr(ip netip.Addr) bool {
	pol := s.policy.Load()
	return pol.relayIPs[ip] || pol.listenerIPs[ip]
}

// toPeer sends payload from relay socket rs to peer. own says the peer's IP
// is one of ours (isOwnAddr, precomputed per channel: the policy does not
// change after Start), in which case the port is checked too.
func (a *allocation) toPeer(tx dataplane.Tx, rs *relaySock, peer netip.AddrPort, payload []byte, now time.Time, own bool) {
	s := a.s
	if own && !s.peerSendable(peer) {
		s.stats.dropPolicy.Add(1)
		return
	}
	if a.bw != nil && !a.bw.allow(len(payload), now) {
		s.stats.dropBandwidth.Add(1)
		return
	}
	// Counted before the send, so a receiver never sees a datagram the
	// counters do not include yet (send errors are the datapath's).
	a.toPeerPkts.Add(1)
	a.toPeerBytes.Add(uint64(len(payload)))
	a.lastActivity.Store(now.UnixNano())
	s.stats.toPeerPackets.Add(1)
	s.stats.toPeerBytes.Add(uint64(len(payload)))
	if tx != nil {
		tx.Send(rs.conn, payload, peer)
	} else {
		_ = rs.conn.WriteTo(payload, peer)
	}
}

// liveLocked reports whether the allocation may relay at now: not deleted,
// and not past its lifetime even if the janitor (every janitorInterval)
// has not reaped it yet (RFC 8656 section 7: an allocation whose lifetime
// has run out is deleted and relays nothing). The kernel path
// checks the same expiry on every packet; userspace must not reopen the
// window it closes. a.mu must be held.
func (a *allocation) liveLocked(now time.Time) bool {
	return !a.dead && now.Before(a.expires)
}

// fromPeer relays a datagram a peer sent to relay socket rs (RFC 8656
// section 11.3 / 12.6): dropped without a permission for the peer IP; as
// ChannelData when a channel is bound to the peer's transport address, else
// as a Data indication.
func (a *allocation) fromPeer(tx dataplane.Tx, rs *relaySock, from netip.AddrPort, p []byte) {
	s := a.s
	now := s.coarseNow()
	a.mu.RLock()
	ok := a.liveLocked(now) && a.permittedLocked(from.Addr(), now)
	var num uint16
	if ch := a.chanByPeer[from]; ok && ch != nil && !ch.cooling && now.Before(ch.expires) {
		num = ch.num
		ch.lastActivity.Store(now.UnixNano())
	}
	a.mu.RUnlock()
	if !ok {
		s.stats.dropNoPermission.Add(1)
		return
	}
	if a.bw != nil && !a.bw.allow(len(p), now) {
		s.stats.dropBandwidth.Add(1)
		return
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	var frame []byte
	if num != 0 {
		frame = appendChannelData((*bp)[:0], num, p, a.sink.stream())
	} else {
		frame = appendDataIndication((*bp)[:0], from, p)
		if frame == nil {
			s.stats.dropOversize.Add(1)
			return
		}
		s.stats.dataIndications.Add(1)
	}
	a.toClientPkts.Add(1)
	a.toClientBytes.Add(uint64(len(p)))
	a.lastActivity.Store(now.UnixNano())
	s.stats.toClientPackets.Add(1)
	s.stats.toClientBytes.Add(uint64(len(p)))
	a.sink.send(tx, frame)
	*bp = frame[:0]
}

// appendChannelData frames payload as ChannelData (RFC 8656 section
// 12.4): channel number, length, data; padded to 4 bytes over streams
// (section 12.5 — over UDP the padding is optional and not sent).
func appendChannelData(b []byte, num uint16, payload []byte, pad bool) []byte {
	b = binary.BigEndian.AppendUint16(b, num)
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload))) //nolint:gosec // datagram payloads fit 16 bits
	b = append(b, payload...)
	if pad {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// appendDataIndication encodes a Data indication (RFC 8656 section 11.3)
// with XOR-PEER-ADDRESS and DATA. Returns nil when the result would not
// fit a STUN length field.
func appendDataIndication(b []byte, peer netip.AddrPort, payload []byte) []byte {
	ip := peer.Addr().Unmap()
	alen := 8
	if ip.Is6() {
		alen = 20
	}
	dlen := (len(payload) + 3) &^ 3
	total := 4 + alen + 4 + dlen
	if total > 0xFFFF {
		return nil
	}
	var txid [12]byte
	binary.LittleEndian.PutUint64(txid[0:8], mrand.Uint64())
	binary.LittleEndian.PutUint32(txid[8:12], mrand.Uint32())
	// Header: type Data indication (method 0x007, class indication).
	b = binary.BigEndian.AppendUint16(b, stun.NewType(methodData, stun.ClassIndication).Value())
	b = binary.BigEndian.AppendUint16(b, uint16(total)) //nolint:gosec // checked above
	b = binary.BigEndian.AppendUint32(b, magicCookie)
	b = append(b, txid[:]...)
	// XOR-PEER-ADDRESS (RFC 8489 section 14.2 encoding).
	b = binary.BigEndian.AppendUint16(b, uint16(stun.AttrXORPeerAddress))
	b = binary.BigEndian.AppendUint16(b, uint16(alen)) //nolint:gosec // 8 or 20
	var key [16]byte
	binary.BigEndian.PutUint32(key[0:4], magicCookie)
	copy(key[4:], txid[:])
	if ip.Is4() {
		b = append(b, 0, familyIPv4)
	} else {
		b = append(b, 0, familyIPv6)
	}
	b = binary.BigEndian.AppendUint16(b, peer.Port()^uint16(magicCookie>>16))
	raw := ip.AsSlice()
	for i, x := range raw {
		b = append(b, x^key[i])
	}
	// DATA.
	b = binary.BigEndian.AppendUint16(b, uint16(stun.AttrData))
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload))) //nolint:gosec
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
