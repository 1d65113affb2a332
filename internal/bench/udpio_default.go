//go:build !linux

package bench

import (
	"errors"
	"net"
	"net/netip"
	"os"
)

// batchConn is the portable fallback: one datagram per system call.
type batchConn struct {
	conn  *net.UDPConn
	buf   []byte
	out   []datagram
	Stats IOStats
}

func newBatchConn(c *net.UDPConn, batch, bufSize int) (*batchConn, error) {
	return &batchConn{conn: c, buf: make([]byte, bufSize), out: make([]datagram, 0, 1)}, nil
}

func (b *batchConn) enableGRO() bool { return false }

func setBuffers(c *net.UDPConn, bytes int) {
	_ = c.SetReadBuffer(bytes)
	_ = c.SetWriteBuffer(bytes)
}

func (b *batchConn) ReadBatch() ([]datagram, error) {
	n, from, err := b.conn.ReadFromUDPAddrPort(b.buf)
	if err != nil {
		return nil, err
	}
	b.Stats.ReadCalls++
	b.out = append(b.out[:0], datagram{b: b.buf[:n], from: from})
	return b.out, nil
}

func (b *batchConn) WriteSegments(buf []byte, segSize int, dst netip.AddrPort) (int, error) {
	sent := 0
	for off := 0; off < len(buf); off += segSize {
		end := min(off+segSize, len(buf))
		var err error
		if dst.IsValid() {
			_, err = b.conn.WriteToUDPAddrPort(buf[off:end], dst)
		} else {
			_, err = b.conn.Write(buf[off:end])
		}
		if err != nil {
			return sent, err
		}
		sent++
	}
	b.Stats.MmsgSends++
	return sent, nil
}

func errClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}
