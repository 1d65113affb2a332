package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
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

	"github.com/hybridrelay/hybridrelay/internal/testutil"
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

// recordingTCPProxy forwards TCP connections to a server and records the
// client->server byte stream of each.
type recordingTCPProxy struct {
	ln     net.Listener
	server netip.AddrPort

	mu      sync.Mutex
	streams []*bytes.Buffer
}

func newRecordingTCPProxy(t *testing.T, server netip.AddrPort) *recordingTCPProxy {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingTCPProxy{ln: ln, server: server}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp4", server.String())
			if err != nil {
				c.Close()
				continue
			}
			buf := &bytes.Buffer{}
			p.mu.Lock()
			p.streams = append(p.streams, buf)
			p.mu.Unlock()
			go func() {
				defer up.Close()
				b := make([]byte, 65536)
				for {
					n, err := c.Read(b)
					if n > 0 {
						p.mu.Lock()
						buf.Write(b[:n])
						p.mu.Unlock()
						up.Write(b[:n])
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer c.Close()
				io.Copy(c, up)
			}()
		}
	}()
	return p
}

func (p *recordingTCPProxy) addr() netip.AddrPort { return p.ln.Addr().(*net.TCPAddr).AddrPort() }

func (p *recordingTCPProxy) records() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out [][]byte
	for _, b := range p.streams {
		out = append(out, append([]byte(nil), b.Bytes()...))
	}
	return out
}

func writeCapture(t *testing.T, name, source string, recs [][]byte) {
	var b strings.Builder
	fmt.Fprintf(&b, "# source: %s\n", source)
	fmt.Fprintf(&b, "# against hybridrelay on 127.0.0.1, recorded by TestCaptureRealClients (HYBRIDRELAY_CAPTURE=1)\n")
	fmt.Fprintf(&b, "# credentials: user=%s password=%s realm=%s; REST secret=%s (REST user part: bob)\n", testUser, testPass, testRealm, captureSecret)
	if strings.HasSuffix(name, ".streamhex") {
		fmt.Fprintf(&b, "# one client->server TCP byte stream (one connection) per line, hex\n")
	} else {
		fmt.Fprintf(&b, "# one client->server datagram per line, hex\n")
	}
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
		testutil.WaitFor(t, 3*time.Second, "channel", func() bool {
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
		{"turnutils_uclient_tcp.streamhex", "coturn turnutils_uclient -t (TCP), channel mode", []string{"-t", "-u", testUser, "-w", testPass}},
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
			var proxy interface {
				addr() netip.AddrPort
				records() [][]byte
			}
			if strings.HasSuffix(mode.file, ".streamhex") {
				proxy = newRecordingTCPProxy(t, s.addr("tcp"))
			} else {
				proxy = newRecordingProxy(t, s.addr("udp"))
			}
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
func readCaptures(t testing.TB) map[string][][]byte { return readHexLines(t, "*.hex") }

// readStreamCaptures returns every TCP stream of testdata/*.streamhex.
func readStreamCaptures(t testing.TB) map[string][][]byte { return readHexLines(t, "*.streamhex") }

func readHexLines(t testing.TB, glob string) map[string][][]byte {
	files, _ := filepath.Glob(filepath.Join("testdata", glob))
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

// TestCapturedStreams splits the recorded TCP streams of a real client
// with the server's framing: every frame must be a STUN message that
// verifies, or padded ChannelData, and the frames must use up the stream.
// Replayed over a new connection, every request is answered.
func TestCapturedStreams(t *testing.T) {
	streams := readStreamCaptures(t)
	if len(streams) == 0 {
		t.Fatal("no stream captures in testdata")
	}
	key := longTermKey(testUser, testRealm, testPass, pwAlgMD5)
	s := startServer(t)
	for name, conns := range streams {
		for ci, stream := range conns {
			buf := make([]byte, 4+65535+3)
			br := bytes.NewReader(stream)
			var requests [][12]byte
			counts := map[string]int{}
			for {
				frame, err := readFrame(br, buf, 65535)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%s conn %d: framing: %v", name, ci, err)
				}
				if frame[0]>>6 == 1 {
					counts["channel_data"]++
					if len(frame)%4 != 0 {
						t.Errorf("%s: unpadded ChannelData over TCP", name)
					}
					continue
				}
				m := &stun.Message{Raw: append([]byte(nil), frame...)}
				if err := m.Decode(); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				counts[m.Type.String()]++
				if m.Contains(stun.AttrMessageIntegrity) && stun.MessageIntegrity(key).Check(m) != nil {
					t.Errorf("%s: %s does not verify", name, m.Type)
				}
				if m.Type.Class == stun.ClassRequest {
					requests = append(requests, m.TransactionID)
				}
			}
			t.Logf("%s conn %d: %v", name, ci, counts)
			c := dialRaw(t, "tcp", s.addr("tcp"))
			c.write(stream)
			for _, id := range requests {
				if c.readSTUN(id, 2*time.Second) == nil {
					t.Errorf("%s conn %d: replayed request not answered", name, ci)
				}
			}
		}
	}
}
