package interop

import (
	"strconv"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/privtest"
)

// TestUclientTCPRelay runs turnutils_uclient -T (RFC 6062 TCP relay
// allocations; -T implies client-to-client pairs, -y): each client of a
// pair allocates a TCP relayed address, one Connects to the other's, the
// other gets a ConnectionAttempt, both bind data connections with
// ConnectionBind, and every message crosses client -> data connection ->
// peer data connection -> the other client's data connection and back.
// Over TCP and over TLS, byte-exact.
func TestUclientTCPRelay(t *testing.T) {
	privtest.Need(t, "turnutils_uclient")
	t.Parallel()
	tgt := startTarget(t, nil)
	const msgs, msgLen = 20, 121
	tests := []struct {
		name    string
		tls     bool
		rest    bool
		extra   []string
		clients int
	}{
		{name: "tcp-longterm", clients: 2},
		{name: "tcp-rest", rest: true, clients: 2},
		{name: "tls-longterm", tls: true, clients: 2},
		{name: "tls-rest", tls: true, rest: true, clients: 2},
		{name: "tcp-4-clients", extra: []string{"-m", "4"}, clients: 4},
		{name: "tcp-large-messages", extra: []string{"-l", "1400"}, clients: 2},
	}
	var argsList [][]string
	for _, tc := range tests {
		server := tgt.lt4
		switch {
		case tc.tls && tc.rest:
			server = tgt.rest4TLS
		case tc.tls:
			server = tgt.lt4TLS
		case tc.rest:
			server = tgt.rest4
		}
		args := []string{"-T", "-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5",
			"-p", strconv.Itoa(int(server.Port())), "-u", testUser}
		if tc.rest {
			args = append(args, "-W", testSecret)
		} else {
			args = append(args, "-w", testPass)
		}
		if tc.tls {
			args = append(args, "-S")
		}
		args = append(args, tc.extra...)
		argsList = append(argsList, append(args, server.Addr().String()))
	}
	results := runAll("turnutils_uclient", argsList, 40*time.Second)
	for i, tc := range tests {
		res := results[i]
		t.Run(tc.name, func(t *testing.T) {
			cmdline := res.cmdline
			if res.err != nil {
				t.Fatalf("%s: %v\n%s", cmdline, res.err, res.out)
			}
			r, err := ParseUclient(res.out)
			if err != nil {
				t.Fatalf("%s: %v\n%s", cmdline, err, res.out)
			}
			l := int64(msgLen)
			for j, a := range tc.extra {
				if a == "-l" {
					n, _ := strconv.Atoi(tc.extra[j+1])
					l = int64(n)
				}
			}
			want := int64(msgs * tc.clients)
			if r.SentMsgs != want || r.RecvMsgs != want || r.LostPackets != 0 || len(r.Errors) != 0 {
				t.Fatalf("%s: sent %d received %d lost %d errors %q, want %d/%d/0/none\n%s",
					cmdline, r.SentMsgs, r.RecvMsgs, r.LostPackets, r.Errors, want, want, res.out)
			}
			if r.SentBytes != want*l || r.RecvBytes != want*l {
				t.Fatalf("%s: bytes sent %d received %d, want %d each", cmdline, r.SentBytes, r.RecvBytes, want*l)
			}
		})
	}
	if s := tgt.hybridrelay; s != nil {
		st := s.srv.Stats()
		p := st.Protocol
		// Every pair: two allocations, one Connect, one ConnectionAttempt,
		// two binds.
		pairs := uint64(0)
		for _, tc := range tests {
			pairs += uint64(tc.clients / 2)
		}
		if p["tcp_connects"] < pairs || p["tcp_connection_attempts"] < pairs || p["tcp_binds"] < 2*pairs {
			t.Errorf("protocol counters %v, want at least %d connects and attempts and %d binds", p, pairs, 2*pairs)
		}
		if st.OffloadInstalls != 0 || st.Channels != 0 {
			t.Errorf("TCP relays produced %d offload installs and %d channels", st.OffloadInstalls, st.Channels)
		}
	}
}
