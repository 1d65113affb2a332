package control

import (
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
)

// Request methods counted in ServerStats.Requests.
const (
	mBinding = iota
	mAllocate
	mRefresh
	mCreatePermission
	mChannelBind
	mSend
	mConnect
	mConnectionBind
	mOther
	numMethods
)

var methodNames = [numMethods]string{"binding", "allocate", "refresh", "create_permission", "channel_bind", "send_indication", "connect", "connection_bind", "other"}

func methodIndex(m stun.Method) int {
	switch m {
	case methodBinding:
		return mBinding
	case methodAllocate:
		return mAllocate
	case methodRefresh:
		return mRefresh
	case methodCreatePermission:
		return mCreatePermission
	case methodChannelBind:
		return mChannelBind
	case methodSend:
		return mSend
	case methodConnect:
		return mConnect
	case methodConnectionBind:
		return mConnectionBind
	}
	return mOther
}

// Results counted per method: "ok", "dropped" and the error codes used.
var resultCodes = [...]int{0, -1, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 446, 447, 486, 500, 508, 300}

const numResults = len(resultCodes)

func resultIndex(code int) int {
	for i, c := range resultCodes {
		if c == code {
			return i
		}
	}
	return len(resultCodes) - 2 // 500
}

func resultName(i int) string {
	switch resultCodes[i] {
	case 0:
		return "ok"
	case -1:
		return "dropped"
	}
	return strconv.Itoa(resultCodes[i])
}

// counters are the server's totals; typed atomics, no lock.
type counters struct {
	requests     [numMethods][numResults]atomic.Uint64
	authFailures [numAuthFailures]atomic.Uint64

	toPeerPackets, toPeerBytes     atomic.Uint64
	toClientPackets, toClientBytes atomic.Uint64
	dataIndications                atomic.Uint64 // to-client datagrams sent as Data indications

	dropMalformed    atomic.Uint64
	dropNoAllocation atomic.Uint64
	dropNoPermission atomic.Uint64
	dropNoChannel    atomic.Uint64
	dropBandwidth    atomic.Uint64
	dropPolicy       atomic.Uint64
	dropOversize     atomic.Uint64
	dropStreamQueue  atomic.Uint64
	panics           atomic.Uint64

	allocationsCreated atomic.Uint64
	allocationsExpired atomic.Uint64
	allocationsDeleted atomic.Uint64

	offloadInstalls      atomic.Uint64
	offloadInstallErrors atomic.Uint64
	offloadFull          atomic.Uint64
	offloadRefreshErrors atomic.Uint64
	offloadRemoves       atomic.Uint64
	offloadRemoveErrors  atomic.Uint64

	dtls dtlsCounters // dtls.go

	// Kernel usage of channels whose offload entry is gone.
	retiredToPeerPackets, retiredToPeerBytes     atomic.Uint64
	retiredToClientPackets, retiredToClientBytes atomic.Uint64
}

// PathCounters are packets and bytes relayed in one direction.
type PathCounters struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// ServerStats is a snapshot of the control plane's counters.
type ServerStats struct {
	Allocations int `json:"allocations"`
	Permissions int `json:"permissions"`
	Channels    int `json:"channels"`
	// OffloadedChannels are channels the kernel fast path forwards.
	OffloadedChannels int `json:"offloaded_channels"`

	AllocationsCreated uint64 `json:"allocations_created"`
	AllocationsExpired uint64 `json:"allocations_expired"`
	AllocationsDeleted uint64 `json:"allocations_deleted"`

	// AuthFailures by reason (missing_credentials is the normal first 401
	// of every long-term credential exchange).
	AuthFailures map[string]uint64 `json:"auth_failures"`
	// Requests by method, then result ("ok", "dropped" or an error code).
	Requests map[string]map[string]uint64 `json:"requests"`

	// Userspace path, by direction.
	UserspaceToPeer   PathCounters `json:"userspace_to_peer"`
	UserspaceToClient PathCounters `json:"userspace_to_client"`
	DataIndications   uint64       `json:"data_indications"`
	// Kernel path (KernelChannels.Usage summed over channels, including channels
	// that are gone); zero without an offload.
	KernelToPeer   PathCounters `json:"kernel_to_peer"`
	KernelToClient PathCounters `json:"kernel_to_client"`

	Drops map[string]uint64 `json:"drops"`

	OffloadInstalls      uint64 `json:"offload_installs"`
	OffloadInstallErrors uint64 `json:"offload_install_errors"`
	OffloadFull          uint64 `json:"offload_full"`
	OffloadRefreshErrors uint64 `json:"offload_refresh_errors"`
	OffloadRemoves       uint64 `json:"offload_removes"`
	OffloadRemoveErrors  uint64 `json:"offload_remove_errors"`

	// RateLimiterSources is how many source IPs the unauthenticated-request
	// limiter remembers.
	RateLimiterSources int `json:"rate_limiter_sources"`
	// TrustedTuples is how many UDP 5-tuples have their own budget for
	// unauthenticated requests (they hold an allocation or authenticated
	// within the nonce lifetime) instead of their source IP's.
	TrustedTuples int `json:"trusted_tuples"`

	// Draining: new Allocate requests are refused (300 to an alternate
	// server, else 486) while existing allocations run to their end;
	// Allocations is then the allocations left.
	Draining      bool       `json:"draining"`
	DrainingSince *time.Time `json:"draining_since,omitempty"`
	// MaxAllocations is the total quota (0 = unlimited).
	MaxAllocations int `json:"max_allocations"`
	// AlternateServers are the ALTERNATE-SERVER candidates.
	AlternateServers []netip.AddrPort `json:"alternate_servers,omitempty"`

	// Protocol counts events of the DTLS listeners, RFC 5780 NAT
	// behaviour discovery and RFC 6062 TCP allocations, by name
	// (protostats.go).
	Protocol map[string]uint64 `json:"protocol"`
}

// PermissionInfo is one permission of an allocation.
type PermissionInfo struct {
	Peer    netip.Addr `json:"peer"`
	Expires time.Time  `json:"expires"`
}

// ChannelInfo is one channel binding of an allocation.
type ChannelInfo struct {
	Number    uint16         `json:"number"`
	Peer      netip.AddrPort `json:"peer"`
	Expires   time.Time      `json:"expires"`
	Offloaded bool           `json:"offloaded"`
	// LastActivity is when a datagram last crossed this channel on either
	// path (kernel traffic is noticed every few seconds); zero: never.
	LastActivity time.Time `json:"last_activity"`
	// Kernel is what the kernel path counted for this channel (zero when
	// not offloaded).
	Kernel ChannelUsage `json:"kernel"`
}

// AllocationInfo describes one allocation.
type AllocationInfo struct {
	Transport string `json:"transport"` // udp, tcp, tls, dtls
	// RelayTransport is tcp for an RFC 6062 allocation (its relayed
	// address in Relays is a TCP listener), empty for udp.
	RelayTransport string `json:"relay_transport,omitempty"`
	// TCPConnections are an RFC 6062 allocation's peer data connections.
	TCPConnections []TCPConnectionInfo `json:"tcp_connections,omitempty"`
	Client         netip.AddrPort      `json:"client"`
	Server         netip.AddrPort      `json:"server"`
	Username       string              `json:"username"`
	Relays         []netip.AddrPort    `json:"relays"`
	Created        time.Time           `json:"created"`
	Expires        time.Time           `json:"expires"`
	DontFragment   bool                `json:"dont_fragment"`
	// LastActivity: last datagram relayed for this allocation (as for
	// ChannelInfo.LastActivity).
	LastActivity time.Time        `json:"last_activity"`
	Permissions  []PermissionInfo `json:"permissions"`
	Channels     []ChannelInfo    `json:"channels"`
	// Userspace packets relayed for this allocation.
	ToPeer   PathCounters `json:"to_peer"`
	ToClient PathCounters `json:"to_client"`
	// BandwidthDropped: datagrams dropped over bandwidth-limit, by the
	// kernel and userspace together (nil: not limited).
	BandwidthDropped *PathCounters `json:"bandwidth_dropped,omitempty"`
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() ServerStats {
	c := &s.stats
	st := ServerStats{
		AllocationsCreated:   c.allocationsCreated.Load(),
		AllocationsExpired:   c.allocationsExpired.Load(),
		AllocationsDeleted:   c.allocationsDeleted.Load(),
		AuthFailures:         map[string]uint64{},
		Requests:             map[string]map[string]uint64{},
		UserspaceToPeer:      PathCounters{c.toPeerPackets.Load(), c.toPeerBytes.Load()},
		UserspaceToClient:    PathCounters{c.toClientPackets.Load(), c.toClientBytes.Load()},
		DataIndications:      c.dataIndications.Load(),
		OffloadInstalls:      c.offloadInstalls.Load(),
		OffloadInstallErrors: c.offloadInstallErrors.Load(),
		OffloadFull:          c.offloadFull.Load(),
		OffloadRefreshErrors: c.offloadRefreshErrors.Load(),
		OffloadRemoves:       c.offloadRemoves.Load(),
		OffloadRemoveErrors:  c.offloadRemoveErrors.Load(),
		RateLimiterSources:   s.limiter.size(),
		TrustedTuples:        s.trusted.size(),
		Drops: map[string]uint64{
			"malformed":     c.dropMalformed.Load(),
			"no_allocation": c.dropNoAllocation.Load(),
			"no_permission": c.dropNoPermission.Load(),
			"no_channel":    c.dropNoChannel.Load(),
			"bandwidth":     c.dropBandwidth.Load(),
			"peer_policy":   c.dropPolicy.Load(),
			"oversize":      c.dropOversize.Load(),
			"stream_queue":  c.dropStreamQueue.Load(),
			"panics":        c.panics.Load(),
		},
	}
	st.Protocol = s.protocolStats()
	for i := range c.authFailures {
		st.AuthFailures[authFailureNames[i]] = c.authFailures[i].Load()
	}
	for m := range c.requests {
		rm := map[string]uint64{}
		for r := range c.requests[m] {
			if n := c.requests[m][r].Load(); n > 0 {
				rm[resultName(r)] = n
			}
		}
		st.Requests[methodNames[m]] = rm
	}
	st.KernelToPeer = PathCounters{c.retiredToPeerPackets.Load(), c.retiredToPeerBytes.Load()}
	st.KernelToClient = PathCounters{c.retiredToClientPackets.Load(), c.retiredToClientBytes.Load()}
	now := time.Now()
	usage := s.kernelUsage()
	s.allocs.Range(func(_, v any) bool {
		a := v.(*allocation)
		perms, chans, offl, u := a.counts(now, usage)
		st.Allocations++
		st.Permissions += perms
		st.Channels += chans
		st.OffloadedChannels += offl
		st.KernelToPeer.Packets += u.ToPeerPackets
		st.KernelToPeer.Bytes += u.ToPeerBytes
		st.KernelToClient.Packets += u.ToClientPackets
		st.KernelToClient.Bytes += u.ToClientBytes
		return true
	})
	s.drainStats(&st)
	return st
}

// Allocations describes every live allocation, sorted by client address.
func (s *Server) Allocations() []AllocationInfo {
	var out []AllocationInfo
	now := time.Now()
	usage := s.kernelUsage()
	s.allocs.Range(func(_, v any) bool {
		ai := v.(*allocation).info(now, usage)
		s.tcpInfo(v.(*allocation), &ai)
		out = append(out, ai)
		return true
	})
	slices.SortFunc(out, func(a, b AllocationInfo) int { return a.Client.Compare(b.Client) })
	return out
}
