package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hybridrelay/hybridrelay/internal/turnclient"
)

// TURNConfig describes the allocations a load client makes.
type TURNConfig struct {
	Server netip.AddrPort
	// Exactly one of Users (long-term NAME:PASSWORD pairs, used round
	// robin) and Secret (REST credentials, one username per allocation:
	// "<expiry>:<UserPrefix><i>") is set.
	Users      []turnclient.Credentials
	Secret     string
	UserPrefix string
	// Allocations to make (>= 1).
	Allocations int
	// Peer is where data goes: each allocation gets a channel to it (or a
	// permission, with SendIndications).
	Peer netip.AddrPort
	// SendIndications: CreatePermission only and Send indications; else
	// ChannelBind and ChannelData.
	SendIndications bool
	// Local is the client address to bind (zero: the unspecified address
	// of the server's family).
	Local netip.Addr
	// Lifetime asked for each allocation (0: server default).
	Lifetime time.Duration
	// Parallel setup transactions (default 16).
	Parallel int
	// Timeout for one transaction (default 5 s).
	Timeout time.Duration
	// Do runs fn where sockets must be made (inside a network namespace);
	// nil runs it directly.
	Do func(fn func() error) error
}

// Load is a set of TURN allocations ready to carry measurement flows.
type Load struct {
	cfg     TURNConfig
	Clients []*turnclient.Client
	// Channels[i] is the channel bound on Clients[i] (0 with Send
	// indications).
	Channels []uint16
}

// ChannelFor is the channel allocation i uses. Each allocation has its own
// channel space; varying the number exercises more than one map key.
func ChannelFor(i int) uint16 {
	return turnclient.MinChannel + uint16(i%int(turnclient.MaxChannel-turnclient.MinChannel+1))
}

// SetupTURN makes the allocations: a first one alone (to learn realm and
// nonce), then the rest in parallel reusing that nonce, so the server's
// rate limit on unauthenticated requests is not what the setup measures.
// On error everything made so far is released.
func SetupTURN(ctx context.Context, cfg TURNConfig) (l *Load, err error) {
	if cfg.Allocations < 1 {
		return nil, errors.New("turn load: allocations must be at least 1")
	}
	if (len(cfg.Users) == 0) == (cfg.Secret == "") {
		return nil, errors.New("turn load: set either users or a REST secret")
	}
	if !cfg.Peer.IsValid() {
		return nil, errors.New("turn load: peer address required")
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 16
	}
	if cfg.Do == nil {
		cfg.Do = func(fn func() error) error { return fn() }
	}
	if !cfg.Local.IsValid() {
		if cfg.Server.Addr().Unmap().Is4() {
			cfg.Local = netip.IPv4Unspecified()
		} else {
			cfg.Local = netip.IPv6Unspecified()
		}
	}
	l = &Load{cfg: cfg, Clients: make([]*turnclient.Client, cfg.Allocations), Channels: make([]uint16, cfg.Allocations)}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	network := "udp4"
	if cfg.Local.Is6() && !cfg.Local.Is4In6() {
		network = "udp6"
	}
	conns := make([]*net.UDPConn, cfg.Allocations)
	if err := cfg.Do(func() error {
		for i := range conns {
			c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(cfg.Local, 0)))
			if err != nil {
				for _, c := range conns[:i] {
					c.Close()
				}
				return fmt.Errorf("turn load: socket %d: %w", i, err)
			}
			conns[i] = c
		}
		return nil
	}); err != nil {
		return nil, err
	}
	expiry := time.Now().Add(24 * time.Hour)
	for i := range conns {
		creds := turnclient.RESTCredentials(cfg.Secret, fmt.Sprintf("%s%d", cfg.UserPrefix, i), expiry)
		if len(cfg.Users) > 0 {
			creds = cfg.Users[i%len(cfg.Users)]
		}
		c, err := turnclient.New(turnclient.Config{Server: cfg.Server, Conn: conns[i], Credentials: creds, Timeout: cfg.Timeout, Software: "hybridrelay-loadgen"})
		if err != nil {
			for _, c := range conns[i:] {
				c.Close()
			}
			return l, err
		}
		l.Clients[i] = c
	}
	if err := l.setupOne(ctx, 0); err != nil {
		return l, err
	}
	realm, nonce := l.Clients[0].Nonce()
	work := make(chan int)
	errs := make(chan error, cfg.Parallel)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for w := 0; w < cfg.Parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				l.Clients[i].SetNonce(realm, nonce)
				if err := l.setupOne(ctx, i); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		}()
	}
feed:
	for i := 1; i < cfg.Allocations; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return l, err
	}
	if err := ctx.Err(); err != nil {
		return l, err
	}
	return l, nil
}

func (l *Load) setupOne(ctx context.Context, i int) error {
	c := l.Clients[i]
	if _, err := c.Allocate(ctx, turnclient.AllocateOptions{Lifetime: l.cfg.Lifetime, IPv6: l.cfg.Peer.Addr().Unmap().Is6()}); err != nil {
		return fmt.Errorf("allocation %d: %w", i, err)
	}
	if l.cfg.SendIndications {
		if err := c.CreatePermission(ctx, l.cfg.Peer.Addr()); err != nil {
			return fmt.Errorf("allocation %d: %w", i, err)
		}
		return nil
	}
	ch := ChannelFor(i)
	if err := c.ChannelBind(ctx, ch, l.cfg.Peer); err != nil {
		return fmt.Errorf("allocation %d: %w", i, err)
	}
	l.Channels[i] = ch
	return nil
}

// ClientFlows are the client-to-peer flows, one per allocation.
func (l *Load) ClientFlows() []*Flow {
	fs := make([]*Flow, len(l.Clients))
	for i, c := range l.Clients {
		f := &Flow{ID: uint32(i), Conn: c.Conn(), Dst: c.Server(), Channel: l.Channels[i], Peer: l.cfg.Peer, Encap: EncapChannelData}
		if l.cfg.SendIndications {
			f.Encap = EncapSend
		}
		fs[i] = f
	}
	return fs
}

// PeerFlows are the peer-to-client flows: from the peer's socket to each
// allocation's relayed address.
func (l *Load) PeerFlows(peer *net.UDPConn) []*Flow {
	fs := make([]*Flow, len(l.Clients))
	for i, c := range l.Clients {
		fs[i] = &Flow{ID: uint32(i), Conn: peer, Dst: c.Relayed(), Encap: EncapRaw}
	}
	return fs
}

// Conns are the client sockets (for a Receiver in the reverse direction).
func (l *Load) Conns() []*net.UDPConn {
	cs := make([]*net.UDPConn, len(l.Clients))
	for i, c := range l.Clients {
		cs[i] = c.Conn()
	}
	return cs
}

// Control maps each socket to its client, for Receiver.Control.
func (l *Load) Control() map[*net.UDPConn]*turnclient.Client {
	m := make(map[*net.UDPConn]*turnclient.Client, len(l.Clients))
	for _, c := range l.Clients {
		m[c.Conn()] = c
	}
	return m
}

// Refresh refreshes every allocation and its channel or permission (used
// by long runs, while a Receiver owns the sockets: it must have been given
// Control(), and SetExternalReader(true) is set here).
func (l *Load) Refresh(ctx context.Context) error {
	lt := l.cfg.Lifetime
	if lt == 0 {
		lt = 600 * time.Second // RFC 8656 section 7.2 default; 0 would delete
	}
	var errs []error
	for i, c := range l.Clients {
		c.SetExternalReader(true)
		if _, err := c.Refresh(ctx, lt); err != nil {
			errs = append(errs, fmt.Errorf("refresh allocation %d: %w", i, err))
			continue
		}
		var err error
		if l.cfg.SendIndications {
			err = c.CreatePermission(ctx, l.cfg.Peer.Addr())
		} else {
			err = c.ChannelBind(ctx, l.Channels[i], l.cfg.Peer)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("refresh allocation %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// Close releases the allocations (best effort, bounded) and closes the
// sockets.
func (l *Load) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, c := range l.Clients {
		if c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(c *turnclient.Client) {
			defer wg.Done()
			defer func() { <-sem }()
			if c.Relayed().IsValid() && ctx.Err() == nil {
				c.SetExternalReader(false)
				_ = c.Release(ctx)
			}
			c.Close()
		}(c)
	}
	wg.Wait()
}
