package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/logging"
)

// TURN over DTLS (RFC 8656 section 3, RFC 7350): a DTLS association over
// UDP is a client connection like a TLS one. The association is the
// 5-tuple, so it reuses streamConn (send queue, per-connection
// unauthenticated budget, allocation deleted when it closes); what differs
// is the framing: every DTLS record carries exactly one STUN message or
// ChannelData message, as a UDP datagram would, so ChannelData needs no
// padding and a STUN message must fill its record.

// dtlsHandshakeTimeout bounds a DTLS handshake. A source that starts one
// and never finishes it holds a connection slot for this long at most.
const dtlsHandshakeTimeout = 10 * time.Second

// maxDTLSPending bounds handshakes in progress per listener: a flood of
// ClientHellos from many (spoofed or real) sources cannot take every
// connection slot. The DTLS cookie exchange (HelloVerifyRequest, RFC 6347
// section 4.2.1) already keeps the server from doing any work for a source
// that cannot receive.
const maxDTLSPending = 256

// dtlsCounters count DTLS listener events (ServerStats.Protocol).
type dtlsCounters struct {
	handshakes       atomic.Uint64 // completed
	handshakeErrors  atomic.Uint64 // failed or timed out
	refusedPending   atomic.Uint64 // refused: too many handshakes in progress
	recordsMalformed atomic.Uint64 // a decrypted record that is neither STUN nor ChannelData
}

// openDTLS opens a DTLS listener on addr with the server's TLS certificate
// (the same files and the same ReloadTLS as the tls listeners: every new
// handshake takes the certificate current at that moment).
func (s *Server) openDTLS(addr netip.AddrPort) (netip.AddrPort, error) {
	network := "udp4"
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		network = "udp6"
	}
	var pending atomic.Int64
	ln, err := dtls.ListenWithOptions(network, net.UDPAddrFromAddrPort(addr),
		dtls.WithGetCertificate(func(*dtls.ClientHelloInfo) (*tls.Certificate, error) {
			c := s.tlsCert.Load()
			if c == nil {
				return nil, errors.New("no certificate loaded")
			}
			return c, nil
		}),
		dtls.WithExtendedMasterSecret(dtls.RequestExtendedMasterSecret),
		// pion logs malformed records at warning level per packet; the
		// server counts them instead.
		dtls.WithLoggerFactory(&logging.DefaultLoggerFactory{DefaultLogLevel: logging.LogLevelDisabled}),
	)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("dtls listen: %w", err)
	}
	ua, _ := ln.Addr().(*net.UDPAddr)
	if ua == nil {
		_ = ln.Close()
		return netip.AddrPort{}, fmt.Errorf("dtls listen: unexpected local address %v", ln.Addr())
	}
	bound := ua.AddrPort()
	bound = netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port())
	s.lnMu.Lock()
	s.streamLns = append(s.streamLns, ln)
	s.lnMu.Unlock()
	s.wg.Add(1)
	go s.dtlsAcceptLoop(ln, bound, &pending)
	return bound, nil
}

// dtlsAcceptLoop takes each new association off the listener; the
// handshake runs on the connection's own goroutine.
func (s *Server) dtlsAcceptLoop(ln net.Listener, local netip.AddrPort, pending *atomic.Int64) {
	defer s.wg.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || isDone(s.done) {
				return
			}
			// A transient socket error: keep serving.
			continue
		}
		dc, ok := nc.(*dtls.Conn)
		ra, _ := nc.RemoteAddr().(*net.UDPAddr)
		if !ok || ra == nil {
			_ = nc.Close()
			continue
		}
		if pending.Load() >= maxDTLSPending {
			// Closing (not just dropping) the association removes the
			// source from the listener's table.
			s.stats.dtls.refusedPending.Add(1)
			_ = nc.Close()
			continue
		}
		c := s.newStreamConn(nc, fiveTuple{proto: tDTLS,
			client: netip.AddrPortFrom(ra.AddrPort().Addr().Unmap(), ra.AddrPort().Port()),
			server: local})
		if !s.trackStream(c, 1) {
			continue
		}
		pending.Add(1)
		go c.dtlsServe(dc, pending)
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// dtlsServe completes the handshake, then runs the writer and reads one
// message per record until the association ends.
func (c *streamConn) dtlsServe(dc *dtls.Conn, pending *atomic.Int64) {
	s := c.s
	defer s.wg.Done()
	defer c.retire()
	ctx, cancel := context.WithTimeout(context.Background(), dtlsHandshakeTimeout)
	go func() {
		select {
		case <-c.closed: // server shutdown during the handshake
			cancel()
		case <-ctx.Done():
		}
	}()
	err := dc.HandshakeContext(ctx)
	cancel()
	pending.Add(-1)
	if err != nil {
		s.stats.dtls.handshakeErrors.Add(1)
		return
	}
	s.stats.dtls.handshakes.Add(1)
	s.wg.Add(1)
	go c.writeLoop()
	buf := make([]byte, 4+65535+3)
	for {
		deadline := streamIdleTimeout
		if a := s.lookup(c.tuple); a != nil {
			if d := time.Until(a.expiry()) + 30*time.Second; d > deadline {
				deadline = d
			}
		}
		_ = c.nc.SetReadDeadline(time.Now().Add(deadline))
		n, err := c.nc.Read(buf)
		if err != nil {
			return
		}
		if !c.s.handleDTLSRecord(c, buf[:n]) {
			return
		}
	}
}

// handleDTLSRecord handles one decrypted record; false closes the
// association.
func (s *Server) handleDTLSRecord(c *streamConn, p []byte) bool {
	defer s.recoverPacket()
	select {
	case <-c.closed:
		return false
	default:
	}
	if len(p) < 4 || p[0]>>6 > 1 {
		// Application data that is neither STUN nor ChannelData (RFC
		// 8656 section 12): dropped, the association stays up, as a
		// bad datagram on UDP would.
		s.stats.dtls.recordsMalformed.Add(1)
		s.stats.dropMalformed.Add(1)
		return true
	}
	s.handlePacket(nil, c, c.tuple, p)
	return true
}
