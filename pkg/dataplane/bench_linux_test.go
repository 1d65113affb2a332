package dataplane

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkSendPath compares the cost per datagram of the send path of the
// two datapaths on loopback, in the same run: plain writes each datagram
// with one sendto (its Tx.Send is WriteTo); gso queues a read batch's worth
// (64) through Tx.Send and flushes it. The receivers are never read, so
// the kernel drops at their full queues: the cost measured is the sender's
// (syscall, UDP/IP output, loopback delivery up to the socket queue).
//
//	go test -run '^$' -bench SendPath -count 6 ./pkg/dataplane
//
// Variants: "1flow" sends every datagram to one destination (UDP_SEGMENT
// runs for gso); "64flows" cycles through 64 destinations, so nothing
// coalesces and gso uses sendmmsg.
func BenchmarkSendPath(b *testing.B) {
	const batch = 64
	for _, size := range []int{120, 1200} {
		for _, flows := range []int{1, 64} {
			for _, name := range []string{"plain", "gso"} {
				b.Run(fmt.Sprintf("%dflows/%dB/%s", flows, size, name), func(b *testing.B) {
					sinks := make([]netip.AddrPort, flows)
					for i := range sinks {
						s := udpSock(b, "127.0.0.1:0")
						s.SetReadBuffer(1 << 20)
						sinks[i] = addrOf(s)
					}
					p := make([]byte, size)
					nop := func(Tx, Conn, netip.AddrPort, []byte) {}
					var send func(i int)
					var finish func()
					var stats func() Stats
					switch name {
					case "plain":
						dp := NewPlain()
						b.Cleanup(func() { dp.Close() })
						c, err := dp.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), nop)
						if err != nil {
							b.Fatal(err)
						}
						send = func(i int) { plainTx{}.Send(c, p, sinks[i%flows]) }
						finish = func() {}
						stats = dp.Stats
					case "gso":
						dp := newGSO(b, GSOOptions{})
						c, err := dp.OpenRelay(netip.MustParseAddrPort("127.0.0.1:0"), nop)
						if err != nil {
							b.Fatal(err)
						}
						st := dp.getState(c.(*gsoConn).socks[0], true)
						b.Cleanup(func() { dp.putState(st) })
						send = func(i int) {
							st.Send(c, p, sinks[i%flows])
							if i%batch == batch-1 {
								st.flush()
							}
						}
						finish = st.flush
						stats = dp.Stats
					}
					b.SetBytes(int64(size))
					b.ReportAllocs()
					i := 0
					for b.Loop() {
						send(i)
						i++
					}
					finish()
					s := stats()
					if s.TxPackets+s.TxErrors != uint64(i) {
						b.Fatalf("sent %d + errors %d of %d", s.TxPackets, s.TxErrors, i)
					}
					b.ReportMetric(float64(s.TxGSOSends+s.TxMmsgCalls+s.TxSingleSends)/float64(i), "syscalls/datagram")
				})
			}
		}
	}
}
