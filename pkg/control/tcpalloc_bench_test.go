package control

import (
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkTCPRelay measures one-way throughput of an RFC 6062 client
// data connection (client -> server -> peer, userspace copy) against a
// direct loopback TCP connection measured in the same run (the baseline).
// Run alternated and repeated: go test -run '^$' -bench TCPRelay -count 5.
func BenchmarkTCPRelay(b *testing.B) {
	const chunk = 64 << 10
	buf := make([]byte, chunk)
	run := func(b *testing.B, src net.Conn, dst net.Conn) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = io.CopyN(io.Discard, dst, int64(b.N)*chunk)
		}()
		b.SetBytes(chunk)
		b.ResetTimer()
		for range b.N {
			if _, err := src.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		<-done
		b.StopTimer()
	}
	b.Run("direct", func(b *testing.B) {
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		src, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer src.Close()
		dst, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		defer dst.Close()
		run(b, src, dst)
	})
	b.Run("relay", func(b *testing.B) {
		s := startServer(b)
		c := dialRaw(b, "tcp", s.addr("tcp"))
		r := c.do(methodAllocate, tcpTransport())
		if code(r) != 0 {
			b.Fatalf("allocate: %d", code(r))
		}
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		r = c.do(methodConnect, peerAttr(ln.Addr().(*net.TCPAddr).AddrPort()))
		id, ok, err := getConnectionID(r)
		if code(r) != 0 || !ok || err != nil {
			b.Fatalf("connect: %d", code(r))
		}
		_ = ln.SetDeadline(time.Now().Add(3 * time.Second))
		dst, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		defer dst.Close()
		d := dialRaw(b, "tcp", s.addr("tcp"))
		if r := d.do(methodConnectionBind, connIDAttr(id)); code(r) != 0 {
			b.Fatalf("bind: %d", code(r))
		}
		run(b, d.conn, dst)
	})
}
