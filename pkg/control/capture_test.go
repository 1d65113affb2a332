package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// The files testdata/*.hex hold client->server datagrams of real TURN
// clients (pion/turn v4, coturn's turnutils_uclient) talking to this
// server, recorded by TestCaptureRealClients through a UDP proxy. They seed
// the fuzz targets and TestCapturedMessages checks that this server's key
// derivation verifies every signed message and that none of them upsets
// the handler.
//
// Regenerate with:
//
//	HYBRIDRELAY_CAPTURE=1 go test ./pkg/control -run TestCaptureRealClients

// recordingProxy forwards UDP between clients and a server and records
// what clients send.
type recordingProxy struct {
	ln     *net.UDPConn
	server netip.AddrPort

	mu   sync.Mutex
	up   map[netip.AddrPort]*net.UDPConn
	recs [][]byte
}

func newRecordingProxy(t *testing.T, server netip.AddrPort) *recordingProxy {
	ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln, server: server, up: map[netip.AddrPort]*net.UDPConn{}}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, u := range p.up {
			u.Close()
		}
		p.mu.Unlock()
	})
	go p.run()
	return p
}

func (p *recordingProxy) addr() netip.AddrPort { return p.ln.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *recordingProxy) run() {
	buf := make([]byte, 65536)
	for {
		n, from, err := p.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.recs = append(p.recs, append([]byte(nil), buf[:n]...))
		u := p.up[from]
		if u == nil {
			u, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(p.server))
			if err != nil {
				p.mu.Unlock()
				continue
			}
			p.up[from] = u
			go func(u *net.UDPConn, client netip.AddrPort) {
				b := make([]byte, 65536)
				for {
					n, err := u.Read(b)
					if err != nil {
						return
					}
					p.ln.WriteToUDPAddrPort(b[:n], client)
				}
			}(u, from)
		}
		p.mu.Unlock()
		u.Write(buf[:n])
	}
}

func (p *recordingProxy) records() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.recs...)
}

func writeCapture(t *testing.T, name, source string, recs [][]byte) {
	var b strings.Builder
	fmt.Fprintf(&b, "# source: %s\n", source)
	fmt.Fprintf(&b, "# against hybridrelay on 127.0.0.1, recorded by TestCaptureRealClients (HYBRIDRELAY_CAPTURE=1)\n")
	fmt.Fprintf(&b, "# credentials: user=%s password=%s realm=%s; REST secret=%s (REST user part: bob)\n", testUser, testPass, testRealm, captureSecret)
	fmt.Fprintf(&b, "# one client->server datagram per line, hex\n")
	for _, r := range recs {
		b.WriteString(hex.EncodeToString(r) + "\n")
	}
	if err := os.WriteFile(filepath.Join("testdata", name), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d datagrams", name, len(recs))
}

const captureSecret = "capture-secret"

func TestCaptureRealClients(t *testing.T) {
	if os.Getenv("HYBRIDRELAY_CAPTURE") == "" {
		t.Skip("set HYBRIDRELAY_CAPTURE=1 to re-record testdata/*.hex")
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, func(c *Config, _ *Options) { c.AuthSecrets = []string{captureSecret} })

	t.Run("pion", func(t *testing.T) {
		proxy := newRecordingProxy(t, s.addr("udp"))
		peer := newPeer(t, "127.0.0.1:0")
		pc := newPionClient(t, "udp", proxy.addr(), testUser, testPass)
		exchange(t, pc, peer, 3, "capture")
		waitFor(t, 3*time.Second, "channel", func() bool {
			as := s.Allocations()
			return len(as) == 1 && len(as[0].Channels) == 1
		})
		exchange(t, pc, peer, 3, "capture-channel")
		if _, err := pc.c.SendBindingRequest(); err != nil {
			t.Fatal(err)
		}
		pc.relay.Close() // Refresh with LIFETIME 0
		time.Sleep(200 * time.Millisecond)
		writeCapture(t, "pion_turn_v4_udp.hex", "pion/turn v4.1.4 client (turn.NewClient, Allocate, WriteTo, ReadFrom, Close)", proxy.records())
	})

	for _, mode := range []struct {
		file, what string
		args       []string
	}{
		{"turnutils_uclient_channel.hex", "coturn turnutils_uclient, channel mode", []string{"-u", testUser, "-w", testPass}},
		{"turnutils_uclient_send.hex", "coturn turnutils_uclient -s (Send indications)", []string{"-s", "-u", testUser, "-w", testPass}},
		{"turnutils_uclient_rest.hex", "coturn turnutils_uclient -W (TURN REST secret), DONT-FRAGMENT (-g)", []string{"-g", "-u", "bob", "-W", captureSecret}},
	} {
		t.Run(mode.file, func(t *testing.T) {
			if _, err := exec.LookPath("turnutils_uclient"); err != nil {
				t.Skip("turnutils_uclient not installed (Debian package coturn)")
			}
			peerPort := freeUDPPort(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			peer := exec.CommandContext(ctx, "turnutils_peer", "-L", "127.0.0.1", "-p", fmt.Sprint(peerPort))
			if err := peer.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { peer.Process.Kill(); peer.Wait() }()
			proxy := newRecordingProxy(t, s.addr("udp"))
			args := append([]string{"-n", "5", "-m", "1", "-l", "120", "-c",
				"-p", fmt.Sprint(proxy.addr().Port()), "-e", "127.0.0.1", "-r", fmt.Sprint(peerPort)}, mode.args...)
			args = append(args, "127.0.0.1")
			out, err := exec.CommandContext(ctx, "turnutils_uclient", args...).CombinedOutput()
			if err != nil {
				for _, r := range proxy.records() {
					t.Logf("%x", r)
				}
				t.Fatalf("turnutils_uclient %v: %v\n%s", args, err, out)
			}
			if !bytes.Contains(out, []byte("Total lost packets 0")) {
				t.Logf("uclient output:\n%s", out)
			}
			writeCapture(t, mode.file, mode.what+" ("+firstLine(exec.Command("dpkg-query", "-W", "coturn"))+")", proxy.records())
		})
	}
}

func firstLine(c *exec.Cmd) string {
	out, _ := c.Output()
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

func freeUDPPort(t *testing.T) int {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// readCaptures returns every datagram of testdata/*.hex.
func readCaptures(t testing.TB) map[string][][]byte {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.hex"))
	out := map[string][][]byte{}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || line[0] == '#' {
				continue
			}
			b, err := hex.DecodeString(line)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out[filepath.Base(f)] = append(out[filepath.Base(f)], b)
		}
		fh.Close()
	}
	return out
}

// TestCapturedMessages checks every recorded real-client datagram: STUN
// ones decode, their FINGERPRINT is valid, their MESSAGE-INTEGRITY verifies
// under the key this server derives for the recorded credentials, and the
// TURN methods a client sent are all there; ChannelData frames are well
// formed. Then all of them are replayed into a live server, which must
// answer every request (with 438: the nonces are from another process) and
// stay healthy.
func TestCapturedMessages(t *testing.T) {
	caps := readCaptures(t)
	if len(caps) == 0 {
		t.Fatal("no captures in testdata")
	}
	creds := newCredentials(map[string]string{testUser: testPass}, []string{captureSecret})
	for name, msgs := range caps {
		t.Run(name, func(t *testing.T) {
			methods := map[string]int{}
			signed := 0
			for i, b := range msgs {
				if b[0]>>6 == 1 {
					if len(b) < 4 || 4+int(binary.BigEndian.Uint16(b[2:])) > len(b) {
						t.Errorf("datagram %d: bad ChannelData", i)
					}
					methods["channel_data"]++
					continue
				}
				m := &stun.Message{Raw: append([]byte(nil), b...)}
				if err := m.Decode(); err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				methods[m.Type.String()]++
				if m.Contains(stun.AttrFingerprint) {
					if err := stun.Fingerprint.Check(m); err != nil {
						t.Errorf("datagram %d (%s): fingerprint: %v", i, m.Type, err)
					}
				}
				if !m.Contains(stun.AttrMessageIntegrity) {
					continue
				}
				var u stun.Username
				var r stun.Realm
				if u.GetFrom(m) != nil || r.GetFrom(m) != nil {
					t.Fatalf("datagram %d: signed without USERNAME/REALM", i)
				}
				// The REST credentials' expiry has passed by now; derive
				// the password directly.
				pws, _ := creds.passwords(string(u), time.Unix(0, 0))
				ok := false
				for _, pw := range pws {
					if stun.MessageIntegrity(longTermKey(string(u), string(r), pw, pwAlgMD5)).Check(m) == nil {
						ok = true
					}
				}
				if !ok {
					t.Errorf("datagram %d (%s, user %q): MESSAGE-INTEGRITY does not verify", i, m.Type, u)
				}
				signed++
			}
			t.Logf("%v, %d signed", methods, signed)
			if methods["Allocate request"] == 0 || signed == 0 {
				t.Errorf("capture without a signed Allocate: %v", methods)
			}
		})
	}

	s := startServer(t, func(c *Config, _ *Options) { c.AuthSecrets = []string{captureSecret} })
	c := dialRaw(t, "udp", s.addr("udp"))
	for _, msgs := range caps {
		for _, b := range msgs {
			c.write(b)
			if b[0]>>6 != 0 {
				continue
			}
			m := &stun.Message{Raw: append([]byte(nil), b...)}
			if m.Decode() != nil || m.Type.Class != stun.ClassRequest {
				continue
			}
			resp := c.readSTUN(m.TransactionID, 2*time.Second)
			want := 438
			if m.Type.Method == methodBinding {
				want = 0
			} else if !m.Contains(stun.AttrMessageIntegrity) {
				want = 401
			}
			if code(resp) != want {
				t.Errorf("replayed %s: code %d, want %d", m.Type, code(resp), want)
			}
		}
	}
	if st := s.Stats(); st.Drops["panics"] != 0 {
		t.Errorf("panics: %d", st.Drops["panics"])
	}
}
