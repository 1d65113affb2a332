package control

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// handleConnect implements RFC 6062 section 5.2 ("Receiving a Connect
// Request"). The connection attempt runs on its own goroutine (it may
// take 30 s); the response is sent when it ends.
func (s *Server) handleConnect(r *reqCtx) {
	// "If the request is received on a TCP connection for which no
	// allocation exists, the server MUST return a 437."
	a := r.ownAllocation()
	if a == nil {
		return
	}
	rel := s.tcpRelayOf(a)
	if rel == nil {
		// A UDP allocation has no TCP relayed address (coturn answers
		// the same).
		r.fail(stun.CodeForbidden)
		return
	}
	// "If the request does not contain an XOR-PEER-ADDRESS attribute, or
	// if such attribute is invalid, the server MUST return a 400."
	peers, err := getXORAddrs(r.msg, stun.AttrXORPeerAddress)
	if err != nil || len(peers) != 1 || peers[0].Port() == 0 {
		r.fail(stun.CodeBadRequest)
		return
	}
	peer := netip.AddrPortFrom(peers[0].Addr().Unmap(), peers[0].Port())
	// "If the new connection is forbidden by local policy, the server
	// MUST reject the request with a 403 (Forbidden) error." The same
	// policy as UDP peers, plus 443 for the other family.
	if code := a.peerError(peer); code != 0 {
		if code == stun.CodeForbidden {
			s.stats.dropPolicy.Add(1)
		}
		r.fail(code)
		return
	}
	if !s.tcpPeerReachable(peer) {
		s.stats.dropPolicy.Add(1)
		r.fail(stun.CodeForbidden)
		return
	}
	// "If the server is currently processing a Connect request for this
	// allocation with the same XOR-PEER-ADDRESS, it MUST return a 446
	// ... If the server has already successfully processed a Connect
	// request for this allocation with the same XOR-PEER-ADDRESS, and
	// the resulting client and peer data connections are either pending
	// or active, it MUST return a 446."
	rel.mu.Lock()
	switch {
	case rel.closed:
		rel.mu.Unlock()
		r.fail(stun.CodeAllocMismatch)
		return
	case rel.hasPeerLocked(peer):
		rel.mu.Unlock()
		r.fail(stun.CodeConnAlreadyExists)
		return
	case len(rel.conns)+len(rel.pending) >= s.cfg.MaxTCPConnections:
		rel.mu.Unlock()
		s.tcp.connsClosedAtFull.Add(1)
		r.fail(stun.CodeInsufficientCapacity)
		return
	}
	rel.pending[peer] = true
	rel.mu.Unlock()

	// The request's message goes back to its pool when this handler
	// returns: the response is built from a copy of what it needs.
	rc := *r
	rc.tx = nil
	rc.msg = &stun.Message{Type: r.msg.Type, TransactionID: r.msg.TransactionID}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		rel.connect(&rc, peer)
	}()
}

// connect dials peer from the relayed address and answers the Connect.
func (rel *tcpRelay) connect(r *reqCtx, peer netip.AddrPort) {
	s := rel.s
	d := net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(rel.addr),
		Timeout:   tcpConnectTimeout,
		Control:   tcpReuseControl,
	}
	s.tcp.connects.Add(1)
	nc, err := d.DialContext(rel.ctx, tcpNetwork(peer.Addr()), peer.String())
	var c *tcpConn
	if err == nil {
		c, err = rel.register(nc, peer, false)
		if err != nil {
			_ = nc.Close()
		}
	}
	rel.mu.Lock()
	delete(rel.pending, peer)
	rel.mu.Unlock()
	if err != nil {
		// "If the connection attempt fails or times out, the server
		// MUST return a 447 (Connection Timeout or Failure) error."
		s.tcp.connectFailures.Add(1)
		s.log.Debug("tcp connect", "relay", rel.addr, "peer", peer, "err", err)
		r.fail(stun.CodeConnTimeoutOrFailure)
		return
	}
	// "The server MUST include the CONNECTION-ID attribute in the
	// Connect success response."
	r.success(setterFunc(func(m *stun.Message) error {
		addConnectionID(m, c.id)
		return nil
	}))
}

// handleConnectionBind implements RFC 6062 section 5.4 ("Receiving a
// ConnectionBind Request"), on a new connection from the client.
func (s *Server) handleConnectionBind(r *reqCtx) {
	sc, ok := r.sink.(*streamConn)
	// "If the client connection transport is not TCP or TLS, the server
	// MUST return a 400 (Bad Request) error."
	if !ok || (r.tuple.proto != tTCP && r.tuple.proto != tTLS) {
		r.fail(stun.CodeBadRequest)
		return
	}
	// A connection that holds an allocation is a control connection; it
	// cannot become a data connection (coturn answers 400 too).
	if s.lookup(r.tuple) != nil || sc.dataBind != nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	// "If the request does not contain the CONNECTION-ID attribute, or if
	// this attribute does not refer to an existing pending connection,
	// the server MUST return a 400 (Bad Request) error." A connection of
	// another user's allocation is not this user's to take: 400 as well,
	// so IDs cannot be probed.
	id, ok, err := getConnectionID(r.msg)
	if err != nil || !ok {
		r.fail(stun.CodeBadRequest)
		return
	}
	s.tcp.mu.Lock()
	c := s.tcp.ids[id]
	if c != nil && c.r.a.username == r.username {
		delete(s.tcp.ids, id)
	} else {
		c = nil
	}
	s.tcp.mu.Unlock()
	if c == nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	c.mu.Lock()
	c.timer.Stop()
	c.client = sc.nc
	c.mu.Unlock()
	// The connection may have closed while it waited.
	c.r.mu.Lock()
	alive := c.r.conns[id] == c
	c.r.mu.Unlock()
	if !alive {
		r.fail(stun.CodeConnTimeoutOrFailure)
		return
	}
	s.tcp.binds.Add(1)
	// "Otherwise, the client connection is now called a client data
	// connection. Data received on it MUST be sent as-is to the
	// associated peer data connection." The success response is the
	// last STUN message on it: the writer stops after it and the reader
	// hands the connection to the pump (streamConn.readLoop).
	r.success()
	sc.handedOver = make(chan struct{})
	sc.dataBind = c
	select {
	case sc.out <- nil:
	case <-sc.closed:
	}
}

// runDataConn relays raw bytes between a bound client data connection
// and its peer data connection until either ends (RFC 6062 section 5.5:
// closing one closes the other). br holds what the client sent after its
// ConnectionBind. It runs on the connection's reader goroutine.
func (s *Server) runDataConn(sc *streamConn, br *bufio.Reader) {
	c := sc.dataBind
	select {
	case <-sc.handedOver: // the ConnectionBind response is written
	case <-sc.closed:
		c.close()
		return
	}
	_ = sc.nc.SetDeadline(time.Time{})
	a := c.r.a
	done := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		_, _ = io.Copy(sc.nc, &countingReader{r: c.pc, n: &s.tcp.bytesToClient, pkts: &a.toClientPkts, bytes: &a.toClientBytes, act: &a.lastActivity, bw: a.bucket(), done: c.r.ctx.Done()})
		c.close()
	}()
	_, err := io.Copy(c.pc, &countingReader{r: br, n: &s.tcp.bytesToPeer, pkts: &a.toPeerPkts, bytes: &a.toPeerBytes, act: &a.lastActivity, bw: a.bucket(), done: c.r.ctx.Done()})
	if err == nil {
		// The client closed its side: pass the close on, and let what the
		// peer still sends drain until it closes too (or the allocation
		// ends).
		if tc, ok := c.pc.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		select {
		case <-done:
		case <-c.r.ctx.Done():
		}
	}
	c.close()
	<-done
}

// countingReader counts what passes through it in the server's and the
// allocation's counters (one "packet" per read) and, with a bandwidth
// limit, paces it: where a datagram over the limit is dropped, a stream is
// slowed down (TCP's flow control then slows the sender).
type countingReader struct {
	r           io.Reader
	n           interface{ Add(uint64) uint64 }
	pkts, bytes interface{ Add(uint64) uint64 }
	act         interface{ Store(int64) }
	bw          *tokenBucket    // nil: unlimited
	done        <-chan struct{} // the allocation ended: stop waiting
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.bw != nil && c.bw.rate > 0 && len(p) > int(c.bw.burst) {
		p = p[:max(int(c.bw.burst), 1)] // a read must fit the bucket
	}
	n, err := c.r.Read(p)
	if n > 0 {
		if !c.bw.waitTake(float64(n), c.done) {
			return 0, io.EOF
		}
		c.n.Add(uint64(n))
		c.pkts.Add(1)
		c.bytes.Add(uint64(n))
		c.act.Store(time.Now().UnixNano())
	}
	if errors.Is(err, net.ErrClosed) {
		err = io.EOF
	}
	return n, err
}

// waitTake takes n tokens, waiting for them to accumulate; false when done
// closed first. n must not exceed the burst.
func (b *tokenBucket) waitTake(n float64, done <-chan struct{}) bool {
	if b == nil || b.rate <= 0 {
		return true
	}
	for {
		now := time.Now()
		if b.take(n, now) {
			return true
		}
		b.mu.Lock()
		wait := time.Duration((n - b.tokens) / b.rate * float64(time.Second))
		b.mu.Unlock()
		select {
		case <-done:
			return false
		case <-time.After(max(wait, time.Millisecond)):
		}
	}
}
