package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// selfCheck backs /healthz beyond the control plane's own loop: a STUN
// Binding request sent to the relay's first UDP listener must be answered,
// which takes the datapath's receive loop, the request handler and the send
// path. Results are kept for selfCheckEvery, so probes from several places
// cost one Binding (counted under requests binding ok like any other).
type selfCheck struct {
	mu   sync.Mutex // guards the fields below; one check at a time
	at   time.Time
	last error
}

const (
	selfCheckEvery   = time.Second
	selfCheckTimeout = 2 * time.Second
)

func (c *selfCheck) check(addrs []control.ListenerSpec) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < selfCheckEvery {
		return c.last
	}
	c.last = bindingRoundTrip(addrs, selfCheckTimeout)
	c.at = time.Now()
	return c.last
}

// bindingRoundTrip sends a Binding request to the first UDP listener (an
// unspecified address is reached on loopback) and waits for its response,
// retransmitting once.
func bindingRoundTrip(addrs []control.ListenerSpec, timeout time.Duration) error {
	var target netip.AddrPort
	for _, l := range addrs {
		if l.Network == "udp" {
			target = l.Addr
			break
		}
	}
	if !target.IsValid() {
		return nil // TCP/TLS only: the control plane check covers it
	}
	ip := target.Addr().Unmap()
	if ip.IsUnspecified() {
		ip = netip.MustParseAddr("127.0.0.1")
		if target.Addr().Is6() && !target.Addr().Is4In6() {
			ip = netip.IPv6Loopback()
		}
	}
	target = netip.AddrPortFrom(ip, target.Port())
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		return fmt.Errorf("self check: %w", err)
	}
	defer conn.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	buf := make([]byte, 1500)
	deadline := time.Now().Add(timeout)
	for attempt := 0; attempt < 2; attempt++ {
		if _, err := conn.Write(req.Raw); err != nil {
			return fmt.Errorf("self check: send to %s: %w", target, err)
		}
		wait := time.Now().Add(timeout / 2)
		if attempt == 1 || wait.After(deadline) {
			wait = deadline
		}
		conn.SetReadDeadline(wait)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return fmt.Errorf("self check: %s: %w", target, err)
			}
			res := &stun.Message{Raw: buf[:n]}
			if res.Decode() == nil && res.TransactionID == req.TransactionID {
				return nil
			}
		}
	}
	return fmt.Errorf("self check: no answer to a STUN Binding from %s within %s: the UDP receive loops do not run", target, timeout)
}
