package turnclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"

	"github.com/hybridrelay/hybridrelay/internal/turnproto"
)

// Protocol numbers for REQUESTED-TRANSPORT (IANA).
const protoUDP = 17

// Config describes one client (one 5-tuple, hence at most one allocation).
type Config struct {
	// Server is the TURN server's UDP address.
	Server netip.AddrPort
	// Conn is the socket to use. Nil: a new UDP socket is made (bound to
	// Local when set). Pass one made inside a network namespace to run the
	// client there. The client closes it on Close.
	Conn *net.UDPConn
	// Local is the address to bind when Conn is nil.
	Local netip.AddrPort
	// Credentials for the long-term mechanism. Empty username: requests
	// are sent without credentials.
	Credentials Credentials
	// RTO is the first retransmission timeout of a request; it doubles on
	// each retransmission (RFC 8489 section 6.2.1). Default 250 ms: these
	// clients talk to servers one hop away.
	RTO time.Duration
	// Timeout bounds one transaction (all retransmissions). Default 5 s.
	Timeout time.Duration
	// Software, when set, is sent as SOFTWARE.
	Software string
	// IgnoreAlternate makes a 300 Try Alternate answer to Allocate an
	// error instead of a redirect (RFC 8656 section 7.3: by default the
	// client "SHOULD try the same request with the alternate server").
	IgnoreAlternate bool
}

// ErrorResponse is an error response from the server (RFC 8489 section
// 14.8 ERROR-CODE).
type ErrorResponse struct {
	Method stun.Method
	Code   stun.ErrorCode
	Reason string
	// response is the message itself, signed whether the request carried
	// credentials (for following 300 Try Alternate).
	response *stun.Message
	signed   bool
}

func (e *ErrorResponse) Error() string {
	return fmt.Sprintf("%v error response: %d %s", e.Method, e.Code, e.Reason)
}

// ErrTimeout is returned when a transaction got no response in time.
var ErrTimeout = errors.New("turn transaction timed out")

// Client is a TURN client on one UDP socket. Control methods are safe for
// concurrent use. While another goroutine owns the socket's reads (a
// load generator's receive loop), call SetExternalReader(true) and pass every
// STUN message it reads to Deliver.
type Client struct {
	conn *net.UDPConn
	// server is where requests and data go; an Allocate answered 300 Try
	// Alternate moves it (atomic: data is sent at line rate).
	server  atomic.Pointer[netip.AddrPort]
	noAlt   bool
	creds   Credentials
	rto     time.Duration
	timeout time.Duration
	soft    string

	mu        sync.Mutex
	realm     string
	nonce     string
	integrity stun.MessageIntegrity
	external  bool
	pending   map[[stun.TransactionIDSize]byte]chan *stun.Message
	readMu    sync.Mutex // one transaction reads the socket at a time
	closed    bool
	relayed   netip.AddrPort
	mapped    netip.AddrPort
}

// New makes a client; no packet is sent.
func New(cfg Config) (*Client, error) {
	if !cfg.Server.IsValid() {
		return nil, errors.New("turnclient: server address required")
	}
	server := netip.AddrPortFrom(cfg.Server.Addr().Unmap(), cfg.Server.Port())
	c := &Client{
		conn:    cfg.Conn,
		noAlt:   cfg.IgnoreAlternate,
		creds:   cfg.Credentials,
		rto:     cfg.RTO,
		timeout: cfg.Timeout,
		soft:    cfg.Software,
		pending: make(map[[stun.TransactionIDSize]byte]chan *stun.Message),
	}
	c.server.Store(&server)
	if c.rto <= 0 {
		c.rto = 250 * time.Millisecond
	}
	if c.timeout <= 0 {
		c.timeout = 5 * time.Second
	}
	if c.conn == nil {
		network := "udp4"
		if server.Addr().Is6() {
			network = "udp6"
		}
		var laddr *net.UDPAddr
		if cfg.Local.IsValid() {
			laddr = net.UDPAddrFromAddrPort(cfg.Local)
		}
		conn, err := net.ListenUDP(network, laddr)
		if err != nil {
			return nil, fmt.Errorf("turnclient: open socket: %w", err)
		}
		c.conn = conn
	}
	return c, nil
}

// Conn is the client's socket. Data sent on it to Server() reaches the
// relay; use it (or its file descriptor) for ChannelData.
func (c *Client) Conn() *net.UDPConn { return c.conn }

// Server is the server address the client talks to: the configured one,
// or the alternate server a 300 Try Alternate sent it to.
func (c *Client) Server() netip.AddrPort { return *c.server.Load() }

// LocalAddr is the client's own transport address.
func (c *Client) LocalAddr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Relayed is the relayed transport address of the allocation (zero before
// Allocate succeeded).
func (c *Client) Relayed() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.relayed
}

// Mapped is the client's reflexive address as the server saw it.
func (c *Client) Mapped() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mapped
}

// Nonce returns the realm and nonce learned from the server, so other
// clients of the same load generator can skip their first 401 round trip.
func (c *Client) Nonce() (realm, nonce string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.realm, c.nonce
}

// SetNonce primes the realm and nonce (from another client's Nonce). A
// server that does not accept it answers 401 or 438 and the client
// recovers as usual.
func (c *Client) SetNonce(realm, nonce string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setRealmLocked(realm)
	c.nonce = nonce
}

func (c *Client) setRealmLocked(realm string) {
	if realm != c.realm || c.integrity == nil {
		c.realm = realm
		c.integrity = stun.NewLongTermIntegrity(c.creds.Username, realm, c.creds.Password)
	}
}

// SetExternalReader tells the client whether another goroutine reads the
// socket. When true, transactions wait for Deliver instead of reading.
func (c *Client) SetExternalReader(on bool) {
	c.mu.Lock()
	c.external = on
	c.mu.Unlock()
}

// Deliver hands a datagram read by an external reader to the client. It
// returns true when b was a STUN response to one of its transactions.
func (c *Client) Deliver(b []byte) bool {
	if !stun.IsMessage(b) {
		return false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return false
	}
	c.mu.Lock()
	ch, ok := c.pending[m.TransactionID]
	c.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case ch <- m:
	default:
	}
	return true
}

// Close closes the socket (the allocation, if any, expires on the server;
// call Release first to delete it at once).
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	return c.conn.Close()
}

// AllocateOptions are the optional parts of an Allocate request.
type AllocateOptions struct {
	// Lifetime asked for; 0 leaves it to the server's default.
	Lifetime time.Duration
	// IPv6 asks for an IPv6 relayed address (REQUESTED-ADDRESS-FAMILY,
	// RFC 8656 section 7.1); without it the server allocates IPv4.
	IPv6 bool
}

// Allocation is the result of a successful Allocate.
type Allocation struct {
	Relayed  netip.AddrPort
	Mapped   netip.AddrPort
	Lifetime time.Duration
}

// Allocate creates the allocation (RFC 8656 section 7.1/7.3).
func (c *Client) Allocate(ctx context.Context, opt AllocateOptions) (Allocation, error) {
	setters := []stun.Setter{requestedTransport(protoUDP)}
	if opt.IPv6 {
		setters = append(setters, requestedFamily(turnproto.FamilyIPv6))
	}
	if opt.Lifetime > 0 {
		setters = append(setters, lifetime(opt.Lifetime))
	}
	res, err := c.allocateFollowing(ctx, setters)
	if err != nil {
		return Allocation{}, err
	}
	var a Allocation
	var x stun.XORMappedAddress
	if err := x.GetFromAs(res, stun.AttrXORRelayedAddress); err != nil {
		return a, fmt.Errorf("allocate response: xor-relayed-address: %w", err)
	}
	if a.Relayed, err = addrPortOf(x); err != nil {
		return a, fmt.Errorf("allocate response: xor-relayed-address: %w", err)
	}
	if err := x.GetFromAs(res, stun.AttrXORMappedAddress); err == nil {
		a.Mapped, _ = addrPortOf(x)
	}
	if a.Lifetime, err = getLifetime(res); err != nil {
		return a, fmt.Errorf("allocate response: lifetime: %w", err)
	}
	c.mu.Lock()
	c.relayed, c.mapped = a.Relayed, a.Mapped
	c.mu.Unlock()
	return a, nil
}

// Refresh refreshes the allocation (RFC 8656 section 7.4); lifetime 0
// deletes it. It returns the lifetime the server granted.
func (c *Client) Refresh(ctx context.Context, lt time.Duration) (time.Duration, error) {
	res, err := c.request(ctx, stun.MethodRefresh, lifetime(lt))
	if err != nil {
		return 0, err
	}
	if lt == 0 {
		return 0, nil
	}
	got, err := getLifetime(res)
	if err != nil {
		return 0, fmt.Errorf("refresh response: lifetime: %w", err)
	}
	return got, nil
}

// Release deletes the allocation (Refresh with LIFETIME 0). A 437
// (allocation mismatch: already gone) counts as success.
func (c *Client) Release(ctx context.Context) error {
	_, err := c.Refresh(ctx, 0)
	var er *ErrorResponse
	if errors.As(err, &er) && er.Code == stun.CodeAllocMismatch {
		return nil
	}
	return err
}

// CreatePermission installs or refreshes permissions for the peers' IP
// addresses (RFC 8656 section 9; ports are ignored by the server).
func (c *Client) CreatePermission(ctx context.Context, peers ...netip.Addr) error {
	if len(peers) == 0 {
		return errors.New("createpermission: no peer")
	}
	setters := make([]stun.Setter, 0, len(peers))
	for _, p := range peers {
		setters = append(setters, peerAddr(netip.AddrPortFrom(p, 0)))
	}
	_, err := c.request(ctx, stun.MethodCreatePermission, setters...)
	return err
}

// ChannelBind binds channel ch to peer, or refreshes the binding (RFC 8656
// section 12.2). It also installs or refreshes the permission for the
// peer's IP.
func (c *Client) ChannelBind(ctx context.Context, ch uint16, peer netip.AddrPort) error {
	if !ValidChannel(ch) {
		return fmt.Errorf("channelbind: channel 0x%04x outside 0x4000-0x4fff", ch)
	}
	_, err := c.request(ctx, stun.MethodChannelBind, channelNumber(ch), peerAddr(peer))
	return err
}

// SendIndication sends data to peer in a Send indication (RFC 8656
// section 11.1).
func (c *Client) SendIndication(peer netip.AddrPort, data []byte) error {
	m, err := BuildSendIndication(peer, data)
	if err != nil {
		return err
	}
	return c.write(m.Raw)
}

// SendChannelData sends data on channel ch.
func (c *Client) SendChannelData(ch uint16, data []byte) error {
	return c.write(AppendChannelData(make([]byte, 0, ChannelDataHeaderSize+len(data)), ch, data))
}

func (c *Client) write(b []byte) error {
	server := c.Server()
	if _, err := c.conn.WriteToUDPAddrPort(b, server); err != nil {
		return fmt.Errorf("turnclient: send to %v: %w", server, err)
	}
	return nil
}

// Binding sends a STUN Binding request and returns the reflexive address;
// a cheap liveness check.
func (c *Client) Binding(ctx context.Context) (netip.AddrPort, error) {
	res, err := c.transact(ctx, stun.MethodBinding, false, nil)
	if err != nil {
		return netip.AddrPort{}, err
	}
	var x stun.XORMappedAddress
	if err := x.GetFrom(res); err != nil {
		return netip.AddrPort{}, fmt.Errorf("binding response: %w", err)
	}
	return addrPortOf(x)
}

// request runs one authenticated transaction. Without a nonce the first
// attempt goes without credentials; a 401 carrying REALM and NONCE (RFC
// 8489 section 9.2.5) or a 438 Stale Nonce (section 9.2.5, RFC 8656
// section 6.3) updates them and the request is retried with a new
// transaction ID. A second 401 with credentials is final: wrong password.
func (c *Client) request(ctx context.Context, method stun.Method, setters ...stun.Setter) (*stun.Message, error) {
	c.mu.Lock()
	authed := c.nonce != "" && c.creds.Username != ""
	c.mu.Unlock()
	for attempt := 0; attempt < 4; attempt++ {
		res, err := c.transact(ctx, method, authed, setters)
		if err != nil {
			return nil, err
		}
		if res.Type.Class == stun.ClassSuccessResponse {
			return res, nil
		}
		var code stun.ErrorCodeAttribute
		if err := code.GetFrom(res); err != nil {
			return nil, fmt.Errorf("%v error response without error-code: %w", method, err)
		}
		er := &ErrorResponse{Method: method, Code: code.Code, Reason: string(code.Reason), response: res, signed: authed}
		switch code.Code {
		case stun.CodeUnauthorized, stun.CodeStaleNonce:
			if c.creds.Username == "" {
				return nil, er
			}
			if code.Code == stun.CodeUnauthorized && authed && attempt > 0 {
				return nil, er // credentials were sent with a fresh nonce and refused
			}
			var realm stun.Realm
			var nonce stun.Nonce
			if err := nonce.GetFrom(res); err != nil {
				return nil, fmt.Errorf("%w (no nonce: %v)", er, err)
			}
			c.mu.Lock()
			if err := realm.GetFrom(res); err == nil {
				c.setRealmLocked(realm.String())
			} else if c.integrity == nil {
				c.mu.Unlock()
				return nil, fmt.Errorf("%w (no realm)", er)
			}
			c.nonce = nonce.String()
			c.mu.Unlock()
			authed = true
			continue
		default:
			return nil, er
		}
	}
	return nil, fmt.Errorf("%v: authentication did not converge", method)
}

// transact sends one request (retransmitting per RFC 8489 section 6.2.1)
// and returns the response with the same transaction ID.
func (c *Client) transact(ctx context.Context, method stun.Method, authed bool, setters []stun.Setter) (*stun.Message, error) {
	m := stun.New()
	m.TransactionID = stun.NewTransactionID()
	m.SetType(stun.NewType(method, stun.ClassRequest))
	m.WriteHeader()
	for _, s := range setters {
		if err := s.AddTo(m); err != nil {
			return nil, fmt.Errorf("build %v: %w", method, err)
		}
	}
	if c.soft != "" {
		_ = stun.NewSoftware(c.soft).AddTo(m)
	}
	var integrity stun.MessageIntegrity
	if authed {
		c.mu.Lock()
		integrity = c.integrity
		extra := []stun.Setter{stun.NewUsername(c.creds.Username), stun.NewRealm(c.realm), stun.NewNonce(c.nonce), integrity}
		c.mu.Unlock()
		for _, s := range extra {
			if err := s.AddTo(m); err != nil {
				return nil, fmt.Errorf("build %v: %w", method, err)
			}
		}
	}
	if err := stun.Fingerprint.AddTo(m); err != nil {
		return nil, fmt.Errorf("build %v: %w", method, err)
	}

	deadline := time.Now().Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ch := make(chan *stun.Message, 1)
	c.mu.Lock()
	external := c.external
	c.pending[m.TransactionID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, m.TransactionID)
		c.mu.Unlock()
	}()

	rto := c.rto
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("%v: %w", method, err)
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%v to %v: %w", method, c.Server(), ErrTimeout)
		}
		if err := c.write(m.Raw); err != nil {
			return nil, err
		}
		wait := time.Now().Add(rto)
		if wait.After(deadline) {
			wait = deadline
		}
		var res *stun.Message
		var err error
		if external {
			res, err = c.waitDelivered(ctx, ch, wait)
		} else {
			res, err = c.readResponse(ctx, m.TransactionID, ch, wait)
		}
		if err != nil {
			return nil, fmt.Errorf("%v: %w", method, err)
		}
		if res != nil {
			if res.Type.Method != method {
				return nil, fmt.Errorf("%v: response has method %v", method, res.Type.Method)
			}
			// RFC 8489 section 9.2.5: a response whose MESSAGE-INTEGRITY
			// does not verify is discarded as if never received.
			if authed && res.Contains(stun.AttrMessageIntegrity) {
				if err := integrity.Check(res); err != nil {
					continue
				}
			}
			return res, nil
		}
		rto *= 2
	}
}

func (c *Client) waitDelivered(ctx context.Context, ch chan *stun.Message, until time.Time) (*stun.Message, error) {
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case res := <-ch:
		return res, nil
	case <-t.C:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// readResponse reads the socket until the response to tid arrives or until
// passes. Datagrams that are not that response (ChannelData, indications,
// stale retransmissions) are dropped: during control transactions the
// client is not expecting data.
func (c *Client) readResponse(ctx context.Context, tid [stun.TransactionIDSize]byte, ch chan *stun.Message, until time.Time) (*stun.Message, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	// Leave no deadline behind: whoever reads the socket next (a data
	// receive loop) must not inherit one that has passed.
	defer c.conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for {
		select {
		case res := <-ch: // delivered by a concurrent transaction's read
			return res, nil
		default:
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		step := until
		if d, ok := ctx.Deadline(); ok && d.Before(step) {
			step = d
		}
		if err := c.conn.SetReadDeadline(step); err != nil {
			return nil, err
		}
		n, from, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, nil
			}
			return nil, fmt.Errorf("read: %w", err)
		}
		if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != c.Server() || !stun.IsMessage(buf[:n]) {
			continue
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := m.Decode(); err != nil {
			continue
		}
		if m.TransactionID == tid {
			return m, nil
		}
		// Another goroutine's transaction on this client.
		c.mu.Lock()
		other, ok := c.pending[m.TransactionID]
		c.mu.Unlock()
		if ok {
			select {
			case other <- m:
			default:
			}
		}
	}
}
