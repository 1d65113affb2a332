package control

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
)

// drainState is what a leaving or full server needs to send new clients
// elsewhere. Draining only changes how new Allocate requests are answered
// (RFC 8656 section 7.2: "at any point, the server MAY choose to reject the
// request with a 300 (Try Alternate) error"); existing allocations keep
// being refreshed and relayed, on both paths, until they end.
type drainState struct {
	// since is when draining began (unix ns); 0 is not draining.
	since atomic.Int64
	// alternates are the ALTERNATE-SERVER candidates (alternate-server),
	// replaced whole on reload.
	alternates atomic.Pointer[[]netip.AddrPort]
	// next spreads redirected clients over the alternates, round robin.
	next atomic.Uint32
}

// validateAlternates checks the configured alternate servers: each is a
// unicast address with a port (RFC 8489 section 14.15 carries an IP address
// and a port, no name).
func validateAlternates(as []netip.AddrPort) error {
	for i, a := range as {
		ip := a.Addr()
		if !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() || a.Port() == 0 {
			return fmt.Errorf("alternate_servers[%d]: %v is not a unicast address with a port", i, a)
		}
	}
	return nil
}

// SetAlternateServers replaces the ALTERNATE-SERVER candidates (the
// alternate-server setting, reloaded on SIGHUP). Invalid entries are an
// error and leave the running list as it was.
func (s *Server) SetAlternateServers(as []netip.AddrPort) error {
	if err := validateAlternates(as); err != nil {
		return fmt.Errorf("set alternate servers: %w", err)
	}
	list := make([]netip.AddrPort, len(as))
	for i, a := range as {
		list[i] = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	}
	s.drain.alternates.Store(&list)
	return nil
}

// AlternateServers returns the configured ALTERNATE-SERVER candidates.
func (s *Server) AlternateServers() []netip.AddrPort {
	if p := s.drain.alternates.Load(); p != nil {
		return append([]netip.AddrPort(nil), (*p)...)
	}
	return nil
}

// SetDraining starts (on) or ends draining. It reports whether the state
// changed; draining again keeps the original start time.
func (s *Server) SetDraining(on bool) bool {
	if on {
		return s.drain.since.CompareAndSwap(0, time.Now().UnixNano())
	}
	return s.drain.since.Swap(0) != 0
}

// Draining reports whether the server drains, and since when.
func (s *Server) Draining() (bool, time.Time) {
	ns := s.drain.since.Load()
	if ns == 0 {
		return false, time.Time{}
	}
	return true, time.Unix(0, ns)
}

// alternateFor picks the ALTERNATE-SERVER for a client: "the IP address
// family MUST be identical to that of the source IP address of the request"
// (RFC 8489 section 14.15), so only alternates of the client's family
// qualify; among them, round robin.
func (s *Server) alternateFor(client netip.Addr) (netip.AddrPort, bool) {
	p := s.drain.alternates.Load()
	if p == nil || len(*p) == 0 {
		return netip.AddrPort{}, false
	}
	is4 := client.Unmap().Is4()
	var same []netip.AddrPort
	for _, a := range *p {
		if a.Addr().Is4() == is4 {
			same = append(same, a)
		}
	}
	if len(same) == 0 {
		return netip.AddrPort{}, false
	}
	return same[int(s.drain.next.Add(1)-1)%len(same)], true
}

// refuseAllocate answers a new Allocate this server will not take (it is
// draining, or at max-allocations): 300 Try Alternate with ALTERNATE-SERVER
// when an alternate of the client's family is configured (RFC 8489 section
// 10, RFC 8656 section 7.2), else 486 Allocation Quota Reached. The request
// has been authenticated, so the 300 carries MESSAGE-INTEGRITY like every
// other response to it (RFC 8489 section 10: the redirect "MAY be
// authenticated"; a client that sent credentials can then trust it).
func (r *reqCtx) refuseAllocate() {
	alt, ok := r.s.alternateFor(r.tuple.client.Addr())
	if !ok {
		r.fail(stun.CodeAllocQuotaReached)
		return
	}
	r.fail(stun.CodeTryAlternate, &stun.AlternateServer{IP: net.IP(alt.Addr().AsSlice()), Port: int(alt.Port())})
}

// errNotServing is Ready's answer once the server has stopped.
var errNotServing = errors.New("the TURN server is not serving (not started or shut down)")

// Ready reports whether the server should be sent new clients: its
// listeners are open and it is not draining. It is what /readyz reports
// for the control plane.
func (s *Server) Ready() error {
	s.lnMu.Lock()
	serving := s.started && !s.closed && len(s.addrs) > 0
	s.lnMu.Unlock()
	if !serving {
		return errNotServing
	}
	if on, since := s.Draining(); on {
		return fmt.Errorf("draining since %s", since.UTC().Format(time.RFC3339))
	}
	return nil
}

// Live reports whether the server's own loops run: the janitor, which
// enforces every lifetime, has ticked within maxAge. It is what /healthz
// reports for the control plane.
func (s *Server) Live(maxAge time.Duration) error {
	last := s.janitorTick.Load()
	if last == 0 {
		return errNotServing
	}
	if age := time.Since(time.Unix(0, last)); age > maxAge {
		return fmt.Errorf("lifetime janitor last ran %s ago (expected every %s)", age.Round(time.Millisecond), janitorInterval)
	}
	return nil
}

// drainStats fills the drain part of a stats snapshot.
func (s *Server) drainStats(st *ServerStats) {
	on, since := s.Draining()
	st.Draining = on
	if on {
		st.DrainingSince = &since
	}
	st.MaxAllocations = s.cfg.MaxAllocations
	st.AlternateServers = s.AlternateServers()
}
