package control

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// collectSink is a clientSink that keeps what the server sends to the
// client, so fuzz targets can check every response.
type collectSink struct {
	mu     sync.Mutex
	out    [][]byte
	isStrm bool
}

func (c *collectSink) send(_ dataplane.Tx, b []byte) {
	c.mu.Lock()
	c.out = append(c.out, append([]byte(nil), b...))
	c.mu.Unlock()
}
func (c *collectSink) stream() bool { return c.isStrm }
func (c *collectSink) take() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.out
	c.out = nil
	return o
}

// checkOutput fails on anything the server sent that is not a well-formed
// STUN message with a valid FINGERPRINT or ChannelData.
func checkOutput(t *testing.T, out [][]byte) {
	t.Helper()
	for _, b := range out {
		if len(b) >= 4 && b[0]>>6 == 1 {
			if 4+int(binary.BigEndian.Uint16(b[2:])) > len(b) {
				t.Fatalf("server sent truncated ChannelData %x", b)
			}
			continue
		}
		m := &stun.Message{Raw: b}
		if err := m.Decode(); err != nil {
			t.Fatalf("server sent undecodable STUN %x: %v", b, err)
		}
		if m.Type.Class == stun.ClassSuccessResponse || m.Type.Class == stun.ClassErrorResponse {
			if err := stun.Fingerprint.Check(m); err != nil {
				t.Fatalf("response without valid FINGERPRINT: %v", err)
			}
		}
	}
}

// signForFuzz turns a decodable STUN request into one the server accepts
// as authenticated (fresh nonce, test credentials), so the fuzzer reaches
// the TURN method handlers and not just the 401/438 paths.
func signForFuzz(s *Server, client netip.AddrPort, b []byte) []byte {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil {
		return b
	}
	out := stun.New()
	out.Type = m.Type
	out.TransactionID = m.TransactionID
	out.WriteHeader()
	for _, a := range m.Attributes {
		switch a.Type {
		case stun.AttrMessageIntegrity, stun.AttrMessageIntegritySHA256, stun.AttrFingerprint,
			stun.AttrUsername, stun.AttrRealm, stun.AttrNonce:
			continue
		}
		out.Add(a.Type, a.Value)
	}
	stun.NewUsername(testUser).AddTo(out)
	stun.NewRealm(testRealm).AddTo(out)
	stun.NewNonce(s.nonces.issue(client.Addr(), time.Now())).AddTo(out)
	stun.MessageIntegrity(longTermKey(testUser, testRealm, testPass, pwAlgMD5)).AddTo(out)
	stun.Fingerprint.AddTo(out)
	return out.Raw
}

func fuzzSeeds(f *testing.F) {
	for _, msgs := range readCaptures(f) {
		for _, b := range msgs {
			f.Add(byte(0), b)
			f.Add(byte(1), b)
			f.Add(byte(0x81), b) // signed, draining
		}
	}
	for _, v := range rfc5769 {
		f.Add(byte(0), unhex(f, v))
	}
	f.Add(byte(0), []byte{})
	f.Add(byte(0x81), []byte{})
	f.Add(byte(1), []byte{0x40, 0x00, 0xff, 0xff, 1, 2, 3})
}

// FuzzHandleSTUN runs the whole per-packet handler (demultiplexing, STUN
// validation, authentication, every TURN method, ChannelData) on arbitrary
// bytes from a handful of client addresses of one live server. mode bit 0
// re-signs decodable requests with valid credentials; bit 7 drains the
// server (Allocate then redirects to an alternate server).
func FuzzHandleSTUN(f *testing.F) {
	fuzzSeeds(f)
	s := startServer(f, func(c *Config, _ *Options) {
		c.MaxAllocations = 64
		c.MinPort, c.MaxPort = 46000, 46999
		c.AlternateServers = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.9:3478"), netip.MustParseAddrPort("[2001:2::9]:3478")}
	})
	udp := s.addr("udp")
	f.Fuzz(func(t *testing.T, mode byte, b []byte) {
		client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 20000+uint16(mode>>1)%8)
		tuple := fiveTuple{proto: tUDP, client: client, server: udp}
		if mode&1 != 0 {
			b = signForFuzz(s, client, b)
		}
		s.SetDraining(mode&0x80 != 0)
		sink := &collectSink{}
		s.handlePacket(nil, sink, tuple, b)
		if n := s.stats.panics.Load(); n != 0 {
			t.Fatalf("handler panicked (%d) on %x", n, b)
		}
		checkOutput(t, sink.take())
	})
}

// FuzzChannelData feeds ChannelData framing: arbitrary bytes as one UDP
// datagram from a client with a bound channel, and the same bytes as a
// TCP/TLS byte stream split into frames (RFC 8656 section 12.5).
func FuzzChannelData(f *testing.F) {
	fuzzSeeds(f)
	for _, streams := range readStreamCaptures(f) {
		for _, b := range streams {
			f.Add(byte(0), b)
		}
	}
	f.Add(byte(0), appendChannelData(nil, 0x4000, []byte("abc"), true))
	f.Add(byte(0), appendChannelData(appendChannelData(nil, 0x4000, []byte("abcde"), true), 0x4001, []byte("x"), true))
	s := startServer(f)
	peer := newPeer(f, "127.0.0.1:0")
	c := dialRaw(f, "udp", s.addr("udp"))
	c.allocate()
	if r := c.do(methodChannelBind, channelAttr(0x4000), peerAttr(peer.addr())); code(r) != 0 {
		f.Fatalf("bind: %d", code(r))
	}
	tuple := fiveTuple{proto: tUDP, client: c.localAddr(), server: s.addr("udp")}
	buf := make([]byte, 4+65535+3)
	f.Fuzz(func(t *testing.T, _ byte, b []byte) {
		// UDP: one datagram.
		s.handlePacket(nil, &collectSink{}, tuple, b)
		// Stream: frames until the bytes run out or a frame is bad.
		br := bufio.NewReader(bytes.NewReader(b))
		consumed := 0
		for {
			frame, err := readFrame(br, buf, s.cfg.MaxMessageSize)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, errBadFrame) {
					t.Fatalf("unexpected framing error %v", err)
				}
				break
			}
			if frame[0]>>6 == 1 && len(frame)%4 != 0 {
				t.Fatalf("ChannelData frame of %d bytes is not padded", len(frame))
			}
			if !bytes.Equal(frame, b[consumed:consumed+len(frame)]) {
				t.Fatalf("frame does not match the stream at %d", consumed)
			}
			consumed += len(frame)
			sink := &collectSink{isStrm: true}
			s.handlePacket(nil, sink, fiveTuple{proto: tTCP, client: c.localAddr(), server: s.addr("tcp")}, frame)
			checkOutput(t, sink.take())
		}
		if n := s.stats.panics.Load(); n != 0 {
			t.Fatalf("handler panicked on %x", b)
		}
	})
}
