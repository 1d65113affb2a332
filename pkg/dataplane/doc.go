// Package dataplane owns the userspace UDP I/O of the relay: the sockets of
// the STUN/TURN listeners and of every relayed transport address, the loops
// that read them, and the way replies and relayed datagrams leave.
//
// Two datapaths implement [Datapath]:
//
//   - plain ([NewPlain]): one read and one write system call per datagram.
//     It is the baseline every benchmark compares against, and it works on
//     every OS.
//   - gso ([NewGSO], Linux only): recvmmsg batches (UDP_GRO where the
//     kernel has it, coalesced reads split by the gso_size of the UDP_GRO
//     cmsg); sends queued while a batch is processed and flushed at its
//     end; runs of same-socket, same-destination, same-size datagrams (the
//     last may be shorter) coalesced into one sendmsg with a UDP_SEGMENT
//     cmsg, at most 64 segments and 65507 bytes; the rest through sendmmsg.
//
// # The gso datapath
//
// Sockets are non-blocking and driven by Go's netpoller through
// syscall.RawConn Read/Write callbacks, so a goroutine parks while its
// socket is empty and the fd cannot be closed and reused under a system
// call. A listener is an SO_REUSEPORT group of [GSOOptions.Loops] sockets,
// each read by its own goroutine (the kernel spreads flows over the group by
// 4-tuple hash); a relay socket, which belongs to one allocation, has its
// own goroutine. A goroutine holds a batch state (receive buffers, send
// queue arena, message headers; pooled) only while its socket has data, so
// idle relay sockets cost a parked goroutine and nothing else; it reads
// with a small state (4 messages) first and takes a BatchSize one only when
// a read comes back full, so hundreds of relay sockets woken at once at
// WebRTC rates do not each hold BatchSize x 64 KiB. Nothing on the
// per-packet path takes a lock shared between loops; counters are per socket
// and summed when read.
//
// The gso datapath's files follow its roles: gso_linux.go the datapath,
// gso_sock_linux.go its sockets and their receive loops,
// gso_batch_linux.go the per-goroutine batch state and its flush,
// gso_send_linux.go the sends and their fallbacks. The system calls and
// control-message layout are in the udpsys subpackage, which the
// benchmark generator (internal/bench) uses too.
//
// The send plan is the pure function planSends (coalesce.go): it keeps the
// queued order, so a flow's datagrams are never reordered. A Tx.Send may
// name any Conn of the datapath (client to peer: received on the listener,
// sent on the relay socket); a Conn closed while its datagrams are queued
// makes the flush drop them (Stats.Drops) because RawConn.Write refuses to
// run on a closed socket.
//
// UDP_SEGMENT is used only when [DetectFeatures] found it at start-up. A
// UDP_SEGMENT send that fails with EIO, EINVAL, ENOPROTOOPT or EOPNOTSUPP
// turns GSO off for that socket for good: the batch is resent uncoalesced,
// the first such socket is logged at warn level, each is counted in
// Stats.GSOFallbacks. EMSGSIZE (a segment above the route's MTU) resends
// uncoalesced without the sticky switch. Segments are at most 1472 bytes
// (IPv4) or 1452 (IPv6) so that each fits a 1500-byte MTU; larger
// datagrams leave through sendmmsg, as they would with plain.
//
// # IPv4 DF
//
// A relay socket's DF policy follows its allocation's DONT-FRAGMENT
// ([Conn.SetDontFragment], RFC 8656 section 14), so a datagram to the peer
// carries the DF bit the XDP path would write: IP_PMTUDISC_DO (DF on every
// datagram, one above the path MTU dropped and counted in Stats.Drops) or
// IP_PMTUDISC_DONT (never DF, the kernel fragments), the latter from
// OpenRelay on. Both give all segments of a UDP_SEGMENT send the same bit.
// Listeners keep the kernel default's result (DF when the datagram fits the
// path MTU, fragments without DF otherwise; gso gets it with IP_PMTUDISC_DO
// and an oversize resend under IP_PMTUDISC_WANT). IPv6 has no DF.
//
// Socket buffers are [GSOOptions.SocketBuffer] (SO_RCVBUFFORCE, falling back
// to SO_RCVBUF, same for send); SO_RXQ_OVFL is on and the kernel's drop
// count is exported as Stats.RxKernelDrops. Per-loop counters are available
// through [LoopStatser].
//
// The package knows nothing about STUN or TURN: it hands datagrams to a
// [Handler] and sends what the handler asks for. pkg/control decides what the
// bytes mean.
package dataplane
