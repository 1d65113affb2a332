package control

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// Peer data connections of TCP allocations (RFC 6062 sections 5.2-5.3):
// registration with a CONNECTION-ID and the ConnectionBind timeout,
// incoming connections from peers, and closing.

// tcpConn is one peer data connection.
type tcpConn struct {
	r    *tcpRelay
	id   uint32
	peer netip.AddrPort
	pc   net.Conn

	mu     sync.Mutex  // guards the fields below
	timer  *time.Timer // ConnectionBind timeout
	client net.Conn    // the client data connection, once bound
}

// register makes pc a peer data connection of rel waiting for
// ConnectionBind, with its bind timer running. It fails when the relay is
// closed or full, and, for an incoming connection (incoming), when a
// connection with the same peer address exists or is being made.
func (rel *tcpRelay) register(pc net.Conn, peer netip.AddrPort, incoming bool) (*tcpConn, error) {
	s := rel.s
	rel.mu.Lock()
	defer rel.mu.Unlock()
	if rel.closed {
		return nil, errors.New("allocation gone")
	}
	if incoming && rel.hasPeerLocked(peer) {
		// The client could not tell the two apart in a later Connect.
		return nil, errTCPDuplicate
	}
	if len(rel.conns) >= s.cfg.MaxTCPConnections {
		return nil, errTCPFull
	}
	s.tcp.mu.Lock()
	id := s.newConnIDLocked()
	c := &tcpConn{r: rel, id: id, peer: peer, pc: pc}
	s.tcp.ids[id] = c
	bt := s.tcp.bindTimeout
	s.tcp.mu.Unlock()
	rel.conns[id] = c
	c.mu.Lock()
	c.timer = time.AfterFunc(bt, func() {
		if c.takeForBind() {
			s.tcp.bindTimeouts.Add(1)
			c.close()
		}
	})
	c.mu.Unlock()
	return c, nil
}

var (
	errTCPFull      = errors.New("too many tcp connections on this allocation")
	errTCPDuplicate = errors.New("a connection with this peer address exists")
)

// takeForBind removes c from the connections waiting for ConnectionBind;
// false when it was taken already (bound, timed out or closed).
func (c *tcpConn) takeForBind() bool {
	s := c.r.s
	s.tcp.mu.Lock()
	defer s.tcp.mu.Unlock()
	if s.tcp.ids[c.id] != c {
		return false
	}
	delete(s.tcp.ids, c.id)
	return true
}

// close ends the peer data connection and its client data connection.
func (c *tcpConn) close() {
	s := c.r.s
	s.tcp.mu.Lock()
	if s.tcp.ids[c.id] == c {
		delete(s.tcp.ids, c.id)
	}
	s.tcp.mu.Unlock()
	_ = c.pc.Close()
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.client != nil {
		_ = c.client.Close()
	}
	c.mu.Unlock()
	c.r.mu.Lock()
	if c.r.conns[c.id] == c {
		delete(c.r.conns, c.id)
	}
	c.r.mu.Unlock()
}

// hasPeer reports whether a Connect to peer is in progress or a peer data
// connection with it exists (RFC 6062 section 5.2: 446). Caller holds
// rel.mu.
func (rel *tcpRelay) hasPeerLocked(peer netip.AddrPort) bool {
	if rel.pending[peer] {
		return true
	}
	for _, c := range rel.conns {
		if c.peer == peer {
			return true
		}
	}
	return false
}

// acceptLoop takes connections from peers to the relayed address (RFC
// 6062 section 5.3).
func (rel *tcpRelay) acceptLoop() {
	s := rel.s
	defer s.wg.Done()
	for {
		nc, err := rel.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-rel.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond): // EMFILE and friends
			}
			continue
		}
		rel.peerConnected(nc)
	}
}

// peerConnected handles one incoming peer connection: "the server MUST
// check whether there is a permission for the peer's IP address. If not,
// the connection MUST be closed. ... Otherwise the server ... assigns a
// CONNECTION-ID ... and sends a ConnectionAttempt indication to the
// client over the control connection" (RFC 6062 section 5.3).
func (rel *tcpRelay) peerConnected(nc *net.TCPConn) {
	s, a := rel.s, rel.a
	ra := nc.RemoteAddr().(*net.TCPAddr).AddrPort()
	peer := netip.AddrPortFrom(ra.Addr().Unmap(), ra.Port())
	now := time.Now()
	a.mu.RLock()
	ok := a.liveLocked(now) && a.permittedLocked(peer.Addr(), now)
	a.mu.RUnlock()
	if !ok {
		s.tcp.peerRefused.Add(1)
		s.stats.dropNoPermission.Add(1)
		_ = nc.Close()
		return
	}
	c, err := rel.register(nc, peer, true)
	if err != nil {
		s.tcp.peerRefused.Add(1)
		if errors.Is(err, errTCPFull) {
			s.tcp.connsClosedAtFull.Add(1)
		}
		_ = nc.Close()
		return
	}
	m := &stun.Message{Raw: make([]byte, 0, 64)}
	m.Type = stun.NewType(methodConnectionAttempt, stun.ClassIndication)
	m.TransactionID = stun.NewTransactionID()
	m.WriteHeader()
	if err := addXORAddr(m, stun.AttrXORPeerAddress, peer); err != nil {
		c.close()
		return
	}
	addConnectionID(m, c.id)
	if err := stun.Fingerprint.AddTo(m); err != nil {
		c.close()
		return
	}
	s.tcp.attempts.Add(1)
	a.sink.send(nil, m.Raw)
}

// addConnectionID adds CONNECTION-ID (RFC 6062 section 6.2.1: 32 bits).
func addConnectionID(m *stun.Message, id uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], id)
	m.Add(stun.AttrConnectionID, b[:])
}

// getConnectionID reads CONNECTION-ID; a value that is not 4 bytes is an
// error.
func getConnectionID(m *stun.Message) (uint32, bool, error) {
	v, err := m.Get(stun.AttrConnectionID)
	if err != nil {
		return 0, false, nil
	}
	if len(v) != 4 {
		return 0, true, fmt.Errorf("connection-id length %d: %w", len(v), errBadAttr)
	}
	return binary.BigEndian.Uint32(v), true, nil
}
