package control

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

// Options are the run-time collaborators of a Server.
type Options struct {
	// Datapath serves the UDP listeners and the relay sockets. Required.
	Datapath dataplane.Datapath
	// Offload is the kernel channel table (the XDP fast path); nil means
	// every packet takes the userspace path.
	Offload KernelChannels
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// StateFile, when set, is where allocation state is persisted so a
	// restarted daemon re-adopts live allocations (see doc.go).
	StateFile string
}

// transport is the client-facing transport of a 5-tuple.
type transport uint8

const (
	tUDP transport = iota
	tTCP
	tTLS
	tDTLS // RFC 8656 section 3 and RFC 7350: TURN over DTLS over UDP
)

func (t transport) String() string {
	switch t {
	case tTCP:
		return "tcp"
	case tTLS:
		return "tls"
	case tDTLS:
		return "dtls"
	}
	return "udp"
}

// fiveTuple identifies an allocation (RFC 8656 section 2: client address,
// server address and transport). For TCP/TLS the connection is the tuple.
type fiveTuple struct {
	proto  transport
	client netip.AddrPort
	server netip.AddrPort
}

// janitorInterval is how often lifetimes are enforced; the kernel path
// enforces expiry on every packet on its own.
const janitorInterval = 250 * time.Millisecond

// clockInterval is the resolution of Server.coarseNow.
const clockInterval = 5 * time.Millisecond

// coarseNow is the per-packet path's clock (at most clockInterval behind).
func (s *Server) coarseNow() time.Time { return time.Unix(0, s.clock.Load()) }

func (s *Server) runClock() {
	defer s.wg.Done()
	t := time.NewTicker(clockInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.clock.Store(now.UnixNano())
		}
	}
}

// Server is a STUN/TURN server (RFC 8489, RFC 8656).
type Server struct {
	cfg      Config
	dp       dataplane.Datapath
	off      KernelChannels
	log      *slog.Logger
	relayIPs []netip.Addr
	nonces   *nonceSource
	limiter  *ipLimiter
	trusted  *trustedTuples
	stats    counters

	creds   atomic.Pointer[credentials]
	tlsCert atomic.Pointer[tls.Certificate]

	// policy is replaced once in Start, when the bound listener ports are
	// known; read per packet.
	policy atomic.Pointer[peerPolicy]

	// Per-packet lookups: no global lock.
	allocs sync.Map // fiveTuple -> *allocation
	relays sync.Map // netip.AddrPort -> *relaySock (live relay sockets, for hairpin)

	quotaMu    sync.Mutex // guards perUser and quotaTotal
	perUser    map[string]int
	quotaTotal int

	ports     portPool    // relay ports; locks itself
	offFull   atomic.Bool // ErrOffloadFull logged once
	offErrLog atomic.Bool // other offload errors logged once

	state stateWriter
	drain drainState
	// janitorTick is when the janitor last ran (unix ns), for Live.
	janitorTick atomic.Int64
	nat         natDiscovery // RFC 5780 (natdiscovery.go)
	tcp         tcpState     // RFC 6062 (tcpalloc.go)

	lnMu      sync.Mutex // guards the fields below
	started   bool
	closed    bool
	udpConns  []dataplane.Conn
	streamLns []net.Listener
	streams   map[*streamConn]struct{}
	addrs     []ListenerSpec

	// clock is a coarse wall clock (unix ns) for the per-packet path,
	// updated every clockInterval: reading the time was a quarter of the
	// per-packet cost. Expiry checks on that path compare against it,
	// so relaying stops at most clockInterval after a lifetime ends.
	clock atomic.Int64

	wg      sync.WaitGroup // listener accept loops, stream connections, janitor
	closers sync.WaitGroup // relay socket closes in flight
	done    chan struct{}
}

// NewServer validates cfg and returns a server that is not listening yet.
// Zero lifetimes and limits take the DefaultConfig values; invalid values
// are errors naming the field.
func NewServer(cfg Config, opts Options) (*Server, error) {
	if opts.Datapath == nil {
		return nil, errors.New("new server: options.Datapath is required")
	}
	if err := normalizeConfig(&cfg); err != nil {
		return nil, fmt.Errorf("new server: %w", err)
	}
	s := &Server{
		cfg:     cfg,
		dp:      opts.Datapath,
		off:     opts.Offload,
		log:     opts.Logger,
		limiter: newIPLimiter(cfg.UnauthRate, cfg.UnauthBurst, 65536),
		trusted: newTrustedTuples(cfg.UnauthRate, cfg.UnauthBurst, 65536),
		perUser: map[string]int{},
		streams: map[*streamConn]struct{}{},
		done:    make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.ports.init(cfg.MinPort, cfg.MaxPort, s.openRelay, s.releaseRelay)
	s.tcp.init()
	s.clock.Store(time.Now().UnixNano())
	s.state.path = opts.StateFile
	var err error
	if s.nonces, err = newNonceSource(); err != nil {
		return nil, fmt.Errorf("new server: %w", err)
	}
	s.creds.Store(newCredentials(cfg.Users, cfg.AuthSecrets))
	if NeedsTLS(cfg.Listeners) {
		if err := s.ReloadTLS(); err != nil {
			return nil, fmt.Errorf("new server: %w", err)
		}
	}
	s.relayIPs = relayIPsOf(&cfg)
	if err := s.SetAlternateServers(cfg.AlternateServers); err != nil {
		return nil, fmt.Errorf("new server: %w", err)
	}
	return s, nil
}

// Start opens every listener. On error the listeners opened so far are
// closed again and the error names the address.
func (s *Server) Start() error {
	s.lnMu.Lock()
	if s.started || s.closed {
		s.lnMu.Unlock()
		return errors.New("start: server already started or closed")
	}
	s.started = true
	s.lnMu.Unlock()
	if _, ok := s.off.(Metering); s.off != nil && !ok && s.cfg.BandwidthLimit > 0 {
		s.log.Warn("bandwidth-limit is set and this kernel path cannot meter: limited channels stay on the userspace path", "bandwidth_limit", s.cfg.BandwidthLimit)
	}

	// The policy needs the final listener ports, but UDP listeners serve
	// as soon as they are opened: bind first with a provisional policy,
	// then swap in the final one before any allocation can exist (an
	// allocation needs a completed Allocate, which needs the policy only
	// for later permissions).
	host := hostAddrs()
	s.policy.Store(newPeerPolicy(&s.cfg, s.relayIPs, s.cfg.Listeners, host))
	var addrs []ListenerSpec
	for _, l := range s.cfg.Listeners {
		bound, err := s.openListener(l)
		if err != nil {
			s.Close()
			return fmt.Errorf("start: listen %s %s: %w", l.Network, l.Addr, err)
		}
		addrs = append(addrs, ListenerSpec{Network: l.Network, Addr: bound})
	}
	if err := s.openNATDiscovery(addrs); err != nil {
		s.Close()
		return fmt.Errorf("start: %w", err)
	}
	// The RFC 5780 alternate sockets are ours too: never a peer.
	pol := newPeerPolicy(&s.cfg, s.relayIPs, append(slices.Clip(addrs), s.natListeners()...), host)
	s.lnMu.Lock()
	s.addrs = addrs
	s.policy.Store(pol)
	s.lnMu.Unlock()

	if err := s.restoreState(); err != nil {
		s.log.Warn("restore allocation state", "file", s.state.path, "err", err)
	}
	s.janitorTick.Store(time.Now().UnixNano())
	s.wg.Add(2)
	go s.janitor()
	go s.runClock()
	s.log.Info("turn server started", "listeners", addrs, "relay_ips", s.relayIPs,
		"ports", fmt.Sprintf("%d-%d", s.cfg.MinPort, s.cfg.MaxPort), "datapath", s.dp.Name(),
		"offload", s.off != nil)
	return nil
}

func (s *Server) openListener(l ListenerSpec) (netip.AddrPort, error) {
	switch l.Network {
	case "udp":
		c, err := s.dp.Listen(l.Addr, s.udpHandler)
		if err != nil {
			return netip.AddrPort{}, err
		}
		s.lnMu.Lock()
		s.udpConns = append(s.udpConns, c)
		s.lnMu.Unlock()
		return c.LocalAddr(), nil
	case "tcp", "tls":
		network := "tcp4"
		if l.Addr.Addr().Is6() && !l.Addr.Addr().Is4In6() {
			network = "tcp6"
		}
		ln, err := net.Listen(network, l.Addr.String())
		if err != nil {
			return netip.AddrPort{}, err
		}
		bound := ln.Addr().(*net.TCPAddr).AddrPort()
		proto := tTCP
		if l.Network == "tls" {
			proto = tTLS
			ln = tls.NewListener(ln, &tls.Config{
				MinVersion: tls.VersionTLS12,
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
					return s.tlsCert.Load(), nil
				},
			})
		}
		s.lnMu.Lock()
		s.streamLns = append(s.streamLns, ln)
		s.lnMu.Unlock()
		s.wg.Add(1)
		go s.acceptLoop(ln, proto)
		return netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port()), nil
	case "dtls":
		return s.openDTLS(l.Addr)
	}
	return netip.AddrPort{}, fmt.Errorf("unknown network %q", l.Network)
}

// Addrs returns the bound listener addresses (real ports when 0 was
// configured), in configuration order.
func (s *Server) Addrs() []ListenerSpec {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	return slices.Clone(s.addrs)
}

// RelayIPs returns the addresses relay sockets are opened on.
func (s *Server) RelayIPs() []netip.Addr { return slices.Clone(s.relayIPs) }

// SetCredentials replaces static users and REST secrets (SIGHUP). Existing
// allocations keep running; their next request is checked against the new
// credentials.
func (s *Server) SetCredentials(users map[string]string, secrets []string) {
	s.creds.Store(newCredentials(users, secrets))
}

// ReloadTLS re-reads the certificate and key files and swaps them in
// atomically; handshakes in progress keep the old certificate.
func (s *Server) ReloadTLS() error {
	if s.cfg.TLSCertFile == "" && s.cfg.TLSKeyFile == "" {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("reload tls: tls_cert_file %s / tls_key_file %s: %w", s.cfg.TLSCertFile, s.cfg.TLSKeyFile, err)
	}
	s.tlsCert.Store(&cert)
	return nil
}

// Close stops the listeners, removes every offload entry and releases the
// allocations' relay sockets. With a StateFile, the allocations that were
// live are saved first, so a new process can re-adopt them.
func (s *Server) Close() error { return s.Shutdown(false) }

// Shutdown stops the server. keepOffload=true is for a restart without
// dropping media: kernel entries stay installed (they expire on their own
// in the kernel), the state file is written, and a new Server with the same
// StateFile re-adopts the allocations and reinstalls (replaces) the
// entries. keepOffload=false is Close.
func (s *Server) Shutdown(keepOffload bool) error {
	s.lnMu.Lock()
	if s.closed {
		s.lnMu.Unlock()
		return nil
	}
	s.closed = true
	udp := s.udpConns
	lns := s.streamLns
	streams := make([]*streamConn, 0, len(s.streams))
	for c := range s.streams {
		streams = append(streams, c)
	}
	s.lnMu.Unlock()
	close(s.done)

	var errs []error
	for _, c := range udp {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close udp listener: %w", err))
		}
	}
	for _, ln := range lns {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close stream listener: %w", err))
		}
	}
	for _, c := range streams {
		c.close()
	}
	s.closeNATDiscovery()
	s.closeAllTCP()
	s.wg.Wait()
	// Listeners are down: no request can change state any more.
	if err := s.saveState(true); err != nil {
		errs = append(errs, err)
	}
	s.allocs.Range(func(_, v any) bool {
		v.(*allocation).shutdown(keepOffload)
		return true
	})
	s.ports.closeReservations()
	s.closers.Wait()
	return errors.Join(errs...)
}

// recoverPacket is the per-packet last resort: a bug handling one datagram
// must not take the relay down. It is counted and logged.
func (s *Server) recoverPacket() {
	if r := recover(); r != nil {
		n := s.stats.panics.Add(1)
		if n <= 10 {
			s.log.Error("recovered panic handling a packet", "panic", r, "stack", string(debug.Stack()))
		}
	}
}

// udpHandler serves datagrams arriving on a UDP listener.
func (s *Server) udpHandler(tx dataplane.Tx, c dataplane.Conn, from netip.AddrPort, p []byte) {
	defer s.recoverPacket()
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	local := c.LocalAddr()
	t := fiveTuple{proto: tUDP, client: from, server: netip.AddrPortFrom(local.Addr().Unmap(), local.Port())}
	if len(p) >= 4 && p[0]>>6 == 1 {
		// ChannelData, the hot path: no reply, so no sink to allocate.
		s.channelDataFromClient(tx, t, p)
		return
	}
	s.handlePacket(tx, &udpSink{conn: c, addr: from}, t, p)
}

// handlePacket demultiplexes STUN and ChannelData by the first two bits
// (RFC 8656 section 12: 0b00 STUN, 0b01 ChannelData).
func (s *Server) handlePacket(tx dataplane.Tx, sink clientSink, t fiveTuple, p []byte) {
	if len(p) < 4 {
		s.stats.dropMalformed.Add(1)
		return
	}
	switch p[0] >> 6 {
	case 0:
		s.handleSTUN(tx, sink, t, p)
	case 1:
		s.channelDataFromClient(tx, t, p)
	default:
		s.stats.dropMalformed.Add(1)
	}
}

// janitor enforces lifetimes (allocations, permissions, channels,
// reservations), prunes the rate limiter and writes debounced state.
func (s *Server) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	lastPrune, lastSave := time.Now(), time.Now()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.janitorTick.Store(now.UnixNano())
			s.allocs.Range(func(_, v any) bool {
				v.(*allocation).expire(now)
				return true
			})
			s.ports.expireReservations(now)
			if now.Sub(lastPrune) > 5*time.Second {
				s.limiter.prune(now)
				s.trusted.prune(now, func(t fiveTuple) bool { return s.lookup(t) != nil })
				s.pollKernel(now)
				lastPrune = now
			}
			// State is rewritten whole, so at most once per second.
			if now.Sub(lastSave) >= stateSaveInterval {
				if err := s.saveState(false); err != nil {
					s.log.Warn("save allocation state", "err", err)
				}
				lastSave = now
			}
		}
	}
}
