package interop

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/privtest"
	"github.com/hybridrelay/hybridrelay/pkg/control"
)

// TestNetnsUclientDTLS: turnutils_uclient -S over UDP (TURN over DTLS)
// from the client namespace through a dtls:// listener of the server in
// the relay namespace to turnutils_peer in the peer namespace, under the
// default peer policy, channel and Send modes, byte-exact.
func TestNetnsUclientDTLS(t *testing.T) {
	privtest.Need(t, "ip", "ethtool", "ping", "turnutils_uclient", "turnutils_peer")
	t.Parallel()
	cert, key := writeSelfSignedCert(t, t.TempDir())
	const dtlsPort = 5349
	var dtlsAddr netip.AddrPort
	r := startNetnsRelayWith(t, func(topo *netns.Topology, cfg *control.Config) {
		dtlsAddr = netip.AddrPortFrom(topo.RelayClientV4, dtlsPort)
		cfg.Listeners = append(cfg.Listeners, control.ListenerSpec{Network: "dtls", Addr: dtlsAddr})
		cfg.TLSCertFile, cfg.TLSKeyFile = cert, key
	})
	peer := startNetnsPeer(t, r, r.topo.PeerV4)
	const msgs, msgLen = 20, 121
	for _, tc := range []struct {
		name  string
		extra []string
	}{{"channel", nil}, {"send", []string{"-s"}}} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"netns", "exec", r.topo.Client.Name, "turnutils_uclient", "-S", "-c",
				"-n", strconv.Itoa(msgs), "-l", strconv.Itoa(msgLen), "-z", "5", "-p", strconv.Itoa(dtlsPort),
				"-e", peer.Addr().String(), "-r", strconv.Itoa(int(peer.Port())), "-u", testUser, "-w", testPass},
				tc.extra...)
			args = append(args, dtlsAddr.Addr().String())
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			out, err := runBounded(ctx, "ip", args...)
			cmdline := "ip " + strings.Join(args, " ")
			if err != nil {
				t.Fatalf("%s: %v\n%s", cmdline, err, out)
			}
			rep, err := ParseUclient(out)
			if err != nil {
				t.Fatalf("%s: %v\n%s", cmdline, err, out)
			}
			if rep.SentMsgs != msgs || rep.RecvMsgs != msgs || rep.LostPackets != 0 || len(rep.Errors) != 0 ||
				rep.SentBytes != msgs*msgLen || rep.RecvBytes != msgs*msgLen {
				t.Fatalf("%s: sent %d received %d (%d bytes) lost %d errors %q\n%s",
					cmdline, rep.SentMsgs, rep.RecvMsgs, rep.RecvBytes, rep.LostPackets, rep.Errors, out)
			}
		})
	}
	r.stop()
	if !r.statsOK {
		t.Fatal("the server helper printed no final stats")
	}
	if p := r.stats.Protocol; p["dtls_handshakes"] < 2 {
		t.Errorf("protocol counters %v: want at least 2 DTLS handshakes", p)
	}
}
