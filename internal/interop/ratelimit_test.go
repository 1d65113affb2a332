package interop

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// unauthAllocate is the first message of every TURN client: an Allocate
// without credentials, which the server must answer with 401, REALM and
// NONCE (RFC 8489 section 9.2.4). A flood of them from a spoofed source
// is the 401 amplification problem, which the server bounds with a
// per-source limit (docs/design.md, Security defaults).
func unauthAllocate() *stun.Message {
	return stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		requestedTransportUDP, stun.Fingerprint)
}

// is401For reports whether b is a 401 error response to a request with
// one of the transaction IDs in ids.
func is401For(b []byte, ids map[[stun.TransactionIDSize]byte]bool) bool {
	var m stun.Message
	var code stun.ErrorCodeAttribute
	if stun.Decode(b, &m) != nil || !ids[m.TransactionID] || m.Type.Class != stun.ClassErrorResponse {
		return false
	}
	return code.GetFrom(&m) == nil && code.Code == stun.CodeUnauthorized
}

// TestUnauthRateLimit floods unauthenticated Allocates from one source IP
// and checks that the answers stop at the configured token bucket (burst
// plus rate times the flood's duration), that the server counts the
// refusals, and that another source IP is still answered at once. This is
// the UDP case: only there can a source address be spoofed to aim the
// answers at a victim. TestUnauthRateLimitStream covers TCP.
func TestUnauthRateLimit(t *testing.T) {
	if referenceMode() {
		t.Skip("the limits and counters are hybridrelay's configuration")
	}
	const (
		rate  = 10.0
		burst = 20
		flood = 400
	)
	tgt := startTarget(t, func(c *control.Config) {
		c.UnauthRate = rate
		c.UnauthBurst = burst
	})
	s := tgt.hybridrelay
	server := tgt.lt4

	tests := []struct {
		name               string
		network            string
		flooder, bystander netip.Addr
	}{
		{name: "udp", network: "udp", flooder: netip.MustParseAddr("127.0.0.2"), bystander: netip.MustParseAddr("127.0.0.3")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.srv.Stats()
			conn := dialFrom(t, tc.network, tc.flooder, server)
			ids := map[[stun.TransactionIDSize]byte]bool{}
			reqs := make([][]byte, flood)
			for i := range reqs {
				m := unauthAllocate()
				ids[m.TransactionID] = true
				reqs[i] = m.Raw
			}
			var answered int
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				answered = countAnswers(conn, tc.network, ids, 700*time.Millisecond)
			}()
			start := time.Now()
			for i, r := range reqs {
				if _, err := conn.Write(r); err != nil {
					t.Fatalf("flood write %d: %v", i, err)
				}
				if i%20 == 19 {
					time.Sleep(time.Millisecond) // stay within the socket buffer
				}
			}
			sendTime := time.Since(start)

			// While the flooder is limited, another source is answered
			// at once: 401 to its Allocate, success to its Binding.
			other := dialFrom(t, tc.network, tc.bystander, server)
			for i := 0; i < 5; i++ {
				m := unauthAllocate()
				if _, err := other.Write(m.Raw); err != nil {
					t.Fatalf("bystander write: %v", err)
				}
				got := countAnswers(other, tc.network, map[[stun.TransactionIDSize]byte]bool{m.TransactionID: true}, time.Second)
				if got != 1 {
					t.Fatalf("bystander %s: Allocate %d not answered with 401 within 1 s while %s is flooding",
						tc.bystander, i, tc.flooder)
				}
			}
			if tc.network == "udp" {
				if _, err := stunBinding(netip.AddrPortFrom(server.Addr(), server.Port()), time.Second); err != nil {
					t.Errorf("binding request from the test's own source: %v", err)
				}
			}

			wg.Wait()
			elapsed := time.Since(start)
			// Token bucket: at most burst answers at once, then rate per
			// second for as long as requests kept coming (the reader's
			// extra wait included), plus one for rounding.
			limit := burst + int(rate*elapsed.Seconds()) + 1
			t.Logf("%s: %d of %d unauthenticated Allocates answered (limit %d; sent in %s, measured over %s)",
				tc.network, answered, flood, limit, sendTime.Round(time.Millisecond), elapsed.Round(time.Millisecond))
			if answered > limit {
				t.Errorf("%d answers to %d unauthenticated requests from one source in %s; the limit (rate %.0f/s, burst %d) allows %d",
					answered, flood, elapsed, rate, burst, limit)
			}
			if answered < burst/2 {
				t.Errorf("only %d answers; the first %d requests of a fresh source should all be answered", answered, burst)
			}
			after := s.srv.Stats()
			limited := after.AuthFailures["rate_limited"] - before.AuthFailures["rate_limited"]
			if want := uint64(flood - limit); limited < want*9/10 {
				t.Errorf("rate_limited grew by %d, want at least %d", limited, want*9/10)
			}
		})
	}
}

// TestUnauthRateLimitStream checks the unauthenticated rate limit on TCP.
// Over a stream there is no 401 amplification (the handshake proves the
// source address) and the client does not retransmit (RFC 8489 section
// 6.2.2: it waits Ti, 39.5 s, for the one response), so a request dropped
// because other clients behind the same address used up its budget leaves
// a legitimate client hanging: such a request must be answered, or the
// connection closed so the client fails fast. A connection that floods is
// still cut off at its own budget.
func TestUnauthRateLimitStream(t *testing.T) {
	if referenceMode() {
		t.Skip("the limits are hybridrelay's configuration")
	}
	// A slow refill (one token per 5 s) makes "the budget is used up"
	// hold for the whole test; with the default 20/s the same happens
	// whenever the other clients behind the address keep sending.
	tgt := startTarget(t, func(c *control.Config) {
		c.UnauthRate = 0.2
		c.UnauthBurst = 20
	})
	server := tgt.lt4

	// answeredOrClosed sends reqs on c and reports how many 401s came back
	// and whether the server closed the connection.
	answeredOrClosed := func(t *testing.T, c net.Conn, reqs []*stun.Message) (answered int, closed bool) {
		ids := map[[stun.TransactionIDSize]byte]bool{}
		for _, m := range reqs {
			ids[m.TransactionID] = true
			if _, err := c.Write(m.Raw); err != nil {
				return answered, true // reset by the server
			}
		}
		r := bufio.NewReader(c)
		hdr := make([]byte, 20)
		for answered < len(reqs) {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.ReadFull(r, hdr); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return answered, false
				}
				return answered, true // EOF or reset: the server closed it
			}
			body := make([]byte, binary.BigEndian.Uint16(hdr[2:4]))
			if _, err := io.ReadFull(r, body); err != nil {
				return answered, true
			}
			if is401For(append(append([]byte(nil), hdr...), body...), ids) {
				answered++
			}
		}
		return answered, false
	}

	t.Run("after-udp-burst-same-ip", func(t *testing.T) {
		// Many clients behind one NAT address start at once: the UDP
		// ones use up the source's budget, then one connects over TCP
		// (as WebRTC clients do when UDP is blocked).
		ip := netip.MustParseAddr("127.0.0.6")
		u := dialFrom(t, "udp", ip, server)
		for i := 0; i < 100; i++ {
			if _, err := u.Write(unauthAllocate().Raw); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(100 * time.Millisecond)
		c := dialFrom(t, "tcp", ip, server)
		answered, closed := answeredOrClosed(t, c, []*stun.Message{unauthAllocate()})
		if answered != 1 && !closed {
			t.Errorf("an unauthenticated Allocate on a new TCP connection from %s got no answer within 2 s and the connection stayed open: "+
				"the rate limit dropped it silently, and a real client would wait 39.5 s (RFC 8489 Ti) before giving up", ip)
		}
	})

	t.Run("pipelined-flood", func(t *testing.T) {
		// One connection that floods is cut off at its own budget; a
		// second connection from the same address is still answered.
		ip := netip.MustParseAddr("127.0.0.7")
		reqs := make([]*stun.Message, 400)
		for i := range reqs {
			reqs[i] = unauthAllocate()
		}
		c := dialFrom(t, "tcp", ip, server)
		start := time.Now()
		answered, closed := answeredOrClosed(t, c, reqs)
		limit := 20 + int(0.2*time.Since(start).Seconds()) + 1
		t.Logf("%d of %d pipelined unauthenticated Allocates answered (limit %d); connection closed by the server: %v",
			answered, len(reqs), limit, closed)
		if answered > limit {
			t.Errorf("%d answers to %d unauthenticated requests on one connection; the budget allows %d", answered, len(reqs), limit)
		}
		c2 := dialFrom(t, "tcp", ip, server)
		if got, closed := answeredOrClosed(t, c2, []*stun.Message{unauthAllocate()}); got != 1 {
			t.Errorf("a second connection from %s got no 401 while the first floods (closed: %v)", ip, closed)
		}
	})
}

// dialFrom connects to server over network from the local address ip.
func dialFrom(t *testing.T, network string, ip netip.Addr, server netip.AddrPort) net.Conn {
	t.Helper()
	var local net.Addr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
	if network == "tcp" {
		local = net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
	}
	d := net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}
	c, err := d.Dial(network, server.String())
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, server, ip, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// countAnswers reads responses until quiet for the given time (for TCP,
// STUN frames off the stream, RFC 8656 section 12.5) and counts the 401s
// to the given transactions.
func countAnswers(c net.Conn, network string, ids map[[stun.TransactionIDSize]byte]bool, quiet time.Duration) int {
	n := 0
	want := len(ids)
	if network == "udp" {
		buf := make([]byte, 1500)
		for n < want {
			_ = c.SetReadDeadline(time.Now().Add(quiet))
			k, err := c.Read(buf)
			if err != nil {
				break
			}
			if is401For(buf[:k], ids) {
				n++
			}
		}
		return n
	}
	r := bufio.NewReader(c)
	hdr := make([]byte, 20)
	for n < want {
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		if _, err := io.ReadFull(r, hdr); err != nil {
			break
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[2:4]))
		if _, err := io.ReadFull(r, body); err != nil {
			break
		}
		if is401For(append(append([]byte(nil), hdr...), body...), ids) {
			n++
		}
	}
	return n
}
