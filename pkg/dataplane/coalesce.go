package dataplane

import "net/netip"

// This file is the send planner of the gso datapath: a pure function from
// the datagrams queued during a receive batch to the system calls that send
// them. It has no sockets, so it is tested on every OS.

// txRec is one datagram queued by Tx.Send: where it goes and where its bytes
// are in the queue's arena.
type txRec struct {
	sock uint64         // identity of the socket it leaves on
	dst  netip.AddrPort // destination
	off  int32          // offset of the payload in the arena
	n    int32          // payload length
	gso  bool           // the socket may coalesce (UDP_SEGMENT works, no fallback yet)
}

type opKind uint8

const (
	// opSingle is one datagram, one sendmsg.
	opSingle opKind = iota
	// opMmsg is several datagrams on one socket, one sendmmsg.
	opMmsg
	// opGSO is a run of datagrams for one socket and destination, all of
	// size seg except the last which may be shorter: one sendmsg whose
	// single iovec covers the run, with a UDP_SEGMENT cmsg of seg.
	opGSO
)

func (k opKind) String() string {
	switch k {
	case opSingle:
		return "single"
	case opMmsg:
		return "mmsg"
	case opGSO:
		return "gso"
	}
	return "?"
}

// sendOp is one system call of a plan: records [first, first+count).
type sendOp struct {
	kind  opKind
	first int32
	count int32
	seg   int32 // segment size (opGSO only)
}

// planLimits bound what one UDP_SEGMENT send may carry.
type planLimits struct {
	// maxSegs is the most segments per send. The kernel refuses more than
	// UDP_MAX_SEGMENTS (64 before Linux 6.10, 128 since) with EINVAL.
	maxSegs int
	// maxBytes is the most payload bytes per send: the whole run must fit
	// one IP datagram (65535 - 20 IPv4 - 8 UDP = 65507), else EMSGSIZE.
	maxBytes int
	// maxSeg4, maxSeg6: the largest segment coalesced, per family. Each
	// segment must fit the path MTU (udp_send_skb checks hlen + gso_size
	// against the fragment size), and an unconnected socket does not know
	// it, so the planner assumes a 1500-byte Ethernet MTU: 1500-20-8 and
	// 1500-40-8. Larger datagrams go through sendmmsg and may fragment, as
	// with plain.
	maxSeg4, maxSeg6 int
}

var defaultPlanLimits = planLimits{maxSegs: 64, maxBytes: 65507, maxSeg4: 1472, maxSeg6: 1452}

func (l planLimits) maxSeg(dst netip.AddrPort) int32 {
	if dst.Addr().Unmap().Is4() {
		return int32(l.maxSeg4)
	}
	return int32(l.maxSeg6)
}

// planSends appends to ops[:0] the system calls that send recs in order and
// returns it. Datagrams leave in the order they were queued: a run of
// datagrams for the same socket and destination whose sizes are equal
// (the last may be shorter) becomes one opGSO; consecutive datagrams on one
// socket that do not coalesce become one opMmsg (or opSingle for one).
// Nothing is reordered, so a flow's datagrams keep their order.
func planSends(recs []txRec, ops []sendOp, lim planLimits) []sendOp {
	ops = ops[:0]
	for i := 0; i < len(recs); {
		if j := gsoRunEnd(recs, i, lim); j-i >= 2 {
			ops = append(ops, sendOp{kind: opGSO, first: int32(i), count: int32(j - i), seg: recs[i].n})
			i = j
			continue
		}
		if k := len(ops) - 1; k >= 0 && ops[k].kind != opGSO &&
			recs[ops[k].first].sock == recs[i].sock && int(ops[k].first+ops[k].count) == i {
			ops[k].count++
			ops[k].kind = opMmsg
		} else {
			ops = append(ops, sendOp{kind: opSingle, first: int32(i), count: 1})
		}
		i++
	}
	return ops
}

// gsoRunEnd returns the end (exclusive) of the longest run starting at i
// that one UDP_SEGMENT send can carry; i+1 when recs[i] does not coalesce.
func gsoRunEnd(recs []txRec, i int, lim planLimits) int {
	r := recs[i]
	if !r.gso || r.n <= 0 || r.n > lim.maxSeg(r.dst) {
		return i + 1
	}
	total := int(r.n)
	prevEnd := r.off + r.n
	j := i + 1
	for j < len(recs) && j-i < lim.maxSegs {
		q := recs[j]
		if !q.gso || q.sock != r.sock || q.dst != r.dst || q.n <= 0 || q.n > r.n ||
			q.off != prevEnd || total+int(q.n) > lim.maxBytes {
			break
		}
		total += int(q.n)
		prevEnd = q.off + q.n
		j++
		if q.n < r.n {
			break // only the last segment may be shorter
		}
	}
	return j
}
