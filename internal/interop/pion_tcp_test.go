package interop

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/turn/v4"
)

// pionTCP is what the tests use of pion's TCP allocation (its type lives
// in an internal package of pion/turn).
type pionTCP interface {
	Addr() net.Addr
	Dial(network, rAddr string) (net.Conn, error)
	Accept() (net.Conn, error)
	CreatePermissions(addrs ...net.Addr) error
	SetDeadline(t time.Time) error
	Close() error
}

// pionTCPAllocation opens a pion/turn v4 client on a TCP control
// connection to server and makes a TCP allocation (RFC 6062) with
// AllocateTCP.
func pionTCPAllocation(t *testing.T, server netip.AddrPort) pionTCP {
	t.Helper()
	conn, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelError
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server.String(),
		TURNServerAddr: server.String(),
		Conn:           turn.NewSTUNConn(conn),
		Username:       testUser,
		Password:       testPass,
		Realm:          testRealm,
		LoggerFactory:  lf,
	})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	alloc, err := c.AllocateTCP()
	if err != nil {
		t.Fatalf("pion AllocateTCP: %v", err)
	}
	t.Cleanup(func() { _ = alloc.Close() })
	return alloc
}

// pipeBytes writes n random bytes on from and checks that to reads the
// same bytes.
func pipeBytes(t *testing.T, what string, from, to net.Conn, n int) {
	t.Helper()
	want := make([]byte, n)
	_, _ = rand.Read(want)
	errc := make(chan error, 1)
	go func() { _, err := from.Write(want); errc <- err }()
	got := make([]byte, n)
	_ = to.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(to, got); err != nil {
		t.Fatalf("%s: read: %v", what, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: the %d bytes differ", what, n)
	}
}

// TestPionTCPAllocation uses pion/turn's own RFC 6062 client (AllocateTCP,
// DialTCP = CreatePermission + Connect + ConnectionBind, AcceptTCP =
// ConnectionAttempt + ConnectionBind) as a second independent client:
// first to a plain TCP peer, then between two of its TCP allocations on
// this server, byte-exact both ways.
func TestPionTCPAllocation(t *testing.T) {
	t.Parallel()
	tgt := startTarget(t, nil)
	server := tgt.lt4

	t.Run("to-a-tcp-peer", func(t *testing.T) {
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		alloc := pionTCPAllocation(t, server)
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				accepted <- c
			}
		}()
		dc, err := alloc.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatalf("pion Dial: %v", err)
		}
		defer dc.Close()
		var pc net.Conn
		select {
		case pc = <-accepted:
		case <-time.After(5 * time.Second):
			t.Fatal("the peer saw no connection")
		}
		defer pc.Close()
		if got, want := pc.RemoteAddr().String(), alloc.Addr().String(); got != want {
			t.Fatalf("peer connection from %s, want the relayed address %s", got, want)
		}
		pipeBytes(t, "client to peer", dc, pc, 100000)
		pipeBytes(t, "peer to client", pc, dc, 100000)
	})

	t.Run("allocation-to-allocation", func(t *testing.T) {
		a, b := pionTCPAllocation(t, server), pionTCPAllocation(t, server)
		// b accepts connections from a's relayed address.
		if err := b.CreatePermissions(a.Addr()); err != nil {
			t.Fatalf("b permission: %v", err)
		}
		accepted := make(chan net.Conn, 1)
		acceptErr := make(chan error, 1)
		go func() {
			_ = b.SetDeadline(time.Now().Add(10 * time.Second))
			c, err := b.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}()
		dc, err := a.Dial("tcp4", b.Addr().String())
		if err != nil {
			t.Fatalf("a Dial to b: %v", err)
		}
		defer dc.Close()
		var bc net.Conn
		select {
		case bc = <-accepted:
		case err := <-acceptErr:
			t.Fatalf("b Accept: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("b saw no ConnectionAttempt")
		}
		defer bc.Close()
		pipeBytes(t, "a to b", dc, bc, 100000)
		pipeBytes(t, "b to a", bc, dc, 100000)
	})
}
