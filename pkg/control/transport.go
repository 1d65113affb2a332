package control

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// clientSink is how datagrams reach a client: through the UDP listener the
// client talks to, or down its TCP/TLS connection.
type clientSink interface {
	// send writes one STUN message or ChannelData frame. tx, when not nil,
	// is the batch of the packet being handled (UDP only uses it). b is
	// not retained.
	send(tx dataplane.Tx, b []byte)
	// stream reports whether ChannelData must be padded to 4 bytes
	// (RFC 8656 section 12.5: always over TCP/TLS).
	stream() bool
}

// udpSink sends through the listener socket the client reached us on.
type udpSink struct {
	conn dataplane.Conn
	addr netip.AddrPort
}

func (u *udpSink) send(tx dataplane.Tx, b []byte) {
	if tx != nil {
		tx.Send(u.conn, b, u.addr)
		return
	}
	_ = u.conn.WriteTo(b, u.addr) // counted by the datapath
}

func (u *udpSink) stream() bool { return false }

// Stream connection limits.
const (
	streamQueue       = 256              // frames queued towards a slow TCP client before dropping
	streamIdleTimeout = 60 * time.Second // connection without allocation
	maxStreamConns    = 16384
)

// streamConn is one TCP or TLS client connection (RFC 8656 section 3.1:
// the connection is the 5-tuple; closing it deletes the allocation).
type streamConn struct {
	s     *Server
	nc    net.Conn
	tuple fiveTuple

	unauth    *tokenBucket // unauthenticated responses on this connection
	out       chan []byte
	closeOnce sync.Once
	closed    chan struct{}

	// RFC 6062 (tcpconnect.go): set by a successful ConnectionBind on the
	// reader goroutine, which then hands the connection to runDataConn;
	// handedOver is closed by the writer when it has written the last
	// STUN message and stopped.
	dataBind   *tcpConn
	handedOver chan struct{}
}

// stream: TCP and TLS are byte streams; a DTLS connection carries one
// message per record, like UDP, so its ChannelData needs no padding (RFC
// 8656 section 12.5).
func (c *streamConn) stream() bool { return c.tuple.proto != tDTLS }

// send queues a copy of b; a client that does not read is dropped from,
// never waited for, so a slow client cannot stall the relay loop that
// produced the datagram.
func (c *streamConn) send(_ dataplane.Tx, b []byte) {
	cp := make([]byte, len(b))
	copy(cp, b)
	select {
	case c.out <- cp:
	case <-c.closed:
	default:
		c.s.stats.dropStreamQueue.Add(1) // the datagram is lost, as it could be on UDP
	}
}

func (c *streamConn) close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		_ = c.nc.Close()
	})
}

func (s *Server) acceptLoop(ln net.Listener, proto transport) {
	defer s.wg.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			select {
			case <-s.done:
				return
			case <-time.After(50 * time.Millisecond): // e.g. EMFILE: back off
			}
			continue
		}
		ra, _ := nc.RemoteAddr().(*net.TCPAddr)
		la, _ := nc.LocalAddr().(*net.TCPAddr)
		if ra == nil || la == nil {
			_ = nc.Close()
			continue
		}
		c := s.newStreamConn(nc, fiveTuple{proto: proto,
			client: netip.AddrPortFrom(ra.AddrPort().Addr().Unmap(), ra.AddrPort().Port()),
			server: netip.AddrPortFrom(la.AddrPort().Addr().Unmap(), la.AddrPort().Port())})
		if !s.trackStream(c, 2) {
			continue
		}
		go c.writeLoop()
		go c.readLoop()
	}
}

// newStreamConn is a stream client connection (TCP, TLS or DTLS) with its
// own budget for unauthenticated responses.
func (s *Server) newStreamConn(nc net.Conn, t fiveTuple) *streamConn {
	return &streamConn{
		s: s, nc: nc, tuple: t,
		unauth: newTokenBucket(s.cfg.UnauthRate, max(float64(s.cfg.UnauthBurst), 1), time.Now()),
		out:    make(chan []byte, streamQueue),
		closed: make(chan struct{}),
	}
}

// trackStream registers c and adds its goroutines to the server's wait
// group; a closed server or one at maxStreamConns closes c's connection
// instead and reports false.
func (s *Server) trackStream(c *streamConn, goroutines int) bool {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.closed || len(s.streams) >= maxStreamConns {
		_ = c.nc.Close()
		return false
	}
	s.streams[c] = struct{}{}
	s.wg.Add(goroutines)
	return true
}

func (c *streamConn) writeLoop() {
	defer c.s.wg.Done()
	for {
		select {
		case <-c.closed:
			return
		case b := <-c.out:
			if b == nil { // the connection becomes an RFC 6062 data connection
				close(c.handedOver)
				return
			}
			_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.nc.Write(b); err != nil {
				c.close()
				return
			}
		}
	}
}

// retire ends a stream connection's life: the connection is closed, the
// allocation of its 5-tuple deleted (the 5-tuple names the allocation,
// so it cannot outlive the connection) and the server forgets it. Both the stream and the DTLS read loops end with it.
func (c *streamConn) retire() {
	s := c.s
	c.close()
	if a := s.lookup(c.tuple); a != nil {
		a.delete("connection closed")
	}
	s.lnMu.Lock()
	delete(s.streams, c)
	s.lnMu.Unlock()
}

// readLoop splits the byte stream into STUN messages (20-byte header plus
// length) and ChannelData frames (4-byte header plus length padded to a
// multiple of 4, RFC 8656 section 12.5). Anything else cannot be
// resynchronised and closes the connection.
func (c *streamConn) readLoop() {
	s := c.s
	defer s.wg.Done()
	defer c.retire()
	br := bufio.NewReaderSize(c.nc, 4096)
	buf := make([]byte, 4+65535+3)
	for {
		deadline := streamIdleTimeout
		if a := s.lookup(c.tuple); a != nil {
			if d := time.Until(a.expiry()) + 30*time.Second; d > deadline {
				deadline = d
			}
		}
		_ = c.nc.SetReadDeadline(time.Now().Add(deadline))
		frame, err := readFrame(br, buf, s.cfg.MaxMessageSize)
		if err != nil {
			if errors.Is(err, errBadFrame) {
				s.stats.dropMalformed.Add(1)
			}
			return
		}
		if !s.handleStreamFrame(c, frame) {
			return
		}
		if c.dataBind != nil {
			s.runDataConn(c, br)
			return
		}
	}
}

// errBadFrame: the stream holds something that is neither STUN nor
// ChannelData, or a STUN message above the size limit.
var errBadFrame = errors.New("bad stream frame")

// readFrame reads one STUN message (20-byte header plus length) or one
// ChannelData frame (4-byte header plus length padded to a multiple of 4,
// RFC 8656 section 12.5) into buf, which must hold 4+65535+3 bytes.
func readFrame(br io.Reader, buf []byte, maxMessage int) ([]byte, error) {
	if _, err := io.ReadFull(br, buf[:4]); err != nil {
		return nil, err
	}
	var total int
	switch buf[0] >> 6 {
	case 0:
		total = 20 + int(binary.BigEndian.Uint16(buf[2:4]))
		if total > maxMessage {
			return nil, errBadFrame
		}
	case 1:
		total = 4 + (int(binary.BigEndian.Uint16(buf[2:4]))+3)&^3
	default:
		return nil, errBadFrame
	}
	if _, err := io.ReadFull(br, buf[4:total]); err != nil {
		return nil, err
	}
	return buf[:total], nil
}

// handleStreamFrame handles one frame; false closes the connection.
func (s *Server) handleStreamFrame(c *streamConn, frame []byte) (ok bool) {
	defer s.recoverPacket()
	select {
	case <-c.closed:
		return false
	default:
	}
	s.handlePacket(nil, c, c.tuple, frame)
	return true
}
