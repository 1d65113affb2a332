package dataplane

import (
	"net/netip"
)

// Handler is called for every datagram received on a socket. payload is only
// valid during the call; a handler that keeps it must copy it. Replies and
// relayed datagrams produced while handling go through tx, so that the
// datapath can batch them with the rest of the receive batch.
type Handler func(tx Tx, c Conn, from netip.AddrPort, payload []byte)

// Tx sends datagrams produced while a receive batch is processed. A datapath
// may hold them until the end of the batch (gso) or write them at once
// (plain). Send copies payload before it returns. A Tx is valid only during
// the Handler call it was passed to and only on that goroutine (gso's is the
// reading goroutine's send queue); later sends go through Conn.WriteTo.
// Send may name any Conn of the same datapath, not only the one the
// datagram came in on.
type Tx interface {
	Send(c Conn, payload []byte, dst netip.AddrPort)
}

// Conn is one UDP socket (or, for a listener served by several loops, one
// SO_REUSEPORT group) managed by a datapath.
type Conn interface {
	// LocalAddr is the bound address, with the real port when 0 was asked.
	LocalAddr() netip.AddrPort
	// WriteTo sends one datagram right away. It is for sends that do not
	// come from a receive batch: timers, TCP clients, Data indications
	// produced outside a loop.
	WriteTo(payload []byte, dst netip.AddrPort) error
	// SetDontFragment sets the IPv4 DF policy of a relay socket from the
	// allocation's DONT-FRAGMENT attribute (RFC 8656 section 7.2, step 4).
	// RFC 8656 section 14 ("preferred behavior"): the DF bit of a datagram
	// sent to a peer is 1 iff the Allocate request contained
	// DONT-FRAGMENT, and a datagram that does not fit the path MTU is then
	// not fragmented by the server. The kernel path (bpf/relay.bpf.c)
	// writes exactly that bit, so the userspace path must too: a packet
	// may take either path (docs/design.md, "a miss is always safe").
	//
	//   - on: DF on every datagram (Linux IP_PMTUDISC_DO); a datagram
	//     larger than the path MTU is not sent and is counted in
	//     Stats.Drops.
	//   - off: DF never set (IP_PMTUDISC_DONT); the kernel fragments a
	//     datagram larger than the path MTU. This is what a relay socket
	//     does from OpenRelay until SetDontFragment is called.
	//
	// IPv6 has no DF bit (RFC 8200 section 4.5: only the source
	// fragments): on an IPv6 socket this is a no-op and returns nil.
	// Listener sockets keep their own policy (see plain.go, gso_linux.go)
	// and also return nil. An error means the policy could not be applied
	// (off Linux for on, or a closed socket); the caller treats
	// DONT-FRAGMENT as unsupported then.
	SetDontFragment(on bool) error
	// Close stops reading and closes the socket(s). Safe to call twice.
	Close() error
}

// Datapath opens and serves UDP sockets.
type Datapath interface {
	// Name is "plain" or "gso".
	Name() string
	// Listen opens a listener socket on addr and serves it with h. A
	// datapath may open several SO_REUSEPORT sockets for one listener (one
	// per loop); the returned Conn sends on one of them.
	Listen(addr netip.AddrPort, h Handler) (Conn, error)
	// OpenRelay opens one relay socket bound to addr (port 0 picks a free
	// port) and serves it with h. An IPv4 relay socket starts with
	// SetDontFragment(false) applied. It returns an error wrapping
	// syscall.EADDRINUSE when the port is taken, so the caller can try
	// another port of its range.
	OpenRelay(addr netip.AddrPort, h Handler) (Conn, error)
	// Stats returns a copy of the datapath's counters.
	Stats() Stats
	// Close closes every socket the datapath opened.
	Close() error
}
