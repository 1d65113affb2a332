package xdpe2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/dpe2e"
	"github.com/hybridrelay/hybridrelay/internal/netns"
	"github.com/hybridrelay/hybridrelay/internal/testutil"
	"github.com/hybridrelay/hybridrelay/internal/turnclient"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
	"github.com/hybridrelay/hybridrelay/pkg/loader"
)

// allocateDontFragment sends an authenticated Allocate with DONT-FRAGMENT
// (RFC 8656 section 7.2; turnclient has no option for it) on conn and
// returns the relayed address. Everything after it goes through turnclient
// on the same conn: an allocation belongs to the 5-tuple, not to a client
// object.
func allocateDontFragment(t *testing.T, conn *net.UDPConn, server netip.AddrPort) netip.AddrPort {
	t.Helper()
	do := func(setters ...stun.Setter) *stun.Message {
		t.Helper()
		base := []stun.Setter{stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
			stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}},
			stun.RawAttribute{Type: stun.AttrDontFragment}}
		m := stun.MustBuild(append(base, setters...)...)
		if _, err := conn.WriteToUDPAddrPort(m.Raw, server); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		for {
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("allocate: %v", err)
			}
			r := &stun.Message{Raw: bytes.Clone(buf[:n])}
			if r.Decode() == nil && r.TransactionID == m.TransactionID {
				return r
			}
		}
	}
	r := do(stun.Fingerprint)
	var rlm stun.Realm
	var nonce stun.Nonce
	if err := rlm.GetFrom(r); err != nil {
		t.Fatalf("no REALM in the challenge: %v", err)
	}
	if err := nonce.GetFrom(r); err != nil {
		t.Fatalf("no NONCE in the challenge: %v", err)
	}
	r = do(stun.NewUsername(user), rlm, nonce, stun.NewLongTermIntegrity(user, string(rlm), pass), stun.Fingerprint)
	if r.Type.Class != stun.ClassSuccessResponse {
		var ec stun.ErrorCodeAttribute
		ec.GetFrom(r)
		t.Fatalf("allocate with DONT-FRAGMENT: %v %v", r.Type, ec)
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(r, stun.AttrXORRelayedAddress); err != nil {
		t.Fatal(err)
	}
	a, _ := netip.AddrFromSlice(relayed.IP)
	return netip.AddrPortFrom(a.Unmap(), uint16(relayed.Port))
}

// TestDFSameOnKernelAndUserspacePath: "a miss is always safe" (docs/design.md)
// holds for the IPv4 DF bit. One channel's ChannelData goes to the peer
// through XDP, then, with the kernel entry deleted, through userspace; the
// peer's link must see the same DF bit both times, 1 iff the allocation
// asked for DONT-FRAGMENT (RFC 8656 section 14; bpf/relay.bpf.c writes it,
// the relay socket's IP_MTU_DISCOVER gives it in userspace), on the plain
// and the gso datapath.
func TestDFSameOnKernelAndUserspacePath(t *testing.T) {
	forEachVariant(t, testDFSameOnKernelAndUserspacePath)
}

func testDFSameOnKernelAndUserspacePath(t *testing.T, to netns.TopologyOptions) {
	for _, dpName := range []string{"plain", "gso"} {
		t.Run(dpName, func(t *testing.T) {
			dp := dataplane.NewPlain()
			if dpName == "gso" {
				var err error
				if dp, err = dataplane.NewGSO(dataplane.GSOOptions{Loops: 1, Logger: testLogger(t)}); err != nil {
					t.Fatal(err)
				}
			}
			e := newEnvDP(t, to, false, 64, dp, nil)
			pr := newPeer(t, e, 40000)
			var capt *dpe2e.Capture
			if err := e.topo.Peer.Do(func() (err error) {
				capt, err = dpe2e.NewCapture(e.topo.PeerIf)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { capt.Close() })
			x := e.path.X
			for i, df := range []bool{false, true} {
				var conn *net.UDPConn
				if err := e.topo.Client.Do(func() (err error) {
					conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.clientIP(), 0)))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				var relayed netip.AddrPort
				if df {
					relayed = allocateDontFragment(t, conn, e.listener())
				}
				tc, err := turnclient.New(turnclient.Config{Server: e.listener(), Conn: conn,
					Credentials: turnclient.Credentials{Username: user, Password: pass}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tc.Close() })
				if !df {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					a, err := tc.Allocate(ctx, turnclient.AllocateOptions{})
					cancel()
					if err != nil {
						t.Fatal(err)
					}
					relayed = a.Relayed
				}
				c := &rawClient{Client: tc, relayed: relayed}
				ch := uint16(0x4000 + i)
				c.bind(t, ch, pr.addr())
				testutil.WaitFor(t, 3*time.Second, "offloaded channel", func() bool { return offloadedChannels(e.srv) == i+1 })

				send := func(tag string) dpe2e.Datagram {
					t.Helper()
					want := []byte(fmt.Sprintf("df=%v via %s", df, tag))
					if err := c.SendChannelData(ch, want); err != nil {
						t.Fatal(err)
					}
					if got, from, err := pr.recv(3 * time.Second); err != nil || !bytes.Equal(got, want) || from != relayed {
						t.Fatalf("%s: peer got %q from %v (%v)", tag, got, from, err)
					}
					caught, err := capt.Drain(pr.addr())
					if err != nil {
						t.Fatal(err)
					}
					if len(caught) != 1 || caught[0].Src != relayed || caught[0].Fragment != nil {
						t.Fatalf("%s: captured %+v, want one datagram from %v", tag, caught, relayed)
					}
					return caught[0]
				}
				k0 := counters(t, x).Get(loader.FwdToPeerPackets)
				kd := send("kernel")
				if counters(t, x).Get(loader.FwdToPeerPackets) != k0+1 {
					t.Fatal("the kernel did not forward the first datagram")
				}
				if err := x.DeleteChannel(loader.Channel{Client: c.LocalAddr(), Listener: e.listener(), Number: ch}); err != nil {
					t.Fatal(err)
				}
				ud := send("userspace")
				if counters(t, x).Get(loader.FwdToPeerPackets) != k0+1 {
					t.Fatal("the kernel forwarded without an entry")
				}
				// IPv4 flags: reserved, DF, MF (RFC 791).
				kDF, uDF := kd.L3[6]&0x40 != 0, ud.L3[6]&0x40 != 0
				if kDF != df || uDF != df {
					t.Fatalf("DONT-FRAGMENT %v: DF %v on the kernel path, %v on the userspace path", df, kDF, uDF)
				}
			}
		})
	}
}
