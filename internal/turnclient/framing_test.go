package turnclient

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

func TestRESTCredentials(t *testing.T) {
	// Expected passwords computed independently with
	// `printf %s USERNAME | openssl dgst -sha1 -hmac SECRET -binary | base64`.
	tests := []struct {
		secret, user string
		expiry       int64
		wantUser     string
		wantPass     string
	}{
		{"s3cret", "alice", 1700000000, "1700000000:alice", "TtElzSjT0GdnTQ9xdcRNxx96yQs="},
		{"k", "", 1700000000, "1700000000", "0u52rTEMJOGIAKCmfACoCmO6/V4="},
	}
	for _, tt := range tests {
		c := RESTCredentials(tt.secret, tt.user, time.Unix(tt.expiry, 0))
		if c.Username != tt.wantUser || c.Password != tt.wantPass {
			t.Errorf("RESTCredentials(%q, %q) = %+v, want %s / %s", tt.secret, tt.user, c, tt.wantUser, tt.wantPass)
		}
	}
}

func TestChannelDataRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		ch   uint16
		data []byte
	}{
		{"empty", 0x4000, nil},
		{"one byte", 0x4001, []byte{7}},
		{"unaligned", 0x4fff, bytes.Repeat([]byte{0xab}, 117)},
		{"mtu", 0x4123, bytes.Repeat([]byte{1}, 1200)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := AppendChannelData(nil, tt.ch, tt.data)
			if len(b) != 4+len(tt.data) {
				t.Fatalf("len %d, want %d (no padding over UDP)", len(b), 4+len(tt.data))
			}
			if !IsChannelData(b) {
				t.Fatal("IsChannelData false")
			}
			ch, data, err := ParseChannelData(b)
			if err != nil || ch != tt.ch || !bytes.Equal(data, tt.data) {
				t.Fatalf("parse: ch %x data %d bytes err %v", ch, len(data), err)
			}
			// Receivers ignore padding past the length (RFC 8656 12.5).
			padded := append(b, 0, 0, 0)
			if _, data, err := ParseChannelData(padded); err != nil || !bytes.Equal(data, tt.data) {
				t.Fatalf("padded parse: %v", err)
			}
			hdr := make([]byte, 4)
			PutChannelDataHeader(hdr, tt.ch, len(tt.data))
			if !bytes.Equal(hdr, b[:4]) {
				t.Fatalf("header %x, want %x", hdr, b[:4])
			}
		})
	}
}

func TestParseChannelDataErrors(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"short", []byte{0x40, 0}, ErrTruncated},
		{"length past end", []byte{0x40, 0, 0, 5, 1, 2}, ErrTruncated},
		{"stun", []byte{0x00, 0x01, 0, 0}, ErrNotChannelData},
		{"reserved range", []byte{0x50, 0x00, 0, 0}, ErrNotChannelData},
	}
	for _, tt := range tests {
		if _, _, err := ParseChannelData(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestSendIndicationEncoding(t *testing.T) {
	for _, peer := range []netip.AddrPort{
		netip.MustParseAddrPort("198.18.1.1:9000"),
		netip.MustParseAddrPort("[2001:2:0:1::1]:9000"),
	} {
		data := []byte("hello, peer")
		m, err := BuildSendIndication(peer, data)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(m.Raw), SendIndicationOverhead(peer.Addr().Is6())+len(data)+1; got != want {
			// 11 bytes of data pad to 12.
			t.Fatalf("%v: size %d, want %d", peer, got, want)
		}
		// Decode with pion independently.
		d := &stun.Message{Raw: append([]byte(nil), m.Raw...)}
		if err := d.Decode(); err != nil {
			t.Fatal(err)
		}
		if d.Type != stun.NewType(stun.MethodSend, stun.ClassIndication) {
			t.Fatalf("type %v", d.Type)
		}
		var x stun.XORMappedAddress
		if err := x.GetFromAs(d, stun.AttrXORPeerAddress); err != nil {
			t.Fatal(err)
		}
		if got, _ := addrPortOf(x); got != peer {
			t.Fatalf("peer %v, want %v", got, peer)
		}
		got, _ := d.Get(stun.AttrData)
		if !bytes.Equal(got, data) {
			t.Fatalf("data %q", got)
		}
		// The same bytes, re-typed as a Data indication, parse back.
		d.SetType(stun.NewType(stun.MethodData, stun.ClassIndication))
		d.WriteHeader()
		p, pd, err := ParseDataIndication(d.Raw)
		if err != nil || p != peer || !bytes.Equal(pd, data) {
			t.Fatalf("ParseDataIndication: %v %v %q", err, p, pd)
		}
		if _, _, err := ParseDataIndication(m.Raw); err == nil {
			t.Fatal("a send indication parsed as a data indication")
		}
	}
}

func FuzzParseChannelData(f *testing.F) {
	f.Add([]byte{0x40, 0x00, 0x00, 0x02, 1, 2})
	f.Add([]byte{0x40, 0x00, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		ch, data, err := ParseChannelData(b)
		if err != nil {
			return
		}
		if !ValidChannel(ch) || len(data) > len(b)-4 {
			t.Fatalf("accepted ch %x with %d data bytes from %d", ch, len(data), len(b))
		}
		if !bytes.Equal(AppendChannelData(nil, ch, data), b[:4+len(data)]) {
			t.Fatal("re-encoding differs")
		}
	})
}

func FuzzParseDataIndication(f *testing.F) {
	m, _ := BuildSendIndication(netip.MustParseAddrPort("198.18.1.1:9"), []byte("x"))
	m.SetType(stun.NewType(stun.MethodData, stun.ClassIndication))
	m.WriteHeader()
	f.Add(m.Raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = ParseDataIndication(b) // must not panic
	})
}
