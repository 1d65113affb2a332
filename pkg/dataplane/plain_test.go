package dataplane

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/testutil"
)

// TestPlainEchoAndStats runs a relay-shaped echo on loopback: every datagram
// received is sent back through the Tx, and the counters add up.
func TestPlainEchoAndStats(t *testing.T) {
	testEcho(t, NewPlain())
}

func testEcho(t *testing.T, dp Datapath) {
	t.Helper()
	defer dp.Close()
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		srv, err := dp.Listen(netip.MustParseAddrPort(addr), func(tx Tx, c Conn, from netip.AddrPort, p []byte) {
			tx.Send(c, p, from)
		})
		if err != nil {
			t.Fatal(err)
		}
		if srv.LocalAddr().Port() == 0 {
			t.Fatal("LocalAddr has no port")
		}
		cl, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IP(srv.LocalAddr().Addr().AsSlice())})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		const n = 50
		for i := 0; i < n; i++ {
			msg := bytes.Repeat([]byte{byte(i)}, 100+i)
			if _, err := cl.WriteToUDPAddrPort(msg, srv.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			cl.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 2048)
			m, _, err := cl.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:m], msg) {
				t.Fatalf("echo %d: got %d bytes, want %d", i, m, len(msg))
			}
		}
	}
	// Counters are added after a send returns, so the last echo may be
	// read before it is counted.
	deadline := time.Now().Add(3 * time.Second)
	for st := dp.Stats(); st.RxPackets != 100 || st.TxPackets != 100; st = dp.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats rx=%d tx=%d, want 100/100", st.RxPackets, st.TxPackets)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPlainRelayPortInUse(t *testing.T) {
	dp := NewPlain()
	defer dp.Close()
	testRelayPortInUse(t, dp)
}

// testRelayPortInUse is shared by the datapaths: a taken port is reported
// as EADDRINUSE, Close is idempotent, and the port is free after Close.
func testRelayPortInUse(t *testing.T, dp Datapath) {
	t.Helper()
	h := func(Tx, Conn, netip.AddrPort, []byte) {}
	a, err := dp.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), h)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dp.OpenRelay(a.LocalAddr(), h)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second bind on %s: %v, want EADDRINUSE", a.LocalAddr(), err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	b, err := dp.OpenRelay(a.LocalAddr(), h)
	if err != nil {
		t.Fatalf("rebind after close: %v", err)
	}
	b.Close()
}

// waitFor fails the test when cond does not hold within 3 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, 3*time.Second, "the datapath's condition", cond)
}
