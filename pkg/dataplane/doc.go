// Package dataplane owns the userspace UDP I/O of the relay: the sockets of
// the STUN/TURN listeners and of every relayed transport address, the loops
// that read them, and the way replies and relayed datagrams leave.
//
// Two datapaths implement [Datapath]:
//
//   - plain: one read and one write system call per datagram. It is the
//     baseline every benchmark compares against.
//   - gso: recvmmsg batches (UDP_GRO where supported); sends queued while a
//     batch is processed and flushed at its end, runs of same-destination,
//     same-size datagrams coalesced into one sendmsg with UDP_SEGMENT, the
//     rest through sendmmsg.
//
// The package knows nothing about STUN or TURN: it hands datagrams to a
// [Handler] and sends what the handler asks for. pkg/control decides what the
// bytes mean.
package dataplane
