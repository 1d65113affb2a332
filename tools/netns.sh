#!/bin/sh
# netns.sh: the three-namespace topology of internal/netns, by hand, for
# running `hybridrelay serve`, `loadgen` and `loadgen sink` interactively.
#
#   tools/netns.sh up        make hrm-client, hrm-relay, hrm-peer
#   tools/netns.sh up --forwarding
#                            the same, with the relay ns as an IP router
#   tools/netns.sh down      remove them
#   tools/netns.sh exec client|relay|peer CMD...
#
#   client ns            relay ns                      peer ns
#   eth0 198.18.0.1 ── cli0 198.18.0.2 | peer0 198.18.1.2 ── eth0 198.18.1.1
#        2001:2::1          2001:2::2  | 2001:2:0:1::2         2001:2:0:1::1
#
# Addresses only from the benchmarking ranges (RFC 2544, RFC 5180). Checksum
# offload is off on every veth end (XDP would see partial checksums).
# The relay ns keeps the sysctls of a server as it comes: IP forwarding off,
# so client and peer reach each other only through a relay. `up
# --forwarding` turns it on there (the "routed" baseline, a relay host that
# is also a router). Example:
#   tools/netns.sh up
#   tools/netns.sh exec relay bin/hybridrelay serve --listen 198.18.0.2:3478 \
#       --relay-ip 198.18.1.2 --auth-secret s --allow-peer 198.18.1.1/32 &
#   tools/netns.sh exec peer bin/hybridrelay loadgen sink --listen 198.18.1.1:9000 --reflect &
#   tools/netns.sh exec client bin/hybridrelay loadgen --server 198.18.0.2:3478 \
#       --peer 198.18.1.1:9000 --auth-secret s --allocations 100 --rate 50
#   tools/netns.sh down
# (`ip netns exec` remounts /sys: an XDP relay started this way needs
# --bpffs on a bpf filesystem mounted inside it; `hybridrelay compare`
# avoids that by entering only the network namespace.)
set -eu

C=hrm-client R=hrm-relay P=hrm-peer

up() {
	forwarding=0
	case "${1:-}" in
	"") ;;
	--forwarding) forwarding=1 ;;
	*) echo "usage: $0 up [--forwarding]" >&2; exit 2 ;;
	esac
	for ns in $C $R $P; do
		ip netns add $ns
		ip -n $ns link set lo up
	done
	ip link add hrm-a type veth peer name hrm-b
	ip link set hrm-a netns $C
	ip link set hrm-b netns $R
	ip -n $C link set hrm-a name eth0
	ip -n $R link set hrm-b name cli0
	ip link add hrm-c type veth peer name hrm-d
	ip link set hrm-c netns $R
	ip link set hrm-d netns $P
	ip -n $R link set hrm-c name peer0
	ip -n $P link set hrm-d name eth0
	for pair in "$C eth0" "$R cli0" "$R peer0" "$P eth0"; do
		set -- $pair
		ip -n "$1" link set "$2" up
		ip netns exec "$1" ethtool -K "$2" tx off rx off >/dev/null
	done
	ip -n $C addr add 198.18.0.1/24 dev eth0
	ip -n $C addr add 2001:2::1/64 dev eth0 nodad
	ip -n $R addr add 198.18.0.2/24 dev cli0
	ip -n $R addr add 2001:2::2/64 dev cli0 nodad
	ip -n $R addr add 198.18.1.2/24 dev peer0
	ip -n $R addr add 2001:2:0:1::2/64 dev peer0 nodad
	ip -n $P addr add 198.18.1.1/24 dev eth0
	ip -n $P addr add 2001:2:0:1::1/64 dev eth0 nodad
	ip -n $C route add default via 198.18.0.2
	ip -n $C -6 route add default via 2001:2::2
	ip -n $P route add default via 198.18.1.2
	ip -n $P -6 route add default via 2001:2:0:1::2
	# A new netns takes IPv4 forwarding from the root ns on hosts that
	# route (net.core.devconf_inherit_init_net=0): set it either way.
	ip netns exec $R sysctl -q -w net.ipv4.conf.all.forwarding=$forwarding net.ipv6.conf.all.forwarding=$forwarding
	# Resolve the neighbours of both links now (one hop each, as
	# internal/netns does), so the first packets are not lost to ARP/ND;
	# these pings are to the relay's own addresses and need no forwarding.
	for hop in "$C 198.18.0.2" "$C 2001:2::2" "$P 198.18.1.2" "$P 2001:2:0:1::2"; do
		set -- $hop
		ip netns exec "$1" ping -c 1 -W 2 "$2" >/dev/null
	done
	echo "netns: $C $R $P up (relay forwarding $forwarding)" >&2
}

down() {
	for ns in $C $R $P; do
		ip netns del $ns 2>/dev/null || true
	done
}

case "${1:-}" in
up)
	shift
	trap down EXIT INT TERM
	up "$@"
	trap - EXIT INT TERM
	;;
down) down ;;
exec)
	[ $# -ge 3 ] || { echo "usage: $0 exec client|relay|peer CMD..." >&2; exit 2; }
	case "$2" in
	client) ns=$C ;; relay) ns=$R ;; peer) ns=$P ;;
	*) echo "netns: unknown namespace $2" >&2; exit 2 ;;
	esac
	shift 2
	exec ip netns exec $ns "$@"
	;;
*)
	echo "usage: $0 up [--forwarding]|down|exec client|relay|peer CMD..." >&2
	exit 2
	;;
esac
