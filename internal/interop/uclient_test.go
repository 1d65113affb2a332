package interop

import (
	"bytes"
	"strconv"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestUclient runs coturn's turnutils_uclient against the server with
// turnutils_peer (an echo server) as the peer: every message the client
// sends goes client -> relay -> peer -> relay -> client, so "all received"
// means both directions worked. The matrix: UDP and TCP transport to the
// server (RFC 8656 section 3.1), ChannelData (section 12) and Send/Data
// indications (section 11), long-term
// credentials and TURN REST API credentials (-W, coturn's
// static-auth-secret), plus an RTCP pair (EVEN-PORT with the R bit and
// RESERVATION-TOKEN, sections 7.2 and 18.6-18.9) and an IPv6 relay
// requested over an IPv4 connection (-x, REQUESTED-ADDRESS-FAMILY).
func TestUclient(t *testing.T) {
	privtest.Need(t, "turnutils_uclient", "turnutils_peer")
	// Mostly waiting on timers; runs beside the other waiting tests, after
	// the serial ones (the flood test counts the process's goroutines).
	t.Parallel()
	// Default configuration: ~60 clients start within a second from
	// 127.0.0.1, each with an unauthenticated Allocate, more than the
	// default burst of 40 per source IP. UDP clients retransmit what the
	// limit drops; TCP/TLS clients do not (RFC 8489 section 6.2.2), which
	// is why the server gives each stream connection its own budget.
	tgt := startTarget(t, nil)
	peer4 := startTurnutilsPeer(t, lo4)
	peer6 := startTurnutilsPeer(t, lo6)

	// 121 bytes: not a multiple of 4, so ChannelData over TCP/TLS carries
	// padding (RFC 8656 section 12.5), and so does UDP with -D.
	const msgs, msgLen = 20, 121
	tests := []struct {
		name string
		tcp  bool
		tls  bool // TLS over TCP (-t -S)
		send bool // Send indications instead of channels
		rest bool // REST API secret instead of the static user
		rtcp bool // a second, RTCP allocation (EVEN-PORT + RESERVATION-TOKEN)
		ipv6 bool // IPv6 relay and peer
		// extra flags: -m clients at once, -G extra CreatePermission and
		// ChannelBind requests, -g DONT-FRAGMENT (RFC 8656 section 18.8),
		// -D padded ChannelData over UDP too (as pjnath sends it)
		extra   []string
		clients int
	}{
		{name: "udp-channel-longterm"},
		{name: "udp-send-longterm", send: true},
		{name: "tcp-channel-longterm", tcp: true},
		{name: "tcp-send-longterm", tcp: true, send: true},
		{name: "udp-channel-rest", rest: true},
		{name: "udp-send-rest", send: true, rest: true},
		{name: "tcp-channel-rest", tcp: true, rest: true},
		{name: "tcp-send-rest", tcp: true, send: true, rest: true},
		{name: "tls-channel-longterm", tcp: true, tls: true},
		{name: "tls-send-rest", tcp: true, tls: true, send: true, rest: true},
		{name: "udp-channel-rtcp-pair", rtcp: true},
		{name: "udp-channel-ipv6-relay", ipv6: true},
		{name: "udp-channel-10-clients", extra: []string{"-m", "10"}, clients: 10},
		{name: "tcp-send-10-clients", tcp: true, send: true, extra: []string{"-m", "10"}, clients: 10},
		{name: "udp-channel-extra-requests", extra: []string{"-G"}},
		{name: "udp-channel-dont-fragment", extra: []string{"-g"}},
		{name: "udp-channel-padded", extra: []string{"-D"}},
		// -y: pairs of allocations of this server send to each other
		// (hairpin); each side counts its own stream.
		{name: "udp-channel-client-to-client", extra: []string{"-y"}, clients: 2},
		{name: "tcp-send-client-to-client", tcp: true, send: true, extra: []string{"-y"}, clients: 2},
	}
	// All clients run at once (uclient spends most of its time in its own
	// timers); each case's assertions then run as a subtest.
	var argsList [][]string
	for _, tc := range tests {
		server, peer := tgt.lt4, peer4
		switch {
		case tc.tls && tc.rest:
			server = tgt.rest4TLS
		case tc.tls:
			server = tgt.lt4TLS
		case tc.rest:
			server = tgt.rest4
		}
		if tc.ipv6 {
			peer = peer6
		}
		args := []string{
			"-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5",
			"-p", strconv.Itoa(int(server.Port())),
			"-e", peer.Addr().String(), "-r", strconv.Itoa(int(peer.Port())),
			"-u", testUser,
		}
		if tc.rest {
			args = append(args, "-W", testSecret)
		} else {
			args = append(args, "-w", testPass)
		}
		if tc.tcp {
			args = append(args, "-t")
		}
		if tc.tls {
			args = append(args, "-S")
		}
		if tc.send {
			args = append(args, "-s")
		}
		if !tc.rtcp {
			args = append(args, "-c")
		}
		if tc.ipv6 {
			args = append(args, "-x")
		}
		args = append(args, tc.extra...)
		argsList = append(argsList, append(args, server.Addr().String()))
	}
	results := runAll("turnutils_uclient", argsList, 30*time.Second)
	if tgt.hybridrelay != nil {
		t.Cleanup(func() {
			if t.Failed() {
				st := tgt.hybridrelay.srv.Stats()
				t.Logf("server stats: auth failures %v, drops %v, requests %v", st.AuthFailures, st.Drops, st.Requests)
			}
		})
	}

	for i, tc := range tests {
		res := results[i]
		t.Run(tc.name, func(t *testing.T) {
			cmdline := res.cmdline
			if res.err != nil {
				hint := ""
				if bytes.Contains(res.out, []byte("channel bind: error 400")) {
					hint = "\n(turnutils_uclient picks CHANNEL-NUMBER at random in 0x4000-0x7FFF, the RFC 5766 range, " +
						"as coturn's server accepts; a server that only takes RFC 8656's 0x4000-0x4FFF refuses ~3 in 4 binds)"
				}
				t.Fatalf("%s: %v%s\n%s", cmdline, res.err, hint, res.out)
			}
			r, err := ParseUclient(res.out)
			if err != nil {
				t.Fatalf("%s: %v\n%s", cmdline, err, res.out)
			}
			want := int64(msgs) * int64(max(tc.clients, 1))
			if tc.rtcp {
				want *= 2 // one stream per allocation of the pair
			}
			if r.SentMsgs != want || r.RecvMsgs != want || r.LostPackets != 0 || len(r.Errors) != 0 {
				t.Fatalf("%s: sent %d received %d lost %d errors %q, want %d/%d/0/none\n%s",
					cmdline, r.SentMsgs, r.RecvMsgs, r.LostPackets, r.Errors, want, want, res.out)
			}
			if r.SentBytes != want*msgLen || r.RecvBytes != want*msgLen {
				t.Fatalf("%s: bytes sent %d received %d, want %d each", cmdline, r.SentBytes, r.RecvBytes, want*msgLen)
			}
		})
	}
}
