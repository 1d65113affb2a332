package interop

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// Flood sizes: bounded, so the test stays a few seconds long.
const (
	floodUDPPerKind = 2500 // datagrams per malformed kind, 8 kinds: 20 000
	floodTCPConns   = 48
	floodTCPFrames  = 60 // frames per "pipelined" TCP connection

	// Tolerances for the leak checks. Goroutines: the server's own
	// count must come back to where it was; a few runtime or pion timer
	// goroutines may come and go. Heap: after GC, what the flood left
	// behind; a per-packet leak of even 200 bytes over the ~23 000
	// packets would exceed it.
	goroutineSlack = 8

	insiderSent  = 2000 // datagrams from the authenticated misbehaving client
	peerSideSent = 4000 // datagrams to the relayed addresses from a peer without permission
	heapSlack    = 4 << 20
)

// malformedKinds generate one datagram each; every kind is something a
// server must drop or answer with an error (RFC 8489 section 6.3: a
// message that is not well-formed is discarded; RFC 8656 section 12.6:
// ChannelData for an unbound channel is discarded).
type malformedKind struct {
	name string
	gen  func(r *mrand.Rand, nonce stun.Nonce, realm stun.Realm) []byte
}

func malformedKinds() []malformedKind {
	return []malformedKind{
		{"random", func(r *mrand.Rand, _ stun.Nonce, _ stun.Realm) []byte {
			b := make([]byte, 1+r.IntN(1400))
			_, _ = rand.Read(b)
			// First two bits 10 or 11: neither STUN (00) nor ChannelData
			// (01), RFC 7983 demultiplexing.
			b[0] |= 0x80
			return b
		}},
		{"truncated-stun", func(r *mrand.Rand, _ stun.Nonce, _ stun.Realm) []byte {
			m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
				requestedTransportUDP, stun.NewUsername(testUser), stun.Fingerprint)
			// Cut inside the 20-byte header or inside the attributes.
			return m.Raw[:1+r.IntN(len(m.Raw)-1)]
		}},
		{"bogus-length", func(r *mrand.Rand, _ stun.Nonce, _ stun.Realm) []byte {
			m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewSoftware("flood"), stun.Fingerprint)
			b := append([]byte(nil), m.Raw...)
			switch r.IntN(4) {
			case 0: // header length beyond the datagram
				binary.BigEndian.PutUint16(b[2:], uint16(len(b)-20+4+4*r.IntN(100)))
			case 1: // header length not a multiple of 4
				binary.BigEndian.PutUint16(b[2:], uint16(len(b)-20-1))
			case 2: // first attribute's length runs past the end
				binary.BigEndian.PutUint16(b[22:], uint16(0xFFF0))
			default: // header length 0xFFFF
				binary.BigEndian.PutUint16(b[2:], 0xFFFF)
			}
			return b
		}},
		{"too-many-attributes", func(r *mrand.Rand, _ stun.Nonce, _ stun.Realm) []byte {
			m := new(stun.Message)
			m.Type = stun.BindingRequest
			m.TransactionID = stun.NewTransactionID()
			m.WriteHeader()
			for i := 0; i < 40+r.IntN(100); i++ {
				m.Add(stun.AttrSoftware, []byte{byte(i)})
			}
			return m.Raw
		}},
		{"oversize", func(r *mrand.Rand, _ stun.Nonce, _ stun.Realm) []byte {
			m := new(stun.Message)
			m.Type = stun.NewType(stun.MethodAllocate, stun.ClassRequest)
			m.TransactionID = stun.NewTransactionID()
			m.WriteHeader()
			m.Add(stun.AttrData, make([]byte, 1500+r.IntN(4000)))
			return m.Raw
		}},
		{"wrong-integrity", func(r *mrand.Rand, nonce stun.Nonce, realm stun.Realm) []byte {
			// Valid-looking authenticated requests with the real realm and
			// nonce but a MESSAGE-INTEGRITY that does not verify.
			lt := make([]byte, 4)
			methods := []stun.Method{stun.MethodAllocate, stun.MethodRefresh, stun.MethodCreatePermission, stun.MethodChannelBind}
			setters := []stun.Setter{stun.TransactionID, stun.NewType(methods[r.IntN(len(methods))], stun.ClassRequest),
				requestedTransportUDP, stun.RawAttribute{Type: stun.AttrLifetime, Value: lt},
				stun.NewUsername(testUser), realm, nonce}
			mode := r.IntN(3)
			switch mode {
			case 0: // the wrong password
				setters = append(setters, stun.NewLongTermIntegrity(testUser, realm.String(), "not-the-password"))
			case 1: // a short-term key
				setters = append(setters, stun.NewShortTermIntegrity("short-term-guess"))
			default: // the right key, then one bit of the HMAC flipped
				setters = append(setters, stun.NewLongTermIntegrity(testUser, realm.String(), testPass))
			}
			setters = append(setters, stun.Fingerprint)
			b := append([]byte(nil), stun.MustBuild(setters...).Raw...)
			if mode == 2 {
				// The MI value is the 20 bytes before FINGERPRINT (8 bytes).
				b[len(b)-8-20+r.IntN(20)] ^= 1 << r.IntN(8)
				fixFingerprint(b)
			}
			return b
		}},
		{"channeldata-unknown", func(r *mrand.Rand, _ stun.Nonce, _ stun.Realm) []byte {
			n := r.IntN(600)
			b := make([]byte, 4+n)
			binary.BigEndian.PutUint16(b, uint16(0x4000+r.IntN(0x1000)))
			binary.BigEndian.PutUint16(b[2:], uint16(n))
			_, _ = rand.Read(b[4:])
			return b
		}},
		{"channeldata-bogus-length", func(r *mrand.Rand, _ stun.Nonce, _ stun.Realm) []byte {
			n := r.IntN(200)
			b := make([]byte, 4+n)
			binary.BigEndian.PutUint16(b, uint16(0x4000+r.IntN(0x4000))) // also the RFC 5766 range
			switch r.IntN(3) {
			case 0:
				binary.BigEndian.PutUint16(b[2:], uint16(n+1+r.IntN(1000)))
			case 1:
				binary.BigEndian.PutUint16(b[2:], 0xFFFF)
			default:
				b = b[:1+r.IntN(3)] // shorter than the 4-byte header
			}
			return b
		}},
	}
}

var requestedTransportUDP = stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}

// fixFingerprint recomputes a trailing FINGERPRINT (RFC 8489 section
// 14.7), so that only MESSAGE-INTEGRITY is wrong.
func fixFingerprint(b []byte) {
	if len(b) < 28 || binary.BigEndian.Uint16(b[len(b)-8:]) != uint16(stun.AttrFingerprint) {
		return
	}
	binary.BigEndian.PutUint32(b[len(b)-4:], stun.FingerprintValue(b[:len(b)-8]))
}

// nonceFor asks the server for a nonce the way every client does: an
// unauthenticated Allocate answered with 401 (RFC 8489 section 9.2.4).
func nonceFor(t *testing.T, server netip.AddrPort, local netip.Addr) (stun.Nonce, stun.Realm) {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestedTransportUDP, stun.Fingerprint)
	buf := make([]byte, 1500)
	for range 10 {
		_, _ = c.Write(req.Raw)
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		var m stun.Message
		var nonce stun.Nonce
		var realm stun.Realm
		if stun.Decode(buf[:n], &m) == nil && nonce.GetFrom(&m) == nil && realm.GetFrom(&m) == nil {
			return nonce, realm
		}
	}
	t.Fatalf("no 401 with a nonce from %s", server)
	return nil, nil
}

// victim is a pion allocation with a bound channel and a peer that echoes
// everything back while background traffic runs.
type victim struct {
	name string
	p    *pionSession
	peer *net.UDPConn
}

// establish exchanges data until pion uses its channel in both
// directions.
func (v *victim) establish(t *testing.T) {
	t.Helper()
	peerAddr := v.peer.LocalAddr().(*net.UDPAddr)
	if err := v.p.client.CreatePermission(peerAddr); err != nil {
		t.Fatalf("%s: CreatePermission: %v", v.name, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for seq := 0; v.p.tap.outChannelData.Load() == 0 || v.p.tap.inChannelData.Load() == 0; seq++ {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no channel in use after 5 s", v.name)
		}
		if err := clientToPeer(v.p, v.peer, payload(seq, 200)); err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if err := peerToClient(v.p, v.peer, payload(seq, 200)); err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
	}
}

// background keeps data flowing both ways until ctx ends: the client
// sends, the peer echoes, the client reads. It returns how many datagrams
// made the round trip.
func (v *victim) background(ctx context.Context, wg *sync.WaitGroup, roundTrips, foreign *atomic.Int64) {
	wg.Add(2)
	go func() { // peer: echo
		defer wg.Done()
		buf := make([]byte, 2048)
		for ctx.Err() == nil {
			_ = v.peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			n, from, err := v.peer.ReadFromUDPAddrPort(buf)
			if err != nil {
				continue
			}
			_, _ = v.peer.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	go func() { // client: send, then read whatever came back
		defer wg.Done()
		buf := make([]byte, 2048)
		peerAddr := v.peer.LocalAddr()
		for seq := 0; ctx.Err() == nil; seq++ {
			if _, err := v.p.relay.WriteTo(payload(seq, 160), peerAddr); err != nil {
				return
			}
			_ = v.p.relay.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if _, from, err := v.p.relay.ReadFrom(buf); err == nil {
				if from.String() == peerAddr.String() {
					roundTrips.Add(1)
				} else {
					foreign.Add(1) // from a peer without permission
				}
			}
		}
	}()
}

// drain discards whatever is still in flight for the victim.
func (v *victim) drain() {
	buf := make([]byte, 2048)
	for {
		_ = v.peer.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := v.peer.ReadFrom(buf); err != nil {
			break
		}
	}
	for {
		_ = v.p.relay.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := v.p.relay.ReadFrom(buf); err != nil {
			break
		}
	}
}

// checkExact sends every size both ways and demands byte-exact delivery.
func (v *victim) checkExact(t *testing.T) {
	t.Helper()
	for i, n := range sizes {
		if v.name == "tcp" && n < 5 {
			continue // pion STUNConn limitation, see TestPion
		}
		if err := clientToPeer(v.p, v.peer, payload(100000+i, n)); err != nil {
			t.Errorf("%s after the flood: %v", v.name, err)
			return
		}
		if err := peerToClient(v.p, v.peer, payload(200000+i, n)); err != nil {
			t.Errorf("%s after the flood: %v", v.name, err)
			return
		}
	}
}

func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestMalformedFlood floods the server with malformed and unauthenticated
// input over UDP and TCP while two pion allocations (one UDP, one TCP)
// relay traffic, and while a third, authenticated client sends garbage on
// its own 5-tuple. Afterwards the allocations must still relay byte-exact
// both ways, the server's goroutines and heap must be back to their
// baseline, no handler may have panicked, and the counters must show the
// rejects.
func TestMalformedFlood(t *testing.T) {
	if referenceMode() {
		t.Skip("the flood checks read hybridrelay's in-process counters")
	}
	for _, dp := range datapaths() {
		t.Run(dp, func(t *testing.T) { floodScenario(t, dp) })
	}
}

func floodScenario(t *testing.T, dp string) {
	tgt := startTarget(t, func(c *control.Config) { c.Datapath = dp })
	s := tgt.hybridrelay
	server := tgt.lt4
	attackerIP := netip.MustParseAddr("127.0.0.2")

	victims := []*victim{
		{name: "udp", p: dialPion(t, "udp", server, 0), peer: listenPeer(t, lo4)},
		{name: "tcp", p: dialPion(t, "tcp", server, 0), peer: listenPeer(t, lo4)},
	}
	for _, v := range victims {
		v.establish(t)
	}
	// An authenticated client that misbehaves on its own 5-tuple: it has
	// an allocation, so its garbage reaches the allocation-specific paths
	// (unknown channels, bogus ChannelData, wrong-MI Refresh(0)).
	insider := dialPionFrom(t, "udp", server, attackerIP, 0)
	insiderRelay := insider.relayAddr()
	nonce, realm := nonceFor(t, server, attackerIP)

	// Baseline, with everything that should still exist afterwards
	// already running.
	time.Sleep(200 * time.Millisecond)
	baseG := runtime.NumGoroutine()
	baseHeap := heapAfterGC()
	before := s.srv.Stats()
	baseKernelDrops := udpSocketDrops(t, server)

	ctx, stopBackground := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	var roundTrips, foreign atomic.Int64
	for _, v := range victims {
		v.background(ctx, &bgWG, &roundTrips, &foreign)
	}

	kinds := malformedKinds()
	sent := map[string]int{}
	var sentMu sync.Mutex
	var replies, replyBytes, floodBytes atomic.Int64
	var floodWG sync.WaitGroup

	// UDP: each kind from its own socket, alternating between the
	// attacker IP and the victims' IP; a reader counts what comes back
	// (nothing should, except rate-limited error responses).
	for ki, k := range kinds {
		floodWG.Add(1)
		go func() {
			defer floodWG.Done()
			src := attackerIP
			if ki%2 == 1 {
				src = lo4
			}
			c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(server))
			if err != nil {
				t.Errorf("flood socket: %v", err)
				return
			}
			defer c.Close()
			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				buf := make([]byte, 2048)
				for {
					_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
					n, err := c.Read(buf)
					if err != nil {
						var ne net.Error
						if errors.As(err, &ne) && ne.Timeout() {
							return
						}
						if errors.Is(err, net.ErrClosed) {
							return
						}
						continue // ICMP errors and the like
					}
					replies.Add(1)
					replyBytes.Add(int64(n))
				}
			}()
			r := mrand.New(mrand.NewPCG(uint64(ki), 42))
			for i := 0; i < floodUDPPerKind; i++ {
				b := k.gen(r, nonce, realm)
				if _, err := c.Write(b); err == nil {
					floodBytes.Add(int64(len(b)))
				}
				if i%25 == 24 {
					time.Sleep(time.Millisecond) // pace: the server, not the kernel buffer, should see it
				}
			}
			sentMu.Lock()
			sent[k.name] += floodUDPPerKind
			sentMu.Unlock()
			<-readerDone
		}()
	}

	// The peer side: anyone can send to a relayed address. Datagrams from
	// an address without a permission must be dropped (RFC 8656 section
	// 9), never delivered to the client.
	floodWG.Add(1)
	go func() {
		defer floodWG.Done()
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(attackerIP, 0)))
		if err != nil {
			t.Errorf("peer-side flood socket: %v", err)
			return
		}
		defer c.Close()
		r := mrand.New(mrand.NewPCG(5, 5))
		for i := 0; i < peerSideSent; i++ {
			b := make([]byte, 1+r.IntN(1200))
			_, _ = rand.Read(b)
			_, _ = c.WriteToUDPAddrPort(b, victims[i%len(victims)].p.relayAddr())
			if i%25 == 24 {
				time.Sleep(time.Millisecond)
			}
		}
	}()

	// The insider: garbage on a 5-tuple that owns an allocation.
	floodWG.Add(1)
	go func() {
		defer floodWG.Done()
		r := mrand.New(mrand.NewPCG(99, 7))
		to := insider.client.TURNServerAddr()
		for i := 0; i < insiderSent; i++ {
			k := kinds[r.IntN(len(kinds))]
			_, _ = insider.tap.PacketConn.WriteTo(k.gen(r, nonce, realm), to)
			if i%200 == 199 {
				time.Sleep(2 * time.Millisecond)
			}
		}
	}()

	// TCP: connections that send garbage streams, pipelined bad requests,
	// or announce a long frame and stall (slowloris), all at once.
	var tcpConns []net.Conn
	var tcpMu sync.Mutex
	for i := 0; i < floodTCPConns; i++ {
		floodWG.Add(1)
		go func() {
			defer floodWG.Done()
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(attackerIP, 0)), Timeout: 3 * time.Second}
			c, err := d.Dial("tcp", server.String())
			if err != nil {
				t.Errorf("flood TCP dial: %v", err)
				return
			}
			tcpMu.Lock()
			tcpConns = append(tcpConns, c)
			tcpMu.Unlock()
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			r := mrand.New(mrand.NewPCG(uint64(i), 1000))
			switch i % 4 {
			case 0: // a pure random byte stream
				b := make([]byte, 4096+r.IntN(8192))
				_, _ = rand.Read(b)
				_, _ = c.Write(b)
			case 1: // pipelined well-framed but bad messages
				for j := 0; j < floodTCPFrames; j++ {
					k := kinds[[]int{5, 6, 3}[j%3]] // wrong MI, unknown channel, too many attributes
					_, _ = c.Write(k.gen(r, nonce, realm))
				}
			case 2: // a STUN header announcing more than ever comes
				m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
				b := append([]byte(nil), m.Raw...)
				binary.BigEndian.PutUint16(b[2:], 0xFFFC)
				_, _ = c.Write(b)
			default: // a ChannelData header announcing 0xFFFF bytes, then a trickle
				_, _ = c.Write([]byte{0x40, 0x00, 0xFF, 0xFF, 1, 2, 3})
			}
		}()
	}

	// TLS: garbage instead of a handshake, a plain STUN request on the
	// TLS port, a handshake cut off halfway, and garbage after a
	// completed handshake.
	for i := 0; i < 16; i++ {
		floodWG.Add(1)
		go func() {
			defer floodWG.Done()
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(attackerIP, 0)), Timeout: 3 * time.Second}
			c, err := d.Dial("tcp", tgt.lt4TLS.String())
			if err != nil {
				t.Errorf("flood TLS dial: %v", err)
				return
			}
			tcpMu.Lock()
			tcpConns = append(tcpConns, c)
			tcpMu.Unlock()
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			switch i % 4 {
			case 0:
				b := make([]byte, 2048)
				_, _ = rand.Read(b)
				_, _ = c.Write(b)
			case 1:
				_, _ = c.Write(unauthAllocate().Raw)
			case 2: // a TLS record header announcing a ClientHello, then nothing
				_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
			default:
				tc := tls.Client(c, &tls.Config{RootCAs: tgt.tlsRoots, MinVersion: tls.VersionTLS12, ServerName: "127.0.0.1"})
				if err := tc.Handshake(); err != nil {
					t.Errorf("flood TLS handshake: %v", err)
					return
				}
				b := make([]byte, 4096)
				_, _ = rand.Read(b)
				_, _ = tc.Write(b)
			}
		}()
	}

	floodWG.Wait()
	// Leave the stalled TCP connections open a moment (the server must
	// keep serving meanwhile), then close everything the attacker opened.
	time.Sleep(300 * time.Millisecond)
	stopBackground()
	bgWG.Wait()
	tcpMu.Lock()
	for _, c := range tcpConns {
		_ = c.Close()
	}
	tcpMu.Unlock()

	kernelDrops := udpSocketDrops(t, server) - baseKernelDrops
	t.Logf("flood: %d UDP kinds x %d datagrams + %d insider + %d TCP connections; %d bytes sent, %d replies (%d bytes); %d dropped by the kernel; %d background round trips during the flood",
		len(kinds), floodUDPPerKind, insiderSent, floodTCPConns, floodBytes.Load(), replies.Load(), replyBytes.Load(), kernelDrops, roundTrips.Load())

	// 1. Existing allocations still relay, byte-exact, both ways.
	for _, v := range victims {
		v.drain()
		v.checkExact(t)
	}
	if roundTrips.Load() == 0 {
		t.Errorf("no round trip completed during the flood")
	}
	if n := foreign.Load(); n != 0 {
		t.Errorf("the clients received %d datagrams from a peer without permission", n)
	}
	// The insider's allocation survived its own wrong-MI Refresh(0)s.
	if lookupAllocation(s, insiderRelay) == nil {
		t.Errorf("the insider's allocation %s is gone: an unauthenticated Refresh deleted it", insiderRelay)
	}
	// No amplification: replies carry fewer bytes than the flood.
	if replyBytes.Load() > floodBytes.Load()/10 {
		t.Errorf("the server answered %d bytes to %d bytes of malformed input", replyBytes.Load(), floodBytes.Load())
	}

	// 2. The counters show the rejects, and no handler panicked. Wait
	// until the server has worked through its socket buffer.
	after := s.srv.Stats()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		next := s.srv.Stats()
		if next.Drops["malformed"] == after.Drops["malformed"] && next.AuthFailures["bad_integrity"] == after.AuthFailures["bad_integrity"] {
			break
		}
		after = next
	}
	if p := after.Drops["panics"]; p != 0 {
		t.Errorf("%d packet handlers panicked", p)
	}
	delta := func(m map[string]uint64, before map[string]uint64, key string) uint64 { return m[key] - before[key] }
	// Every malformed datagram the kernel handed to the server must be
	// counted exactly once as a drop or an authentication failure. The
	// kernel's own drops on the listener socket (the flood outruns one
	// reader on two shared cores) are subtracted; they include some of the
	// victims' datagrams, so this is a lower bound.
	var udpSent uint64
	for _, n := range sent {
		udpSent += uint64(n)
	}
	udpSent += insiderSent
	rejects := uint64(0)
	for _, k := range []string{"malformed", "oversize", "no_allocation", "no_channel", "no_permission"} {
		rejects += delta(after.Drops, before.Drops, k)
	}
	for k := range after.AuthFailures {
		rejects += delta(after.AuthFailures, before.AuthFailures, k)
	}
	if reached := udpSent - min(udpSent, kernelDrops); rejects < reached {
		t.Errorf("rejects counted: %d, but at least %d malformed datagrams reached the server (%d sent, %d dropped by the kernel); drops %v, auth failures %v",
			rejects, reached, udpSent, kernelDrops, after.Drops, after.AuthFailures)
	}
	for _, k := range []string{"malformed", "oversize", "no_allocation", "no_channel"} {
		if delta(after.Drops, before.Drops, k) == 0 {
			t.Errorf("drop counter %q did not move; drops %v", k, after.Drops)
		}
	}
	if delta(after.Drops, before.Drops, "no_permission") == 0 {
		t.Errorf("drop counter no_permission did not move after %d datagrams from a peer without permission; drops %v",
			peerSideSent, after.Drops)
	}
	if delta(after.AuthFailures, before.AuthFailures, "bad_integrity") == 0 {
		t.Errorf("auth failure counter bad_integrity did not move; %v", after.AuthFailures)
	}
	t.Logf("drops %v; auth failures %v", after.Drops, after.AuthFailures)

	// 3. No goroutine leak: the count comes back to the baseline.
	var g int
	deadline := time.Now().Add(10 * time.Second)
	for {
		g = runtime.NumGoroutine()
		if g <= baseG+goroutineSlack || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if g > baseG+goroutineSlack {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Errorf("goroutines: %d after the flood, baseline %d (slack %d)\n%s", g, baseG, goroutineSlack, buf[:n])
	}

	// 4. No memory growth beyond the slack.
	if h := heapAfterGC(); h > baseHeap+heapSlack {
		t.Errorf("heap after GC: %d bytes after the flood, %d before (slack %d)", h, baseHeap, heapSlack)
	} else {
		t.Logf("heap after GC: %d -> %d bytes; goroutines %d -> %d", baseHeap, h, baseG, g)
	}
}

// udpSocketDrops reads the kernel's drop counter of the UDP socket bound to
// addr (the last column of /proc/net/udp[6]).
func udpSocketDrops(t *testing.T, addr netip.AddrPort) uint64 {
	t.Helper()
	file := "/proc/net/udp"
	if addr.Addr().Is6() {
		file = "/proc/net/udp6"
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	want := fmt.Sprintf(":%04X ", addr.Port())
	var total uint64
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 13 || !strings.HasSuffix(f[1]+" ", want) {
			continue
		}
		d, _ := strconv.ParseUint(f[len(f)-1], 10, 64)
		total += d
	}
	return total
}
