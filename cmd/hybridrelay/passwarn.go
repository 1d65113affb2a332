package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// egressInfo is one destination of the kernel path's next-hop (egress)
// table: where packets to Dst leave, as the control plane resolved it over
// rtnetlink (route, neighbour and link lookups). It mirrors
// loader.EgressEntry.
type egressInfo struct {
	Dst, Src       netip.Addr
	Ifindex        int
	Ifname         string
	Gateway        netip.Addr // invalid when Dst is on-link
	DstMAC, SrcMAC net.HardwareAddr
	VLAN           uint16
	MTU            int
	// Reason is the pass counter ("pass_no_route", ...) that packets to
	// Dst count while the entry is unusable; "" when it is usable.
	Reason string
	Refs   int
}

// egressSource lists the egress table.
type egressSource interface {
	Egress() []egressInfo
}

const (
	// passCheckInterval: how often serve compares the pass counters.
	passCheckInterval = 10 * time.Second
	// passWarnEvery: at most one warning per reason in this long.
	passWarnEvery = 5 * time.Minute
)

// warnedPassReasons are the reasons that mean the host keeps the kernel
// path from forwarding.
var warnedPassReasons = []string{"no_egress", "no_route", "link_down", "too_big", "no_neigh"}

// passWarning is one WARN line: which reason grew by how much, what is
// wrong (naming interfaces, destinations, gateways) and the fix.
type passWarning struct {
	Reason  string
	Packets uint64
	Detail  string
	Fix     string
}

// decidePassWarnings compares two counter snapshots (taken one check
// interval apart) and says which misconfiguration reasons to warn about
// at now: those whose counter grew and that were not warned about in the
// last passWarnEvery (lastWarned, by reason). no_neigh is transient for a
// new next hop's first packets, so it is reported only while some egress
// entry is still unresolved. A counter that went backwards (a new
// program) or is missing from prev gives no warning. The caller records
// now in lastWarned for every reason returned.
func decidePassWarnings(prev, cur map[string]uint64, egress []egressInfo, lastWarned map[string]time.Time, now time.Time) []passWarning {
	var out []passWarning
	for _, r := range warnedPassReasons {
		key := "pass_" + r
		old, ok := prev[key]
		v := cur[key]
		if !ok || v <= old {
			continue
		}
		if t, ok := lastWarned[r]; ok && now.Sub(t) < passWarnEvery {
			continue
		}
		var hit []egressInfo
		for _, e := range egress {
			if e.Reason == key {
				hit = append(hit, e)
			}
		}
		w := passWarning{Reason: r, Packets: v - old}
		switch r {
		case "no_egress":
			names := ifnames(hit)
			if len(names) == 0 {
				w.Detail = "some destinations leave through an interface the program cannot transmit on"
				w.Fix = "find it with `ip route get DST` for a peer of `hybridrelay maps dump channels` and add --xdp-iface IFNAME"
				break
			}
			w.Detail = listOf(hit, func(e egressInfo) string {
				return fmt.Sprintf("%s leaves through %s, which is not an XDP interface (or has a VLAN tagging mismatch)", e.Dst, e.Ifname)
			})
			w.Fix = "add --xdp-iface " + strings.Join(names, " --xdp-iface ")
		case "no_route":
			if len(hit) == 0 {
				w.Detail = "the host has no route to some destinations"
				w.Fix = "check `ip route get DST` for the peers of `hybridrelay maps dump channels`"
				break
			}
			w.Detail = "the host has no route to " + listOf(hit, func(e egressInfo) string { return e.Dst.String() })
			w.Fix = "check `ip route get " + hit[0].Dst.String() + "`"
		case "link_down":
			names := ifnames(hit)
			if len(names) == 0 {
				w.Detail = "an egress link is down"
				w.Fix = "check `ip link` for interfaces that are DOWN"
				break
			}
			w.Detail = strings.Join(names, ", ") + " is down"
			w.Fix = "bring " + strings.Join(names, ", ") + " up"
		case "too_big":
			// Too big is a property of packets, not of an entry: name
			// the MTUs of the interfaces in use.
			seen := map[string]bool{}
			var mtus []string
			for _, e := range egress {
				if e.Ifname != "" && e.MTU > 0 && !seen[e.Ifname] {
					seen[e.Ifname] = true
					mtus = append(mtus, fmt.Sprintf("MTU of %s is %d", e.Ifname, e.MTU))
				}
			}
			slices.Sort(mtus)
			if len(mtus) == 0 {
				mtus = []string{"the egress MTU is smaller"}
			}
			w.Detail = strings.Join(limit(mtus), "; ") + "; peers/clients send larger datagrams, the userspace path fragments them"
			w.Fix = "raise the MTU where the path allows it, or leave it: those datagrams are still relayed"
		case "no_neigh":
			if len(hit) == 0 {
				continue // resolved since: the first packets of a new next hop
			}
			w.Detail = listOf(hit, func(e egressInfo) string {
				hop := e.Gateway
				if !hop.IsValid() {
					hop = e.Dst
				}
				return fmt.Sprintf("%s on %s does not answer ARP/ND", hop, e.Ifname)
			})
			w.Fix = "check the next hop and `ip neigh show dev " + hit[0].Ifname + "`"
		}
		out = append(out, w)
	}
	return out
}

// ifnames are the distinct, sorted interface names of the entries.
func ifnames(es []egressInfo) []string {
	var out []string
	for _, e := range es {
		if e.Ifname != "" && !slices.Contains(out, e.Ifname) {
			out = append(out, e.Ifname)
		}
	}
	slices.Sort(out)
	return out
}

// listOf renders up to three distinct entries, then how many more.
func listOf(es []egressInfo, f func(egressInfo) string) string {
	var parts []string
	for _, e := range es {
		if s := f(e); !slices.Contains(parts, s) {
			parts = append(parts, s)
		}
	}
	return strings.Join(limit(parts), "; ")
}

func limit(parts []string) []string {
	if len(parts) > 3 {
		return append(parts[:3:3], fmt.Sprintf("and %d more", len(parts)-3))
	}
	return parts
}

// passWatcher is serve's check loop over the kernel counters.
type passWatcher struct {
	log      *slog.Logger
	counters func() (map[string]uint64, error)
	egress   egressSource
	prev     map[string]uint64
	last     map[string]time.Time
}

func newPassWatcher(log *slog.Logger, counters func() (map[string]uint64, error), egress egressSource) *passWatcher {
	return &passWatcher{log: log, counters: counters, egress: egress, last: map[string]time.Time{}}
}

// check reads the counters and logs what decidePassWarnings decides
// against the previous check. The egress table is read only when a
// misconfiguration counter grew.
func (w *passWatcher) check(now time.Time) {
	cur, err := w.counters()
	if err != nil {
		w.log.Debug("kernel path: read counters", "err", err)
		return
	}
	prev := w.prev
	w.prev = cur
	if prev == nil {
		return
	}
	grew := false
	for _, r := range warnedPassReasons {
		grew = grew || cur["pass_"+r] > prev["pass_"+r]
	}
	if !grew {
		return
	}
	var egress []egressInfo
	if w.egress != nil {
		egress = w.egress.Egress()
	}
	for _, pw := range decidePassWarnings(prev, cur, egress, w.last, now) {
		w.last[pw.Reason] = now
		w.log.Warn("kernel path: packets passed to the stack", "reason", pw.Reason, "packets", pw.Packets,
			"detail", pw.Detail, "fix", pw.Fix)
	}
}

// run checks every interval until stop is closed.
func (w *passWatcher) run(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	w.check(time.Now())
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			w.check(now)
		}
	}
}
