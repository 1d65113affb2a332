package control

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/stun/v3"
)

// TCP relay allocations (RFC 6062). The client's control connection (TCP
// or TLS) holds an allocation whose relayed transport address is a
// listening TCP socket. Connect opens a TCP connection from that address
// to a peer; a peer connecting to it (with a permission) is announced by a
// ConnectionAttempt indication. Either way the connection gets a
// CONNECTION-ID, and the client opens a new TCP connection to the server
// and sends ConnectionBind with that ID on it; after the success response
// that client data connection carries raw bytes to and from the peer data
// connection. All of it is userspace: no channel, no kernel entry.

// RFC 6062 methods (section 6.1).
const (
	methodConnect           = stun.MethodConnect           // 0x000a
	methodConnectionBind    = stun.MethodConnectionBind    // 0x000b
	methodConnectionAttempt = stun.MethodConnectionAttempt // 0x000c
)

// protoTCP is the REQUESTED-TRANSPORT value for TCP (RFC 6062 section
// 6.2: the IANA protocol number).
const protoTCP = 6

const (
	// tcpConnectTimeout bounds an outgoing connection to a peer: "If the
	// connection attempt fails or times out, the server MUST return a
	// 447 ... The timeout value MUST be at least 30 seconds" (RFC 6062
	// section 5.2).
	tcpConnectTimeout = 30 * time.Second
	// tcpBindTimeout: "If no ConnectionBind request associated with this
	// peer data connection is received after 30 seconds, the peer data
	// connection MUST be closed" (sections 5.2 and 5.3).
	tcpBindTimeout = 30 * time.Second
	// defaultMaxTCPConnections bounds the peer data connections of one
	// allocation (pending, waiting for ConnectionBind, or bound) unless
	// Config.MaxTCPConnections says otherwise.
	defaultMaxTCPConnections = 64
)

// tcpState is the server's RFC 6062 state.
type tcpState struct {
	mu     sync.Mutex // guards the maps
	relays map[*allocation]*tcpRelay
	addrs  map[netip.AddrPort]*tcpRelay // relayed addresses in use (also: hairpin peers)
	ids    map[uint32]*tcpConn          // connections waiting for ConnectionBind

	bindTimeout time.Duration // tcpBindTimeout; tests shorten it

	allocations, connects, connectFailures        atomic.Uint64
	attempts, peerRefused, binds, bindTimeouts    atomic.Uint64
	bytesToPeer, bytesToClient, connsClosedAtFull atomic.Uint64
}

func (t *tcpState) init() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.relays == nil {
		t.relays = map[*allocation]*tcpRelay{}
		t.addrs = map[netip.AddrPort]*tcpRelay{}
		t.ids = map[uint32]*tcpConn{}
		t.bindTimeout = tcpBindTimeout
	}
}

// tcpRelay is the TCP side of one allocation.
type tcpRelay struct {
	s      *Server
	a      *allocation
	addr   netip.AddrPort
	ln     *net.TCPListener
	ctx    context.Context // ends when the allocation does: cancels Connects
	cancel context.CancelFunc

	mu      sync.Mutex // guards the fields below
	closed  bool
	pending map[netip.AddrPort]bool // Connect in progress, by peer
	conns   map[uint32]*tcpConn     // waiting for ConnectionBind or bound
}

// tcpRelayOf returns a's TCP relay, nil for a UDP allocation.
func (s *Server) tcpRelayOf(a *allocation) *tcpRelay {
	s.tcp.mu.Lock()
	defer s.tcp.mu.Unlock()
	return s.tcp.relays[a]
}

// handleAllocateTCP implements RFC 6062 section 5.1 ("Receiving a TCP
// Allocate Request"), after RFC 8656 section 7.2 steps 1-3.
func (s *Server) handleAllocateTCP(r *reqCtx) {
	msg := r.msg
	// TCP relays turned off by the operator: the transport is not
	// supported (RFC 8656 section 7.2, 442), as on a server without RFC
	// 6062.
	if s.cfg.MaxTCPConnections < 0 {
		r.fail(stun.CodeUnsupportedTransProto)
		return
	}
	// "If the client connection transport is not TCP or TLS, the server
	// MUST reject the request with a 400 (Bad Request) error."
	if r.tuple.proto != tTCP && r.tuple.proto != tTLS {
		r.fail(stun.CodeBadRequest)
		return
	}
	// "If the request contains the DONT-FRAGMENT, EVEN-PORT, or
	// RESERVATION-TOKEN attribute, the server MUST reject the request
	// with a 400 (Bad Request) error." A dual-family TCP allocation is
	// not offered either.
	for _, t := range []stun.AttrType{stun.AttrDontFragment, stun.AttrEvenPort, stun.AttrReservationToken, attrAdditionalAddressFamily} {
		if msg.Contains(t) {
			r.fail(stun.CodeBadRequest)
			return
		}
	}
	fam := familyIPv4
	if f, ok, err := getFamilyAttr(msg, stun.AttrRequestedAddressFamily); err != nil {
		r.fail(stun.CodeBadRequest)
		return
	} else if ok {
		if f != familyIPv4 && f != familyIPv6 {
			r.fail(stun.CodeAddrFamilyNotSupported)
			return
		}
		fam = f
	} else if _, ok := s.relayIPFor(familyIPv4, netip.Addr{}); !ok {
		fam = familyIPv6 // as for UDP: an IPv6-only server answers in IPv6
	}
	life := s.cfg.DefaultLifetime
	if req, ok, err := getLifetime(msg); err != nil {
		r.fail(stun.CodeBadRequest)
		return
	} else if ok {
		life = clampLifetime(req, s.cfg.DefaultLifetime, s.cfg.MaxLifetime)
	}
	ip, ok := s.relayIPFor(fam, r.tuple.server.Addr())
	if !ok {
		r.fail(stun.CodeAddrFamilyNotSupported)
		return
	}
	// A draining or full server sends TCP allocations elsewhere like UDP
	// ones; a user over its own quota gets 486.
	quotaKey, admitted := s.admitAllocation(r)
	if !admitted {
		return
	}
	a := newAllocation(s, r.tuple, r.sink, r.username, r.now)
	a.quotaKey = quotaKey
	a.expires = r.now.Add(life)
	rel, err := s.openTCPRelay(a, ip)
	if err != nil {
		s.releaseQuota(quotaKey)
		if !errors.Is(err, errNoPorts) {
			s.log.Warn("open tcp relay", "err", err)
		}
		r.fail(stun.CodeInsufficientCapacity)
		return
	}
	resp := r.build(stun.ClassSuccessResponse, 0, setterFunc(func(m *stun.Message) error {
		if err := addXORAddr(m, stun.AttrXORRelayedAddress, rel.addr); err != nil {
			return err
		}
		addLifetime(m, life)
		return addXORAddr(m, stun.AttrXORMappedAddress, r.tuple.client)
	}))
	if resp == nil {
		s.closeTCPRelay(a)
		s.releaseQuota(quotaKey)
		r.fail(stun.CodeServerError)
		return
	}
	a.allocTxID, a.allocResp = msg.TransactionID, resp
	if _, loaded := s.allocs.LoadOrStore(r.tuple, a); loaded {
		s.closeTCPRelay(a)
		s.releaseQuota(quotaKey)
		r.fail(stun.CodeAllocMismatch)
		return
	}
	s.stats.requests[mAllocate][resultIndex(0)].Add(1)
	s.stats.allocationsCreated.Add(1)
	s.tcp.allocations.Add(1)
	r.sink.send(r.tx, resp)
	s.wg.Add(1)
	go rel.acceptLoop()
	s.log.Debug("tcp allocation created", "client", r.tuple.client, "transport", r.tuple.proto,
		"user", r.username, "relay", rel.addr, "lifetime", life)
}

// openTCPRelay listens on a random free port of the relay range on ip and
// registers the relay of a. The socket has SO_REUSEADDR and SO_REUSEPORT,
// so Connect can open outgoing connections from the same address (RFC
// 6062 section 5.2: "The local endpoint is the relayed transport
// address"); which ports are ours is tracked here, since REUSEPORT would
// let two of our listeners share one.
func (s *Server) openTCPRelay(a *allocation, ip netip.Addr) (*tcpRelay, error) {
	s.tcp.init()
	lo, hi := int(s.cfg.MinPort), int(s.cfg.MaxPort)
	n := hi - lo + 1
	start := mrand.IntN(n)
	lc := net.ListenConfig{Control: tcpReuseControl}
	s.tcp.mu.Lock()
	defer s.tcp.mu.Unlock()
	for i := 0; i < n; i++ {
		addr := netip.AddrPortFrom(ip, uint16(lo+(start+i)%n))
		if s.tcp.addrs[addr] != nil {
			continue
		}
		ln, err := lc.Listen(context.Background(), tcpNetwork(ip), addr.String())
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, fmt.Errorf("listen tcp relay %s: %w", addr, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		rel := &tcpRelay{s: s, a: a, addr: addr, ln: ln.(*net.TCPListener), ctx: ctx, cancel: cancel,
			pending: map[netip.AddrPort]bool{}, conns: map[uint32]*tcpConn{}}
		s.tcp.relays[a] = rel
		s.tcp.addrs[addr] = rel
		return rel, nil
	}
	return nil, errNoPorts
}

func tcpNetwork(ip netip.Addr) string {
	if ip.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// closeTCPRelay ends a's TCP relay, if it has one: the listener, every
// peer and client data connection, pending Connects. Called when the
// allocation is released.
func (s *Server) closeTCPRelay(a *allocation) {
	s.tcp.mu.Lock()
	rel := s.tcp.relays[a]
	if rel == nil {
		s.tcp.mu.Unlock()
		return
	}
	delete(s.tcp.relays, a)
	delete(s.tcp.addrs, rel.addr)
	s.tcp.mu.Unlock()
	rel.cancel()
	_ = rel.ln.Close()
	rel.mu.Lock()
	rel.closed = true
	conns := make([]*tcpConn, 0, len(rel.conns))
	for _, c := range rel.conns {
		conns = append(conns, c)
	}
	rel.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// closeAllTCP ends every TCP relay (server shutdown).
func (s *Server) closeAllTCP() {
	s.tcp.mu.Lock()
	var as []*allocation
	for a := range s.tcp.relays {
		as = append(as, a)
	}
	s.tcp.mu.Unlock()
	for _, a := range as {
		s.closeTCPRelay(a)
	}
}

// tcpHasFamily reports whether a is a TCP allocation relayed on family fam.
func (s *Server) tcpHasFamily(a *allocation, fam byte) bool {
	rel := s.tcpRelayOf(a)
	return rel != nil && familyOf(rel.addr.Addr()) == fam
}

// tcpPeerReachable is the send-time peer policy for TCP (as peerSendable
// for UDP): one of our own addresses is a peer only on a live TCP relayed
// address (two TCP allocations of this server, client to client) or when
// the operator allow-listed it; never a listener port.
func (s *Server) tcpPeerReachable(peer netip.AddrPort) bool {
	pol := s.policy.Load()
	ip := peer.Addr()
	if !pol.relayIPs[ip] && !pol.listenerIPs[ip] {
		return true
	}
	if pol.listenerPorts[peer.Port()] && pol.listenerIPs[ip] {
		return false
	}
	s.tcp.mu.Lock()
	live := s.tcp.addrs[peer] != nil
	s.tcp.mu.Unlock()
	return live || pol.allowedExplicitly(ip)
}

// newConnID returns a CONNECTION-ID not in use (RFC 6062 section 6.2.1:
// it "uniquely identifies a peer data connection"). Random, so a client
// cannot guess another's. Caller holds s.tcp.mu.
func (s *Server) newConnIDLocked() uint32 {
	var b [4]byte
	for {
		_, _ = rand.Read(b[:])
		id := binary.BigEndian.Uint32(b[:])
		if id != 0 && s.tcp.ids[id] == nil {
			return id
		}
	}
}

// TCPConnectionInfo is one peer data connection of a TCP allocation.
type TCPConnectionInfo struct {
	ID    uint32         `json:"id"`
	Peer  netip.AddrPort `json:"peer"`
	Bound bool           `json:"bound"` // a client data connection is attached
}

// tcpInfo adds a's TCP relay, if any, to its description.
func (s *Server) tcpInfo(a *allocation, ai *AllocationInfo) {
	rel := s.tcpRelayOf(a)
	if rel == nil {
		return
	}
	ai.RelayTransport = "tcp"
	ai.Relays = append(ai.Relays, rel.addr)
	rel.mu.Lock()
	for _, c := range rel.conns {
		c.mu.Lock()
		bound := c.client != nil
		c.mu.Unlock()
		ai.TCPConnections = append(ai.TCPConnections, TCPConnectionInfo{ID: c.id, Peer: c.peer, Bound: bound})
	}
	rel.mu.Unlock()
	slices.SortFunc(ai.TCPConnections, func(x, y TCPConnectionInfo) int { return x.Peer.Compare(y.Peer) })
}

// normalizeTCP applies the default to Config.MaxTCPConnections.
func normalizeTCP(c *Config) {
	if c.MaxTCPConnections == 0 {
		c.MaxTCPConnections = defaultMaxTCPConnections
	}
}
