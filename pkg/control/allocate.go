package control

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// handleAllocate implements RFC 8656 section 7.2 ("Receiving an Allocate
// Request"). Authentication (step 1) has already succeeded.
func (s *Server) handleAllocate(r *reqCtx) {
	msg := r.msg
	// Step 2: "The server checks if the 5-tuple is currently in use by an
	// existing allocation. If yes, the server rejects the request with a
	// 437 (Allocation Mismatch) error." — unless it is a retransmission
	// (section 7.2, last paragraph: same transaction ID → same success).
	if a := s.lookup(r.tuple); a != nil {
		if a.allocTxID == msg.TransactionID && a.allocResp != nil {
			s.stats.requests[mAllocate][resultIndex(0)].Add(1)
			r.sink.send(r.tx, a.allocResp)
			return
		}
		r.fail(stun.CodeAllocMismatch)
		return
	}
	// Step 3: REQUESTED-TRANSPORT missing or malformed → 400; TCP is RFC
	// 6062; anything else → 442.
	proto, ok, err := getRequestedTransport(msg)
	if err != nil || !ok {
		r.fail(stun.CodeBadRequest)
		return
	}
	if proto == protoTCP {
		s.handleAllocateTCP(r) // RFC 6062 (tcpalloc.go)
		return
	}
	if proto != protoUDP {
		r.fail(stun.CodeUnsupportedTransProto)
		return
	}
	// Step 4: DONT-FRAGMENT is supported: the kernel path sets DF on what
	// it relays to the peer iff it was asked, and the relay sockets of the
	// userspace path are set the same way (applyDontFragment) once they
	// are known. Where the datapath cannot set DF (off Linux), the
	// attribute is answered as an unknown comprehension-required one (420).
	dontFrag := msg.Contains(stun.AttrDontFragment)

	even, reserve, err := getEvenPort(msg)
	if err != nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	token, hasToken, err := getReservationToken(msg)
	if err != nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	reqFam, hasReqFam, err := getFamilyAttr(msg, stun.AttrRequestedAddressFamily)
	if err != nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	addFam, hasAddFam, err := getFamilyAttr(msg, attrAdditionalAddressFamily)
	if err != nil {
		r.fail(stun.CodeBadRequest)
		return
	}
	// Step 5: "If the request contains a RESERVATION-TOKEN attribute, the
	// server ... checks that the request does not also contain an
	// EVEN-PORT attribute [400] ... REQUESTED-ADDRESS-FAMILY or
	// ADDITIONAL-ADDRESS-FAMILY [400]."
	if hasToken && (even || hasReqFam || hasAddFam) {
		r.fail(stun.CodeBadRequest)
		return
	}
	// Step 7/8: REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY
	// together → 400; an unknown REQUESTED-ADDRESS-FAMILY value → 440;
	// ADDITIONAL-ADDRESS-FAMILY other than IPv6 → 400.
	if hasReqFam && hasAddFam {
		r.fail(stun.CodeBadRequest)
		return
	}
	if hasReqFam && reqFam != familyIPv4 && reqFam != familyIPv6 {
		r.fail(stun.CodeAddrFamilyNotSupported)
		return
	}
	if hasAddFam && addFam != familyIPv6 {
		r.fail(stun.CodeBadRequest)
		return
	}
	// Lifetime (section 7.2): min(requested, max); the default when the
	// result is below it. Parsed before any resource is taken.
	life := s.cfg.DefaultLifetime
	if req, ok, err := getLifetime(msg); err != nil {
		r.fail(stun.CodeBadRequest)
		return
	} else if ok {
		life = clampLifetime(req, s.cfg.DefaultLifetime, s.cfg.MaxLifetime)
	}
	quotaKey, admitted := s.admitAllocation(r)
	if !admitted {
		return
	}
	quotaHeld := true
	defer func() {
		if quotaHeld {
			s.releaseQuota(quotaKey)
		}
	}()

	// RFC 8656 section 7.2: without REQUESTED-ADDRESS-FAMILY the relayed
	// address is IPv4. Deviation, for clients that never send the
	// attribute (the pion/turn v4 client cannot) on IPv6-only relays: when
	// this server has no IPv4 relay address, IPv6 is used instead of
	// answering 440. A dual request (ADDITIONAL-ADDRESS-FAMILY) always
	// starts with IPv4.
	primary := familyIPv4
	if hasReqFam {
		primary = reqFam
	} else if _, ok := s.relayIPFor(familyIPv4, netip.Addr{}); !ok && !hasAddFam {
		primary = familyIPv6
	}
	a := newAllocation(s, r.tuple, r.sink, r.username, r.now)
	a.quotaKey = quotaKey
	a.dontFrag = dontFrag
	var relays [2]*relaySock
	var resToken [8]byte
	hasResToken := false
	var addrErr stun.ErrorCode
	if hasToken {
		// Step 5 (cont.): "If the token is not valid for some reason, the
		// server rejects the request with a 508 (Insufficient Capacity)."
		rs := s.takeReservation(token, r.now)
		if rs == nil {
			r.fail(stun.CodeInsufficientCapacity)
			return
		}
		relays[famIndex(familyOf(rs.addr.Addr()))] = rs
	} else {
		ip, ok := s.relayIPFor(primary, r.tuple.server.Addr())
		if !ok {
			r.fail(stun.CodeAddrFamilyNotSupported)
			return
		}
		rs, tok, err := s.allocRelay(ip, even, reserve, r.now)
		if err != nil {
			// Step 6/10: EVEN-PORT that cannot be honoured and an
			// exhausted port range are both 508.
			if !errors.Is(err, errNoPorts) {
				s.log.Warn("open relay socket", "err", err)
			}
			r.fail(stun.CodeInsufficientCapacity)
			return
		}
		relays[famIndex(primary)] = rs
		if reserve {
			resToken, hasResToken = tok, true
		}
		if hasAddFam {
			// Dual allocation (RFC 8656 section 7.2): failure of the
			// additional family is reported with ADDRESS-ERROR-CODE, not
			// as a failure of the request.
			if ip6, ok := s.relayIPFor(familyIPv6, netip.Addr{}); !ok {
				addrErr = stun.CodeAddrFamilyNotSupported
			} else if rs6, _, err := s.allocRelay(ip6, false, false, r.now); err != nil {
				addrErr = stun.CodeInsufficientCapacity
			} else {
				relays[1] = rs6
			}
		}
	}

	// Every relay socket of the allocation (both families of a dual one,
	// a socket held by a reservation) gets the policy before the client
	// learns the address, so nothing is relayed under another one.
	if err := applyDontFragment(relays, dontFrag); err != nil {
		s.closeRelays(relays)
		if dontFrag && errors.Is(err, errors.ErrUnsupported) {
			r.fail(stun.CodeUnknownAttribute, stun.UnknownAttributes{stun.AttrDontFragment})
			return
		}
		s.log.Warn("relay socket dont-fragment", "err", err)
		r.fail(stun.CodeServerError)
		return
	}
	a.relays = relays
	a.expires = r.now.Add(life)

	resp := r.build(stun.ClassSuccessResponse, 0,
		setterFunc(func(m *stun.Message) error {
			for _, rs := range relays {
				if rs != nil {
					if err := addXORAddr(m, stun.AttrXORRelayedAddress, rs.addr); err != nil {
						return err
					}
				}
			}
			if addrErr != 0 {
				addAddressErrorCode(m, familyIPv6, addrErr, reasonOf(addrErr))
			}
			addLifetime(m, life)
			if hasResToken {
				m.Add(stun.AttrReservationToken, resToken[:])
			}
			return addXORAddr(m, stun.AttrXORMappedAddress, r.tuple.client)
		}),
	)
	if resp == nil {
		s.closeRelays(relays)
		r.fail(stun.CodeServerError)
		return
	}
	a.allocTxID = msg.TransactionID
	a.allocResp = resp
	for _, rs := range relays {
		if rs != nil {
			rs.alloc.Store(a)
		}
	}
	if _, loaded := s.allocs.LoadOrStore(r.tuple, a); loaded {
		// A concurrent Allocate on the same 5-tuple won (parallel UDP
		// loops): this one is a mismatch.
		s.closeRelays(relays)
		a.releaseUnpublished()
		r.fail(stun.CodeAllocMismatch)
		return
	}
	s.stats.requests[mAllocate][resultIndex(0)].Add(1)
	quotaHeld = false
	s.stats.allocationsCreated.Add(1)
	s.state.markDirty()
	r.sink.send(r.tx, resp)
	s.log.Debug("allocation created", "client", r.tuple.client, "transport", r.tuple.proto,
		"user", r.username, "relays", relays, "lifetime", life)
}

func reasonOf(c stun.ErrorCode) string {
	m := &stun.Message{}
	m.WriteHeader()
	_ = c.AddTo(m)
	var ec stun.ErrorCodeAttribute
	if ec.GetFrom(m) == nil {
		return string(ec.Reason)
	}
	return ""
}

// applyDontFragment sets the IPv4 DF policy of the relay sockets from the
// allocation's DONT-FRAGMENT (RFC 8656 section 14: DF on every datagram
// relayed to a peer iff asked, the same bit the kernel path writes;
// dataplane.Conn.SetDontFragment). IPv6 sockets accept it as a no-op.
func applyDontFragment(rs [2]*relaySock, on bool) error {
	for _, r := range rs {
		if r == nil {
			continue
		}
		if err := r.conn.SetDontFragment(on); err != nil {
			return fmt.Errorf("relay %s: %w", r.addr, err)
		}
	}
	return nil
}

func (s *Server) closeRelays(rs [2]*relaySock) {
	for _, r := range rs {
		if r != nil {
			s.releaseRelay(r)
		}
	}
}

// clampLifetime implements the lifetime rule of RFC 8656 sections 7.2 and
// 8.2: min(requested, max), raised to the default when below it.
func clampLifetime(req, def, max time.Duration) time.Duration {
	l := min(req, max)
	if l < def {
		l = def
	}
	return l
}

// relayIPFor picks the relay address of family fam: the address the client
// contacted when it is a relay address, else the first configured one.
func (s *Server) relayIPFor(fam byte, preferred netip.Addr) (netip.Addr, bool) {
	preferred = preferred.Unmap()
	for _, ip := range s.relayIPs {
		if ip == preferred && familyOf(ip) == fam {
			return ip, true
		}
	}
	for _, ip := range s.relayIPs {
		if familyOf(ip) == fam {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// quotaResult is reserveQuota's answer.
type quotaResult uint8

const (
	quotaReserved quotaResult = iota
	quotaTotalReached
	quotaUserReached
)

// admitAllocation is the admission every Allocate (UDP or TCP relay)
// passes before anything is opened. "At any point, the server MAY choose
// to reject the request with a 300 (Try Alternate) error if it wishes to
// redirect the client to a different server": a draining server takes no
// new allocation (refuseAllocate: 300 with ALTERNATE-SERVER, or 486
// without one). Step 9 (quota): "the server checks if it ... has the
// resources... If not, 486 (Allocation Quota Reached)." A full server
// redirects like a draining one; a user over its own quota gets 486
// everywhere. On success the quota is reserved under the returned key and
// the caller owns its release; otherwise the answer has been sent.
func (s *Server) admitAllocation(r *reqCtx) (quotaKey string, ok bool) {
	if on, _ := s.Draining(); on {
		r.refuseAllocate()
		return "", false
	}
	quotaKey = s.creds.Load().quotaKey(r.username)
	switch s.reserveQuota(quotaKey) {
	case quotaTotalReached:
		r.refuseAllocate()
		return "", false
	case quotaUserReached:
		r.fail(stun.CodeAllocQuotaReached)
		return "", false
	}
	return quotaKey, true
}

// reserveQuota counts a new allocation against the total and per-user
// quotas; nothing is counted when either is reached.
func (s *Server) reserveQuota(user string) quotaResult {
	s.quotaMu.Lock()
	defer s.quotaMu.Unlock()
	if s.cfg.MaxAllocations > 0 && s.quotaTotal >= s.cfg.MaxAllocations {
		return quotaTotalReached
	}
	if s.cfg.MaxAllocationsPerUser > 0 && s.perUser[user] >= s.cfg.MaxAllocationsPerUser {
		return quotaUserReached
	}
	s.perUser[user]++
	s.quotaTotal++
	return quotaReserved
}

func (s *Server) releaseQuota(user string) {
	s.quotaMu.Lock()
	defer s.quotaMu.Unlock()
	s.quotaTotal--
	if s.perUser[user]--; s.perUser[user] <= 0 {
		delete(s.perUser, user)
	}
}
